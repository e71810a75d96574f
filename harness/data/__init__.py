"""Sentences and labels: file readers (``readers``), data sets with BABE's preset
(``datasets``) and the fixed, recorded train/validation/test split (``split``).

The names below are the package's public API; its modules are private to it.
"""

from harness.core import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "datasets": ["Dataset", "fetch_dataset", "load_dataset"],
        "readers": ["read_texts"],
        "split": ["Fold", "Split", "folds_sha256", "make_folds", "make_split"],
    },
)
