"""torch thread settings, chosen deliberately (see BENCHMARKS.md).

The encoder's big matrix products use every core. The small readers do not: their many
tiny ops pay OpenMP's cost of waking threads at each op, and when another process holds
the other core a 2-thread GRU step can be 100× slower than a 1-thread one. So training
runs on one thread per process, and parallel trials use processes (``--workers``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def extraction_threads() -> int:
    return int(os.environ.get("HARNESS_EXTRACT_THREADS", os.cpu_count() or 1))


def train_threads() -> int:
    return int(os.environ.get("HARNESS_NUM_THREADS", "1"))


@contextmanager
def num_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` intra-op threads, then restore the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
