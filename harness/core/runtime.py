"""Process-wide settings: logging, and torch thread counts chosen deliberately.

Measured in BENCHMARKS.md, rows 1, 3 and 8.

Four decisions, each with the measurement behind it:

* **Waiting OpenMP threads sleep** (``OMP_WAIT_POLICY=PASSIVE``). torch's OpenMP runtime
  (GNU libgomp) by default spins a thread that waits at the end of a parallel region.
  When another process holds the other core of a 2-core machine, the spinning thread
  steals the time its partner needs: a 2-thread training step of a small GRU ran 2×
  slower than with sleeping waiters next to one busy process, and 10-25× slower than
  on 1 thread while other engineers' test runs loaded the machine. Extraction on 2
  threads under that load ran at 16-20 sentences/s spinning and 37-44 sleeping. libgomp
  reads the variable once, when torch is first imported, so ``harness/__init__.py``
  sets it before any harness module imports torch; a process that imported torch
  earlier keeps libgomp's default. A user's value wins, and child processes
  (``--workers``) inherit it.
* **Extraction uses every core** (``HARNESS_EXTRACT_THREADS``, default: all): the
  encoder's matrix products are large enough to split.
* **Training and feature building use one thread per process** (``HARNESS_NUM_THREADS``,
  default 1): their many small ops gain nothing from a second thread but its wake-ups
  (feature building took 0.5 s on 1 thread and 2-12 s on 2 with a core busy).
* **Parallel trials use processes** (``--workers 2``): 2 processes × 1 thread ran 1.9×
  the trials per hour of 1 process × 2 threads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager


def extraction_threads() -> int:
    return int(os.environ.get("HARNESS_EXTRACT_THREADS", os.cpu_count() or 1))


def train_threads() -> int:
    return int(os.environ.get("HARNESS_NUM_THREADS", "1"))


def default_device() -> str:
    """Where extraction and reader training run: ``$HARNESS_DEVICE``, else CUDA when torch
    sees a GPU, else the CPU. Study files do not name a device, so the same file runs on
    a laptop and on a GPU machine."""
    import torch

    return os.environ.get("HARNESS_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def num_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` intra-op threads, then restore the previous setting."""
    import torch  # here, so that the cheap commands that import this package never load it

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def setup_logging(quiet: bool) -> None:
    """Info logs unless quiet; the libraries' chatter stays at warnings."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
