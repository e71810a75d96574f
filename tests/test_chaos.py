"""Chaos: three workers on one study while workers are SIGKILLed and the tracking server
goes away (issue 12, point 6).

Real PostgreSQL holds the Optuna study, a real ``mlflow server`` (PostgreSQL backend,
served artifacts) holds the runs, and a tiny BERT keeps each trial short. At seeded
moments (chosen by the number of finished trials, plus a seeded delay so the blow lands
mid-trial) one worker is SIGKILLed and restarted, later another, and once the MLflow
server is stopped and restarted on the same port. A worker that stops by itself (the
server it needed was gone) is restarted too, as an operator or a job scheduler would.
When the study is done, its records must be whole: exactly the target of finished
trials, one MLflow child run per Optuna trial, no run left RUNNING, one parent, and
every complete trial's weights reproducing the predictions it logged.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness import load_run
from harness.studyfile.urls import sqlalchemy_url
from harness.tracking.preflight import MLFLOW_RETRY_ENV
from tests.conftest import (
    free_port,
    study_yaml,
    throwaway_databases,
    wait_until_healthy,
    write_synthetic_csv,
)

N_TRIALS = 30
N_WORKERS = 3
SEED = 2024
#: the study's stopping rule names trials that started after the target was covered
NOT_NEEDED_PREFIX = "not needed"
SEARCH = textwrap.dedent(
    """\
    search:
      layers: [[0, 1], [1], [0]]
      heads: [all, [0, 2]]
      reducer: [sum, max]
      lr: {low: 1.0e-3, high: 1.0e-2, log: true}
      classifier:
        gru: {hidden_size: 8}
    """
)

pytestmark = pytest.mark.slow


@pytest.fixture
def databases() -> Iterator[dict[str, str]]:
    """Fresh databases for Optuna and for MLflow's backend store; dropped afterwards."""
    with throwaway_databases("chaos_optuna", "chaos_mlflow") as urls:
        yield {"optuna": urls["chaos_optuna"], "mlflow": urls["chaos_mlflow"]}


class MlflowServer:
    """``mlflow server`` on one loopback port, which can be stopped and started again."""

    def __init__(self, backend: str, folder: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.backend, self.folder = backend, folder
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.folder / f"mlflow-server-{self.starts}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("mlflow")),
                "server",
                "--backend-store-uri",
                sqlalchemy_url(self.backend),
                "--serve-artifacts",
                "--artifacts-destination",
                str(self.folder / "mlartifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if not wait_until_healthy(self.url, self.proc, 180):
            log_text = (self.folder / f"mlflow-server-{self.starts}.log").read_text()[-3000:]
            pytest.fail(f"mlflow server did not start:\n{log_text}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def mlflow_server(databases, tmp_path) -> Iterator[MlflowServer]:
    server = MlflowServer(databases["mlflow"], tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Figures:
    """What happened, printed at the end whatever the outcome."""

    kills: list[str] = field(default_factory=list)
    restarts: int = 0
    self_exits: list[str] = field(default_factory=list)
    outage_s: float = 0.0
    wall_s: float = 0.0

    def show(self, study: optuna.Study, checks: dict[str, bool]) -> str:
        states = Counter(t.state.name for t in study.trials)
        reasons = Counter(
            t.user_attrs.get("fail_reason", "(none recorded)")[:70]
            for t in study.trials
            if t.state == TrialState.FAIL
        )
        lines = [
            f"chaos: {N_WORKERS} workers, {N_TRIALS} trials, wall {self.wall_s:.0f} s",
            f"  SIGKILLs: {len(self.kills)} ({'; '.join(self.kills)})",
            f"  worker restarts: {self.restarts}; workers that stopped by themselves: "
            f"{len(self.self_exits)} ({'; '.join(self.self_exits) or '-'})",
            f"  MLflow server outage: {self.outage_s:.1f} s (stop to healthy again)",
            f"  Optuna trials: {len(study.trials)} {dict(states)}",
            f"  failed trials by reason: {dict(reasons) or '-'}",
            "  checks: " + ", ".join(f"{k}={'ok' if v else 'FAILED'}" for k, v in checks.items()),
        ]
        return "\n".join(lines)


class Workers:
    """``N_WORKERS`` copies of ``harness study run``; a slot whose process ended (killed,
    or stopped with an error) can be restarted."""

    def __init__(self, command: list[str], env: dict[str, str], folder: Path):
        self.command, self.env, self.folder = command, env, folder
        self.procs: list[subprocess.Popen] = []
        self.generation = [0] * N_WORKERS
        self.done = [False] * N_WORKERS
        for slot in range(N_WORKERS):
            self.procs.append(self._spawn(slot))

    def _spawn(self, slot: int) -> subprocess.Popen:
        self.generation[slot] += 1
        log = open(self.folder / f"worker{slot}-{self.generation[slot]}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder
        )
        log.close()
        return proc

    def restart(self, slot: int) -> None:
        self.procs[slot] = self._spawn(slot)

    def alive(self) -> list[int]:
        return [s for s, p in enumerate(self.procs) if p.poll() is None]

    def log_tail(self, slot: int, chars: int = 400) -> str:
        path = self.folder / f"worker{slot}-{self.generation[slot]}.log"
        return path.read_text()[-chars:].strip().replace("\n", " | ")

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _n_complete(optuna_db: str) -> int:
    """Finished trials, read with one SQL query (polled often; opening an Optuna study
    each time would cost more than the trials)."""
    import psycopg2

    with psycopg2.connect(optuna_db, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'")
        count = cur.fetchone()[0]
    conn.close()
    return count


def _tables_exist(optuna_db: str) -> bool:
    import psycopg2

    with psycopg2.connect(optuna_db, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('public.trials') IS NOT NULL")
        exists = cur.fetchone()[0]
    conn.close()
    return exists


def test_chaos_kills_and_a_tracking_outage_leave_whole_records(
    tmp_path, tiny_bert, databases, mlflow_server
):
    rng = random.Random(SEED)
    # (finished trials at which it happens, what) in the order they will fire
    events = sorted(
        [
            (rng.randint(3, 7), "kill"),
            (rng.randint(11, 15), "outage"),
            (rng.randint(18, 23), "kill"),
        ]
    )
    data = write_synthetic_csv(tmp_path / "data.csv")
    study_file = study_yaml(
        tmp_path,
        name="chaos",
        dataset=str(data),
        encoder=str(tiny_bert),
        n_trials=N_TRIALS,
        epochs=1,
        extra="pruner: {name: none}\n",
        search=SEARCH,
    )
    command = [
        sys.executable,
        "-m",
        "harness",
        "study",
        "run",
        str(study_file),
        "--storage",
        databases["optuna"],
        "--tracking-uri",
        mlflow_server.url,
        "--quiet",
    ]
    env = {
        **os.environ,
        **MLFLOW_RETRY_ENV,  # what the CLI sets by default (harness.tracking.preflight)
        "HARNESS_HEARTBEAT_INTERVAL": "1",
        "HARNESS_EXTRACT_THREADS": "1",
    }
    figures = Figures()
    started = time.monotonic()
    workers = Workers(command, env, tmp_path)
    try:
        _supervise(workers, events, rng, databases["optuna"], mlflow_server, figures, started)
    finally:
        workers.kill_all()
    figures.wall_s = time.monotonic() - started

    study = optuna.load_study(study_name="chaos", storage=sqlalchemy_url(databases["optuna"]))
    checks, details = _check_records(study, mlflow_server.url, data, tmp_path)
    print(figures.show(study, checks))
    for name, ok in checks.items():
        assert ok, f"{name}: {details.get(name, '')}\n{figures.show(study, checks)}"


def _supervise(workers, events, rng, optuna_db, server, figures, started) -> None:
    """Fire the events as the study reaches them; restart ended workers until the study
    has its trials and every worker has ended cleanly."""
    deadline = started + 400
    pending = list(events)
    while True:
        assert time.monotonic() < deadline, "chaos study did not finish in 400 s"
        complete = _n_complete(optuna_db) if _tables_exist(optuna_db) else 0
        if pending and complete >= pending[0][0]:
            at, what = pending.pop(0)
            time.sleep(rng.uniform(0.0, 0.8))  # land mid-trial, not at a trial boundary
            if what == "kill":
                alive = workers.alive()
                if alive:
                    slot = rng.choice(alive)
                    workers.procs[slot].send_signal(signal.SIGKILL)
                    workers.procs[slot].wait()
                    figures.kills.append(f"worker {slot} at {at} complete")
                    workers.restart(slot)
                    figures.restarts += 1
            else:
                down = time.monotonic()
                server.stop()
                time.sleep(rng.uniform(2.0, 4.0))
                server.start()
                figures.outage_s = time.monotonic() - down
        for slot, proc in enumerate(workers.procs):
            if proc.poll() is None or workers.done[slot]:
                continue
            if proc.returncode == 0:
                workers.done[slot] = True
            else:
                figures.self_exits.append(
                    f"worker {slot} status {proc.returncode}: {workers.log_tail(slot, 200)}"
                )
                workers.restart(slot)
                figures.restarts += 1
        if all(workers.done) and not pending:
            return
        if all(workers.done) and pending:
            pending.clear()  # the study finished before the last event's moment
            return
        time.sleep(0.2)


def _check_records(
    study: optuna.Study, tracking_uri: str, data: Path, tmp_path: Path
) -> tuple[dict[str, bool], dict[str, str]]:
    trials = study.trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    not_needed = {
        t.number
        for t in trials
        if str(t.user_attrs.get("fail_reason", "")).startswith(NOT_NEEDED_PREFIX)
    }
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("chaos")
    runs = client.search_runs(
        [experiment.experiment_id], run_view_type=ViewType.ALL, max_results=1000
    )
    parents = [r for r in runs if r.data.tags.get("harness.role") == "study"]
    children = [r for r in runs if r.data.tags.get("harness.role") == "trial"]
    per_number = Counter(int(r.data.tags["optuna.trial_number"]) for r in children)
    # a trial that started after the target was covered never trains: no run is right
    wrong = {
        t.number: per_number.get(t.number, 0)
        for t in trials
        if per_number.get(t.number, 0) != (0 if t.number in not_needed else 1)
    }
    orphans = sorted(set(per_number) - {t.number for t in trials})
    running = [
        f"{r.data.tags.get('harness.role')} {r.data.tags.get('optuna.trial_number', '')}"
        for r in runs
        if r.info.status == "RUNNING"
    ]
    mismatched = _reproduce(complete, client, tracking_uri, data, tmp_path)
    details = {
        "finished": f"{len(complete)} complete, want {N_TRIALS}",
        "one_run_per_trial": f"trial number -> child runs, where not 1: {wrong}; "
        f"runs of no trial: {orphans}",
        "none_running": f"RUNNING: {running}",
        "one_parent": f"parents: {[p.info.run_id for p in parents]}",
        "weights_reproduce": f"mismatched: {mismatched}",
    }
    checks = {
        "finished": len(complete) == N_TRIALS,
        "one_run_per_trial": not wrong and not orphans,
        "none_running": not running,
        "one_parent": [p.info.run_id for p in parents]
        == [study.user_attrs.get("mlflow_parent_run_id")],
        "weights_reproduce": not mismatched,
    }
    return checks, details


def _reproduce(complete, client, tracking_uri: str, data: Path, tmp_path: Path) -> list:
    """Trials whose reloaded weights do not give the test predictions they logged."""
    with open(data) as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    bad = []
    for trial in complete:
        run_id = trial.user_attrs["mlflow_run_id"]
        folder = tmp_path / "check" / run_id
        folder.mkdir(parents=True)
        try:
            local = client.download_artifacts(run_id, "predictions/test.csv", str(folder))
            rows = list(csv.DictReader(open(local)))
            run = load_run(f"runs:/{run_id}/model", tracking_uri=tracking_uri)
            probs = run.predict_proba([texts[int(r["row_id"])] for r in rows])
        except Exception as exc:  # noqa: BLE001 - reported with the trial number
            bad.append((trial.number, f"{type(exc).__name__}: {str(exc)[:100]}"))
            continue
        logged = np.array([float(r["probability"]) for r in rows])
        if not np.allclose(probs, logged, atol=1e-5, rtol=0):
            bad.append((trial.number, float(np.abs(probs - logged).max())))
    return bad
