"""A study, run: Optuna search (``search``), one trial (``trial``), callbacks, the study
loop (``study``, with its inputs in ``inputs``), workers and settling of dead trials,
baselines and the end of a run (``baselines``, ``conclude``), repeats, conditions,
intermediary encoders and the head sweep.

The names below are the package's public API; its modules are private to it.
"""

from harness.core import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "conditions": ["run_conditions"],
        "repeat": ["repeat_study"],
        "crossval": ["CrossValidation", "evaluate_study", "format_evaluation"],
        "study": ["run_head_sweep", "run_study"],
        "sweep": ["format_top"],
    },
)
