"""Faults a long study meets: killed workers, damaged caches, failing trials, parallel
workers and copies of one command started together. Stores are real (SQLite, journal
file), processes are real where the fault needs one (SIGKILL, concurrency)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.attention import extract as attention
from harness.attention.cache import AttentionCache
from harness.attention.extract import cache_key, extract_attention
from harness.core.errors import HarnessError
from harness.encoders.load import load_encoder
from harness.study.study import run_study
from harness.study.workers import PARENT_ATTR, lease_dir
from harness.studyfile.schema import load_config
from harness.tracking.runs import Tracker
from harness.tracking.storage import WORKER_ATTR, WorkerLease, make_storage
from tests.conftest import study_yaml, write_synthetic_csv

MAX_LEN = 32
HEARTBEAT_S = 1  # HARNESS_HEARTBEAT_INTERVAL in these tests: stale after 3 s
#: one small reader, its learning rate fixed unless a test sets it
GRU_ONLY = textwrap.dedent(
    """\
    search:
      layers: [[0, 1], [1]]
      heads: all
      reducer: [sum, max]
      classifier:
        gru: {hidden_size: 16}
    """
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, Path]:
    """One folder (so one MLflow database and one attention cache) for the in-process
    studies of this module; each test names its own study."""
    tmp = tmp_path_factory.mktemp("resilience")
    return tmp, write_synthetic_csv(tmp / "data.csv")


def _study(workspace, tiny_bert, name: str, **kwargs) -> Path:
    tmp, data = workspace
    return study_yaml(tmp, name=name, dataset=str(data), encoder=str(tiny_bert), **kwargs)


def _runs(tracking_uri: str, name: str) -> tuple[MlflowClient, list, list]:
    """(client, parent runs, child runs) of a study's experiment, deleted runs included."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    parents = [r for r in runs if r.data.tags.get("harness.role") == "study"]
    children = [r for r in runs if r.data.tags.get("harness.role") == "trial"]
    return client, parents, children


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness", *args]


def _env(heartbeat_s: int) -> dict[str, str]:
    return {**os.environ, "HARNESS_HEARTBEAT_INTERVAL": str(heartbeat_s)}


# --- the attention cache under concurrency and faults -------------------------------------


@pytest.fixture(scope="module")
def encoder(tiny_bert):
    return load_encoder(str(tiny_bert))


@pytest.fixture(scope="module")
def texts(workspace) -> list[str]:
    lines = workspace[1].read_text().splitlines()[1:41]
    return [line.split(",")[0] for line in lines]


def _extract(encoder, texts: list[str], cache_dir: Path) -> AttentionCache:
    return extract_attention(
        encoder, texts, max_len=MAX_LEN, batch_size=16, cache_dir=cache_dir, progress=False
    )


EXTRACT_SCRIPT = """
import logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
from harness.attention.extract import extract_attention
from harness.encoders.load import load_encoder
encoder_path, cache_dir, texts_file, ready, go = sys.argv[1:]
encoder = load_encoder(encoder_path)
texts = Path(texts_file).read_text().splitlines()
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.01)
cache = extract_attention(encoder, texts, max_len=32, batch_size=16, cache_dir=cache_dir,
                          progress=False)
print("sentences", len(cache))
"""


def test_two_processes_needing_one_cache_extract_it_once(tmp_path, tiny_bert, texts):
    """Both start extracting at the same instant (a barrier file); the lock lets one
    extract while the other waits, then reuses the entry."""
    (tmp_path / "texts.txt").write_text("\n".join(texts))
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", EXTRACT_SCRIPT, str(tiny_bert), str(tmp_path / "cache"),
             str(tmp_path / "texts.txt"), str(tmp_path / f"ready{i}"), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]  # fmt: skip
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    go.touch()
    logs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    assert all(f"sentences {len(texts)}" in log for log in logs)
    assert sum("extracting attention of" in log for log in logs) == 1, logs
    assert sum("reusing cached attention" in log for log in logs) == 1, logs
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == [
        cache_key(load_encoder(str(tiny_bert)), texts, MAX_LEN)
    ]


