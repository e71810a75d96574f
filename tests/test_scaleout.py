"""Several machines, one study, on loopback: Optuna on PostgreSQL, MLflow behind
``mlflow server`` (PostgreSQL backend, served artifacts), two workers that share nothing
else (each its own working folder and attention cache). docs/scaleout.md gives the same
commands for real machines.

PostgreSQL must be running (CI's machine starts it): ``HARNESS_TEST_POSTGRES`` names a
database the tests may connect to in order to create and drop their own (default
``postgresql://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness import load_run
from harness.study.workers import PARENT_ATTR
from harness.studyfile.urls import sqlalchemy_url
from harness.tracking.storage import make_storage
from tests.conftest import (
    free_port,
    study_yaml,
    throwaway_databases,
    wait_until_healthy,
    write_synthetic_csv,
)

N_TRIALS = 4


@pytest.fixture
def databases() -> Iterator[dict[str, str]]:
    """Two fresh databases, one for Optuna and one for MLflow's backend store."""
    with throwaway_databases("optuna", "mlflow") as urls:
        yield urls


@pytest.fixture
def mlflow_server(databases, tmp_path) -> Iterator[str]:
    """``mlflow server`` on a free loopback port, answering /health; stopped afterwards
    with all its processes (it runs in a session of its own)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "mlflow-server.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--backend-store-uri",
            sqlalchemy_url(databases["mlflow"]),
            "--serve-artifacts",
            "--artifacts-destination",
            str(tmp_path / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        if not wait_until_healthy(url, server, 180):
            pytest.fail(f"mlflow server did not start:\n{_tail(tmp_path / 'mlflow-server.log')}")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text()[-chars:]


def test_workers_opening_a_new_database_at_once_all_get_the_storage(databases):
    """Their first connections race to create Optuna's tables; the losers must retry,
    not stop with PostgreSQL's duplicate-key error."""
    barrier = threading.Barrier(4)
    results: list = []

    def open_storage() -> None:
        barrier.wait(timeout=30)
        try:
            results.append(make_storage(databases["optuna"]))
        except Exception as exc:  # reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=open_storage) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 4 and not [r for r in results if isinstance(r, Exception)], results


