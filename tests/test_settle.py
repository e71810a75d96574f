"""One MLflow run per Optuna trial, none left RUNNING, whatever moment a worker died at or
a store went away at (issue 12). Real SQLite stores; the dead workers are leases nobody
holds, the outage is the exception MLflow raises when its server is gone."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import optuna
import pytest
import requests
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.core.errors import HarnessError
from harness.study import settle
from harness.study.callbacks import NOT_NEEDED
from harness.study.study import run_study
from harness.study.workers import PARENT_ATTR, lease_dir
from harness.studyfile.schema import load_config
from harness.tracking.runs import Tracker
from harness.tracking.storage import WORKER_ATTR, WorkerLease, make_storage
from tests.conftest import study_yaml, write_synthetic_csv

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")


@pytest.fixture
def done_study(tmp_path, tiny_bert, monkeypatch) -> Path:
    """A finished one-trial study; heartbeats every second."""
    monkeypatch.setenv("HARNESS_HEARTBEAT_INTERVAL", "1")
    data = write_synthetic_csv(tmp_path / "data.csv")
    path = study_yaml(
        tmp_path, name="settle", dataset=str(data), encoder=str(tiny_bert), n_trials=1, epochs=1
    )
    run_study(path, progress=False)
    return path


def runs_of(config, number: int) -> list:
    client = MlflowClient(config.tracking_uri)
    experiment = client.get_experiment_by_name(config.name)
    return client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`optuna.trial_number` = '{number}'",
        run_view_type=ViewType.ALL,
    )


def open_study(config):
    storage = make_storage(config.storage)
    study = optuna.load_study(study_name=config.name, storage=storage)
    tracker = Tracker(config.tracking_uri, config.name, config.artifact_location)
    return storage, study, tracker, study.user_attrs[PARENT_ATTR]


def dead_lease(config) -> str:
    token = "gone-1-00000000"
    (lease_dir(config) / f"{token}.lease").touch()  # a lease nobody holds
    return token


def test_a_trial_killed_before_its_run_existed_gets_exactly_one_killed_run(done_study):
    """The chaos failure: SIGKILL between Optuna creating the trial and the tracker
    creating its run. The stale handler makes the run (KILLED, with the reason), and
    neither it nor later starts ever make a second one."""
    config = load_config(done_study)
    _, study, tracker, parent_id = open_study(config)
    token = dead_lease(config)
    no_run = study.ask()
    no_run.set_user_attr(WORKER_ATTR, token)
    with_run = study.ask()
    with_run.set_user_attr(WORKER_ATTR, token)
    run_id = tracker.start_trial(parent_id, config.name, with_run.number, {})

    run_study(done_study, progress=False)  # target reached: no trial runs, dead ones settle
    run_study(done_study, progress=False)

    made = runs_of(config, no_run.number)
    assert len(made) == 1
    assert made[0].info.status == "KILLED"
    assert made[0].data.tags["harness.fail_reason"] == settle.NO_RUN_REASON
    assert made[0].data.tags["mlflow.parentRunId"] == parent_id
    assert [r.info.run_id for r in runs_of(config, with_run.number)] == [run_id]
    assert runs_of(config, with_run.number)[0].info.status == "KILLED"
    states = {t.number: t.state for t in study.trials}
    assert states[no_run.number] == states[with_run.number] == TrialState.FAIL


def test_each_start_ends_runs_left_running_and_makes_only_owed_runs(done_study, monkeypatch):
    """Runs left RUNNING by finished trials end with the trial's state; a failed trial of
    a dead worker gets its missing run; a surplus trial and a live worker's trial get none."""
    monkeypatch.setattr(settle, "SETTLE_GRACE_S", 0.0)
    config = load_config(done_study)
    _, study, tracker, parent_id = open_study(config)
    token = dead_lease(config)
    live = WorkerLease(lease_dir(config))

    def trial(owner: str, reason: str | None, state: TrialState, run: bool):
        t = study.ask()
        t.set_user_attr(WORKER_ATTR, owner)
        if reason:
            t.set_user_attr("fail_reason", reason)
        run_id = tracker.start_trial(parent_id, config.name, t.number, {}) if run else None
        study.tell(t, 0.5 if state == TrialState.COMPLETE else None, state=state)
        return t.number, run_id

    complete = trial(token, None, TrialState.COMPLETE, run=True)
    failed = trial(token, "RuntimeError: boom", TrialState.FAIL, run=True)
    owed = trial(token, "MlflowException: server gone", TrialState.FAIL, run=False)
    surplus = trial(token, NOT_NEEDED, TrialState.FAIL, run=False)
    lives = trial(live.token, "RuntimeError: mine", TrialState.FAIL, run=False)

    run_study(done_study, progress=False)
    live.release()

    client = MlflowClient(config.tracking_uri)
    run = client.get_run(complete[1])
    assert (run.info.status, run.data.tags["optuna.state"]) == ("FINISHED", "COMPLETE")
    run = client.get_run(failed[1])
    assert (run.info.status, run.data.tags["harness.fail_reason"]) == (
        "FAILED",
        "RuntimeError: boom",
    )
    [made] = runs_of(config, owed[0])
    assert made.info.status == "FAILED"
    assert made.data.tags["harness.fail_reason"] == (
        "MlflowException: server gone (no run was created for it then)"
    )
    assert runs_of(config, surplus[0]) == []
    assert runs_of(config, lives[0]) == []
    running = [
        r for r in client.search_runs([made.info.experiment_id]) if r.info.status == "RUNNING"
    ]
    assert running == []


