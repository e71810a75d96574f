"""harness: which layers and heads of an encoder carry the signal for a sentence label?

The public API for notebook users; the CLI (``harness …``) wraps the same functions.
"""

__version__ = "0.1.0"

from harness.attention import AttentionCache, extract_attention  # noqa: E402
from harness.data import Dataset, Split, load_dataset, make_split  # noqa: E402
from harness.encoder import load_encoder  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.predict import load_run  # noqa: E402
from harness.study import run_study  # noqa: E402

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
