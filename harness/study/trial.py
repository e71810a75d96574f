"""One trial: features -> fit -> ``evaluate()`` -> log; and that fit-evaluate-log step
for any model, as a child run of the study's parent.

The Optuna objective is the validation AUC; the test split is only reported.
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from harness.attention import AttentionCache
from harness.core import default_cache_dir
from harness.data import Dataset, Split
from harness.models import (
    AttentionInputs,
    EpochCallback,
    Evaluation,
    FitResult,
    LinearProbe,
    Model,
    ReaderModel,
    TrainSettings,
    evaluate,
    write_predictions,
)
from harness.study.search import TrialSpec, make_sampler, suggest
from harness.studyfile import PROBES, Map, StudyConfig
from harness.tracking import (
    DESCRIPTION_TAG,
    WORKER_ATTR,
    Tracker,
    cluster_lease,
    dataset_input,
    describe_model,
    describe_run,
    log_pyfunc,
    provenance_tags,
    store_outage,
)

log = logging.getLogger("harness")

#: pooled features a probe holds in memory (float32 [N, D]; a reader's token features are
#: streamed from the cache a batch at a time): a probe on all 72 MiniLM maps stacked over
#: absolute rows of 80 tokens takes 85 MB for BABE but 4.1 GB for 180k sentences, so such
#: a draw fails at once with the reason
MAX_POOLED_BYTES = 2_000_000_000


class TrialFailed(Exception):
    """A trial raised or diverged; Optuna records it as FAIL and the study goes on."""


@dataclass
class StudyContext:
    """Everything a trial shares with the others, prepared once per process."""

    config: StudyConfig
    dataset: Dataset
    split: Split
    cache: AttentionCache
    tracker: Tracker
    parent_run_id: str
    encoder_name: str
    encoder_fingerprint: str
    #: this process's lease token, recorded on each trial it runs
    worker: str
    #: the head sweep's maps, best validation AUC first (for ``heads: {top: k}``)
    ranking: list[Map] | None = None
    #: set when a store stopped answering mid-trial: the study stops (``harness.study.study``)
    outage: str | None = None
    #: the random-init control's seed, or the fine-tuned encoder's MLflow run
    #: (``harness.study.intermediary``): recorded on every trial and in its model config
    encoder_init: str = "pretrained"
    encoder_seed: int = 0
    encoder_run_id: str | None = None
    #: the Optuna storage: its database holds the leases of what the study does once
    storage_url: str = ""

    def lease(self, name: str, what: str) -> AbstractContextManager[None]:
        """Held across all the study's workers while one of them does ``what``, which the
        study does once (the head sweep, the baselines): the others wait, then find it
        logged (``tracking.cluster_lease``)."""
        local = Path(self.config.cache_dir or default_cache_dir()) / "locks"
        return cluster_lease(self.storage_url, f"harness-{name}-{self.parent_run_id}", what, local)

    def base_params(self) -> dict[str, str]:
        c = self.config
        return {
            "encoder": self.encoder_name,
            "max_len": str(c.encoder.max_len),
            "data_sha256": self.dataset.sha256,
            "split_seed": str(c.split.seed),
            "epochs": str(c.train.epochs),
            "batch_size": str(c.train.batch_size),
            "patience": str(c.train.patience),
            "weight_decay": str(c.train.weight_decay),
            "bucketing": str(c.train.bucketing),
            "train_seed": str(c.train.seed),
            **self.encoder_params(),
        }

    def encoder_params(self) -> dict[str, str]:
        """Which encoder, beyond its name: the control's seed, the fine-tuned one's run."""
        if self.encoder_init != "pretrained":
            return {"encoder_init": self.encoder_init, "encoder_seed": str(self.encoder_seed)}
        if self.encoder_run_id:
            return {
                "encoder_fingerprint": self.encoder_fingerprint,
                "encoder_run_id": self.encoder_run_id,
            }
        return {}

    def inputs_for(self, model: Model) -> Any:
        """The model's inputs for every row of the study's data set (from the cache)."""
        return model.inputs.build(self.dataset.texts, self.cache)


def fit_and_log(
    ctx: StudyContext,
    model: Model,
    inputs: Any,
    run_id: str,
    on_epoch: EpochCallback | None = None,
) -> tuple[FitResult, Evaluation]:
    """Fit on the study's split, evaluate, and log curves, metrics, CIs, the model and the
    predictions to run ``run_id``. ``on_epoch`` runs after each epoch's curve point is
    logged (a trial reports to Optuna there, and may be pruned)."""

    def log_epoch(epoch: int, train_loss: float, val_auc: float) -> None:
        ctx.tracker.log_metrics(run_id, {"train_loss": train_loss, "val_auc": val_auc}, epoch)
        if on_epoch is not None:
            on_epoch(epoch, train_loss, val_auc)

    labels, split, boot = ctx.dataset.labels, ctx.split, ctx.config.bootstrap
    result = model.fit(inputs, labels, split.train, split.val, log_epoch)
    ev = evaluate(
        model,
        inputs,
        ctx.dataset,
        split,
        n_resamples=boot.n_resamples,
        confidence=boot.confidence,
        seed=boot.seed,
    )
    # val_auc has one point per epoch trained; the kept (best) epoch gets metrics of its own
    best = {"best_val_auc": result.best_val_auc, "best_epoch": result.best_epoch}
    ctx.tracker.log_metrics(run_id, {**ev.metrics, **best})
    with tempfile.TemporaryDirectory() as tmp:
        write_predictions(Path(tmp), ctx.dataset, split, ev)
        ctx.tracker.log_dir(run_id, Path(tmp))
    example = [ctx.dataset.texts[i] for i in split.val[:2]]
    log_pyfunc(ctx.tracker.client, ctx.tracker.experiment_id, run_id, model, example)
    return result, ev


def annotate(ctx: StudyContext, run_id: str) -> None:
    """Every run of the study: reproducibility tags and the data as a dataset input."""
    ctx.tracker.set_tags(run_id, provenance_tags(ctx.encoder_fingerprint))
    ctx.tracker.client.log_inputs(run_id, [dataset_input(ctx.dataset, ctx.split)])


def log_model_run(
    ctx: StudyContext,
    model: Model,
    run_name: str,
    role: str,
    params: dict[str, str],
    tags: dict[str, str] | None = None,
) -> str:
    """Fit, evaluate and log ``model`` as a child run of the study's parent (a baseline
    beside the trials); returns the run id. The run ends FAILED if anything raises."""
    params = {**params, **ctx.base_params()}
    run_id = ctx.tracker.start_child(ctx.parent_run_id, run_name, role, params, tags)
    try:
        annotate(ctx, run_id)
        result, _ = fit_and_log(ctx, model, ctx.inputs_for(model), run_id)
    except BaseException as exc:
        ctx.tracker.finish(run_id, "FAILED" if isinstance(exc, Exception) else "KILLED")
        raise
    ctx.tracker.set_tags(run_id, {DESCRIPTION_TAG: describe_run(params, result.best_val_auc)})
    ctx.tracker.finish(run_id)
    return run_id


def model_for(ctx: StudyContext, spec: TrialSpec) -> Model:
    """The model a trial trains on the study's cached features: a sequence reader over
    token rows, or a probe over each sentence's pooled features."""
    c = ctx.config
    inputs = AttentionInputs(
        spec.features,
        ctx.encoder_name,
        ctx.encoder_fingerprint,
        c.encoder.max_len,
        ctx.cache.num_heads,
        pooled=spec.classifier.kind in PROBES,
        init=ctx.encoder_init,
        seed=ctx.encoder_seed,
        encoder_run=ctx.encoder_run_id,
        view_bits=ctx.cache.view_bits,
    )
    size = len(ctx.dataset) * inputs.input_size * 4
    if inputs.pooled and size > MAX_POOLED_BYTES:
        raise TrialFailed(
            f"pooled features of {len(spec.features.maps(ctx.cache.num_heads))} maps in the "
            f"{spec.features.view} view ({spec.features.reducer}) would take {size / 1e9:.1f} GB "
            "in memory; choose fewer heads, another reducer or a position-free view"
        )
    try:
        if spec.classifier.kind == "linear":
            return LinearProbe(spec.classifier, inputs, ctx.dataset.positive_label)
        settings = TrainSettings(**c.train.model_dump(), lr=spec.lr)
        return ReaderModel(spec.classifier, inputs, settings, ctx.dataset.positive_label)
    except ValueError as exc:
        raise TrialFailed(f"invalid classifier: {exc}") from None


