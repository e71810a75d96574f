"""What runs around each trial of a study: stopping rules, the surplus guard, the
progress line, and the study's best trial made visible (``best.*`` tags and metrics on
the parent run, the ``harness.best`` tag on the child, the registry's ``champion``).
Params in MLflow are write-once, so the best trial's settings go on the parent as tags,
which can move.

Small callable classes in the manner of Optuna's ``MaxTrialsCallback``: each does one
thing after a trial ends (``callbacks=[...]`` of ``study.optimize``), so the rules can be
read, tested and combined one by one.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from harness.report import FINISHED, n_covered, n_finished
from harness.study.trial import Objective, StudyContext, TrialFailed
from harness.tracking import DESCRIPTION_TAG, describe_model, promote

#: fail reason of a trial that started after the study's target was already covered
NOT_NEEDED = "not needed: other workers' trials reached the target as this one started"
#: a study stops when, after this many trials in one run, most of them failed
FAILURE_STOP_MIN = 4


class SkipSurplus:
    """Wraps the objective: a trial that is one too many ends at once as FAIL, before it
    creates an MLflow run. It is one too many when the finished trials plus the running
    ones that started before it already make the target: workers that finish trials at
    the same moment may each start one, and the lower trial numbers win, so a study
    never finishes more than ``target`` trials."""

    def __init__(self, objective: Objective, target: int):
        self.objective, self.target = objective, target

    def __call__(self, trial: optuna.Trial) -> float:
        others = trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        if sum(t.state in FINISHED or t.number < trial.number for t in others) >= self.target:
            trial.set_user_attr("fail_reason", NOT_NEEDED)
            trial.study.stop()
            raise TrialFailed(NOT_NEEDED)
        return self.objective(trial)


class StopAtTarget:
    """Stop once finished plus running trials (in any worker) reach ``target``."""

    def __init__(self, target: int):
        self.target = target

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if n_covered(study) >= self.target:
            study.stop()


class StopOnFailures:
    """Stop when most of this run's trials failed, after enough trials to tell: a broken
    setup, not an unlucky draw, so the rest of the budget would burn for nothing."""

    def __init__(self, min_trials: int = FAILURE_STOP_MIN):
        self.min_trials = min_trials
        self.ok = self.failed = 0
        self.last_reason = ""

    @property
    def tripped(self) -> bool:
        return self.ok + self.failed >= self.min_trials and self.failed > self.ok

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state in FINISHED:
            self.ok += 1
        elif trial.user_attrs.get("fail_reason") != NOT_NEEDED:
            self.failed += 1
            self.last_reason = trial.user_attrs.get("fail_reason", "")
            if self.tripped:
                study.stop()


class UpdateParent:
    """Copy the best trial's metrics to the study's parent run as trials finish; when the
    best changes, move its marks (``harness.study.champion``)."""

    def __init__(self, ctx: StudyContext):
        self.ctx = ctx

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state not in FINISHED or self.ctx.outage is not None:
            return
        try:
            best = study.best_trial
        except ValueError:
            return
        metrics = {"best_val_auc": best.value, "n_finished_trials": n_finished(study)}
        for m, (value, low, high) in best.user_attrs.get("test_metrics", {}).items():
            metrics[f"best_test_{m}"] = value
            metrics[f"best_test_{m}_ci_low"] = low
            metrics[f"best_test_{m}_ci_high"] = high
        tracker, parent_id = self.ctx.tracker, self.ctx.parent_run_id
        tracker.log_metrics(parent_id, metrics, step=best.number)
        best_run = best.user_attrs.get("mlflow_run_id", "")
        previous = tracker.client.get_run(parent_id).data.tags.get("best_run_id")
        if best_run != previous:
            mark_best(self.ctx, best, previous)
        tracker.set_tags(parent_id, {"best_trial_number": best.number, "best_run_id": best_run})


class ProgressLine:
    """One line per trial (state, val AUC, parameters) under the progress bar."""

    def __init__(self, total: int, enabled: bool):
        self.bar = tqdm(total=total, desc="trials", unit="trial", disable=not enabled)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state in FINISHED:
            self.bar.update(1)
        value = f"{trial.value:.4f}" if trial.value is not None else "-"
        self.bar.write(
            f"trial {trial.number}: {trial.state.name.lower()} val_auc={value} "
            + " ".join(f"{k}={v}" for k, v in trial.params.items())
        )

    def close(self) -> None:
        self.bar.close()


BEST_TAG = "harness.best"


def parent_description(study_description: str, experiment_id: str, run_id: str, line: str) -> str:
    """The study file's description, then a Markdown link to the best trial's run."""
    link = f"**Best trial:** [{line}](#/experiments/{experiment_id}/runs/{run_id})"
    return f"{study_description.strip()}\n\n{link}" if study_description.strip() else link


def mark_best(ctx: StudyContext, best: FrozenTrial, previous_run_id: str | None) -> None:
    """Point everything at ``best`` (whose run is ``best.user_attrs['mlflow_run_id']``)."""
    tracker, run_id = ctx.tracker, best.user_attrs.get("mlflow_run_id")
    if not run_id:
        return
    params = tracker.client.get_run(run_id).data.params
    line = f"trial {best.number}: {describe_model(params)} — val AUC {best.value:.3f}"
    tags = {f"best.{k}": v for k, v in params.items()}
    description = parent_description(ctx.config.description, tracker.experiment_id, run_id, line)
    tracker.set_tags(ctx.parent_run_id, {**tags, DESCRIPTION_TAG: description})
    tracker.set_tags(run_id, {BEST_TAG: "true"})
    if previous_run_id and previous_run_id != run_id:
        tracker.set_tags(previous_run_id, {BEST_TAG: "false"})
    if ctx.config.register:
        promote(tracker.client, ctx.config.name, run_id, ctx.config.description)
