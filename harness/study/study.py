"""Orchestration of a study: prepare, open the stores, run the trials, summarize.

``run_study`` does the expensive, shared work once (``prepare``: validation, data, split,
attention cache), opens the stores (``open_stores``: MLflow experiment, this worker's
lease, the Optuna study and its parent run), then runs trials until the study has its
target of finished trials (``run_trials``), here and in helper processes. Each trial does
only cheap work (``harness.study.trial``). The phases are public so that other models (a
baseline) can be fitted inside the same study, on its split, under its parent run.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from harness.attention import compact_view_w
from harness.core import HarnessError, default_cache_dir, default_device, train_threads
from harness.encoders import check_encoder, load_encoder
from harness.report import n_covered, n_finished, n_pruned, trial_rows
from harness.study.callbacks import (
    ProgressLine,
    SkipSurplus,
    StopAtTarget,
    StopOnFailures,
    UpdateParent,
)
from harness.study.conclude import Conclusion, conclude
from harness.study.inputs import (
    Prepared,
    check_arguments,
    check_continuation,
    load_data,
    read_study,
    resolve_stores,
    stamp_study,
)
from harness.study.intermediary import ensure_baseline, ensure_encoder_run, finetune_for_study
from harness.study.search import make_pruner, make_sampler
from harness.study.settle import StaleHandler, settle_runs
from harness.study.shared import shared_attention
from harness.study.sweep import check_sweepable, ensure_sweep, needs_ranking, ranking
from harness.study.trial import Objective, StudyContext, TrialFailed
from harness.study.workers import (
    CREATOR_ATTR,
    fail_dead_trials,
    lease_dir,
    parent_run,
    start_workers,
)
from harness.studyfile import StudyConfig
from harness.tracking import (
    Tracker,
    WorkerLease,
    check_study,
    cluster_lease,
    heartbeat_interval,
    make_storage,
    store_outage,
)

log = logging.getLogger("harness")

#: what the Optuna study maximises: the best epoch's validation AUC
OBJECTIVE = "val_auc"


@dataclass
class StudySession:
    """The open stores of a prepared study in this process."""

    study: optuna.Study
    ctx: StudyContext
    lease: WorkerLease


@dataclass
class StudySummary:
    name: str
    n_finished: int
    n_pruned: int
    best_trial: optuna.trial.FrozenTrial | None
    parent_run_id: str
    tracking_uri: str
    rows: list[dict]
    #: baselines, paired differences and report of the study's end (``harness.study.conclude``)
    conclusion: Conclusion | None = None


def prepare(
    study_file: str | Path | StudyConfig,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    workers: int = 1,
    progress: bool = True,
    sweep: bool = False,
) -> Prepared:
    """Validate everything the user gave before any study, run or cache entry exists,
    then do the expensive shared work once: the attention of every sentence. ``sweep``:
    for ``harness heads``, which a compact cache of ``stats`` alone cannot serve."""
    check_arguments(n_trials, timeout, workers)
    config, text, where = read_study(study_file, workers)
    if sweep:
        check_sweepable(config)
    storage_url, tracking = resolve_stores(config, storage, tracking_uri, workers)
    target = n_trials or config.n_trials
    torch.set_num_threads(train_threads())
    if config.encoder.conditions is not None:
        raise HarnessError(
            f"{where} lists encoder.conditions: run it with `harness study run {where}`, which "
            "runs one sub-study per condition and compares them (one worker per process)"
        )
    enc = config.encoder
    encoder = load_encoder(enc.name, default_device(), init=enc.init, seed=enc.seed)
    check_encoder(config, encoder)
    dataset, split = load_data(config)
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    check_study(cache_dir, storage_url, tracking, config.artifact_location)
    check_continuation(config, storage_url, dataset, split, where, target)
    # fine-tuning (or finding it cached) comes before extraction: its leak check refuses
    # before anything exists, and the attention is then the fine-tuned encoder's
    finetuned = finetune_for_study(config, encoder, dataset, split, progress, tracking, storage_url)
    if finetuned is not None:
        encoder = finetuned.encoder
    cache = shared_attention(
        encoder,
        dataset.texts,
        max_len=config.encoder.max_len,
        batch_size=config.encoder.batch_size,
        cache_dir=config.cache_dir,
        progress=progress,
        keep_maps=config.search.rows_layers() if config.cache.keep == "views" else None,
        view_w=compact_view_w(config.search.view, needs_ranking(config)),
        view_bits=config.cache.bits,
        tracking_uri=tracking,
        storage_url=storage_url,
    )
    timeout = timeout or config.timeout
    return Prepared(
        config, text, where, target, timeout, storage_url, tracking, workers, progress,
        dataset, split, encoder, cache, finetuned,
    )  # fmt: skip


@contextmanager
def open_stores(p: Prepared) -> Iterator[StudySession]:
    """Open (or create) the MLflow experiment, this worker's lease, the Optuna study and
    its parent run, and settle the runs earlier workers left unsettled. The parent run
    ends FINISHED when the block ends normally; the lease is released however it ends,
    except after a store stopped answering: then it is left behind free, like a killed
    worker's, so that the next worker on this machine settles what this one could not."""
    config = p.config
    tracker = Tracker(p.tracking_uri, config.name, config.artifact_location)
    lease = WorkerLease(lease_dir(config))
    session = None
    try:
        storage = make_storage(p.storage_url, on_stale=StaleHandler(tracker, lease), lease=lease)
        study, created = _open_study(config, storage)
        if created:
            study.set_user_attr(CREATOR_ATTR, lease.token)
            # optuna-dashboard and ``study.trials_dataframe`` show "val_auc", not "values_0"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([OBJECTIVE])
        stamp_study(study, p.dataset, p.split, config.encoder.name)
        # trials of killed workers end as FAIL now, even when none are left to run
        fail_dead_trials(study)
        parent_id = parent_run(tracker, study, created, lease, p)
        settle_runs(study, tracker, lease, parent_id)  # while dead workers' leases remain
        lease.prune()
        encoder_run = None
        if p.finetuned is not None:
            split_params = {"data_sha256": p.dataset.sha256, "split_seed": config.split.seed}
            what = "logging the fine-tuned encoder (once per study)"
            name = f"harness-encoder-{parent_id}"
            with cluster_lease(p.storage_url, name, what, p.cache.path.parent / "locks"):
                encoder_run = ensure_encoder_run(tracker, parent_id, p.finetuned, split_params)
        ctx = StudyContext(
            config,
            p.dataset,
            p.split,
            p.cache,
            tracker,
            parent_id,
            p.encoder.name,
            p.encoder.fingerprint,
            lease.token,
            encoder_init=config.encoder.init,
            encoder_seed=config.encoder.seed,
            encoder_run_id=encoder_run,
            storage_url=p.storage_url,
        )
        if p.finetuned is not None:
            ensure_baseline(ctx, p.finetuned)
        if needs_ranking(config):
            ctx.ranking = ranking(ensure_sweep(ctx, p.progress))
        session = StudySession(study, ctx, lease)
        yield session
        settle_runs(study, tracker, lease, parent_id)
        tracker.finish_parent(parent_id)
    finally:
        lease.release(keep=session is not None and session.ctx.outage is not None)


