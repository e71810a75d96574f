"""The baselines of a study: fitted once on its split, logged as child runs beside the trials.

A trial's test AUC means little alone; beside the majority class, sentence length,
TF-IDF and the encoder's own embedding (each + logistic regression, settings chosen on
validation AUC) it says whether the attention maps carry anything the text or the
encoder's output do not. Each baseline goes through the same model protocol, evaluation
and logging as a trial (``trial.log_model_run``), so ``load_run``, ``predict`` and
``compare`` treat it like one. A baseline is found again by its tags, so re-running a
finished study does not fit it twice.
"""

from __future__ import annotations

import logging
import time

from harness.models import (
    EmbeddingInputs,
    EmbeddingModel,
    LengthModel,
    MajorityModel,
    Model,
    TfidfModel,
)
from harness.study.trial import StudyContext, log_model_run
from harness.tracking import Tracker

log = logging.getLogger("harness")

#: tag naming which baseline a run is (beside ``harness.role=baseline``)
BASELINE_TAG = "harness.baseline"
ROLE = "baseline"


def make_baseline(name: str, ctx: StudyContext) -> Model:
    """An unfitted baseline of the study-file name ``name`` (``config.BASELINES``)."""
    positive = ctx.dataset.positive_label
    if name == "majority":
        return MajorityModel(positive)
    if name == "length":
        return LengthModel(positive_label=positive)
    if name == "tfidf":
        return TfidfModel(positive)
    if name == "embedding":
        inputs = EmbeddingInputs(
            ctx.encoder_name,
            ctx.encoder_fingerprint,
            ctx.config.encoder.max_len,
            ctx.encoder_init,
            ctx.encoder_seed,
            ctx.encoder_run_id,
        )
        return EmbeddingModel(inputs, positive)
    raise ValueError(f"unknown baseline {name!r}")  # the study file was checked before


def finished_baselines(tracker: Tracker, parent_id: str) -> dict[str, str]:
    """Baseline name -> run id of the study's FINISHED baseline runs (the earliest if a
    name has several); failed or killed ones do not count and are fitted again."""
    runs = tracker.finished_children(parent_id, ROLE)
    found: dict[str, str] = {}
    for run in runs:
        name = run.data.tags.get(BASELINE_TAG)
        if name and name not in found:
            found[name] = run.info.run_id
    return found


def run_baselines(ctx: StudyContext) -> dict[str, str]:
    """Fit and log the study's baselines that are not logged yet; name -> run id of each
    (in study-file order). One worker at a time, under the study's baselines lease, so two
    that finish together do not both fit them."""
    with ctx.lease("baselines", "the baselines (fitted once per study)"):
        return _run_baselines(ctx)


def _run_baselines(ctx: StudyContext) -> dict[str, str]:
    done = finished_baselines(ctx.tracker, ctx.parent_run_id)
    for name in ctx.config.baselines:
        if name in done:
            log.info("baseline %s: already logged (run %s), not refitted", name, done[name])
            continue
        started = time.perf_counter()
        model = make_baseline(name, ctx)
        run_id = log_model_run(
            ctx, model, f"baseline-{name}", ROLE, {"model": name}, {BASELINE_TAG: name}
        )
        seconds = time.perf_counter() - started
        if hasattr(model, "grid"):  # C chosen on validation AUC among model.grid
            ctx.tracker.log_params(run_id, {"selected_c": model.c})
        ctx.tracker.log_metrics(run_id, {"fit_seconds": seconds})
        log.info("baseline %s: fitted and logged in %.1f s (run %s)", name, seconds, run_id)
        done[name] = run_id
    return {name: done[name] for name in ctx.config.baselines}
