"""MLflow: one experiment per study, a parent run per study, a child run per trial.

Everything goes through ``MlflowClient`` with explicit run ids, never the global
"active run", so trials in parallel threads or processes cannot log into each other.
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness.errors import HarnessError
from harness.storage import sqlalchemy_url, sqlite_init_lock

ROLE_TAG = "harness.role"


def _now_ms() -> int:
    return int(time.time() * 1000)


def is_local_store(tracking_uri: str) -> bool:
    """Local stores (sqlite, file) need an artifact location; servers choose their own."""
    return not tracking_uri.startswith(("http://", "https://", "databricks"))


def _init_lock(tracking_uri: str) -> AbstractContextManager:
    """MLflow creates the tables of a new SQLite store without a lock, so workers that start
    together would each run the migrations and fail: open it under a file lock."""
    if not tracking_uri.startswith("sqlite:///"):
        return nullcontext()
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    return sqlite_init_lock(db)


class Tracker:
    """The MLflow side of one study."""

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str | None):
        self.tracking_uri = tracking_uri
        with _init_lock(tracking_uri):
            self.client = MlflowClient(sqlalchemy_url(tracking_uri))
            self.experiment_id = self._experiment_id(experiment_name, artifact_location)

    def _experiment_id(self, name: str, artifact_location: str | None) -> str:
        """The study's experiment, created (or restored) when needed. Several workers may
        start at once: the one whose create loses the race uses the winner's."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            location = None
            if artifact_location and is_local_store(self.tracking_uri):
                location = (Path(artifact_location) / name).resolve().as_uri()
            try:
                return self.client.create_experiment(name, artifact_location=location)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            experiment = self.client.get_experiment_by_name(name)
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    def create_parent(self, study_name: str) -> str:
        """A new parent run for the study (only the process that created the study, or
        one that found its parent gone, calls this)."""
        run = self.client.create_run(
            self.experiment_id,
            run_name=study_name,
            tags={ROLE_TAG: "study", "optuna.study_name": study_name},
        )
        return run.info.run_id

    def reopen_parent(self, run_id: str) -> bool:
        """Mark a continued study's parent RUNNING again (restoring it if it was deleted in
        the UI); False when the run no longer exists at all."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return False
        if run.info.lifecycle_stage == "deleted":
            self.client.restore_run(run_id)
        self.client.update_run(run_id, status="RUNNING")
        return True

    def start_trial(
        self, parent_id: str, study_name: str, number: int, params: dict[str, str]
    ) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{number}",
            tags={
                "mlflow.parentRunId": parent_id,
                ROLE_TAG: "trial",
                "optuna.study_name": study_name,
                "optuna.trial_number": str(number),
                "optuna.state": "RUNNING",
            },
        )
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, object]) -> None:
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        ts = _now_ms()
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()]
        )

    def log_files(self, run_id: str, files: dict[str, str | bytes]) -> None:
        """Write ``{artifact path: content}`` to a temporary folder and upload it."""
        with tempfile.TemporaryDirectory() as tmp:
            for rel, content in files.items():
                path = Path(tmp, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content if isinstance(content, bytes) else content.encode())
            self.client.log_artifacts(run_id, tmp)

    def end(self, run_id: str, state: str, reason: str | None = None) -> None:
        """Close a run: COMPLETE/PRUNED -> FINISHED, FAIL -> FAILED, with the Optuna state
        (and the reason of a failure) as tags."""
        tags = [RunTag("optuna.state", state)]
        if reason:
            tags.append(RunTag("harness.fail_reason", reason[:4000]))
        self.client.log_batch(run_id, tags=tags)
        status = "FAILED" if state == "FAIL" else "FINISHED"
        self.client.set_terminated(run_id, status=status, end_time=_now_ms())

    def kill(self, run_id: str, reason: str) -> None:
        """Mark a run whose process died or was interrupted; never leave it RUNNING."""
        self.client.log_batch(
            run_id, tags=[RunTag("optuna.state", "FAIL"), RunTag("harness.fail_reason", reason)]
        )
        self.client.set_terminated(run_id, status="KILLED", end_time=_now_ms())

    def running_trial_runs(self, parent_id: str, number: int) -> list[str]:
        """The RUNNING child runs of trial ``number``: found by tags, so that a run whose id
        never reached Optuna (the process died right after creating it) is found too."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`mlflow.parentRunId` = '{parent_id}' "
                f"and tags.`optuna.trial_number` = '{number}' and attributes.status = 'RUNNING'"
            ),
        )
        return [r.info.run_id for r in runs]

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish_parent(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status, end_time=_now_ms())


def get_run_or_fail(client: MlflowClient, run_id: str):
    """Fetch a run, turning 'not found' into a one-line user error."""
    try:
        return client.get_run(run_id)
    except Exception:
        raise HarnessError(
            f"run {run_id!r} not found in tracking store {client.tracking_uri}; "
            "list runs with `harness study best NAME` or pass --tracking-uri"
        ) from None


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
