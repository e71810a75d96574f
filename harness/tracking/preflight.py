"""Checks of every path and store a study will use, run before any work is done.

A study that extracts attention for minutes and then finds its SQLite file sits under a
regular file, or that retries an unreachable tracking server for four minutes, wastes the
user's time and leaves half-made things behind (a cache entry, an experiment). Each check
here is cheap (a probe file, one connection, one HTTP GET, a few seconds at most) and
turns the problem into one ``HarnessError`` line: which path or URL, what is wrong, and
the fix. The checks create nothing that outlives them: a probe file or folder is removed
at once, and ``storage_exists`` opens a database read-only to look for Optuna's tables.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from harness.core import HarnessError, check_writable_dir, check_writable_file, os_reason
from harness.studyfile import local_path, sqlalchemy_url

#: seconds a store may take to answer before preflight gives up on it
CONNECT_TIMEOUT_S = 5
#: MLflow's own HTTP retry settings, bounded: its defaults (7 retries, backoff factor 2,
#: 120 s timeout) retry a vanished server for about four minutes. These ride out a server
#: restart of about 15 s (sleeps of 0, 2, 4 and 8 s, plus up to 1 s jitter each) and then
#: fail the request; a server that is down at the start is caught by ``check_tracking``.
MLFLOW_RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
#: a table every Optuna RDB storage has, and one every MLflow database store has
_OPTUNA_TABLE = "studies"
_MLFLOW_TABLE = "experiments"
#: how PostgreSQL and MySQL say the database itself is missing
_NO_DATABASE = re.compile(r'database "[^"]*" does not exist|Unknown database')
#: how database drivers say a connection was lost or could not be made
_CONNECTION_LOST = re.compile(
    r"could not connect|connection refused|server closed the connection|terminating connection"
    r"|connection (?:is|already) closed|lost connection|can't connect",
    re.IGNORECASE,
)


def bound_mlflow_retries() -> dict[str, str]:
    """Set MLflow's HTTP retry variables to bounded values unless the user set them, so a
    tracking server that goes away mid-study fails the trial in seconds, not minutes.
    Returns the values in effect."""
    for name, value in MLFLOW_RETRY_ENV.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in MLFLOW_RETRY_ENV}


def check_storage(url: str) -> None:
    """The Optuna storage at ``url`` can be written (file stores) or answers (databases)."""
    path = local_path(url)
    if path is not None:
        check_writable_file(path, "Optuna storage", "--storage")
    elif url.startswith("sqlite:"):
        return  # sqlite:// with no path is an in-memory database
    else:
        _connect(url, "Optuna storage", "--storage")


def check_tracking(uri: str) -> None:
    """The MLflow tracking store at ``uri`` can be written, or its server answers."""
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    elif uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        check_writable_file(path, "MLflow tracking store", "--tracking-uri")
    elif "://" in uri and not uri.startswith(("sqlite:", "databricks", "file:")):
        _connect(uri, "MLflow tracking store", "--tracking-uri")


def check_study(
    cache_dir: Path, storage_url: str, tracking_uri: str, artifact_location: str | None
) -> None:
    """Every folder and store a study will write, checked before its first piece of work
    (extraction, a study, an experiment): the cache folder (which also holds the workers'
    leases), the Optuna storage, the tracking store, and the artifact folder of a local
    tracking store (a server keeps its own)."""
    from harness.studyfile import is_local_store

    check_writable_dir(cache_dir, "attention cache folder", "cache_dir or HARNESS_CACHE_DIR")
    check_storage(storage_url)
    check_tracking(tracking_uri)
    if artifact_location and is_local_store(tracking_uri):
        check_writable_dir(artifact_location, "artifact folder", "artifact_location")


def storage_exists(url: str) -> bool:
    """Whether an Optuna storage is at ``url``, found without creating one: read-only
    commands must not leave a database or Optuna's tables behind just by looking."""
    path = local_path(url)
    if path is not None:
        return path.is_file()
    if url.startswith("sqlite:"):
        return False
    return _has_table(url, _OPTUNA_TABLE, "Optuna storage", "--storage")


