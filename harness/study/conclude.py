"""The end of a study run: baselines, the best trial's paired differences, the report.

Runs after the trials, in the process that ran the study (not in ``--workers`` helpers),
and again on every re-run of a finished study: baselines already logged are found by tag
and not refitted, the paired differences are recomputed (the same numbers: the same
predictions and resampling seed) and the report is logged again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from harness.report import baseline_rows, best_vs_baselines_logged, log_report
from harness.stats import PairedResult, baseline_diff_metrics
from harness.study.baselines import run_baselines
from harness.tracking import RunReader

log = logging.getLogger("harness")


@dataclass
class Conclusion:
    """What the terminal summary prints beside the trials."""

    #: ``study_report.baseline_rows``
    baselines: list[dict] = field(default_factory=list)
    #: baseline -> best trial − baseline (test AUC)
    paired: dict[str, PairedResult] = field(default_factory=dict)
    report: list[str] = field(default_factory=list)
    #: wall seconds of each part (the bench reads them from the log line)
    seconds: dict[str, float] = field(default_factory=dict)
    #: test sentences of the split, and all sentences (what cross-validation would score)
    n_test: int = 0
    n_sentences: int = 0


def conclude(session) -> Conclusion:
    """Fit missing baselines, log ``best_vs_<baseline>_auc_*`` to the parent, log the
    report; ``session`` is an open ``study.StudySession``."""
    ctx, study = session.ctx, session.study
    out = Conclusion(n_test=len(ctx.split.test), n_sentences=len(ctx.dataset))
    started = time.perf_counter()
    baseline_ids = run_baselines(ctx) if ctx.config.baselines else {}
    out.seconds["baselines"] = time.perf_counter() - started
    reader = RunReader(ctx.tracker.tracking_uri)
    _, children = reader.study_runs(ctx.config.name)
    out.baselines = [b for b in baseline_rows(children) if b["baseline"] in baseline_ids]
    best_run = _best_run_id(study)
    if baseline_ids and best_run:
        started = time.perf_counter()
        out.paired = best_vs_baselines_logged(reader, best_run, baseline_ids)
        ctx.tracker.log_metrics(ctx.parent_run_id, baseline_diff_metrics(out.paired))
        out.seconds["paired"] = time.perf_counter() - started
    started = time.perf_counter()
    out.report = log_report(study, reader, paired=out.paired or None)
    out.seconds["report"] = time.perf_counter() - started
    log.info(
        "study end: baselines %.1f s, paired differences %.1f s, report %.1f s",
        out.seconds["baselines"],
        out.seconds.get("paired", 0.0),
        out.seconds["report"],
    )
    return out


def _best_run_id(study) -> str | None:
    try:
        return study.best_trial.user_attrs.get("mlflow_run_id") or None
    except ValueError:
        return None
