"""What a study's numbers depend on, kept under test: on one machine a re-run (from a cold
cache, then a warm one), a run under ``--workers 2`` and a run with two training threads
give the same metrics for a trial with the same parameters; and every run records the
machine facts they could depend on (docs/statistics.md, "Reproducibility")."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
from mlflow.tracking import MlflowClient

from harness.tracking import make_storage
from tests.conftest import study_yaml, write_synthetic_csv

METRICS = ("best_val_auc", "test_auc", "test_auc_ci_low", "test_f1")


def _run(path, *extra, env=None):
    cmd = [sys.executable, "-m", "harness", "study", "run", str(path), "--quiet", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]


def _trials(tmp, name, storage):
    study = optuna.load_study(study_name=name, storage=make_storage(storage))
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    out = {}
    for t in study.trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            run = client.get_run(t.user_attrs["mlflow_run_id"])
            out[tuple(sorted(t.params.items()))] = (
                {m: run.data.metrics[m] for m in METRICS},
                run.data.tags,
            )
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert):
    tmp = tmp_path_factory.mktemp("repro")
    data = write_synthetic_csv(tmp / "data.csv")
    results = {}
    cases = {
        "cold": ([], {}),
        "warm": ([], {}),
        "workers": (["--workers", "2", "--storage", f"journal:///{tmp}/optuna.log"], {}),
        "threads": ([], {"HARNESS_NUM_THREADS": "2"}),
    }
    for name, (extra, env) in cases.items():
        path = study_yaml(
            tmp, name=name, dataset=str(data), encoder=str(tiny_bert), n_trials=4,
            extra="pruner: {name: none}\nsampler: {name: random, seed: 3}\n",
        )  # fmt: skip
        _run(path, *extra, env=env)
        storage = extra[-1] if extra else f"sqlite:///{tmp}/optuna.db"
        results[name] = _trials(tmp, name, storage)
    return results


@pytest.mark.parametrize("case", ["warm", "workers", "threads"])
def test_a_trial_with_the_same_parameters_gets_the_same_metrics(runs, case):
    """The cold run extracted the cache; the others reuse it. Trials are matched by
    parameters (under --workers the trial numbers interleave)."""
    reference, other = runs["cold"], runs[case]
    shared = set(reference) & set(other)
    assert len(shared) >= 2, (sorted(reference), sorted(other))
    for params in shared:
        assert other[params][0] == reference[params][0], params


def test_runs_record_what_their_numbers_depend_on(runs):
    (metrics, tags), *_ = runs["threads"].values()
    assert tags["harness.torch_threads"] == "2" and tags["harness.cpu"]
    assert {"torch.version", "transformers.version", "harness.cpu_count"} <= set(tags)
    (_, tags), *_ = runs["cold"].values()
    assert tags["harness.torch_threads"] == "1"
