"""torch thread settings, chosen deliberately (measured in BENCHMARKS.md, rows 1 and 8).

Three decisions, each with the measurement behind it:

* **Waiting OpenMP threads sleep** (``OMP_WAIT_POLICY=PASSIVE``). torch's OpenMP runtime
  (GNU libgomp) by default spins a thread that waits at the end of a parallel region. With
  another busy process on a 2-core machine the spinning thread steals the core its partner
  needs, so a 2-thread backward step of a small GRU ran 20-40× slower than with 1 thread.
  Sleeping waiters remove that cliff. libgomp reads the variable once, when torch loads
  it, so this module sets it before importing torch and ``harness.attention`` (the first
  module the package imports) imports this module before torch. A value the user set
  wins; a notebook that imported torch before harness keeps torch's default.
* **Extraction uses every core**: the encoder's matrix products are large enough to
  split (``HARNESS_EXTRACT_THREADS``, default: all cores).
* **Training uses one thread per process** (``HARNESS_NUM_THREADS``, default 1): the
  readers' many tiny ops gain nothing from a second thread, while a second process
  doubles trial throughput. Parallel trials therefore use processes (``--workers 2``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402

import torch  # noqa: E402


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
