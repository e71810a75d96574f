"""Optuna storage chosen by URL, always with a heartbeat.

* ``sqlite:///mlruns/optuna.db`` (default): one process at a time.
* ``journal:///path/optuna.log``: Optuna's journal file, safe for several processes on
  one machine (``--workers N``).
* ``postgresql://user@host/db`` (or any SQLAlchemy URL): several machines.

The heartbeat lets a restarted study find trials whose process died (SIGKILL, lost
machine), mark them FAIL and replace them, instead of leaving them RUNNING forever.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from harness.errors import HarnessError

StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


def heartbeat_interval() -> int:
    """Seconds between heartbeats (``HARNESS_HEARTBEAT_INTERVAL``, default 10); a trial
    is stale after three missed beats."""
    return max(1, int(os.environ.get("HARNESS_HEARTBEAT_INTERVAL", "10")))


class JournalFileStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal file storage plus a heartbeat kept as one small file per trial
    (its mtime is the last beat), which the journal backend lacks."""

    def __init__(self, path: Path, interval: int, grace: int, on_stale: StaleCallback | None):
        super().__init__(JournalFileBackend(str(path)))
        self._beats = Path(f"{path}.heartbeats")
        self._beats.mkdir(parents=True, exist_ok=True)
        self._interval, self._grace, self._on_stale = interval, grace, on_stale

    def record_heartbeat(self, trial_id: int) -> None:
        (self._beats / str(trial_id)).touch()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = self._beats / str(trial._trial_id)
            last = (
                beat.stat().st_mtime
                if beat.exists()
                else (trial.datetime_start or datetime.now()).timestamp()
            )
            if now - last > self._grace:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._interval

    def get_heartbeat_stale_trial_callback(self) -> StaleCallback | None:
        return self._on_stale


def make_storage(url: str, on_stale: StaleCallback | None = None) -> optuna.storages.BaseStorage:
    """Open the storage at ``url``; failures are user errors that say what to check."""
    interval = heartbeat_interval()
    grace = 3 * interval
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:").removeprefix("//"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalFileStorage(path, interval, grace, on_stale)
    if "://" not in url:
        raise HarnessError(
            f"storage {url!r} is not a URL; use sqlite:///mlruns/optuna.db, "
            "journal:///path/optuna.log or postgresql://user@host/db"
        )
    engine_kwargs = None
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    try:
        with warnings.catch_warnings():  # heartbeat is "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=on_stale,
            )
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarnessError(
            f"cannot open Optuna storage {url!r}: {reason[:200]}; check the URL, that the "
            "database server runs and the database exists"
        ) from None
