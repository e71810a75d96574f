"""Length-bucketed batches of row indices, shared by the training loop of every reader
and by fine-tuning: similar lengths in a batch mean little padding (BENCHMARKS.md row 5)."""

from __future__ import annotations

import numpy as np


def make_batches(
    lengths: np.ndarray,
    idx: np.ndarray,
    batch_size: int,
    bucketing: bool,
    rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """Split ``idx`` into batches. With ``rng`` the order is random (training), else fixed.

    Bucketing sorts by length (random order among equal lengths) before cutting, so each
    batch holds similar lengths; the batches themselves are then shuffled.
    """
    idx = np.asarray(idx)
    if rng is not None:
        idx = rng.permutation(idx)
    if bucketing:
        idx = idx[np.argsort(lengths[idx], kind="stable")]
    batches = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    if rng is not None and bucketing:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches
