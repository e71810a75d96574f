"""``harness ui`` and ``harness dashboard``: a local web server in its own process group,
stopped as a whole on Ctrl-C or SIGTERM, plus the links printed to open it."""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.cli.commands import require_store
from harness.core import HarnessError


class _Stop(Exception):
    """SIGINT or SIGTERM arrived while a server ran."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signum)


def _stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the whole process group of ``proc`` and wait until none of it is left.

    Whatever is still there after ``grace`` seconds gets SIGKILL. A zombie still counts
    as a member for ``killpg``, hence the deadline rather than an endless wait."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, or it stays a zombie in the group
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.wait()
                return
            time.sleep(0.1)
    proc.wait()


def _serve(cmd: list[str], what: str) -> int:
    """Run a server in its own process group until it exits or SIGINT/SIGTERM arrives.

    ``mlflow ui`` and optuna-dashboard start worker processes (uvicorn, gunicorn):
    signalling only the first would leave the others answering on the port. In its own
    session the server does not get the terminal's Ctrl-C either, so this process stops
    the whole group on either signal and returns only when it is gone."""
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _raise_stop) for sig in stops}
    proc = None
    try:
        proc = subprocess.Popen(cmd, start_new_session=True)
        return proc.wait()
    except _Stop as stop:
        print(f"harness: stopping {what}", file=sys.stderr)
        return 128 + stop.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc is not None:
            _stop_group(proc)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _base_url(host: str, port: int) -> str:
    """The address a browser on this machine opens (``0.0.0.0`` cannot be browsed)."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _runs_table_links(uri: str, base: str) -> list[tuple[str, str]]:
    """(study, link) for each experiment: the runs table in MLflow's model-training view.

    Without ``workflowType=machine_learning`` MLflow 3 opens an experiment on the GenAI
    traces overview, which is empty for the harness."""
    from mlflow import MlflowClient

    experiments = MlflowClient(tracking_uri=uri).search_experiments()
    return [
        (e.name, f"{base}/#/experiments/{e.experiment_id}/runs?workflowType=machine_learning")
        for e in experiments
        if e.name != "Default"
    ]


def cmd_ui(args: argparse.Namespace) -> int:
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlruns/mlflow.db")
    require_store(uri, "--tracking-uri", "MLflow store")
    if not _is_loopback(args.host):
        print(
            f"harness: warning: --host {args.host} lets other machines reach the MLflow UI, "
            "which has no login: anyone who reaches the port can read and delete runs. Keep "
            "it inside a trusted network, or serve it with MLflow's basic auth instead: "
            f"MLFLOW_AUTH_ADMIN_PASSWORD=… mlflow ui --app-name basic-auth --backend-store-uri "
            f"{uri} --host {args.host} --port {args.port}",
            file=sys.stderr,
        )
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    # one worker: a personal UI needs no more, and it starts in seconds instead of a minute
    cmd = [mlflow, "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    cmd += ["--workers", "1"]
    base = _base_url(args.host, args.port)
    print(f"MLflow UI on {base}  (Ctrl-C to stop)")
    if not uri.startswith(("http://", "https://")):
        for name, link in _runs_table_links(uri, base):
            print(f"  runs of {name}: {link}")
    sys.stdout.flush()
    return _serve(cmd, "the MLflow UI")


def cmd_dashboard(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("optuna_dashboard") is None:
        raise HarnessError(
            "optuna-dashboard is not installed; install the extra with: "
            'pip install -e ".[dashboard]"'
        )
    from harness.studyfile import local_path, sqlalchemy_url
    from harness.tracking import make_storage

    require_store(args.storage, "--storage", "Optuna storage")
    storage = make_storage(args.storage)
    names = [s.study_name for s in storage.get_all_studies()]
    if args.name is not None and args.name not in names:
        raise HarnessError(
            f"no study named {args.name!r} in {args.storage}; studies there: "
            f"{', '.join(names) or '(none)'}"
        )
    if not _is_loopback(args.host):
        print(
            f"harness: warning: --host {args.host} lets other machines reach optuna-dashboard, "
            "which has no login: anyone who reaches the port can change the study. Keep it "
            f"on 127.0.0.1 and browse through a tunnel: ssh -L {args.port}:127.0.0.1:"
            f"{args.port} THIS-HOST",
            file=sys.stderr,
        )
    dashboard = shutil.which("optuna-dashboard") or str(
        Path(sys.executable).with_name("optuna-dashboard")
    )
    if args.storage.startswith("journal:"):
        target = [str(local_path(args.storage)), "--storage-class", "JournalFileStorage"]
    else:
        target = [sqlalchemy_url(args.storage)]
    cmd = [dashboard, *target, "--host", args.host, "--port", str(args.port), "--quiet"]
    base = _base_url(args.host, args.port)
    print(f"optuna-dashboard on {base}/dashboard  (Ctrl-C to stop)")
    for name in names if args.name is None else [args.name]:
        study_id = storage.get_study_id_from_name(name)
        print(f"  study {name}: {base}/dashboard/studies/{study_id}")
    sys.stdout.flush()
    return _serve(cmd, "optuna-dashboard")
