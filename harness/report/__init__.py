"""What a study shows: tables (``tables``), figures (``figures``), report.md
(``markdown``), paired differences (``paired``) and the study's report assembled from
MLflow (``study_report``).

The names below are the package's public API; its modules are private to it.
"""

from harness.core import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "figures": ["forest_plot", "head_heatmap", "heatmap_comparison"],
        "markdown": ["Figure", "ScoredRun", "md_table"],
        "paired": ["artifact_text", "best_vs_baselines_logged", "compare_logged"],
        "study_report": ["baseline_rows", "log_report", "paired_from_parent", "repeat_rows"],
        "tables": [
            "FINISHED",
            "describe_finished",
            "format_baselines",
            "format_paired",
            "verdict",
            "format_table",
            "n_covered",
            "n_finished",
            "n_pruned",
            "trial_rows",
        ],
    },
)
