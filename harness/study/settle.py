"""MLflow's records made to agree with Optuna's: one run per trial, none left RUNNING.

Optuna's storage is the truth about trials; the MLflow runs describe them. A process that
stops at a bad moment leaves them disagreeing:

* a worker SIGKILLed between Optuna creating a trial and the worker creating its run
  leaves a trial with no run;
* a worker SIGKILLed mid-trial leaves a RUNNING run of a trial Optuna now calls FAIL;
* a tracking store that goes away as a trial ends leaves its run RUNNING, or never made.

Optuna calls the stale handler for a dead worker's trial in the one process whose FAIL
update won, so only that process settles it. ``settle_runs``, at every worker's start and
end, settles the rest: it ends the RUNNING runs of finished trials, and makes the missing
run of a failed trial whose worker is this process or a dead one on this machine. A run is
made only under a lock per machine and after looking again, so two workers never both
make one.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.core import waiting_lock
from harness.study.callbacks import NOT_NEEDED
from harness.study.workers import PARENT_ATTR
from harness.tracking import WORKER_ATTR, Tracker, WorkerLease

log = logging.getLogger("harness")

KILLED_REASON = "its worker process stopped (killed, or its machine was lost)"
NO_RUN_REASON = "its worker process stopped before the trial's run was created"
#: a failed trial of another (dead) worker gets its missing run only this long after it
#: ended: a stale handler on another machine may be making that run right now
SETTLE_GRACE_S = 10.0


class StaleHandler:
    """Optuna's stale-trial callback: a dead worker's trial must not keep a RUNNING run,
    nor have none at all. If MLflow cannot be reached now, the next worker to start on
    this machine settles the trial (its worker's lease is free)."""

    def __init__(self, tracker: Tracker, lease: WorkerLease):
        self.tracker, self.lease = tracker, lease

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        parent_id = study.user_attrs.get(PARENT_ATTR)
        try:
            if parent_id is not None:
                self._settle(parent_id, study.study_name, trial)
        except Exception as exc:  # noqa: BLE001 - settled later; the study goes on
            log.warning("trial %d: its MLflow run is settled later (%s)", trial.number, _line(exc))
        log.warning(
            "trial %d: its worker process stopped; marked FAIL, a new trial replaces it",
            trial.number,
        )

    def _settle(self, parent_id: str, study_name: str, trial: FrozenTrial) -> None:
        with _settle_lock(self.lease):
            runs = self.tracker.trial_runs(parent_id, trial.number)
            for run in runs:
                if run.info.status == "RUNNING":
                    self.tracker.kill(run.info.run_id, KILLED_REASON)
            if not runs:
                _make_run(self.tracker, parent_id, study_name, trial, NO_RUN_REASON)


def settle_runs(study: optuna.Study, tracker: Tracker, lease: WorkerLease, parent_id: str) -> None:
    """End the RUNNING runs of finished trials with the trial's state, and make the missing
    run of a failed trial of this worker or of a dead worker on this machine. Housekeeping:
    if MLflow fails, a warning, and the next worker's start tries again."""
    try:
        by_number: dict[str, list] = defaultdict(list)
        for run in tracker.trial_runs(parent_id):
            by_number[run.data.tags.get("optuna.trial_number", "")].append(run)
        for trial in study.get_trials(deepcopy=False):
            if not trial.state.is_finished():
                continue
            runs = by_number.get(str(trial.number), [])
            for run in runs:
                if run.info.status == "RUNNING":
                    _end(tracker, run.info.run_id, trial)
            if not runs and _owes_a_run(trial, lease):
                with _settle_lock(lease):
                    if not tracker.trial_runs(parent_id, trial.number):
                        _make_run(tracker, parent_id, study.study_name, trial, NO_RUN_REASON)
    except Exception as exc:  # noqa: BLE001 - the records stay as they are until next time
        log.warning("MLflow runs of study %r not settled now (%s)", study.study_name, _line(exc))


def _owes_a_run(trial: FrozenTrial, lease: WorkerLease) -> bool:
    """A failed trial that started training (not a surplus one), run by this process or by
    a dead worker on this machine a little while ago."""
    if trial.state != TrialState.FAIL or trial.user_attrs.get("fail_reason") == NOT_NEEDED:
        return False
    owner = trial.user_attrs.get(WORKER_ATTR)
    if owner == lease.token:
        return True
    ended = trial.datetime_complete or datetime.now()
    return lease.alive(owner) is False and (datetime.now() - ended).total_seconds() > SETTLE_GRACE_S


def _end(tracker: Tracker, run_id: str, trial: FrozenTrial) -> None:
    """A run left RUNNING ends with its trial's state (a FAIL without a recorded reason is
    a trial whose worker died)."""
    reason = trial.user_attrs.get("fail_reason")
    if trial.state == TrialState.FAIL and reason is None:
        tracker.kill(run_id, KILLED_REASON)
    else:
        tracker.end(run_id, trial.state.name, reason)


def _make_run(
    tracker: Tracker, parent_id: str, study_name: str, trial: FrozenTrial, reason: str
) -> None:
    """The run a failed trial never got: its parameters, ended KILLED (worker died) or
    FAILED (with the trial's own reason)."""
    params = {name: str(value) for name, value in trial.params.items()}
    run_id = tracker.start_trial(parent_id, study_name, trial.number, params)
    own_reason = trial.user_attrs.get("fail_reason")
    if own_reason is None:
        tracker.kill(run_id, reason)
    else:
        tracker.end(run_id, "FAIL", f"{own_reason} (no run was created for it then)")
    log.warning("trial %d: made its missing MLflow run %s", trial.number, run_id)


def _settle_lock(lease: WorkerLease):
    return waiting_lock(lease.directory / "settle.lock", "settling MLflow runs", "cache_dir")


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"