def run_trial(ctx: StudyContext, trial: optuna.Trial, spec: TrialSpec, run_id: str) -> float:
    """Train one reader on cached features and log it; the value is its best val AUC."""
    model = model_for(ctx, spec)

    def report(epoch: int, train_loss: float, val_auc: float) -> None:
        trial.report(val_auc, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} (val_auc {val_auc:.4f})")

    result, ev = fit_and_log(ctx, model, ctx.inputs_for(model), run_id, report)
    trial.set_user_attr("test_metrics", ev.test)
    return result.best_val_auc


class Objective:
    """Optuna's objective: one MLflow child run per trial, ended with the trial's state.

    Anything that raises once the trial exists (creating its run included) fails the
    trial with its reason; ending the run is tried, but a tracking store that is gone must
    not hide that reason (``harness.study.settle`` ends the run later). A store that stopped
    answering also stops the study: the next trial would only fail the same way."""

    def __init__(self, ctx: StudyContext):
        self.ctx = ctx

    def __call__(self, trial: optuna.Trial) -> float:
        ctx = self.ctx
        trial.set_user_attr(WORKER_ATTR, ctx.worker)
        # seeded by trial number: reproducible, yet workers that start together (same
        # seed, same history) do not draw the same parameters
        trial.study.sampler = make_sampler(ctx.config, trial.number)
        spec = suggest(trial, ctx.config.search, ctx.ranking)
        params = {**spec.params(), **ctx.base_params()}
        run_id = None
        try:
            run_id = ctx.tracker.start_trial(
                ctx.parent_run_id, ctx.config.name, trial.number, params
            )
            trial.set_user_attr("mlflow_run_id", run_id)
            annotate(ctx, run_id)
            value = run_trial(ctx, trial, spec, run_id)
        except optuna.TrialPruned as exc:
            # MLflow has no PRUNED status: the name marks it in the runs table
            described = f"{describe_model(params)} — {exc}"
            self._end(trial, run_id, "PRUNED", None, f"trial-{trial.number} (pruned)", described)
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            outage = store_outage(exc)
            if outage is not None:
                self._stop(trial, outage)
            trial.set_user_attr("fail_reason", reason[:4000])
            if outage is None:  # a gone store would only retry; the run is settled later
                self._end(trial, run_id, "FAIL", reason)
            raise TrialFailed(reason) from exc
        except BaseException:
            if run_id is not None:
                with suppress(Exception):
                    ctx.tracker.kill(run_id, "interrupted")
            raise
        self._end(trial, run_id, "COMPLETE", description=describe_run(params, value))
        return value

    def _end(
        self,
        trial: optuna.Trial,
        run_id: str | None,
        state: str,
        reason: str | None = None,
        name: str | None = None,
        description: str | None = None,
    ) -> None:
        """End the run with the trial's state (renamed and described first, if given)."""
        if run_id is None:
            return
        try:
            if name is not None:
                self.ctx.tracker.rename(run_id, name)
            if description is not None:
                self.ctx.tracker.set_tags(run_id, {DESCRIPTION_TAG: description})
            self.ctx.tracker.end(run_id, state, reason)
        except Exception as exc:  # noqa: BLE001 - the trial's own outcome stands
            outage = store_outage(exc)
            log.warning(
                "trial %d: its run was not ended (%s); it is settled later",
                trial.number,
                outage or f"{type(exc).__name__}: {exc}",
            )
            if outage is not None:
                self._stop(trial, outage)

    def _stop(self, trial: optuna.Trial, outage: str) -> None:
        if self.ctx.outage is None:
            self.ctx.outage = f"{outage} during trial {trial.number}"
        trial.study.stop()
