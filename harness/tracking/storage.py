"""Optuna storage: URLs (checked here), opened always with a heartbeat.

* ``sqlite:///mlruns/optuna.db`` (default): one process at a time.
* ``journal:///path/optuna.log``: Optuna's journal file, safe for several processes on
  one machine (``--workers N``).
* ``postgresql://user@host/db`` (or any SQLAlchemy URL): several machines.

A trial whose process died (SIGKILL, OOM killer, lost machine) must not stay RUNNING
forever. Two signals tell a dead worker from a slow one:

* the heartbeat: every worker beats for its running trial; a trial whose beats stopped for
  ``3 × HARNESS_HEARTBEAT_INTERVAL`` seconds is stale. This works across machines, but
  only after that grace period.
* the worker lease (``WorkerLease``): a file each worker keeps locked for its whole life.
  The kernel drops the lock the moment the process dies, however it dies, so on the same
  machine a dead worker is seen at once, and a live worker whose beats are late (an
  overloaded machine) is never declared dead.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import random
import re
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path

import optuna
import sqlalchemy
import sqlalchemy.exc
import sqlalchemy.pool
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from harness.core import HarnessError, sqlite_init_lock, waiting_lock
from harness.studyfile import local_path, sqlalchemy_url

StaleCallback = Callable[[optuna.Study, FrozenTrial], None]

log = logging.getLogger("harness")


#: trial user attribute naming the worker (lease token) that runs the trial
WORKER_ATTR = "worker"
#: tries to open a database storage whose tables other workers may be creating
CREATE_ATTEMPTS = 5


def heartbeat_interval() -> int:
    """Seconds between heartbeats (``HARNESS_HEARTBEAT_INTERVAL``, default 10); a trial
    is stale after three missed beats."""
    return max(1, int(os.environ.get("HARNESS_HEARTBEAT_INTERVAL", "10")))


def _safe_name(text: str) -> str:
    return re.sub(r"[^\w.-]", "_", text)


class WorkerLease:
    """This process's proof of life: ``DIR/TOKEN.lease``, flock-ed until the process ends.

    The token (host, pid and a random part) is recorded on each trial the process runs.
    Another process that sees the same directory (same machine, or a shared disk) can then
    ask ``alive(token)``: a lease it can lock belongs to a dead process.
    """

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.token = _safe_name(f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        # locked before it gets its name, so that no one ever sees it free while we live
        unnamed = directory / f".{self.token}.new"
        self._fd: int | None = os.open(unnamed, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        unnamed.rename(self._path(self.token))

    def _path(self, token: str) -> Path:
        return self.directory / f"{token}.lease"

    def alive(self, token: str | None) -> bool | None:
        """Whether the worker ``token`` still runs; ``None`` when this machine cannot tell
        (a worker on another machine, or one that recorded no token)."""
        if token is None:
            return None
        if token == self.token:
            return True
        try:
            fd = os.open(self._path(token), os.O_RDWR)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also drops the lock we may have taken
        return False

    def prune(self) -> None:
        """Delete the leases of dead workers; called once their trials have been failed."""
        for path in self.directory.glob("*.lease"):
            if self.alive(path.stem) is False:
                path.unlink(missing_ok=True)

    def release(self, keep: bool = False) -> None:
        """End of a clean run: remove the lease (a killed process leaves it to ``prune``).
        ``keep`` leaves it behind unlocked, as a killed process would: this worker leaves
        records for the next one to settle (``harness.study.settle``)."""
        if self._fd is not None:
            if not keep:
                self._path(self.token).unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


class _LeaseAware:
    """Stale = the worker is provably dead (its lease is free), or its heartbeat stopped and
    this machine cannot see its lease. Mixed into both storages ahead of their own
    heartbeat check, which Optuna's ``fail_stale_trials`` calls before every trial."""

    lease: WorkerLease | None = None

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        late = set(super()._get_stale_trial_ids(study_id))
        if self.lease is None:
            return sorted(late)
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            alive = self.lease.alive(trial.user_attrs.get(WORKER_ATTR))
            if alive is False or (alive is None and trial._trial_id in late):
                stale.append(trial._trial_id)
        return stale


class _JournalHeartbeatStorage(JournalStorage, BaseHeartbeat):
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


class JournalFileStorage(_LeaseAware, _JournalHeartbeatStorage):
    """Journal file storage whose stale check also reads worker leases."""