def _open_study(config: StudyConfig, storage) -> tuple[optuna.Study, bool]:
    """Create the study or load it; ``True`` for the one process whose create succeeded
    (the storage's unique study name decides, however many start at once)."""
    kwargs = {
        "study_name": config.name,
        "storage": storage,
        "sampler": make_sampler(config, 0),
        "pruner": make_pruner(config),
    }
    try:
        return optuna.create_study(direction="maximize", **kwargs), True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(**kwargs), False


def run_trials(p: Prepared, session: StudySession) -> None:
    """Run trials until the study has its target of finished ones (counting those running
    in other workers), with ``p.workers - 1`` helper processes beside this one."""
    study, name = session.study, p.config.name
    finished, covered = n_finished(study), n_covered(study)
    remaining = max(0, p.target - covered)
    if covered > finished:
        log.info(
            "study %r: %d trials are running in other workers (if those workers died on "
            "another machine, their trials are replaced %d s after their last heartbeat)",
            name,
            covered - finished,
            3 * heartbeat_interval(),
        )
    if not remaining:
        return
    log.info(
        "study %r: %d finished, running up to %d more (target %d); storage %s",
        name,
        finished,
        remaining,
        p.target,
        p.storage_url,
    )
    helpers = start_workers(p.where, p.workers, p.target, p.timeout, p.storage_url, p.tracking_uri)
    try:
        _optimize(study, session.ctx, p, remaining)
    finally:
        for proc in helpers:
            if proc.wait():
                log.warning("worker %d exited with status %d", proc.pid, proc.returncode)
    fail_dead_trials(study)