@pytest.mark.parametrize("damage", ["truncated", "flipped byte"])
def test_a_damaged_layer_file_is_detected_at_open_and_rebuilt(
    tmp_path, encoder, texts, damage, caplog, monkeypatch
):
    cache = _extract(encoder, texts, tmp_path)
    want = np.asarray(cache.features([0, 1], "all", "sum")[0])
    layer = cache.path / "layer_01.bin"
    data = bytearray(layer.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x40  # same size: only the checksum can tell
    layer.write_bytes(bytes(data))
    monkeypatch.setattr(attention, "_VERIFIED", set())  # as a new process would open it
    with caplog.at_level(logging.INFO, logger="harness"):
        again = _extract(encoder, texts, tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("corrupt" in w and "layer_01.bin" in w for w in warnings), warnings
    assert "extracting attention of" in caplog.text
    again.verify()
    np.testing.assert_array_equal(again.features([0, 1], "all", "sum")[0], want)


def test_a_half_written_entry_is_never_read(tmp_path, encoder, texts, caplog, monkeypatch):
    reference = _extract(encoder, texts, tmp_path / "reference").features([0, 1], "all", "max")[0]
    root = tmp_path / "cache"

    # 1. extraction fails half-way: no entry, no temporary folder left
    real = attention.forward_batches

    def fails_after_one_batch(*args, **kwargs):
        batches = real(*args, **kwargs)
        yield next(batches)
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(attention, "forward_batches", fails_after_one_batch)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        _extract(encoder, texts, root)
    assert not [p for p in root.iterdir() if p.is_dir()]
    monkeypatch.setattr(attention, "forward_batches", real)

    # 2. what a SIGKILL-ed writer leaves: its temporary folder, complete-looking but holding
    # other sentences' maps, and a final folder without meta.json
    key = cache_key(encoder, texts, MAX_LEN)
    other = _extract(encoder, list(reversed(texts)), tmp_path / "other")
    shutil.copytree(other.path, root / f"{key}.tmp-999999")
    (root / key).mkdir()
    shutil.copy(other.path / "layer_00.bin", root / key / "layer_00.bin")
    with caplog.at_level(logging.INFO, logger="harness"):
        cache = _extract(encoder, texts, root)
    assert "incomplete; rebuilding it" in caplog.text
    assert "extracting attention of" in caplog.text
    assert cache.path == root / key
    cache.verify()
    np.testing.assert_array_equal(cache.features([0, 1], "all", "max")[0], reference)
    assert not list(root.glob(f"{key}.tmp-*"))  # the killed writer's leftovers are gone


# --- crash and resume ----------------------------------------------------------------------


def _running_trial_with_run(db: Path) -> int | None:
    """The number of a RUNNING trial whose MLflow run exists, read without a lock from the
    SQLite file the study process writes (its tables may not exist yet)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            row = con.execute(
                "SELECT t.number FROM trials t JOIN trial_user_attributes a "
                "ON a.trial_id = t.trial_id WHERE t.state = 'RUNNING' AND a.key = 'mlflow_run_id'"
            ).fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else row[0]


def test_sigkill_mid_trial_then_the_same_command_finishes_the_study(workspace, tiny_bert):
    """The user's view: kill -9 during a trial, run the same command again at once. The
    killed trial ends FAIL (its MLflow run KILLED), the study reaches its target under
    the same parent run, and nothing is left RUNNING. Heartbeats every 30 s: the restart
    comes long before a 90 s grace could pass, so it is the dead worker's free lease that
    settles the trial."""
    tmp = workspace[0]
    path = _study(
        workspace,
        tiny_bert,
        "killed",
        n_trials=1,
        epochs=20,
        extra="pruner: {name: none}\n",
        search=GRU_ONLY,
    )
    path.write_text(path.read_text().replace("patience: 2", "patience: 20"))  # no early stop
    command = _cli("study", "run", str(path), "--quiet")
    env = _env(heartbeat_s=30)
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while (killed := _running_trial_with_run(tmp / "optuna.db")) is None:
        assert first.poll() is None, first.communicate()[0].decode()[-3000:]
        assert time.monotonic() < deadline, "no trial started"
        time.sleep(0.1)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    storage = f"sqlite:///{tmp}/optuna.db"
    parent_before = optuna.load_study(study_name="killed", storage=storage).user_attrs[PARENT_ATTR]

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"trial {killed}: its worker process stopped" in again.stderr

    study = optuna.load_study(study_name="killed", storage=storage)
    states = {t.number: t.state for t in study.trials}
    assert states[killed] == TrialState.FAIL
    assert sum(s == TrialState.COMPLETE for s in states.values()) == 1
    assert TrialState.RUNNING not in states.values()
    assert study.user_attrs[PARENT_ATTR] == parent_before

    _, parents, children = _runs(f"sqlite:///{tmp}/mlflow.db", "killed")
    assert [p.info.run_id for p in parents] == [parent_before]
    assert parents[0].info.status == "FINISHED"
    by_number = {int(c.data.tags["optuna.trial_number"]): c for c in children}
    assert sorted(by_number) == sorted(states) and len(children) == len(states)
    dead = by_number[killed]
    assert dead.info.status == "KILLED"
    assert dead.data.tags["optuna.state"] == "FAIL"
    assert "worker process stopped" in dead.data.tags["harness.fail_reason"]
    assert all(c.info.status != "RUNNING" for c in children)
    assert all(c.data.tags["mlflow.parentRunId"] == parent_before for c in children)


@pytest.fixture
def one_trial_study(workspace, tiny_bert, monkeypatch, request) -> Path:
    """A finished one-trial study (in process), heartbeats every second."""
    monkeypatch.setenv("HARNESS_HEARTBEAT_INTERVAL", str(HEARTBEAT_S))
    path = _study(workspace, tiny_bert, request.node.name[:40], n_trials=1, epochs=1)
    run_study(path, progress=False)
    return path


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")  # study.ask
def test_dead_workers_trials_fail_at_start_even_with_no_trial_left_to_run(one_trial_study):
    """Three RUNNING trials whose workers are gone or late, in a study that has reached
    its target, so that no trial starts (Optuna's own check runs only before a trial):
    running the study again must still settle each one, and settle it right:

    * a worker on another machine (lease not visible here) that stopped beating: FAIL;
    * a dead worker on this machine (its lease is free) that never beat, which the
      heartbeat alone would leave RUNNING forever: FAIL;
    * a live worker on this machine whose beats are late (overloaded): left RUNNING.
    """
    config = load_config(one_trial_study)
    storage = make_storage(config.storage)
    study = optuna.load_study(study_name=config.name, storage=storage)
    parent_id = study.user_attrs[PARENT_ATTR]
    tracker = Tracker(config.tracking_uri, config.name, config.artifact_location)
    leases = lease_dir(config)
    live = WorkerLease(leases)  # this test process plays the live worker
    (leases / "gone-1-00000000.lease").touch()  # a lease nobody holds: a dead worker
    workers = {"remote": "elsewhere-1-11111111", "dead": "gone-1-00000000", "live": live.token}
    trials = {}
    for role, token in workers.items():
        trial = study.ask()
        run_id = tracker.start_trial(parent_id, config.name, trial.number, {})
        trial.set_user_attr(WORKER_ATTR, token)
        trial.set_user_attr("mlflow_run_id", run_id)
        if role != "dead":
            storage.record_heartbeat(trial._trial_id)
        trials[role] = (trial.number, run_id)
    time.sleep(3 * HEARTBEAT_S + 1.5)  # SQLite's clock has 1 s steps

    summary = run_study(one_trial_study, progress=False)

    assert summary.n_finished == 1 and summary.parent_run_id == parent_id
    states = {
        t.number: t.state for t in optuna.load_study(study_name=config.name, storage=storage).trials
    }
    client = MlflowClient(config.tracking_uri)
    for role, (number, run_id) in trials.items():
        run = client.get_run(run_id)
        if role == "live":
            assert states[number] == TrialState.RUNNING and run.info.status == "RUNNING"
        else:
            assert states[number] == TrialState.FAIL, role
            assert run.info.status == "KILLED", role
            assert "worker process stopped" in run.data.tags["harness.fail_reason"]
    assert not (leases / "gone-1-00000000.lease").exists()  # pruned once its trial failed
    assert (leases / f"{live.token}.lease").exists()
    live.release()


def test_a_study_refuses_to_continue_on_changed_data(one_trial_study, workspace):
    tmp = workspace[0]
    changed = tmp / "changed.csv"
    text = workspace[1].read_text()
    changed.write_text(text.replace(",0,", ",1,", 1))  # one label differs
    path = tmp / "changed.yaml"
    path.write_text(one_trial_study.read_text().replace(str(workspace[1]), str(changed)))
    with pytest.raises(HarnessError, match=r"was started on data with sha256 .* now has"):
        run_study(path, n_trials=2, progress=False)


# --- failed trials ---------------------------------------------------------------------------


def test_a_failing_trial_is_recorded_and_the_study_goes_on(workspace, tiny_bert, monkeypatch):
    import harness.models.reader

    real_train = harness.models.reader.train
    calls = []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory in the reader")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(harness.models.reader, "train", fails_once)
    path = _study(workspace, tiny_bert, "one-fails", n_trials=2, epochs=1)
    summary = run_study(path, progress=False)
    assert summary.n_finished == 2

    config = load_config(path)
    study = optuna.load_study(study_name="one-fails", storage=config.storage)
    first = study.trials[0]
    assert [t.state for t in study.trials] == [TrialState.FAIL, *[TrialState.COMPLETE] * 2]
    assert first.user_attrs["fail_reason"] == "RuntimeError: out of memory in the reader"
    run = MlflowClient(config.tracking_uri).get_run(first.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["harness.fail_reason"] == "RuntimeError: out of memory in the reader"
    assert run.data.tags["optuna.state"] == "FAIL"


def test_a_study_whose_trials_diverge_stops_early_with_the_reason(workspace, tiny_bert):
    """A transformer reader at lr 1e10: the loss is NaN in the first epoch of every trial.
    The study stops after FAILURE_STOP_MIN trials, not after its budget of 20, and says
    why."""
    search = textwrap.dedent(
        """\
        search:
          layers: [[0, 1], [1]]
          reducer: [sum, max]
          lr: 1.0e+10
          classifier:
            transformer: {hidden_size: 16, num_heads: 2, ff_size: 32}
        """
    )
    path = _study(workspace, tiny_bert, "diverges", n_trials=20, epochs=1, search=search)
    with pytest.raises(HarnessError, match=r"stopped: 4 of 4 trials failed .*TrainingDiverged"):
        run_study(path, progress=False)
    config = load_config(path)
    study = optuna.load_study(study_name="diverges", storage=config.storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 4
    client = MlflowClient(config.tracking_uri)
    for trial in study.trials:
        assert trial.user_attrs["fail_reason"].startswith("TrainingDiverged: loss became nan")
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FAILED"
        assert run.data.tags["harness.fail_reason"] == trial.user_attrs["fail_reason"]
    _, parents, _ = _runs(config.tracking_uri, "diverges")
    assert parents[0].info.status == "FAILED"


# --- parallel workers and copies of one command ----------------------------------------------


def test_sqlite_storage_is_refused_with_several_workers(workspace, tiny_bert):
    path = _study(workspace, tiny_bert, "sqlite-workers")
    with pytest.raises(HarnessError, match="SQLite is not safe under concurrent writes"):
        run_study(path, workers=2, progress=False)


def test_workers_and_a_copy_started_at_once_share_one_study(tmp_path, tiny_bert):
    """`--workers 2` plus an independent copy of the command, started together (the
    multi-machine case): one parent run; every trial has its own child run with its own
    parameters and metrics; unique trial numbers; exactly n_trials finished; SQLite as
    the MLflow store under three writer processes."""
    data = write_synthetic_csv(tmp_path / "data.csv")
    path = study_yaml(
        tmp_path,
        name="parallel",
        dataset=str(data),
        encoder=str(tiny_bert),
        n_trials=5,
        epochs=2,
        extra="pruner: {name: none}\n",
    )
    storage = f"journal:///{tmp_path}/optuna.log"
    procs = [
        subprocess.Popen(
            _cli("study", "run", str(path), "--storage", storage, "--quiet", *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for extra in (["--workers", "2"], [])
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
        assert "database is locked" not in err
        assert "exited with status" not in err  # the --workers helper

    study = optuna.load_study(study_name="parallel", storage=make_storage(storage))
    trials = study.trials
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 5
    assert len({t.number for t in trials}) == len(trials)

    client, parents, children = _runs(f"sqlite:///{tmp_path}/mlflow.db", "parallel")
    assert len(parents) == 1
    parent = parents[0]
    assert study.user_attrs[PARENT_ATTR] == parent.info.run_id
    assert parent.data.metrics["n_finished_trials"] == 5
    by_run = {c.info.run_id: c for c in children}
    assert len(children) == len({t.user_attrs["mlflow_run_id"] for t in finished}) == 5
    for trial in finished:
        child = by_run[trial.user_attrs["mlflow_run_id"]]
        tags, params = child.data.tags, child.data.params
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["optuna.trial_number"] == str(trial.number)
        assert child.info.status == "FINISHED"
        for name, value in trial.params.items():
            logged = params[name.split(".")[-1]]  # gru.hidden_size is logged as hidden_size
            assert logged == (repr(value) if name == "lr" else str(value)), name
        # the objective is the best epoch's AUC; val_auc is the curve (its last epoch)
        assert child.data.metrics["best_val_auc"] == pytest.approx(trial.value)
        curve = client.get_metric_history(child.info.run_id, "train_loss")
        assert [p.step for p in curve] == [0, 1]


def test_copies_that_reach_a_new_study_at_once_elect_one_parent(workspace, tiny_bert, monkeypatch):
    """Three copies open a new study at the same instant (a barrier in front of the
    create), the race the user attribute alone would lose: one creates the study and
    its parent run, the others wait for that run and use it. Threads stand in for the
    processes: they share nothing but the stores."""
    import harness.study.study

    run_study(_study(workspace, tiny_bert, "warm-up", n_trials=1, epochs=1), progress=False)
    path = _study(workspace, tiny_bert, "election", n_trials=2, epochs=1)
    storage = f"journal:///{workspace[0]}/election.log"
    barrier = threading.Barrier(3)
    real_open = harness.study.study._open_study

    def open_together(*args, **kwargs):
        barrier.wait(timeout=60)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(harness.study.study, "_open_study", open_together)
    results: list = []

    def copy() -> None:
        try:
            results.append(run_study(path, storage=storage, progress=False))
        except Exception as exc:  # reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=copy) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(isinstance(r, harness.study.study.StudySummary) for r in results), results
    assert len({r.parent_run_id for r in results}) == 1
    _, parents, children = _runs(load_config(path).tracking_uri, "election")
    assert [p.info.run_id for p in parents] == [results[0].parent_run_id]
    study = optuna.load_study(study_name="election", storage=make_storage(storage))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    assert len(children) == len([t for t in study.trials if "mlflow_run_id" in t.user_attrs])