def test_two_workers_on_postgresql_and_an_mlflow_server(
    tmp_path, tiny_bert, databases, mlflow_server
):
    data = write_synthetic_csv(tmp_path / "data.csv")
    path = study_yaml(
        tmp_path,
        name="scaleout",
        dataset=str(data),
        encoder=str(tiny_bert),
        n_trials=N_TRIALS,
        epochs=2,
        extra="pruner: {name: none}\n",
    )
    # each "machine" keeps its attention cache (and worker leases) to itself
    path.write_text(
        "".join(line for line in path.read_text().splitlines(True) if "cache_dir" not in line)
    )
    command = [
        sys.executable,
        "-m",
        "harness",
        "study",
        "run",
        str(path),
        "--storage",
        databases["optuna"],
        "--tracking-uri",
        mlflow_server,
        "--quiet",
    ]
    workers = []
    for machine in ("a", "b"):
        home = tmp_path / machine
        home.mkdir()
        workers.append(
            subprocess.Popen(
                command,
                cwd=home,
                env={**os.environ, "HARNESS_CACHE_DIR": str(home / "cache")},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-3000:]

    study = optuna.load_study(study_name="scaleout", storage=make_storage(databases["optuna"]))
    trials = study.trials
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == N_TRIALS
    assert len({t.number for t in trials}) == len(trials)

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("scaleout")
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
    parents = [r for r in runs if r.data.tags["harness.role"] == "study"]
    children = [r for r in runs if r.data.tags["harness.role"] == "trial"]
    assert [p.info.run_id for p in parents] == [study.user_attrs[PARENT_ATTR]]
    with_runs = [t for t in trials if "mlflow_run_id" in t.user_attrs]
    assert sorted(c.info.run_id for c in children) == sorted(
        t.user_attrs["mlflow_run_id"] for t in with_runs
    )
    by_run = {c.info.run_id: c for c in children}
    for trial in finished:
        child = by_run[trial.user_attrs["mlflow_run_id"]]
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.data.tags["optuna.trial_number"] == str(trial.number)
        # the objective is the best epoch's AUC; val_auc is the curve (its last epoch)
        assert child.data.metrics["best_val_auc"] == pytest.approx(trial.value)

    # the best trial's weights, through the server, predict what the trial logged
    best = study.best_trial.user_attrs["mlflow_run_id"]
    local = client.download_artifacts(best, "predictions/test.csv", str(tmp_path))
    rows = list(csv.DictReader(open(local)))
    with open(data) as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    run = load_run(f"runs:/{best}/model", tracking_uri=mlflow_server)
    probs = run.predict_proba([texts[int(r["row_id"])] for r in rows])
    logged = np.array([float(r["probability"]) for r in rows])
    np.testing.assert_allclose(probs, logged, atol=1e-5)


CLUSTER_SEARCH = """\
search:
  layers: [[0, 1]]
  heads: [all, {top: 2}]
  view: stats
  reducer: stack
  classifier:
    linear: {c: 0.5}
"""


def machines(path: Path, storage: str, tracking: str) -> Callable[[str], subprocess.Popen]:
    """``start(machine)``: a worker of the study file at ``path`` (its ``cache_dir`` line
    dropped) with a working folder and cache folder of its own, standing in for a machine;
    stderr piped."""
    path.write_text(
        "".join(line for line in path.read_text().splitlines(True) if "cache_dir" not in line)
    )
    command = [sys.executable, "-m", "harness", "study", "run", str(path)]
    command += ["--storage", storage, "--tracking-uri", tracking]

    def start(machine: str) -> subprocess.Popen:
        home = path.parent / machine
        home.mkdir()
        return subprocess.Popen(
            command,
            cwd=home,
            env={**os.environ, "HARNESS_CACHE_DIR": str(home / "cache")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    return start


def test_the_cache_is_extracted_once_per_cluster_even_when_its_extractor_dies(
    tmp_path, tiny_bert, databases, mlflow_server
):
    """Three "machines" (own working folder, own cache folder): A dies while extracting;
    B and C start together; one of them takes over A's lease and extracts, the other
    downloads the entry it logged. The head sweep and the baselines run once too."""
    data = write_synthetic_csv(tmp_path / "data.csv", n=12000)
    path = study_yaml(
        tmp_path,
        name="cluster",
        dataset=str(data),
        encoder=str(tiny_bert),
        n_trials=2,
        extra="pruner: {name: none}\nbaselines: [majority, length]\n",
        search=CLUSTER_SEARCH,
    )
    start = machines(path, databases["optuna"], mlflow_server)
    a = start("a")
    seen: list[str] = []
    for line in a.stderr:  # killed the moment it says it extracts, lease in hand
        seen.append(line)
        if "extracting attention of" in line:
            a.kill()
            break
    a.wait(timeout=60)
    assert a.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
    client = MlflowClient(mlflow_server)
    cache_experiment = client.get_experiment_by_name("harness-cache")
    if cache_experiment is not None:  # A logged nothing: it died before the entry existed
        assert not client.search_runs([cache_experiment.experiment_id])

    b, c = start("b"), start("c")
    logs = [w.communicate(timeout=400)[1] for w in (b, c)]
    for worker, err in zip((b, c), logs, strict=True):
        assert worker.returncode == 0, err[-3000:]
    extracted = [err for err in logs if "extracting attention of" in err]
    downloaded = [err for err in logs if "downloaded attention cache entry" in err]
    assert len(extracted) == 1 and len(downloaded) == 1, [e[-1500:] for e in logs]
    assert "checksums verified, not extracted here" in downloaded[0]

    cache_runs = client.search_runs([client.get_experiment_by_name("harness-cache").experiment_id])
    assert len(cache_runs) == 1 and cache_runs[0].info.status == "FINISHED"
    run = cache_runs[0]
    assert run.data.tags["harness.role"] == "cache" and run.data.params["sentences"] == "12000"
    key = run.data.tags["harness.cache_key"]
    for machine in "bc":
        assert (tmp_path / machine / "cache" / key / "meta.json").exists()

    experiment = client.get_experiment_by_name("cluster")
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
    roles = [r.data.tags["harness.role"] for r in runs if r.info.status == "FINISHED"]
    assert roles.count("probe") == 1  # the head sweep
    assert roles.count("baseline") == 2  # majority and length, each once


def test_the_fine_tuned_encoder_is_trained_once_per_cluster(
    tmp_path, tiny_bert, databases, mlflow_server
):
    """Two "machines" start a fine-tuning study together: one fine-tunes the encoder and
    extracts its attention, the other downloads both; one encoder run under the parent."""
    data = write_synthetic_csv(tmp_path / "data.csv", n=600)
    path = study_yaml(
        tmp_path,
        name="tuned",
        dataset=str(data),
        encoder=str(tiny_bert),
        n_trials=2,
        extra="pruner: {name: none}\n",
        search=CLUSTER_SEARCH,
    )
    finetune = "finetune: {epochs: 1, lr: 1.0e-3, batch_size: 16, max_len: 32}"
    path.write_text(path.read_text().replace("batch_size: 16}", f"batch_size: 16, {finetune}}}", 1))
    start = machines(path, databases["optuna"], mlflow_server)
    b, c = start("b"), start("c")
    logs = [w.communicate(timeout=400)[1] for w in (b, c)]
    for worker, err in zip((b, c), logs, strict=True):
        assert worker.returncode == 0, err[-3000:]
    tuned = [err for err in logs if "fine-tuning " in err]
    fetched = [err for err in logs if "downloaded fine-tuned encoder" in err]
    assert len(tuned) == 1 and len(fetched) == 1, [e[-1500:] for e in logs]
    assert "checksums verified, not fine-tuned here" in fetched[0]
    assert "downloaded attention cache entry" in fetched[0]
    assert "extracting attention of" not in fetched[0]

    client = MlflowClient(mlflow_server)
    cache_runs = client.search_runs([client.get_experiment_by_name("harness-cache").experiment_id])
    kinds = sorted(r.data.tags["harness.cache_kind"] for r in cache_runs)
    assert kinds == ["attention", "finetuned"]
    assert all(r.info.status == "FINISHED" for r in cache_runs)
    key = next(r for r in cache_runs if r.data.tags["harness.cache_kind"] == "finetuned")
    key = key.data.tags["harness.cache_key"]
    for machine in "bc":
        assert (tmp_path / machine / "cache" / "finetuned" / key / "finetune.json").exists()
    experiment = client.get_experiment_by_name("tuned")
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
    names = [r.info.run_name for r in runs if r.info.status == "FINISHED"]
    assert names.count("encoder-finetune") == 1 and names.count("baseline-finetuned") == 1
