"""Which rows fine-tuning trains and validates on, so that no sentence of the study's
validation or test split reaches a training batch: the study's train split less duplicates
of held-out sentences (``data: study``), or an intermediary file that shares no sentence
with them (``leak_check``) and a stratified slice of it to pick the best epoch.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from harness.core import HarnessError, texts_sha256
from harness.data import Dataset, Split, load_dataset

if TYPE_CHECKING:
    from harness.studyfile import FinetuneConfig

log = logging.getLogger("harness")


def normalise(text: str) -> str:
    """Collapse runs of whitespace and strip; case is kept (cased tokenizers see it)."""
    return " ".join(text.split())


def leak_check(
    intermediary_texts: list[str], study_texts: list[str], source: str = "the fine-tuning file"
) -> None:
    """Refuse an intermediary file that shares a sentence with the study's held-out texts
    (``study_texts``: its validation and test sentences)."""
    held_out = {normalise(t) for t in study_texts}
    shared = sorted({normalise(t) for t in intermediary_texts} & held_out)
    if shared:
        raise HarnessError(
            f"{source} shares {len(shared)} sentence(s) with the study's validation/test split "
            f"(e.g. {shared[0][:80]!r}); fine-tuning on them would make every probe on the "
            "fine-tuned encoder optimistic; remove them from the file, or use data: study"
        )


@dataclass(frozen=True)
class FinetuneData:
    """The rows fine-tuning uses: ``train`` positions train, ``val`` picks the best epoch.
    Nothing else in ``texts`` is ever put in a batch."""

    texts: list[str]
    labels: np.ndarray
    train: np.ndarray
    val: np.ndarray
    source: str
    sha256: str
    positive_label: str
    dropped: int = 0  # study train rows left out as duplicates of held-out sentences

    def split_fingerprint(self) -> str:
        """Which rows train and which validate, by position, text and label."""
        digest = hashlib.sha256()
        for name, idx in (("train", self.train), ("val", self.val)):
            digest.update(name.encode())
            digest.update(np.asarray(idx, dtype=np.int64).tobytes())
            digest.update(texts_sha256([self.texts[i] for i in idx]).encode())
            digest.update(self.labels[idx].astype(np.int64).tobytes())
        return digest.hexdigest()


def finetune_data(settings: FinetuneConfig, dataset: Dataset, split: Split) -> FinetuneData:
    """The study's train/validation rows, or an intermediary file after the leak check."""
    held_out = np.concatenate([split.val, split.test])
    if settings.data == "study":
        banned = {normalise(dataset.texts[i]) for i in held_out}
        keep = np.array([normalise(dataset.texts[i]) not in banned for i in split.train], bool)
        if not keep.all():
            log.info(
                "fine-tuning leaves out %d train sentence(s) that also occur in the validation "
                "or test split",
                int((~keep).sum()),
            )
        return FinetuneData(
            dataset.texts,
            dataset.labels,
            np.asarray(split.train)[keep],
            np.asarray(split.val),
            dataset.source,
            dataset.sha256,
            dataset.positive_label,
            int((~keep).sum()),
        )
    other = load_dataset(
        settings.data,
        text_column=settings.text_column,
        label_column=settings.label_column,
        positive_label=settings.positive_label,
        delimiter=settings.delimiter,
    )
    leak_check(other.texts, [dataset.texts[i] for i in held_out], source=other.source)
    val = _stratified_holdout(other.labels, settings.val_fraction, settings.seed, other.source)
    train = np.setdiff1d(np.arange(len(other)), val)
    return FinetuneData(
        other.texts, other.labels, train, val, other.source, other.sha256, other.positive_label
    )


def _stratified_holdout(labels: np.ndarray, fraction: float, seed: int, source: str) -> np.ndarray:
    """Sorted positions of a seeded ``fraction`` of each class (at least one of each)."""
    rng = np.random.default_rng(seed)
    parts = []
    for c in (0, 1):
        rows = np.flatnonzero(labels == c)
        if len(rows) < 2:
            raise HarnessError(
                f"{source} has {len(rows)} row(s) of class {c}; fine-tuning needs at least 2 "
                "of each class (one to train, one to validate)"
            )
        take = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
        parts.append(rng.choice(rows, size=take, replace=False))
    return np.sort(np.concatenate(parts))
