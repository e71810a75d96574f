"""harness: which layers and heads of an encoder carry the signal for a sentence label?

The public API for notebook users; the CLI (``harness …``) wraps the same functions.
Names load lazily, so ``harness --help`` or a mistyped flag answers without first
importing torch, MLflow and Optuna.
"""

import os
from importlib import import_module
from typing import TYPE_CHECKING

# OpenMP threads that wait must sleep, not spin (harness/core/runtime.py says why). libgomp
# reads this once, when torch loads, so it is set before any harness module imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from harness.core import __version__  # noqa: E402 (after OMP_WAIT_POLICY, which must come first)

_EXPORTS = {
    "AttentionCache": "harness.attention.cache",
    "extract_attention": "harness.attention.extract",
    "Dataset": "harness.data.datasets",
    "load_dataset": "harness.data.datasets",
    "Split": "harness.data.split",
    "make_split": "harness.data.split",
    "load_encoder": "harness.encoders.load",
    "HarnessError": "harness.core.errors",
    "load_run": "harness.tracking.predict",
    "run_study": "harness.study.study",
}

__all__ = [
    "AttentionCache",
    "Dataset",
    "HarnessError",
    "Split",
    "extract_attention",
    "load_dataset",
    "load_encoder",
    "load_run",
    "make_split",
    "run_study",
]

if TYPE_CHECKING:
    from harness.attention.cache import AttentionCache
    from harness.attention.extract import extract_attention
    from harness.core.errors import HarnessError
    from harness.data.datasets import Dataset, load_dataset
    from harness.data.split import Split, make_split
    from harness.encoders.load import load_encoder
    from harness.study.study import run_study
    from harness.tracking.predict import load_run


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
