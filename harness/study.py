"""Optuna drives the trials: study file -> search space -> objective -> MLflow runs.

``run_study`` does the expensive, shared work once (validation, data, split, attention
cache), then each trial does only cheap work: choose maps, reduce, train a small reader,
evaluate, log. The objective is validation AUC; the test split is only reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import safetensors.torch
import torch
from optuna.trial import TrialState
from tqdm.auto import tqdm

from harness import __version__
from harness.attention import AttentionCache, default_cache_dir, extract_attention
from harness.classifiers import ClassifierSpec, build_classifier
from harness.config import (
    HPARAMS,
    Range,
    SearchConfig,
    StudyConfig,
    check_encoder,
    choices,
    head_choices,
    layer_choices,
    load_study_file,
    parse_study,
    validate_storage_url,
    validate_tracking_uri,
)
from harness.data import Dataset, Split, load_dataset, make_split
from harness.encoder import load_encoder
from harness.errors import HarnessError
from harness.features import FeatureSpec
from harness.metrics import METRICS, bootstrap_ci, compute_metrics
from harness.storage import (
    WORKER_ATTR,
    WorkerLease,
    heartbeat_interval,
    local_path,
    make_storage,
)
from harness.threads import train_threads
from harness.tracking import Tracker, dumps
from harness.train import TrainSettings, predict_logits, seed_everything, sigmoid, train

log = logging.getLogger("harness")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: a study stops when, after this many trials in one run, most of them failed
FAILURE_STOP_MIN = 4
#: study user attributes: the MLflow parent run, and the worker that created the study
PARENT_ATTR = "mlflow_parent_run_id"
CREATOR_ATTR = "creator"
#: how long a worker that did not create the study waits for its creator's parent run
PARENT_WAIT_S = 60.0
#: fail reason of a trial that started after the study's target was already covered
NOT_NEEDED = "not needed: other workers' trials reached the target as this one started"


class TrialFailed(Exception):
    """A trial raised or diverged; Optuna records it as FAIL and the study goes on."""


@dataclass(frozen=True)
class TrialSpec:
    """What one trial trains: the features, the reader, and its learning rate."""

    features: FeatureSpec
    classifier: ClassifierSpec
    lr: float
    #: classifier hyperparameters named in the study file (logged under those names)
    hparams: tuple[str, ...] = ()

    def params(self) -> dict[str, str]:
        params = {
            "layers": self.features.layers_param,
            "heads": self.features.heads_param,
            "reducer": self.features.reducer,
            "classifier": self.classifier.kind,
            "lr": repr(self.lr),
        }
        params.update({h: str(getattr(self.classifier, h)) for h in self.hparams})
        return params


def _suggest(trial: optuna.Trial, name: str, dim, kind: type = float):
    """One search dimension: a range, a list of choices, or a fixed value."""
    if isinstance(dim, Range):
        if kind is int:
            step = int(dim.step or 1)
            return trial.suggest_int(name, int(dim.low), int(dim.high), step=step, log=dim.log)
        return trial.suggest_float(name, dim.low, dim.high, log=dim.log, step=dim.step)
    options = choices(dim)
    return options[0] if len(options) == 1 else trial.suggest_categorical(name, options)


def suggest(trial: optuna.Trial, search: SearchConfig) -> TrialSpec:
    """Sample a ``TrialSpec``; kind-specific hyperparameters are named ``kind.name`` in
    Optuna so that each kind keeps its own distributions."""
    as_param = {",".join(map(str, c)): c for c in layer_choices(search.layers)}
    layers = as_param[_suggest(trial, "layers", list(as_param))]
    heads_by_name = {
        "all" if h is None else ",".join(map(str, h)): h for h in head_choices(search.heads)
    }
    heads = heads_by_name[_suggest(trial, "heads", list(heads_by_name))]
    reducer = _suggest(trial, "reducer", search.reducer, str)
    lr = float(_suggest(trial, "lr", search.lr, float))
    kind = _suggest(trial, "classifier", list(search.classifier), str)
    hparams = search.classifier[kind] or {}
    values = {h: _suggest(trial, f"{kind}.{h}", d, HPARAMS[h]) for h, d in hparams.items()}
    return TrialSpec(
        FeatureSpec(layers, heads, reducer),
        ClassifierSpec(kind=kind, **values),
        lr,
        tuple(hparams),
    )


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
        }


def run_trial(ctx: StudyContext, trial: optuna.Trial, spec: TrialSpec, run_id: str) -> float:
    """Train one reader on cached features, log curves, metrics, CIs, weights, predictions."""
    cfg = ctx.config
    x_np, lengths_np = ctx.cache.features(
        spec.features.layers, list(spec.features.heads or []) or "all", spec.features.reducer
    )
    x, lengths = torch.from_numpy(x_np), torch.from_numpy(lengths_np)
    labels = ctx.dataset.labels
    seed_everything(cfg.train.seed)
    input_size = spec.features.input_size(cfg.encoder.max_len)
    try:
        model = build_classifier(spec.classifier, input_size, cfg.encoder.max_len)
    except ValueError as exc:
        raise TrialFailed(f"invalid classifier: {exc}") from None
    settings = TrainSettings(
        epochs=cfg.train.epochs,
        patience=cfg.train.patience,
        batch_size=cfg.train.batch_size,
        lr=spec.lr,
        weight_decay=cfg.train.weight_decay,
        bucketing=cfg.train.bucketing,
        seed=cfg.train.seed,
    )

    def on_epoch(epoch: int, train_loss: float, val_auc: float) -> None:
        ctx.tracker.log_metrics(run_id, {"train_loss": train_loss, "val_auc": val_auc}, epoch)
        trial.report(val_auc, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} (val_auc {val_auc:.4f})")

    result = train(model, x, lengths, labels, ctx.split.train, ctx.split.val, settings, on_epoch)
    val_probs = sigmoid(predict_logits(model, x, lengths, ctx.split.val))
    test_probs = sigmoid(predict_logits(model, x, lengths, ctx.split.test))
    y_val, y_test = labels[ctx.split.val], labels[ctx.split.test]
    val = compute_metrics(y_val, val_probs)
    metrics = {f"val_{k}": v for k, v in val.items() if k != "auc"}
    test = compute_metrics(y_test, test_probs)
    ci = bootstrap_ci(
        y_test,
        test_probs,
        n_resamples=cfg.bootstrap.n_resamples,
        confidence=cfg.bootstrap.confidence,
        seed=cfg.bootstrap.seed,
    )
    for m in METRICS:
        metrics[f"test_{m}"] = test[m]
        metrics[f"test_{m}_ci_low"], metrics[f"test_{m}_ci_high"] = ci[m]
    metrics["best_epoch"] = result.best_epoch
    ctx.tracker.log_metrics(run_id, {"val_auc": result.best_val_auc}, len(result.history))
    ctx.tracker.log_metrics(run_id, metrics)
    model_config = {
        "format": 1,
        "harness_version": __version__,
        "features": spec.features.to_dict(),
        "classifier": spec.classifier.to_dict(),
        "input_size": input_size,
        "max_len": cfg.encoder.max_len,
        "encoder": {"name": ctx.encoder_name, "fingerprint": ctx.encoder_fingerprint},
        "threshold": 0.5,
        "positive_label": ctx.dataset.positive_label,
    }
    ctx.tracker.log_files(
        run_id,
        {
            "model/weights.safetensors": safetensors.torch.save(model.state_dict()),
            "model/config.json": dumps(model_config),
            "predictions/test.csv": _predictions_csv(ctx.dataset, ctx.split.test, test_probs),
            "predictions/val.csv": _predictions_csv(ctx.dataset, ctx.split.val, val_probs),
        },
    )
    trial.set_user_attr("test_metrics", {m: [test[m], *ci[m]] for m in METRICS})
    return result.best_val_auc


def _predictions_csv(dataset: Dataset, idx: np.ndarray, probs: np.ndarray) -> str:
    rows = ["row_id,label,probability"]
    rows += [
        f"{dataset.row_ids[i]},{dataset.labels[i]},{p:.8f}" for i, p in zip(idx, probs, strict=True)
    ]
    return "\n".join(rows) + "\n"


def make_objective(ctx: StudyContext):
    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, ctx.worker)
        # seeded by trial number: reproducible, yet workers that start together (same
        # seed, same history) do not draw the same parameters
        trial.study.sampler = _make_sampler(ctx.config, trial.number)
        spec = suggest(trial, ctx.config.search)
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

    return objective


def n_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def n_pruned(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))


def describe_finished(n_finished: int, n_pruned: int) -> str:
    """``12 finished trials (4 complete, 8 pruned)``: the table below it lists the complete."""
    return f"{n_finished} finished trials ({n_finished - n_pruned} complete, {n_pruned} pruned)"


def n_covered(study: optuna.Study) -> int:
    """Finished trials plus running ones (which will most likely finish): what a worker
    counts before it starts another trial, so that parallel workers stop at the target."""
    return len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))


def _surplus(trial: optuna.Trial, target: int) -> bool:
    """Whether ``trial`` is one too many: the finished trials plus the running ones that
    started before it already make the target. Workers that finish trials at the same
    moment may each start one; the lower trial numbers win, so a study never finishes
    more than ``target`` trials."""
    others = trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    return sum(t.state in FINISHED or t.number < trial.number for t in others) >= target


def _study_attrs(study: optuna.Study) -> dict:
    return study.user_attrs


def _check_continuation(study: optuna.Study, dataset: Dataset, split: Split, where: str) -> None:
    """A continued study must see the same data and the same split as its first trials."""
    attrs = _study_attrs(study)
    if "data_sha256" in attrs and attrs["data_sha256"] != dataset.sha256:
        raise HarnessError(
            f"{where}: study {study.study_name!r} was started on data with sha256 "
            f"{attrs['data_sha256'][:12]}… but {dataset.source} now has {dataset.sha256[:12]}…; "
            "restore the original file or give the study a new name"
        )
    if "split_sha256" in attrs and attrs["split_sha256"] != split_sha256(split):
        raise HarnessError(
            f"{where}: the split of study {study.study_name!r} differs from the one it started "
            "with (split settings or data changed); restore them or give the study a new name"
        )


def split_sha256(split: Split) -> str:
    return hashlib.sha256(json.dumps(split.to_dict(), sort_keys=True).encode()).hexdigest()


def _existing_study(storage, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def _make_sampler(config: StudyConfig, offset: int) -> optuna.samplers.BaseSampler:
    """Seeded with the study's seed plus ``offset`` (the trial number)."""
    seed = config.sampler.seed + offset
    if config.sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.sampler.n_startup_trials)


