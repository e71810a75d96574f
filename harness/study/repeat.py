"""Seed repeats: retrain a study's best trials' exact configurations with other training seeds.

A trial's bootstrap CI says how uncertain its score is given the finite test set; it says
nothing about how much the score would move had the same configuration been trained with
another seed. ``harness study repeat`` measures that: the top K complete trials (by
validation AUC) are rebuilt from their Optuna parameters and retrained with seeds
``train.seed + 0 … N-1`` on the study's split and cache, each as a child run (tag
``harness.role=repeat``, ``harness.trial_number``, ``harness.seed``). The parent gets the
mean and SD of test AUC over the seeds beside the trial's bootstrap CI. A (trial, seed)
already logged is found by its tags and not retrained, so repeats are deterministic and
never duplicated.
"""

from __future__ import annotations

import dataclasses
import logging

import optuna

from harness.core import HarnessError
from harness.report import artifact_text, log_report, repeat_rows, trial_rows
from harness.study.search import suggest
from harness.study.study import StudySession, open_stores, prepare
from harness.study.trial import StudyContext, fit_and_log, model_for
from harness.studyfile import local_path, parse_study
from harness.tracking import RunReader, Tracker, make_storage

log = logging.getLogger("harness")

ROLE = "repeat"
TRIAL_TAG = "harness.trial_number"
SEED_TAG = "harness.seed"


def study_file_of(reader: RunReader, name: str):
    """The study's config, parsed from the ``study.yaml`` its parent run logged."""
    parent, _ = reader.study_runs(name)
    if parent is None:
        raise HarnessError(
            f"study {name!r} has no parent run in {reader.tracking_uri}; run it first"
        )
    text = artifact_text(reader, parent, "study.yaml", "study file")
    return parse_study(text, f"study.yaml of run {parent.info.run_id}")


def logged_repeats(tracker: Tracker, parent_id: str) -> dict[tuple[int, int], str]:
    """(trial number, seed) -> run id of the study's FINISHED repeat runs."""
    runs = tracker.finished_children(parent_id, ROLE)
    return {
        (int(r.data.tags[TRIAL_TAG]), int(r.data.tags[SEED_TAG])): r.info.run_id
        for r in runs
        if TRIAL_TAG in r.data.tags and SEED_TAG in r.data.tags
    }


def repeat_trial(ctx: StudyContext, trial: optuna.trial.FrozenTrial, seed: int) -> str:
    """Retrain ``trial``'s configuration with training seed ``seed``; the run id."""
    train = ctx.config.train.model_copy(update={"seed": seed})
    seeded = dataclasses.replace(ctx, config=ctx.config.model_copy(update={"train": train}))
    spec = suggest(optuna.trial.FixedTrial(trial.params), seeded.config.search, seeded.ranking)
    model = model_for(seeded, spec)
    tags = {TRIAL_TAG: str(trial.number), SEED_TAG: str(seed)}
    run_id = ctx.tracker.start_child(
        ctx.parent_run_id,
        f"repeat-{trial.number}-seed{seed}",
        ROLE,
        {**spec.params(), **seeded.base_params()},
        tags,
    )
    try:
        fit_and_log(seeded, model, seeded.inputs_for(model), run_id)
    except BaseException as exc:
        ctx.tracker.finish(run_id, "FAILED" if isinstance(exc, Exception) else "KILLED")
        raise
    ctx.tracker.finish(run_id)
    return run_id


def top_trials(study: optuna.Study, top: int) -> list[optuna.trial.FrozenTrial]:
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ranked = sorted(done, key=lambda t: (-t.value, t.number))[:top]
    if not ranked:
        raise HarnessError(
            f"study {study.study_name!r} has no complete trial to repeat; run it first"
        )
    return ranked


def run_repeats(session: StudySession, top: int, n_seeds: int) -> list[dict]:
    """Retrain the ``top`` best trials with ``n_seeds`` seeds each (skipping those logged),
    log mean and SD per trial to the parent, and log the report again; the repeat rows."""
    ctx, study = session.ctx, session.study
    done = logged_repeats(ctx.tracker, ctx.parent_run_id)
    seeds = [ctx.config.train.seed + i for i in range(n_seeds)]
    trials = top_trials(study, top)
    for trial in trials:
        for seed in seeds:
            if (trial.number, seed) in done:
                log.info("trial %d, seed %d: already repeated, not retrained", trial.number, seed)
                continue
            done[trial.number, seed] = repeat_trial(ctx, trial, seed)
            log.info("trial %d, seed %d: retrained", trial.number, seed)
    reader = RunReader(ctx.tracker.tracking_uri)
    _, children = reader.study_runs(ctx.config.name)
    wanted = {t.number for t in trials}
    rows = [r for r in repeat_rows(children) if r["trial"] in wanted]
    by_trial = {r["trial"]: r for r in trial_rows(study)}
    metrics = {}
    for r in rows:
        stem = f"repeat_trial{r['trial']}_test_auc"
        auc = by_trial[r["trial"]]["test_auc"]
        metrics |= {
            f"{stem}_seed_mean": r["mean"],
            f"{stem}_seed_sd": r["sd"],
            f"{stem}_n_seeds": len(r["seeds"]),
            stem: auc[0],
            f"{stem}_ci_low": auc[1],
            f"{stem}_ci_high": auc[2],
        }
        r["test_auc"] = auc
    ctx.tracker.log_metrics(ctx.parent_run_id, metrics)
    log_report(study, reader)
    return rows


def repeat_study(
    name: str,
    *,
    top: int = 3,
    n_seeds: int = 5,
    storage: str | None = None,
    tracking_uri: str | None = None,
) -> list[dict]:
    """``harness study repeat NAME``: the study's own settings, split and cache, read from
    the study file its parent run logged."""
    if top < 1 or n_seeds < 1:
        raise HarnessError(f"--top and --seeds must be >= 1, got {top} and {n_seeds}")
    config = study_file_of(RunReader(tracking_uri), name)
    prepared = prepare(config, storage=storage, tracking_uri=tracking_uri, progress=False)
    top_trials(existing_study(name, prepared.storage_url), top)  # refuse before opening
    with open_stores(prepared) as session:
        return run_repeats(session, top, n_seeds)


def existing_study(name: str, url: str) -> optuna.Study:
    """The study in ``url``; never create one (``open_stores`` would)."""
    path = local_path(url)
    try:
        if path is not None and not path.exists():
            raise KeyError(name)
        return optuna.load_study(study_name=name, storage=make_storage(url))
    except KeyError:
        raise HarnessError(
            f"no study named {name!r} in Optuna storage {url}; pass --storage with the "
            "storage the study ran on"
        ) from None
