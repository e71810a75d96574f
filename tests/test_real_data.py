"""The real thing, in CI: packaged MiniLM, real BABE, real MLflow and Optuna stores."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def test_minilm_on_babe_subset_two_trials(tmp_path, babe_dir):
    study = tmp_path / "real.yaml"
    study.write_text(
        textwrap.dedent(
            f"""\
            name: real
            data: {{dataset: babe, max_rows: 300}}
            encoder: {{name: minilm, max_len: 80}}
            train: {{epochs: 2, patience: 2, batch_size: 32}}
            n_trials: 2
            pruner: {{name: none}}
            storage: "sqlite:///{tmp_path}/optuna.db"
            tracking_uri: "sqlite:///{tmp_path}/mlflow.db"
            artifact_location: "{tmp_path}/artifacts"
            cache_dir: "{tmp_path}/cache"
            search:
              layers: [[3, 4, 5], [5]]
              heads: [all, [0, 7]]
              reducer: [sum, max]
              classifier:
                gru: {{hidden_size: 32}}
                transformer: {{hidden_size: 32, num_heads: 4, ff_size: 64}}
            """
        )
    )
    env = {**os.environ, "HARNESS_DATA_DIR": str(babe_dir)}
    out = subprocess.run(
        [sys.executable, "-m", "harness", "study", "run", str(study)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "best trial" in out.stdout and "95% CI" in out.stdout
    assert "harness ui" in out.stdout

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("real")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("harness.role") == "trial"]
    assert len(children) == 2
    for child in children:
        assert child.data.params["encoder"] == "minilm"
        assert child.data.params["data_sha256"].startswith("c02ebe82")
        assert 0.0 <= child.data.metrics["test_auc"] <= 1.0
        lo, hi = child.data.metrics["test_auc_ci_low"], child.data.metrics["test_auc_ci_high"]
        assert lo < child.data.metrics["test_auc"] < hi

    # a logged trial predicts on new sentences in a fresh process
    best = out.stdout.split("harness predict ")[1].split()[0]
    pred = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "predict",
            best,
            "The senator's outrageous lie.",
            "The bill passed on Tuesday.",
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert pred.returncode == 0, pred.stderr[-2000:]
    probs = [float(line.split("\t")[0]) for line in pred.stdout.strip().splitlines()]
    assert len(probs) == 2 and all(0.0 <= p <= 1.0 for p in probs)
