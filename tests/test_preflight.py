"""Preflight checks against real things: folders, a regular file, /proc, PostgreSQL, a
closed port and a small HTTP server (issue 12).

Tests run as root, who ignores permission bits, so a chmod-0555 folder would be writable
here and prove nothing. A folder that refuses files whatever the bits say is /proc/1 (its
file system has no way to create files), and "under a file" is a path through a regular
file; both fail for root and for everyone else alike.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from harness.core.errors import HarnessError
from harness.core.fs import check_writable_dir, check_writable_file
from harness.studyfile.urls import sqlalchemy_url
from harness.tracking import preflight
from harness.tracking.preflight import (
    bound_mlflow_retries,
    check_storage,
    check_tracking,
    storage_exists,
)
from tests.conftest import POSTGRES, table_count, throwaway_databases

SERVER = POSTGRES.rsplit("/", 1)[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def error_of(check, *args) -> str:
    """The one-line message of the HarnessError that ``check(*args)`` raises, in < 10 s."""
    started = time.monotonic()
    with pytest.raises(HarnessError) as info:
        check(*args)
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def blocker(tmp_path) -> Path:
    path = tmp_path / "data.csv"
    path.write_text("text,label\n")
    return path


# --- folders and files --------------------------------------------------------------


def test_writable_dir_existing_or_creatable_leaves_nothing(tmp_path):
    (tmp_path / "exists").mkdir()
    before = tree(tmp_path)
    check_writable_dir(tmp_path / "exists", "cache_dir")
    check_writable_dir(tmp_path / "new" / "deeper", "cache_dir")
    assert tree(tmp_path) == before, "a check must not create what it checks"


def test_writable_dir_under_a_file(blocker):
    assert error_of(check_writable_dir, blocker / "cache" / "x", "cache_dir", "cache_dir") == (
        f"cache_dir {blocker}/cache/x is under a file ({blocker} is a regular file); "
        "choose another folder for cache_dir or fix that one"
    )


def test_writable_dir_that_is_a_file(blocker):
    assert f"cache_dir {blocker} is a file, not a folder" in error_of(
        check_writable_dir, blocker, "cache_dir"
    )


def test_writable_dir_that_refuses_files():
    assert error_of(check_writable_dir, "/proc/1", "cache_dir") == (
        "cache_dir /proc/1 is not writable (its file system refuses new files); "
        "choose another folder or fix that one"
    )
    assert "/proc/1/a/b cannot be created: /proc/1 is not writable" in error_of(
        check_writable_dir, "/proc/1/a/b", "cache_dir"
    )


def test_writable_dir_through_a_broken_link(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    assert f"passes through a broken link ({tmp_path}/link)" in error_of(
        check_writable_dir, tmp_path / "link" / "cache", "cache_dir"
    )


def test_writable_file(tmp_path, blocker):
    check_writable_file(blocker, "Optuna storage")  # exists: appending changes nothing
    assert blocker.read_text() == "text,label\n"
    check_writable_file(tmp_path / "new" / "x.db", "Optuna storage")
    assert not (tmp_path / "new").exists()
    assert f"Optuna storage {tmp_path} is a folder, not a file" in error_of(
        check_writable_file, tmp_path, "Optuna storage"
    )


# --- Optuna storage -----------------------------------------------------------------


@pytest.fixture
def database() -> Iterator[str]:
    """A throwaway PostgreSQL database, dropped afterwards."""
    with throwaway_databases("preflight") as urls:
        yield urls["preflight"]


def test_storage_sqlite_through_a_file(blocker):
    assert error_of(check_storage, f"sqlite:///{blocker}/x.db") == (
        f"Optuna storage {blocker}/x.db is under a file ({blocker} is a regular file); "
        "choose another path for --storage or fix that one"
    )
    assert "is under a file" in error_of(check_storage, f"sqlite:///{blocker}/a/b/x.db")


def test_storage_journal_that_refuses_files(tmp_path):
    check_storage(f"journal:///{tmp_path}/j/optuna.log")
    assert not (tmp_path / "j").exists()
    assert "Optuna storage /proc/1/optuna.log cannot be created" in error_of(
        check_storage, "journal:////proc/1/optuna.log"
    )


def test_storage_postgresql_connects(database):
    check_storage(database)
    assert table_count(database) == 0


def test_storage_postgresql_refused():
    port = closed_port()
    url = f"postgresql://postgres:secret@127.0.0.1:{port}/test"
    message = error_of(check_storage, url)
    assert message == (
        f"Optuna storage postgresql://postgres:***@127.0.0.1:{port}/test is not reachable "
        f"(connection refused at 127.0.0.1:{port}); start the database server, create the "
        "database, or fix --storage"
    )


def test_storage_postgresql_missing_database():
    message = error_of(check_storage, f"{SERVER}/harness_no_such_db")
    assert '(database "harness_no_such_db" does not exist)' in message


def test_storage_exists_never_creates_tables(database):
    assert storage_exists(database) is False
    assert table_count(database) == 0, "looking must not create Optuna's tables"
    optuna.create_study(study_name="s", storage=sqlalchemy_url(database))
    assert storage_exists(database) is True


def test_storage_exists_for_files_and_missing_databases(tmp_path):
    assert storage_exists(f"sqlite:///{tmp_path}/optuna.db") is False
    assert storage_exists(f"journal:///{tmp_path}/optuna.log") is False
    (tmp_path / "optuna.log").write_text("")
    assert storage_exists(f"journal:///{tmp_path}/optuna.log") is True
    assert tree(tmp_path) == {"optuna.log"}
    assert storage_exists(f"{SERVER}/harness_no_such_db") is False
    port = closed_port()
    assert "connection refused" in error_of(
        storage_exists, f"postgresql://postgres@127.0.0.1:{port}/test"
    )


# --- MLflow tracking ----------------------------------------------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_tracking_server_unreachable():
    port = closed_port()
    assert error_of(check_tracking, f"http://127.0.0.1:{port}") == (
        f"MLflow tracking server at http://127.0.0.1:{port} is not reachable "
        "(connection refused); start it or fix --tracking-uri"
    )


def test_tracking_server_answers_health(http_server):
    check_tracking(http_server)
    check_tracking(http_server + "/")


def test_tracking_server_that_is_not_mlflow(http_server, monkeypatch):
    monkeypatch.setattr(_Health, "status", 404)
    assert "answered GET /health with HTTP 404" in error_of(check_tracking, http_server)


def test_tracking_server_that_never_answers(monkeypatch):
    """A listening socket that never accepts: the check gives up after its timeout."""
    monkeypatch.setattr(preflight, "CONNECT_TIMEOUT_S", 1)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        assert "is not reachable (no answer within 1 s)" in error_of(check_tracking, url)


def test_tracking_sqlite_paths(tmp_path, blocker):
    check_tracking(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert not (tmp_path / "mlruns").exists()
    assert error_of(check_tracking, f"sqlite:///{blocker}/mlflow.db") == (
        f"MLflow tracking store {blocker}/mlflow.db is under a file ({blocker} is a regular "
        "file); choose another path for --tracking-uri or fix that one"
    )


def test_bounded_mlflow_retries_fail_fast(monkeypatch):
    """MLflow's defaults retry a vanished server for about four minutes; bounded, a
    request fails after about 15 s."""
    for name in preflight.MLFLOW_RETRY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # the user's choice wins
    assert bound_mlflow_retries() == {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    }
    client = MlflowClient(f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    with pytest.raises(Exception, match="Max retries exceeded"):
        client.get_run("0123456789abcdef0123456789abcdef")
    assert time.monotonic() - started < 25