class LeaseAwareRDBStorage(_LeaseAware, RDBStorage):
    """SQLAlchemy storage whose stale check also reads worker leases."""


def make_storage(
    url: str, on_stale: StaleCallback | None = None, lease: WorkerLease | None = None
) -> optuna.storages.BaseStorage:
    """Open the storage at ``url`` (checked by ``validate_storage_url``); failures are
    user errors that say what to check.

    ``on_stale`` runs for each trial found dead; ``lease`` (this worker's) lets the stale
    check consult the other workers' leases on this machine.
    """
    interval = heartbeat_interval()
    grace = 3 * interval
    if url.startswith("journal:"):
        path = local_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = JournalFileStorage(path, interval, grace, on_stale)
        storage.lease = lease
        return storage
    engine_kwargs, init_lock = None, nullcontext()
    if url.startswith("sqlite:///"):
        db = local_path(url)
        db.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
        init_lock = sqlite_init_lock(db)
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        try:
            with init_lock, warnings.catch_warnings():  # heartbeat is "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = LeaseAwareRDBStorage(
                    sqlalchemy_url(url),
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=interval,
                    grace_period=grace,
                    heartbeat_stale_trial_callback=on_stale,
                )
            break
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            # workers that open a new database at once race to create its tables; the
            # losers find them made on the next try
            if attempt == CREATE_ATTEMPTS:
                raise _cannot_open(url, exc) from None
            time.sleep(random.uniform(0.5, 1.5))
        except Exception as exc:
            raise _cannot_open(url, exc) from None
    storage.lease = lease
    return storage


def _cannot_open(url: str, exc: Exception) -> HarnessError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return HarnessError(
        f"cannot open Optuna storage {url!r}: {reason[:200]}; check the URL, that the "
        "database server runs and the database exists"
    )


#: seconds between tries for a held cluster lease, and between "still waiting" lines
LEASE_POLL_S = 1.0
LEASE_LOG_S = 10.0


@contextmanager
def cluster_lease(storage_url: str, name: str, what: str, local_dir: Path) -> Iterator[None]:
    """Hold the lease ``name`` (guarding ``what``) across every worker of a study.

    On PostgreSQL it is a session advisory lock of the study's own Optuna database: every
    machine of the study already reaches it, only one connection holds the lock, and the
    server drops it the moment that connection does, however its worker ends (a killed
    process, a lost machine), so another worker takes over. Elsewhere (SQLite, a journal
    file: one machine) a file lock in ``local_dir`` does the same between processes.
    While waiting, a line every ``LEASE_LOG_S`` seconds says who holds it.
    """
    if not storage_url.startswith("postgresql"):
        local_dir.mkdir(parents=True, exist_ok=True)
        with waiting_lock(local_dir / f"{_safe_name(name)}.lock", what, "cache_dir"):
            yield
        return
    # a positive 63-bit key: pg_locks shows it as (classid << 32) | objid
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1
    me = _safe_name(f"harness {socket.gethostname()}-{os.getpid()}")
    engine = sqlalchemy.create_engine(
        sqlalchemy_url(storage_url),
        poolclass=sqlalchemy.pool.NullPool,
        isolation_level="AUTOCOMMIT",  # a session lock, no transaction held open
        connect_args={"application_name": me[:63]},
    )
    try:
        with engine.connect() as conn:
            started = last = time.monotonic()
            take = sqlalchemy.text("SELECT pg_try_advisory_lock(:k)")
            while not conn.execute(take, {"k": key}).scalar():
                if time.monotonic() - last >= LEASE_LOG_S:
                    last = time.monotonic()
                    log.info(
                        "waiting for %s, which %s holds (%.0f s so far)",
                        what,
                        _lease_holder(conn, key),
                        last - started,
                    )
                time.sleep(LEASE_POLL_S)
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


def _lease_holder(conn, key: int) -> str:
    """The application name and address of the connection holding advisory lock ``key``."""
    row = conn.execute(
        sqlalchemy.text(
            "SELECT a.application_name, a.client_addr FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
            "AND l.granted AND ((l.classid::bigint << 32) | l.objid::bigint) = :k"
        ),
        {"k": key},
    ).first()
    return f"{row[0] or 'a worker'} ({row[1] or 'local'})" if row else "another worker"