def test_a_tracking_server_gone_mid_study_fails_the_trial_and_stops_the_study(
    done_study, monkeypatch
):
    """The trial fails with its reason, the study stops at once (no later trial repeats
    the failure and its retries), the worker's lease is left for the next start, which
    ends the trial's run and finishes the study."""
    config = load_config(done_study)
    real_log_metrics = Tracker.log_metrics

    def server_gone(self, run_id, metrics, step=0):
        try:
            raise requests.exceptions.ConnectionError("Max retries exceeded (Connection refused)")
        except requests.exceptions.ConnectionError as exc:  # MLflow's own wrapping
            raise MlflowException(f"API request to http://127.0.0.1:1 failed with {exc}")  # noqa: B904

    monkeypatch.setattr(Tracker, "log_metrics", server_gone)
    started = time.monotonic()
    with pytest.raises(HarnessError) as info:
        run_study(done_study, n_trials=5, progress=False)
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert "study 'settle' stopped: MLflow tracking server stopped answering" in message
    assert "during trial 1" in message and "run the same command to continue" in message

    _, study, _, _ = open_study(config)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    reason = study.trials[1].user_attrs["fail_reason"]
    assert reason.startswith("MlflowException: API request to http://127.0.0.1:1 failed")
    [run] = runs_of(config, 1)
    assert run.info.status == "RUNNING"  # the server was gone: ending it would only retry
    assert len(list(lease_dir(config).glob("*.lease"))) == 1  # left for the next start

    monkeypatch.setattr(Tracker, "log_metrics", real_log_metrics)
    summary = run_study(done_study, n_trials=2, progress=False)
    assert summary.n_finished == 2
    [run] = runs_of(config, 1)
    assert (run.info.status, run.data.tags["harness.fail_reason"]) == ("FAILED", reason)
    assert list(lease_dir(config).glob("*.lease")) == []


def test_a_dead_workers_recent_failure_waits_for_the_grace_period(done_study):
    """A stale handler on another machine may be making that run right now: a trial that
    failed moments ago is left alone (its run is made by a later start)."""
    config = load_config(done_study)
    storage, study, _, _ = open_study(config)
    t = study.ask()
    t.set_user_attr(WORKER_ATTR, dead_lease(config))
    t.set_user_attr("fail_reason", "RuntimeError: just now")
    study.tell(t, state=TrialState.FAIL)
    ended = storage.get_trial(t._trial_id).datetime_complete
    assert datetime.datetime.now() - ended < datetime.timedelta(seconds=settle.SETTLE_GRACE_S)
    run_study(done_study, progress=False)
    assert runs_of(config, t.number) == []
