"""harness: which layers and heads of an encoder carry the signal for a sentence label?

The public API for notebook users; the CLI (``harness …``) wraps the same functions.
Names load lazily, so ``harness --help`` or a mistyped flag answers without first
importing torch, MLflow and Optuna.
"""

import os

# OpenMP threads that wait must sleep, not spin (harness/core/runtime.py says why). libgomp
# reads this once, when torch loads, so it is set before any harness module imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from harness.core import __version__, attach  # noqa: E402 (OMP_WAIT_POLICY comes first)

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "attention": ["AttentionCache", "extract_attention"],
        "core": ["HarnessError"],
        "data": ["Dataset", "Split", "load_dataset", "make_split"],
        "encoders": ["load_encoder"],
        "study": ["run_study"],
        "tracking": ["load_run"],
    },
)
__all__ += ["__version__"]
