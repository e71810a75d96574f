"""One trial: features -> fit -> ``evaluate()`` -> log; and that fit-evaluate-log step
for any model, as a child run of the study's parent.

The Optuna objective is the validation AUC; the test split is only reported.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from harness.attention import AttentionCache
from harness.config import StudyConfig
from harness.data import Dataset, Split
from harness.evaluate import Evaluation, evaluate, write_predictions
from harness.features import Map
from harness.inputs import AttentionInputs
from harness.models.base import EpochCallback, FitResult, Model
from harness.models.catalog import PROBES
from harness.models.probe import LinearProbe
from harness.models.reader import ReaderModel
from harness.search import TrialSpec, make_sampler, suggest
from harness.storage import WORKER_ATTR
from harness.tracking import Tracker
from harness.train import TrainSettings

#: features a trial may hold in memory (float32): a stack of all 72 MiniLM maps over
#: absolute rows would take 6.8 GB, so such a draw fails at once with the reason
MAX_FEATURE_BYTES = 3_000_000_000


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
    #: the random-init control's seed, or the fine-tuned encoder's MLflow run
    #: (``harness.intermediary``): recorded on every trial and in its model config
    encoder_init: str = "pretrained"
    encoder_seed: int = 0
    encoder_run_id: str | None = None

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
    # the last val_auc point is the best epoch's, whose weights are kept
    ctx.tracker.log_metrics(run_id, {"val_auc": result.best_val_auc}, len(result.history))
    ctx.tracker.log_metrics(run_id, {**ev.metrics, "best_epoch": result.best_epoch})
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp, "model"))
        write_predictions(Path(tmp), ctx.dataset, split, ev)
        ctx.tracker.log_dir(run_id, Path(tmp))
    return result, ev


def log_model_run(
    ctx: StudyContext, model: Model, run_name: str, role: str, params: dict[str, str]
) -> str:
    """Fit, evaluate and log ``model`` as a child run of the study's parent (a baseline
    beside the trials); returns the run id. The run ends FAILED if anything raises."""
    run_id = ctx.tracker.start_child(
        ctx.parent_run_id, run_name, role, {**params, **ctx.base_params()}
    )
    try:
        fit_and_log(ctx, model, ctx.inputs_for(model), run_id)
    except BaseException as exc:
        ctx.tracker.finish(run_id, "FAILED" if isinstance(exc, Exception) else "KILLED")
        raise
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
    )
    rows = 1 if inputs.pooled else c.encoder.max_len
    size = len(ctx.dataset) * rows * inputs.input_size * 4
    if size > MAX_FEATURE_BYTES:
        raise TrialFailed(
            f"features of {len(spec.features.maps(ctx.cache.num_heads))} maps in the "
            f"{spec.features.view} view ({spec.features.reducer}) would take {size / 1e9:.1f} GB; "
            "choose fewer heads, another reducer or a position-free view"
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
    """Optuna's objective: one MLflow child run per trial, ended with the trial's state."""

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
        run_id = ctx.tracker.start_trial(ctx.parent_run_id, ctx.config.name, trial.number, params)
        trial.set_user_attr("mlflow_run_id", run_id)
        try:
            value = run_trial(ctx, trial, spec, run_id)
        except optuna.TrialPruned:
            ctx.tracker.end(run_id, "PRUNED")
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason)
            ctx.tracker.end(run_id, "FAIL", reason)
            raise TrialFailed(reason) from exc
        except BaseException:
            ctx.tracker.kill(run_id, "interrupted")
            raise
        ctx.tracker.end(run_id, "COMPLETE")
        return value