def check_tracking_exists(uri: str) -> None:
    """A tracking store to read from is there, found without creating one: a server that
    answers ``/health`` (within seconds, not after minutes of retries), an SQLite file, or
    a database with MLflow's tables. Opening a client on a missing one would create it."""
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
        return
    path = local_path(uri)
    if path is not None:
        if not path.is_file():
            raise HarnessError(
                f"no MLflow store at {path}; run a study first "
                "(harness study run FILE) or pass --tracking-uri"
            )
    elif "://" in uri and not uri.startswith(("sqlite:", "file:")):
        if not _has_table(uri, _MLFLOW_TABLE, "MLflow tracking store", "--tracking-uri"):
            raise HarnessError(
                f"no MLflow store in {_hide_password(uri)} (the database has no MLflow "
                "tables); run a study first or pass --tracking-uri"
            )


def _has_table(url: str, table: str, what: str, option: str) -> bool:
    """Whether the database at ``url`` has ``table``; False when the database itself does
    not exist; a one-line error when its server cannot be reached."""
    import sqlalchemy

    engine = _engine(url)
    try:
        with engine.connect() as connection:
            return sqlalchemy.inspect(connection).has_table(table)
    except Exception as exc:  # noqa: BLE001 - any driver's error becomes one line
        if _NO_DATABASE.search(str(exc)):
            return False
        raise _unreachable(url, what, option, exc) from None
    finally:
        engine.dispose()


def _engine(url: str):
    """An engine that holds no pooled connection and gives up connecting after a few
    seconds (drivers otherwise wait for the operating system's TCP timeout)."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    full = sqlalchemy_url(url)
    connect_args = {}
    if full.startswith(("postgresql", "mysql")):
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        return sqlalchemy.create_engine(full, poolclass=NullPool, connect_args=connect_args)
    except Exception as exc:  # noqa: BLE001 - unknown dialect, missing driver, bad URL
        raise HarnessError(
            f"cannot use store URL {_hide_password(url)}: {_first_line(exc)}; "
            "use sqlite:///…, journal:///… or postgresql://user@host/db"
        ) from None


def _connect(url: str, what: str, option: str) -> None:
    engine = _engine(url)
    try:
        with engine.connect():
            pass
    except Exception as exc:  # noqa: BLE001 - any driver's error becomes one line
        raise _unreachable(url, what, option, exc) from None
    finally:
        engine.dispose()


def _unreachable(url: str, what: str, option: str, exc: Exception) -> HarnessError:
    from sqlalchemy.engine import make_url

    text = str(getattr(exc, "orig", None) or exc)
    parsed = make_url(sqlalchemy_url(url))
    default_port = 3306 if parsed.get_backend_name() == "mysql" else 5432
    at = f"{parsed.host or 'localhost'}:{parsed.port or default_port}"
    if "Connection refused" in text:
        reason = f"connection refused at {at}"
    elif "timeout expired" in text or "timed out" in text:
        reason = f"no answer from {at} within {CONNECT_TIMEOUT_S} s"
    else:
        reason = _first_line(exc).split("failed: ")[-1].removeprefix("FATAL:").strip()
    return HarnessError(
        f"{what} {_hide_password(url)} is not reachable ({reason}); "
        f"start the database server, create the database, or fix {option}"
    )


def _check_server(uri: str) -> None:
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=CONNECT_TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, TimeoutError) or "timed out" in str(reason):
            why = f"no answer within {CONNECT_TIMEOUT_S} s"
        else:
            why = os_reason(reason) if isinstance(reason, OSError) else str(reason)
        raise HarnessError(
            f"MLflow tracking server at {uri} is not reachable ({why}); "
            "start it or fix --tracking-uri"
        ) from None
    if status != 200:
        raise HarnessError(
            f"MLflow tracking server at {uri} answered GET /health with HTTP {status}; "
            "check that the URL points at an MLflow server (mlflow server) or fix --tracking-uri"
        )


def store_outage(exc: BaseException) -> str | None:
    """Why a store stopped answering, when ``exc`` or an exception it came from says so
    (None for any other failure). After preflight, such a failure is not the trial's
    fault: the study stops at once instead of failing every later trial the same way,
    each after its retries."""
    import requests
    import sqlalchemy.exc

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, requests.exceptions.RequestException) and not isinstance(
            exc, requests.exceptions.InvalidURL
        ):
            return f"MLflow tracking server stopped answering ({_first_line(exc)})"
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and (
            exc.connection_invalidated or _CONNECTION_LOST.search(str(exc))
        ):
            return f"database connection lost ({_first_line(exc)})"
        exc = exc.__cause__ or exc.__context__
    return None


def _hide_password(url: str) -> str:
    if "@" not in url or "://" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - show it as given, it will fail its check anyway
        return url
    return parsed.render_as_string(hide_password=True)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
