"""harness: which layers and heads of an encoder carry the signal for a sentence label?

The public API for notebook users; the CLI (``harness …``) wraps the same functions.
Names load lazily, so ``harness --help`` or a mistyped flag answers without first
importing torch, MLflow and Optuna.
"""

import os
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

# OpenMP threads that wait must sleep, not spin (harness/threads.py says why). libgomp
# reads this once, when torch loads, so it is set before any harness module imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:  # one source: the package metadata (pyproject.toml)
    __version__ = version("harness")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

_EXPORTS = {
    "AttentionCache": "harness.attention_cache",
    "extract_attention": "harness.attention",
    "Dataset": "harness.data",
    "load_dataset": "harness.data",
    "Split": "harness.split",
    "make_split": "harness.split",
    "load_encoder": "harness.encoder",
    "HarnessError": "harness.errors",
    "load_run": "harness.predict",
    "run_study": "harness.study",
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
    from harness.attention import extract_attention
    from harness.attention_cache import AttentionCache
    from harness.data import Dataset, load_dataset
    from harness.encoder import load_encoder
    from harness.errors import HarnessError
    from harness.predict import load_run
    from harness.split import Split, make_split
    from harness.study import run_study


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
