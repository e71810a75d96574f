"""Numbers with honest uncertainty: metrics and the bootstrap (``metrics``), paired
comparisons of logged runs on the same test sentences (``compare``). numpy and
scikit-learn only.

The names below are the package's public API; its modules are private to it.
"""

from harness.core import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "compare": ["RunPredictions", "baseline_diff_metrics", "compare_runs", "format_comparison"],
        "metrics": [
            "METRICS",
            "PairedResult",
            "bootstrap_ci",
            "bootstrap_indices",
            "compute_metrics",
            "CorrectedT",
            "corrected_t_test",
            "pooled_ci",
            "pooled_paired",
        ],
    },
)