def _optimize(study: optuna.Study, ctx: StudyContext, p: Prepared, remaining: int) -> None:
    """This process's trials; stop early if most fail, or at once if a store goes away."""
    failures = StopOnFailures()
    progress = ProgressLine(remaining, p.progress)
    started = time.time()
    try:
        study.optimize(
            SkipSurplus(Objective(ctx), p.target),
            n_trials=None,
            timeout=p.timeout,
            catch=(TrialFailed,),
            callbacks=[UpdateParent(ctx), failures, StopAtTarget(p.target), progress],
            gc_after_trial=False,
        )
    except KeyboardInterrupt:
        progress.close()
        ctx.tracker.finish_parent(ctx.parent_run_id, "KILLED")
        raise
    except Exception as exc:
        ctx.outage = ctx.outage or store_outage(exc)
        if ctx.outage is None:
            raise
    progress.close()
    if ctx.outage is not None:
        raise HarnessError(
            f"study {ctx.config.name!r} stopped: {ctx.outage[:300]}; start the store again "
            "(or fix --storage / --tracking-uri) and run the same command to continue"
        )
    log.info("ran %d trials in %.0f s", failures.ok + failures.failed, time.time() - started)
    if failures.tripped:
        ctx.tracker.finish_parent(ctx.parent_run_id, "FAILED")
        raise HarnessError(
            f"study {ctx.config.name!r} stopped: {failures.failed} of "
            f"{failures.ok + failures.failed} trials failed (last: {failures.last_reason[:200]}); "
            "fix the cause and run the same command again"
        )


def summarize(study: optuna.Study, p: Prepared, parent_run_id: str) -> StudySummary:
    try:
        best = study.best_trial
    except ValueError:
        best = None
    return StudySummary(
        p.config.name,
        n_finished(study),
        n_pruned(study),
        best,
        parent_run_id,
        p.tracking_uri,
        trial_rows(study, top=5),
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
    finish: bool = True,
) -> StudySummary:
    """Run (or continue) a study until it has ``n_trials`` finished trials; then (unless
    ``finish`` is False, as in ``--workers`` helpers) fit its baselines, log the best
    trial's paired differences and the report (``harness.study.conclude``).

    With ``workers > 1`` this process prepares the study (cache, Optuna study, parent
    run), then starts ``workers - 1`` more processes on the same storage and works too.
    Independent copies of the same command (one per machine) share the study the same
    way.
    """
    p = prepare(
        study_file,
        n_trials=n_trials,
        timeout=timeout,
        storage=storage,
        tracking_uri=tracking_uri,
        workers=workers,
        progress=progress,
    )
    with open_stores(p) as session:
        run_trials(p, session)
        ending = conclude(session) if finish else None
    summary = summarize(session.study, p, session.ctx.parent_run_id)
    summary.conclusion = ending
    return summary


def run_head_sweep(
    study_file: str | Path,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    progress: bool = True,
) -> tuple[list, str]:
    """``harness heads``: the study's head sweep under its parent run (computed once);
    returns the scores and the parent run id."""
    p = prepare(
        study_file, storage=storage, tracking_uri=tracking_uri, progress=progress, sweep=True
    )
    with open_stores(p) as session:
        scores = ensure_sweep(session.ctx, progress)
    return scores, session.ctx.parent_run_id
