"""Row 14: what ``harness study evaluate`` costs against the work it must do.

babe-quick (on the shared warm cache) is run once; then its best configuration and the
four baselines are cross-validated (5 folds × 1 repeat with --quick, × 2 without). The
work is folds × repeats × (the best trial's own duration + each baseline's fit-and-log
time, both measured in the same study run). A ratio near 1 says the evaluation reuses the
attention cache (no extraction, no encoder pass for the embedding baseline) and adds
little beyond the fits themselves.
"""

from __future__ import annotations

import re

import optuna

from bench.common import Context, Row, harness_cli, log, ratio, write_study
from bench.studies import QUICK_STUDY
from harness.tracking import make_storage


def row_crossval(ctx: Context) -> list[Row]:
    folder = ctx.tmp("crossval")
    repeats = 1 if ctx.quick else 2
    path = write_study(
        QUICK_STUDY,
        folder,
        name="bench-cv",
        cache_dir=str(ctx.cache_dir),
        n_trials=8 if ctx.quick else 16,
        evaluation={"folds": 5, "repeats": repeats, "top": 1},
    )
    log("row 14: babe-quick, then study evaluate of its best trial and the four baselines")
    study_run = harness_cli("study", "run", str(path))
    baselines = {
        name: float(s)
        for name, s in re.findall(
            r"baseline (\w+): fitted and logged in ([\d.]+) s", study_run.output
        )
    }
    study = optuna.load_study(
        study_name="bench-cv", storage=make_storage(f"sqlite:///{folder}/optuna.db")
    )
    trial_seconds = study.best_trial.duration.total_seconds()
    evaluate = harness_cli(
        "study", "evaluate", "bench-cv", "--tracking-uri", f"sqlite:///{folder}/mlflow.db",
        "--storage", f"sqlite:///{folder}/optuna.db",
    )  # fmt: skip
    fits = 5 * repeats
    work = fits * (trial_seconds + sum(baselines.values()))
    share = ratio(evaluate.seconds, work)
    values = {
        "evaluate_seconds": evaluate.seconds,
        "work_seconds": work,
        "best_trial_seconds": trial_seconds,
        "baseline_seconds": baselines,
        "folds_x_repeats": fits,
    }
    return [
        Row(
            "14",
            f"study evaluate (best trial + 4 baselines, 5 folds × {repeats}) vs "
            "folds × repeats × (one trial + the baselines' fits)",
            f"{evaluate.seconds:.0f} s vs {work:.0f} s: {share:.2f}×",
            "≤ 1.3×",
            share <= 1.3,
            values,
        )
    ]