def _make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """Steps are epochs (each trial reports its validation AUC once per epoch)."""
    p = config.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(p.n_startup_trials, p.n_warmup_steps)
    if p.name == "percentile":
        return optuna.pruners.PercentilePruner(p.percentile, p.n_startup_trials, p.n_warmup_steps)
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(p.min_resource, p.reduction_factor)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            p.min_resource, config.train.epochs, p.reduction_factor
        )
    return optuna.pruners.NopPruner()


@dataclass
class StudySummary:
    name: str
    n_finished: int
    n_pruned: int
    best_trial: optuna.trial.FrozenTrial | None
    parent_run_id: str
    tracking_uri: str
    rows: list[dict]


def trial_rows(study: optuna.Study, top: int | None = None) -> list[dict]:
    """Complete trials, best validation AUC first, with test metrics and CIs."""
    trials = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
        key=lambda t: -(t.value if t.value is not None else -1),
    )
    rows = []
    for t in trials[:top]:
        test = t.user_attrs.get("test_metrics", {})
        rows.append(
            {
                "trial": t.number,
                "val_auc": t.value,
                **{f"test_{m}": test.get(m, [float("nan")] * 3) for m in METRICS},
                "params": t.params,
                "run_id": t.user_attrs.get("mlflow_run_id", ""),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of trials: number, val AUC, test AUC/accuracy/F1 with CIs."""
    if not rows:
        return "(no complete trials yet)"
    head = (
        f"{'trial':>5}  {'val_auc':>7}  {'test_auc [95% CI]':<24}  {'test_acc [CI]':<24}  "
        f"{'test_f1 [CI]':<24}  params"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = [
            f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"
            for v in (r["test_auc"], r["test_accuracy"], r["test_f1"])
        ]
        params = " ".join(f"{k}={v}" for k, v in r["params"].items())
        lines.append(
            f"{r['trial']:>5}  {r['val_auc']:>7.4f}  {cells[0]:<24}  {cells[1]:<24}  "
            f"{cells[2]:<24}  {params}"
        )
    return "\n".join(lines)


def _update_parent(ctx: StudyContext, study: optuna.Study) -> None:
    """Copy the best trial's metrics to the parent run (called as trials finish)."""
    try:
        best = study.best_trial
    except ValueError:
        return
    test = best.user_attrs.get("test_metrics", {})
    metrics = {"best_val_auc": best.value, "n_finished_trials": n_finished(study)}
    for m, (value, low, high) in test.items():
        metrics[f"best_test_{m}"] = value
        metrics[f"best_test_{m}_ci_low"] = low
        metrics[f"best_test_{m}_ci_high"] = high
    ctx.tracker.log_metrics(ctx.parent_run_id, metrics, step=best.number)
    ctx.tracker.set_tags(
        ctx.parent_run_id,
        {
            "best_trial_number": best.number,
            "best_run_id": best.user_attrs.get("mlflow_run_id", ""),
        },
    )


def run_study(
    study_file: str | Path | StudyConfig,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    workers: int = 1,
    progress: bool = True,
) -> StudySummary:
    """Run (or continue) a study until it has ``n_trials`` finished trials.

    Everything the user gave is validated before any study, run or cache entry exists.
    With ``workers > 1`` this process prepares the study (cache, Optuna study, parent
    run), then starts ``workers - 1`` more processes on the same storage and works too.
    Independent copies of the same command (one per machine) share the study the same
    way.
    """
    if isinstance(study_file, StudyConfig):
        config, text, where = study_file, study_file.model_dump_json(indent=2), "<config>"
    else:
        config, text = load_study_file(study_file)
        where = str(study_file)
    if n_trials is not None and n_trials < 1:
        raise HarnessError(f"--n-trials must be >= 1, got {n_trials}")
    if timeout is not None and timeout <= 0:
        raise HarnessError(f"--timeout must be > 0 seconds, got {timeout}")
    if workers < 1:
        raise HarnessError(f"--workers must be >= 1, got {workers}")
    if workers > 1 and isinstance(study_file, StudyConfig):
        raise HarnessError("workers > 1 needs a study file path (workers re-read the file)")
    target = n_trials or config.n_trials
    timeout = timeout or config.timeout
    storage_url = storage or config.storage
    if workers > 1 and storage_url.startswith("sqlite:"):
        raise HarnessError(
            f"--workers {workers} needs a storage that several processes can share; SQLite "
            "is not safe under concurrent writes: add --storage journal:///mlruns/optuna.log "
            "(one machine) or --storage postgresql://user@host/db"
        )
    tracking = tracking_uri or config.tracking_uri
    try:
        storage_url = validate_storage_url(storage_url)
        tracking = validate_tracking_uri(tracking)
    except ValueError as exc:
        raise HarnessError(str(exc)) from None

    torch.set_num_threads(train_threads())
    # 1. validate everything that needs no side effects
    encoder = load_encoder(config.encoder.name)
    check_encoder(config, encoder)
    d = config.data
    dataset = load_dataset(
        d.dataset,
        text_column=d.text_column,
        label_column=d.label_column,
        positive_label=d.positive_label,
        group_column=d.group_column,
        delimiter=d.delimiter,
        max_rows=d.max_rows,
        seed=config.split.seed,
    )
    split = make_split(
        dataset,
        val_fraction=config.split.val,
        test_fraction=config.split.test,
        seed=config.split.seed,
        group_by=config.split.group_by,
    )
    store_file = local_path(storage_url)
    existing = None
    if store_file is None or store_file.exists():  # never create a store just to look
        existing = _existing_study(make_storage(storage_url), config.name)
    if existing is not None:
        _check_continuation(existing, dataset, split, where)
        if n_finished(existing) >= target:
            log.info(
                "study %r already has %d finished trials (target %d); raise --n-trials to run more",
                config.name,
                n_finished(existing),
                target,
            )

    # 2. the expensive shared work: attention of every sentence, once
    cache = extract_attention(
        encoder,
        dataset.texts,
        max_len=config.encoder.max_len,
        batch_size=config.encoder.batch_size,
        cache_dir=config.cache_dir,
        progress=progress,
    )

    # 3. tracking, this worker's lease, the Optuna study and its parent run
    tracker = Tracker(tracking, config.name, config.artifact_location)
    lease = WorkerLease(lease_dir(config))
    try:
        optuna_storage = make_storage(storage_url, on_stale=_stale_handler(tracker), lease=lease)
        study, created = _open_study(config, optuna_storage)
        if created:
            study.set_user_attr(CREATOR_ATTR, lease.token)
        if "data_sha256" not in study.user_attrs:
            study.set_user_attr("data_sha256", dataset.sha256)
            study.set_user_attr("split_sha256", split_sha256(split))
            study.set_user_attr("encoder", config.encoder.name)
        # trials of killed workers end as FAIL now, even when none are left to run
        fail_dead_trials(study)
        lease.prune()
        parent_id = _parent_run(
            tracker, study, created, lease, config, dataset, split, text, encoder
        )
        ctx = StudyContext(
            config,
            dataset,
            split,
            cache,
            tracker,
            parent_id,
            config.encoder.name,
            encoder.fingerprint,
            lease.token,
        )
        finished, covered = n_finished(study), n_covered(study)
        remaining = max(0, target - covered)
        if covered > finished:
            log.info(
                "study %r: %d trials are running in other workers (if those workers died on "
                "another machine, their trials are replaced %d s after their last heartbeat)",
                config.name,
                covered - finished,
                3 * heartbeat_interval(),
            )
        if remaining:
            log.info(
                "study %r: %d finished, running up to %d more (target %d); storage %s",
                config.name,
                finished,
                remaining,
                target,
                storage_url,
            )
            helpers = _start_workers(study_file, workers, target, timeout, storage_url, tracking)
            try:
                _optimize(study, ctx, target, remaining, timeout, progress)
            finally:
                for proc in helpers:
                    if proc.wait():
                        log.warning("worker %d exited with status %d", proc.pid, proc.returncode)
            fail_dead_trials(study)
        tracker.finish_parent(parent_id)
    finally:
        lease.release()
    best = None
    try:
        best = study.best_trial
    except ValueError:
        pass
    return StudySummary(
        config.name,
        n_finished(study),
        n_pruned(study),
        best,
        parent_id,
        tracking,
        trial_rows(study, top=5),
    )


def lease_dir(config: StudyConfig) -> Path:
    """Where the workers of a study on this machine keep their leases: beside the cache."""
    root = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    return root / "workers" / config.name.replace("/", "_")


def _open_study(config: StudyConfig, storage) -> tuple[optuna.Study, bool]:
    """Create the study or load it; ``True`` for the one process whose create succeeded
    (the storage's unique study name decides, however many start at once)."""
    kwargs = {
        "study_name": config.name,
        "storage": storage,
        "sampler": _make_sampler(config, 0),
        "pruner": _make_pruner(config),
    }
    try:
        return optuna.create_study(direction="maximize", **kwargs), True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(**kwargs), False


def fail_dead_trials(study: optuna.Study) -> None:
    """Mark FAIL the RUNNING trials whose worker is dead (see ``harness.storage``), and
    their MLflow runs KILLED. Optuna does this before each trial it starts; a study also
    needs it when it starts and ends, which may be when no trial is left to start."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _start_workers(
    study_file, workers: int, target: int, timeout: float | None, storage: str, tracking: str
) -> list[subprocess.Popen]:
    """Start ``workers - 1`` more processes of this study on the same storage."""
    env = {**os.environ, "HARNESS_EXTRACT_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
    procs = []
    for index in range(1, workers):
        cmd = [
            sys.executable,
            "-m",
            "harness",
            "study",
            "run",
            str(study_file),
            "--n-trials",
            str(target),
            "--storage",
            storage,
            "--tracking-uri",
            tracking,
            "--worker-index",
            str(index),
            "--quiet",
        ]
        if timeout:
            cmd += ["--timeout", str(timeout)]
        procs.append(subprocess.Popen(cmd, env=env))
    return procs


def _optimize(
    study: optuna.Study,
    ctx: StudyContext,
    target: int,
    remaining: int,
    timeout: float | None,
    progress: bool,
) -> None:
    """Run trials until the study has ``target`` finished ones (counting those running in
    other workers); stop early if most fail."""
    bar = tqdm(total=remaining, desc="trials", unit="trial", disable=not progress)
    outcomes = {"ok": 0, "failed": 0, "last_reason": ""}
    objective = make_objective(ctx)

    def one_trial(trial: optuna.Trial) -> float:
        if _surplus(trial, target):
            trial.set_user_attr("fail_reason", NOT_NEEDED)
            study.stop()
            raise TrialFailed(NOT_NEEDED)
        return objective(trial)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state in FINISHED:
            outcomes["ok"] += 1
            bar.update(1)
            _update_parent(ctx, study)
        elif trial.user_attrs.get("fail_reason") != NOT_NEEDED:
            outcomes["failed"] += 1
            outcomes["last_reason"] = trial.user_attrs.get("fail_reason", "")
            if _too_many_failures(outcomes["ok"], outcomes["failed"]):
                study.stop()
        if n_covered(study) >= target:
            study.stop()
        value = f"{trial.value:.4f}" if trial.value is not None else "-"
        bar.write(
            f"trial {trial.number}: {trial.state.name.lower()} val_auc={value} "
            + " ".join(f"{k}={v}" for k, v in trial.params.items())
        )

    started = time.time()
    try:
        study.optimize(
            one_trial,
            n_trials=None,
            timeout=timeout,
            catch=(TrialFailed,),
            callbacks=[after_trial],
            gc_after_trial=False,
        )
    except KeyboardInterrupt:
        bar.close()
        ctx.tracker.finish_parent(ctx.parent_run_id, "KILLED")
        raise
    bar.close()
    ok, failed = outcomes["ok"], outcomes["failed"]
    log.info("ran %d trials in %.0f s", ok + failed, time.time() - started)
    if _too_many_failures(ok, failed):
        ctx.tracker.finish_parent(ctx.parent_run_id, "FAILED")
        raise HarnessError(
            f"study {ctx.config.name!r} stopped: {failed} of {ok + failed} trials failed "
            f"(last: {outcomes['last_reason'][:200]}); fix the cause and run the same "
            "command again"
        )


def _too_many_failures(ok: int, failed: int) -> bool:
    """Most of this run's trials failed, after enough trials to tell: a broken setup, not
    an unlucky draw, so the rest of the budget would burn for nothing."""
    return ok + failed >= FAILURE_STOP_MIN and failed > ok


def _stale_handler(tracker: Tracker):
    """Optuna calls this for each trial found dead (killed worker, lost machine): its
    MLflow run must not stay RUNNING."""

    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        parent_id = study.user_attrs.get(PARENT_ATTR)
        for run_id in tracker.running_trial_runs(parent_id, trial.number) if parent_id else []:
            tracker.kill(run_id, "its worker process stopped (killed, or its machine was lost)")
        log.warning(
            "trial %d: its worker process stopped; marked FAIL, a new trial replaces it",
            trial.number,
        )

    return on_stale


def _parent_run(
    tracker: Tracker,
    study: optuna.Study,
    created: bool,
    lease: WorkerLease,
    config: StudyConfig,
    dataset: Dataset,
    split: Split,
    text: str,
    encoder,
) -> str:
    """The study's one parent run. The process that created the study creates it; every
    other process (a continued study, or workers that started at the same moment) uses
    the one the study names, waiting for it if the creator is still making it. Only if
    the creator died first, or the run was purged, is a new one made."""
    if not created:
        known = _wait_for_parent(study, lease)
        if known is not None and tracker.reopen_parent(known):
            return known
        log.warning(
            "study %r has no MLflow parent run (%s); creating one",
            config.name,
            "its run was purged" if known else "the process that created the study stopped",
        )
    parent_id = tracker.create_parent(config.name)
    tracker.log_files(parent_id, {"study.yaml": text, "split.json": dumps(split.to_dict())})
    params = {
        "encoder": config.encoder.name,
        "encoder_fingerprint": encoder.fingerprint[:16],
        "max_len": config.encoder.max_len,
        "data": config.data.dataset,
        "data_sha256": dataset.sha256,
        "n_rows": len(dataset),
        "split_seed": config.split.seed,
        "split_sizes": f"{len(split.train)},{len(split.val)},{len(split.test)}",
        "group_by": split.group_by or "none",
        "sampler": config.sampler.name,
        "pruner": config.pruner.name,
        "harness_version": __version__,
    }
    tracker.log_params(parent_id, params)
    study.set_user_attr(PARENT_ATTR, parent_id)
    return parent_id


def _wait_for_parent(study: optuna.Study, lease: WorkerLease) -> str | None:
    """The parent run id the study names; while it names none, wait for the creator to
    register it, unless the creator is seen dead or ``PARENT_WAIT_S`` passes."""
    deadline = time.monotonic() + PARENT_WAIT_S
    while True:
        attrs = study.user_attrs
        if PARENT_ATTR in attrs:
            return attrs[PARENT_ATTR]
        if lease.alive(attrs.get(CREATOR_ATTR)) is False or time.monotonic() > deadline:
            return None
        time.sleep(0.5)


def load_config(path: str | Path) -> StudyConfig:
    """Validate a study file without running it."""
    return load_study_file(path)[0]


__all__ = ["run_study", "parse_study", "load_config", "suggest", "TrialSpec", "format_table"]
