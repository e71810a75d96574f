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
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from harness.core.errors import HarnessError

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


def sqlite_init_lock(db: Path) -> FileLock:
    """Held while opening a SQLite store: processes that open a new one together would all
    create its tables, and all but one fail. The lock file lives in the temporary folder,
    not beside the store, which it must not change."""
    key = hashlib.sha256(str(db.resolve()).encode()).hexdigest()[:16]
    return FileLock(Path(tempfile.gettempdir()) / f"harness-sqlite-{key}.lock")


def check_writable_dir(path: Path | str, what: str, setting: str | None = None) -> None:
    """``path`` is a folder that exists or can be created, and files can be written in it.

    ``what`` names it in the message ("cache_dir"); ``setting`` says where the user chose
    it ("cache_dir in the study file"), for the fix.
    """
    path = Path(path)
    problem = _folder_problem(path)
    if problem:
        raise HarnessError(
            f"{what} {path} {problem}; choose another folder{_for(setting)} or fix that one"
        )


def check_writable_file(path: Path | str, what: str, setting: str | None = None) -> None:
    """``path`` is a file that can be appended to, or that can be created with its folder."""
    path = Path(path)
    if path.is_dir():
        raise HarnessError(f"{what} {path} is a folder, not a file; give the path of a file")
    problem = _folder_problem(path.parent)
    if problem and problem.startswith("is a file"):
        problem = f"is under a file ({path.parent} is a regular file)"
    elif problem and not problem.startswith(("is under", "cannot be created")):
        problem = f"cannot be created: its folder {path.parent} {problem}"
    elif path.exists():
        try:
            with open(path, "ab"):
                pass
        except OSError as exc:
            problem = f"is not writable ({os_reason(exc)})"
    if problem:
        raise HarnessError(
            f"{what} {path} {problem}; choose another path{_for(setting)} or fix that one"
        )


def check_free_space(path: Path, needed: int, what: str, setting: str | None = None) -> None:
    """Refuse before writing ``needed`` bytes of ``what`` under ``path`` if the disk lacks
    them (with 5 % to spare): a full disk found halfway costs the whole write."""
    free = shutil.disk_usage(path).free
    if free < needed * 1.05:
        raise HarnessError(
            f"{what} needs {_size(needed)} in {path} but only {_size(free)} are free; "
            "free some space there"
            + (f" or choose another folder for {setting}" if setting else "")
        )


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _folder_problem(path: Path) -> str | None:
    """What stops files being written in folder ``path`` (None: nothing).

    Permission bits cannot answer this (root ignores them; /proc refuses files whatever the
    bits say), so a probe is created and removed at once: a file in the folder when it
    exists, a folder in its nearest existing ancestor when it does not.
    """
    existing = path
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():
            return f"passes through a broken link ({existing})"
        existing = existing.parent
    if not existing.is_dir():
        if existing == path:
            return "is a file, not a folder"
        return f"is under a file ({existing} is a regular file)"
    try:
        if existing == path:
            fd, probe = tempfile.mkstemp(dir=path, prefix=".harness-preflight-")
            os.close(fd)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".harness-preflight-"))
    except OSError as exc:
        if existing == path:
            return f"is not writable ({os_reason(exc)})"
        return f"cannot be created: {existing} is not writable ({os_reason(exc)})"
    return None


def _for(setting: str | None) -> str:
    return f" for {setting}" if setting else ""


def os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
        return "its file system refuses new files"  # /proc and the like
    if isinstance(exc, OSError) and exc.errno is not None:
        return (exc.strerror or errno.errorcode.get(exc.errno, str(exc))).lower()
    return str(exc)


def default_cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_CACHE_DIR", "mlruns/cache"))


def texts_sha256(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()
