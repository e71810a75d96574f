"""`harness ui` serves the project's store and binds to loopback unless told otherwise."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import study_yaml, wait_until_healthy, write_synthetic_csv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listeners(port: int) -> list[str]:
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


@pytest.mark.slow
def test_ui_serves_the_store_on_loopback_only(tmp_path, tiny_bert):
    from harness.study import run_study

    data = write_synthetic_csv(tmp_path / "data.csv", n=80)
    run_study(
        study_yaml(
            tmp_path, name="ui", dataset=str(data), encoder=str(tiny_bert), n_trials=1, epochs=1
        ),
        progress=False,
    )
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness",
            "ui",
            "--port",
            str(port),
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_until_healthy(url, proc, 120), "the UI did not answer within 120 s"
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search",
            data=b'{"max_results": 10}',
            headers={"Content-Type": "application/json"},
        )
        body = urllib.request.urlopen(req, timeout=10).read().decode()
        assert '"ui"' in body
        # 0100007F is 127.0.0.1 in /proc's little-endian hex; nothing on 0.0.0.0 or ::
        assert _listeners(port) == ["0100007F"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
