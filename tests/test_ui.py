"""`harness ui` and `harness dashboard`: real servers over a real store, on loopback only,
and nothing left running after SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from harness.cli import main
from tests.conftest import free_port, study_yaml, wait_until_healthy, write_synthetic_csv


def listeners(port: int) -> list[str]:
    """Local addresses listening on ``port`` (from /proc, no extra tools)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:
                found.append(addr)
    return found


def make_store(tmp_path: Path, tiny_bert: Path, name: str = "ui") -> Path:
    """A finished two-trial study: its Optuna and MLflow stores live under ``tmp_path``."""
    from harness.study.study import run_study

    data = write_synthetic_csv(tmp_path / "data.csv", n=80)
    run_study(
        study_yaml(
            tmp_path, name=name, dataset=str(data), encoder=str(tiny_bert), n_trials=2, epochs=1
        ),
        progress=False,
    )
    return tmp_path


def start(args: list[str], log: Path) -> subprocess.Popen:
    """``harness ARGS`` in the background, its stdout and stderr going to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "harness", *args], stdout=out, stderr=subprocess.STDOUT
        )


def wait_for_line(log: Path, prefix: str, proc: subprocess.Popen, timeout: float = 60) -> str:
    """The first line of ``log`` that starts with ``prefix`` (stripped), once it is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text().splitlines():
            if line.strip().startswith(prefix):
                return line.strip()
        time.sleep(0.2)
    raise AssertionError(f"no line starting with {prefix!r} in:\n{log.read_text()}")


def assert_stops_cleanly(proc: subprocess.Popen, port: int) -> None:
    """SIGTERM to the harness process alone ends every process it started and frees the
    port within seconds."""
    (server,) = psutil.Process(proc.pid).children()
    started = [server, *server.children(recursive=True)]
    try:
        group = server.pid  # the server leads its own process group
        assert os.getpgid(server.pid) == group != os.getpgid(proc.pid)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        _, alive = psutil.wait_procs(started, timeout=5)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
        # also the workers a server starts after it answers (mlflow's job consumers)
        left = [p for p in psutil.process_iter() if _live_member(p, group)]
        assert not left, left
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))
        assert listeners(port) == []
    finally:  # a failed stop must not leave servers behind for the next test
        for leftover in [*started, *[p for p in psutil.process_iter() if _live_member(p, group)]]:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()


def _live_member(process: psutil.Process, group: int) -> bool:
    try:
        return os.getpgid(process.pid) == group and process.status() != psutil.STATUS_ZOMBIE
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False


def stop(proc: subprocess.Popen) -> None:
    """Cleanup after a failed assertion: end ``proc`` and whatever it started, even when
    its own stopping is what failed."""
    if proc.poll() is not None:
        return
    started = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    for leftover in psutil.wait_procs(started, timeout=15)[1]:
        leftover.kill()


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_bert) -> Path:
    return make_store(tmp_path_factory.mktemp("ui-store"), tiny_bert)


@pytest.mark.slow
def test_ui_serves_the_store_on_loopback_and_stops_its_whole_group(store, tmp_path):
    port = free_port()
    log = tmp_path / "ui.log"
    proc = start(["ui", "--port", str(port), "--tracking-uri", f"sqlite:///{store}/mlflow.db"], log)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_until_healthy(url, proc, 120), log.read_text()
        req = urllib.request.Request(
            f"{url}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=ui"
        )
        experiment_id = json.load(urllib.request.urlopen(req, timeout=10))["experiment"][
            "experiment_id"
        ]
        link = wait_for_line(log, "runs of ui:", proc)
        assert link == (
            f"runs of ui: {url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        )
        # 0100007F is 127.0.0.1 in /proc's little-endian hex; nothing on 0.0.0.0 or ::
        assert listeners(port) == ["0100007F"]
        assert_stops_cleanly(proc, port)
    finally:
        stop(proc)


def test_ui_on_another_host_warns_that_it_has_no_login(store, monkeypatch, capsys):
    served = []
    monkeypatch.setattr("harness.cli.serve._serve", lambda cmd, what: served.append(cmd) or 0)
    uri = f"sqlite:///{store}/mlflow.db"
    assert main(["ui", "--host", "0.0.0.0", "--port", "5123", "--tracking-uri", uri]) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1
    assert err.startswith("harness: warning: --host 0.0.0.0 lets other machines reach")
    assert "no login" in err and "--app-name basic-auth" in err and uri in err
    assert "runs of ui: http://127.0.0.1:5123/#/experiments/" in out
    assert served[0][-6:] == ["--host", "0.0.0.0", "--port", "5123", "--workers", "1"]


def test_ui_on_loopback_does_not_warn(store, monkeypatch, capsys):
    monkeypatch.setattr("harness.cli.serve._serve", lambda cmd, what: 0)
    assert main(["ui", "--tracking-uri", f"sqlite:///{store}/mlflow.db"]) == 0
    assert capsys.readouterr().err == ""


def test_ui_without_a_store_is_a_user_error(tmp_path, capsys):
    assert main(["ui", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness: error: no MLflow store at ") and err.count("\n") == 1
    assert not (tmp_path / "none.db").exists()


@pytest.mark.slow
def test_dashboard_lists_the_study_over_http_and_stops_its_whole_group(store, tmp_path):
    port = free_port()
    log = tmp_path / "dashboard.log"
    proc = start(
        ["dashboard", "ui", "--storage", f"sqlite:///{store}/optuna.db", "--port", str(port)], log
    )
    try:
        link = wait_for_line(log, "study ui:", proc)
        assert link.startswith(f"study ui: http://127.0.0.1:{port}/dashboard/studies/")
        deadline = time.monotonic() + 60
        studies = None
        while studies is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.load(r)["study_summaries"]
            except OSError:
                time.sleep(0.3)
        assert studies is not None, log.read_text()
        (study,) = studies
        assert study["study_name"] == "ui"
        assert link.endswith(f"/dashboard/studies/{study['study_id']}")
        assert listeners(port) == ["0100007F"]
        assert_stops_cleanly(proc, port)
    finally:
        stop(proc)


def test_dashboard_without_the_extra_says_how_to_install_it(store, monkeypatch, capsys):
    # None in sys.modules makes the module unimportable, as if it were not installed
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)
    assert main(["dashboard", "--storage", f"sqlite:///{store}/optuna.db"]) == 2
    assert capsys.readouterr().err == (
        "harness: error: optuna-dashboard is not installed; install the extra with: "
        'pip install -e ".[dashboard]"\n'
    )


def test_dashboard_of_an_unknown_study_is_a_user_error(store, capsys):
    assert main(["dashboard", "nope", "--storage", f"sqlite:///{store}/optuna.db"]) == 2
    assert capsys.readouterr().err == (
        f"harness: error: no study named 'nope' in sqlite:///{store}/optuna.db; studies there: ui\n"
    )
