"""What runs around each trial of a study: stopping rules, the surplus guard, the
progress line, and the parent run's best-trial metrics.

Small callable classes in the manner of Optuna's ``MaxTrialsCallback``: each does one
thing after a trial ends (``callbacks=[...]`` of ``study.optimize``), so the rules can be
read, tested and combined one by one.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from harness.champion import mark_best
from harness.report import FINISHED, n_covered, n_finished
from harness.trial import Objective, StudyContext, TrialFailed

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
    best changes, move its marks (``harness.champion``)."""

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
