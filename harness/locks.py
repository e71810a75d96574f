"""A file lock that never waits silently and never waits on something that cannot exist.

``FileLock`` alone retries forever when the lock file cannot be created (a folder under
/proc, a read-only mount): the user sees nothing and the process never ends. And a lock
held by another live process (one extracting the attention cache) looks the same from
outside. So the lock file is created first, and failure is a ``HarnessError``; while
waiting, a line about every ``WAIT_LOG_S`` seconds says who holds the lock and for how long
it has been waited on. The holder is recorded in a sidecar file ``LOCK.holder`` (the lock
file itself belongs to ``filelock``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from harness.errors import HarnessError

log = logging.getLogger("harness")

#: seconds between "still waiting" lines
WAIT_LOG_S = 10.0


@contextmanager
def waiting_lock(
    path: Path, what: str, setting: str, wait_log_s: float = WAIT_LOG_S
) -> Iterator[None]:
    """Hold the lock ``path`` (guarding ``what``) for the ``with`` block.

    ``setting`` names where the user chose the folder, for the fix in the error message.
    """
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        if exc.errno == errno.ENOENT and path.parent.is_dir():
            reason = "its folder refuses new files"  # /proc and the like
        raise HarnessError(
            f"cannot create the lock file {path} for {what} ({reason}); "
            f"choose a writable folder for {setting}"
        ) from None
    lock = FileLock(str(path))
    started = time.monotonic()
    while True:
        try:
            lock.acquire(timeout=wait_log_s)
            break
        except Timeout:
            log.warning(
                "waiting %.0f s for %s: %s holds the lock %s",
                time.monotonic() - started,
                what,
                holder(path),
                path,
            )
    sidecar = _sidecar(path)
    try:
        _write_holder(sidecar)
        yield
    finally:
        sidecar.unlink(missing_ok=True)
        lock.release()


def holder(path: Path) -> str:
    """Who holds the lock ``path``, as its holder recorded it ("pid 12 on host x since
    10:41:07"); "an unknown process" when it recorded nothing (yet)."""
    try:
        record = json.loads(_sidecar(path).read_text())
        since = time.strftime("%H:%M:%S", time.localtime(record["since"]))
        return f"pid {record['pid']} on host {record['host']} (since {since})"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".holder")


def _write_holder(sidecar: Path) -> None:
    """Written to a temporary name and renamed, so a waiter never reads half a record."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    tmp = sidecar.with_name(f"{sidecar.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, sidecar)
