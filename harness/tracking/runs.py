"""MLflow: tracking URIs, writing a study's runs (``Tracker``), reading them (``RunReader``).

One experiment per study, a parent run per study, a child run per trial (or baseline).
Everything goes through ``MlflowClient`` with explicit run ids, never the global
"active run", so trials in parallel threads or processes cannot log into each other.
Every command finds the store the same way: ``--tracking-uri`` > ``$MLFLOW_TRACKING_URI``
> the study file's ``tracking_uri`` > ``DEFAULT_TRACKING_URI``.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness.core import HarnessError, sqlite_init_lock
from harness.studyfile import default_tracking_uri, is_local_store, local_path, sqlalchemy_url
from harness.tracking.preflight import check_tracking_exists, store_outage

ROLE_TAG = "harness.role"
#: runs per page when searching a study's runs (MLflow's largest page)
SEARCH_PAGE = 50000


def check_tracking_uri(uri: str) -> None:
    """A store to read from must be there: a missing one is a mistake to report, not an
    empty database to create, and an unreachable server is said so in seconds."""
    check_tracking_exists(uri)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _init_lock(tracking_uri: str) -> AbstractContextManager:
    """MLflow creates the tables of a new SQLite store without a lock, so workers that start
    together would each run the migrations and fail: open it under a file lock."""
    db = local_path(tracking_uri)
    if db is None:
        return nullcontext()
    db.parent.mkdir(parents=True, exist_ok=True)
    return sqlite_init_lock(db)


class Tracker:
    """The MLflow side of one study."""

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str | None):
        self.tracking_uri = tracking_uri
        with _init_lock(tracking_uri):
            self.client = MlflowClient(sqlalchemy_url(tracking_uri))
            self.experiment_id = self._experiment_id(experiment_name, artifact_location)
        #: parent runs this process marked RUNNING: only those does ``finish_parent`` end,
        #: so a run that adds no trials leaves the parent's status and times alone
        self._opened: set[str] = set()

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
        self._opened.add(run.info.run_id)
        return run.info.run_id

    def reopen_parent(self, run_id: str) -> bool:
        """Check a continued study's parent exists (restoring it if it was deleted in the
        UI); False when the run no longer exists at all. It is marked RUNNING again only
        when a child run starts under it (``start_child``)."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return False
        if run.info.lifecycle_stage == "deleted":
            self.client.restore_run(run_id)
        return True

    def finish_parent(self, run_id: str, status: str = "FINISHED") -> None:
        """End the parent run if this process reopened it (it added a run under it)."""
        if run_id in self._opened:
            self.finish(run_id, status)
            self._opened.discard(run_id)

    def start_child(
        self,
        parent_id: str,
        run_name: str,
        role: str,
        params: dict[str, str],
        tags: dict[str, str] | None = None,
    ) -> str:
        """A child run of the study's parent: a trial, or a baseline fitted beside them."""
        if parent_id not in self._opened:
            self.client.update_run(parent_id, status="RUNNING")
            self._opened.add(parent_id)
        tags = {"mlflow.parentRunId": parent_id, ROLE_TAG: role, **(tags or {})}
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def start_trial(
        self, parent_id: str, study_name: str, number: int, params: dict[str, str]
    ) -> str:
        tags = {
            "optuna.study_name": study_name,
            "optuna.trial_number": str(number),
            "optuna.state": "RUNNING",
        }
        return self.start_child(parent_id, f"trial-{number}", "trial", params, tags)

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

    def log_dir(self, run_id: str, directory: Path) -> None:
        """Upload the files under ``directory`` at the same relative paths."""
        self.client.log_artifacts(run_id, str(directory))

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

    def trial_runs(self, parent_id: str, number: int | None = None) -> list[Run]:
        """The trial runs under ``parent_id`` (trial ``number``'s alone when given), in
        every state and lifecycle stage. Found by tags, so that a run whose id never
        reached Optuna (its process died right after creating it) is found too."""
        filter_string = f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`{ROLE_TAG}` = 'trial'"
        if number is not None:
            filter_string += f" and tags.`optuna.trial_number` = '{number}'"
        runs: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=filter_string,
                run_view_type=ViewType.ALL,
                max_results=SEARCH_PAGE,
                page_token=token,
            )
            runs += page
            token = page.token
            if not token:
                return runs

    def finished_children(
        self, parent_id: str, role: str, run_name: str | None = None
    ) -> list[Run]:
        """FINISHED child runs of ``parent_id`` with this role (and name), oldest first:
        what a study logged once (head sweep, baselines, repeats, folds) and finds again
        on a re-run instead of redoing it."""
        named = f" and attributes.run_name = '{run_name}'" if run_name is not None else ""
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`{ROLE_TAG}` = '{role}'"
                f"{named} and attributes.status = 'FINISHED'"
            ),
            order_by=["attributes.start_time ASC"],
        )

    def find_children(self, parent_id: str, role: str, run_name: str) -> list[str]:
        """Ids of ``finished_children`` with this name."""
        return [r.info.run_id for r in self.finished_children(parent_id, role, run_name)]

    def read_text(self, run_id: str, path: str) -> str | None:
        """A text artifact of a run, or ``None`` when it has none at ``path``."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = self.client.download_artifacts(run_id, path, tmp)
            except Exception:
                return None
            return Path(local).read_text()

    def rename(self, run_id: str, name: str) -> None:
        self.client.update_run(run_id, name=name)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """End a parent or baseline run (trials end with ``end``, which tags their state)."""
        self.client.set_terminated(run_id, status=status, end_time=_now_ms())


def parse_run_ref(ref: str) -> str:
    """Accept ``RUN_ID`` or ``runs:/RUN_ID[/model]``."""
    if ref.startswith("runs:/"):
        ref = ref.removeprefix("runs:/").split("/")[0]
    if not ref or not ref.isalnum():
        raise HarnessError(f"{ref!r} is not a run id; copy one from `harness study best NAME`")
    return ref


class RunReader:
    """The read side of a tracking store: a study's runs, a run's params, tags, metrics,
    model and predictions. ``predict`` reads through it, and so will ``compare`` and
    ``report``, so run-reading code lives in one place."""

    def __init__(self, tracking_uri: str | None = None):
        self.tracking_uri = default_tracking_uri(tracking_uri)
        check_tracking_uri(self.tracking_uri)
        self.client = MlflowClient(sqlalchemy_url(self.tracking_uri))

    def run(self, ref: str) -> Run:
        """Run ``ref`` (an id or ``runs:/ID``), or a one-line user error."""
        run_id = parse_run_ref(ref)
        try:
            return self.client.get_run(run_id)
        except Exception as exc:
            outage = store_outage(exc)
            if outage is not None:
                raise HarnessError(f"{outage}; start it again or fix --tracking-uri") from None
            raise HarnessError(
                f"run {run_id!r} not found in tracking store {self.client.tracking_uri}; "
                "list runs with `harness study best NAME` or pass --tracking-uri"
            ) from None

    def study_runs(self, study_name: str) -> tuple[Run | None, list[Run]]:
        """The study's parent run (``None`` if it has none) and its child runs."""
        experiment = self.client.get_experiment_by_name(study_name)
        if experiment is None:
            raise HarnessError(
                f"no study named {study_name!r} in tracking store {self.tracking_uri}; "
                "check the name or pass --tracking-uri"
            )
        runs = self.client.search_runs([experiment.experiment_id], max_results=50000)
        parent = next((r for r in runs if r.data.tags.get(ROLE_TAG) == "study"), None)
        if parent is None:
            return None, []
        parent_id = parent.info.run_id
        return parent, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]

    def model_uri(self, run: Run) -> str:
        """Where the run's ``model`` folder lives: its MLflow logged model, or (runs logged
        before models were MLflow Models) the run's own ``model`` artifacts. Resolved here
        rather than through ``runs:/``, which MLflow 3 resolves with the process-wide
        tracking URI instead of this reader's store."""
        outputs = run.outputs.model_outputs if run.outputs else []
        for output in outputs:
            model = self.client.get_logged_model(output.model_id)
            if model.name == "model":
                return model.artifact_location
        return f"{run.info.artifact_uri.rstrip('/')}/model"

    def download_model(self, ref: str, dst: Path) -> Path:
        """The run's ``model/`` folder, downloaded under ``dst``."""
        from mlflow.artifacts import download_artifacts

        run = self.run(ref)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        try:
            uri, tracking = self.model_uri(run), self.client.tracking_uri
            local = Path(download_artifacts(uri, dst_path=str(dst), tracking_uri=tracking))
            found = (local / "config.json").is_file()
        except Exception:
            found = False
        if not found:
            raise HarnessError(
                f"run {run.info.run_id} has no model artifacts (a pruned or failed trial?); "
                "choose a COMPLETE trial from `harness study best NAME`"
            )
        return local

    def model_config(self, ref: str) -> dict:
        """The run's ``model/config.json``."""
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads((self.download_model(ref, Path(tmp)) / "config.json").read_text())

    def predictions(self, ref: str, split: str = "test") -> list[dict[str, str]]:
        """Rows of ``predictions/{split}.csv``: ``row_id``, ``label``, ``probability``."""
        run_id = self.run(ref).info.run_id
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = self.client.download_artifacts(run_id, f"predictions/{split}.csv", tmp)
            except Exception:
                raise HarnessError(
                    f"run {run_id} has no {split} predictions (a pruned or failed trial?)"
                ) from None
            with open(local, newline="") as fh:
                return list(csv.DictReader(fh))


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
