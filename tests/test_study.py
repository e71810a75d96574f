"""End to end: study file -> Optuna trials -> MLflow runs -> reload, on real stores."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient

from harness.stats.metrics import METRICS
from harness.study.study import run_study
from tests.conftest import study_yaml

TRIAL_PARAMS = {
    "layers",
    "heads",
    "reducer",
    "classifier",
    "lr",
    "encoder",
    "max_len",
    "data_sha256",
    "split_seed",
}
TRIAL_METRICS = {"train_loss", "val_auc"} | {
    f"test_{m}{s}" for m in METRICS for s in ("", "_ci_low", "_ci_high")
}


def _runs(tmp_path, name):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("harness.role") == "study"]
    children = [r for r in runs if r.data.tags.get("harness.role") == "trial"]
    return client, parents, children


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, tiny_bert):
    from tests.conftest import write_synthetic_csv

    tmp = tmp_path_factory.mktemp("study")
    data = write_synthetic_csv(tmp / "data.csv")
    path = study_yaml(
        tmp,
        name="e2e",
        dataset=str(data),
        encoder=str(tiny_bert),
        n_trials=3,
        extra="pruner: {name: none}\n",
    )
    summary = run_study(path, progress=False)
    return tmp, path, summary


def test_one_parent_and_one_child_per_trial_with_all_names(finished_study):
    tmp, _, summary = finished_study
    client, parents, children = _runs(tmp, "e2e")
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert summary.parent_run_id == parent.info.run_id
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "study.yaml",
        "split.json",
    }
    assert "best_val_auc" in parent.data.metrics and "best_test_auc_ci_low" in parent.data.metrics

    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{tmp}/optuna.db")
    by_run = {t.user_attrs["mlflow_run_id"]: t for t in study.trials}
    for child in children:
        tags = child.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["optuna.study_name"] == "e2e"
        assert tags["optuna.state"] == "COMPLETE"
        trial = by_run[child.info.run_id]
        assert tags["optuna.trial_number"] == str(trial.number)
        assert TRIAL_PARAMS <= set(child.data.params)
        assert "hidden_size" in child.data.params  # hyperparameters by their study-file name
        assert TRIAL_METRICS <= set(child.data.metrics)
        m = child.data.metrics
        for name in METRICS:
            assert m[f"test_{name}_ci_low"] <= m[f"test_{name}"] <= m[f"test_{name}_ci_high"]
        # one val_auc point per epoch trained, like train_loss; the kept epoch's value is
        # best_val_auc, the objective Optuna got
        assert m["best_val_auc"] == pytest.approx(trial.value)
        curve = client.get_metric_history(child.info.run_id, "train_loss")
        assert [p.step for p in curve] == list(range(len(curve))) and len(curve) >= 1
        val_curve = client.get_metric_history(child.info.run_id, "val_auc")
        assert [p.step for p in val_curve] == [p.step for p in curve]
        assert val_curve[int(m["best_epoch"])].value == pytest.approx(m["best_val_auc"])
        (output,) = child.outputs.model_outputs  # the trial's MLflow Model
        paths = {a.path for a in client.list_logged_model_artifacts(output.model_id)}
        assert {"MLmodel", "weights.safetensors", "config.json"} <= paths
        preds = {a.path for a in client.list_artifacts(child.info.run_id, "predictions")}
        assert "predictions/test.csv" in preds


def test_split_is_logged_and_fixed(finished_study):
    tmp, _, summary = finished_study
    client, parents, _ = _runs(tmp, "e2e")
    local = client.download_artifacts(parents[0].info.run_id, "split.json", str(tmp / "dl"))
    split = json.load(open(local))
    parts = [set(split[k]) for k in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert sum(map(len, parts)) == 160


def test_continue_same_parent_without_running_the_encoder(finished_study, caplog, monkeypatch):
    tmp, path, summary = finished_study
    from harness.encoders.load import Encoder

    def no_model(self):
        raise AssertionError("the encoder must not be loaded when the cache is warm")

    monkeypatch.setattr(Encoder, "model", property(no_model))
    with caplog.at_level(logging.INFO, logger="harness"):
        again = run_study(path, n_trials=4, progress=False)
    assert "encoder not run" in caplog.text
    assert again.parent_run_id == summary.parent_run_id
    assert again.n_finished == 4
    _, parents, children = _runs(tmp, "e2e")
    assert len(parents) == 1 and len(children) == 4
    assert len({c.data.tags["optuna.trial_number"] for c in children}) == 4


def test_a_run_that_adds_no_trials_leaves_the_parent_alone(finished_study):
    """The study already has its 4 trials: running it again starts none, and the parent
    run keeps its status, start and end time (its Duration in the UI)."""
    tmp, path, summary = finished_study
    client, parents, _ = _runs(tmp, "e2e")
    before = parents[0].info
    again = run_study(path, n_trials=4, progress=False)
    assert again.n_finished == 4
    after = client.get_run(summary.parent_run_id).info
    assert (after.status, after.start_time, after.end_time) == (
        before.status,
        before.start_time,
        before.end_time,
    )


def test_load_run_reproduces_logged_test_probabilities_in_a_new_process(finished_study):
    tmp, _, summary = finished_study
    client, _, children = _runs(tmp, "e2e")
    run_id = summary.rows[0]["run_id"]
    local = client.download_artifacts(run_id, "predictions/test.csv", str(tmp / "preds"))
    rows = list(csv.DictReader(open(local)))
    texts = {}
    with open(tmp / "data.csv") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            texts[i] = row["text"]
    script = (
        "import json, sys; from harness import load_run\n"
        "run = load_run(sys.argv[1], tracking_uri=sys.argv[2])\n"
        "texts = json.load(sys.stdin)\n"
        "print(json.dumps(run.predict_proba(texts).tolist()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, run_id, f"sqlite:///{tmp}/mlflow.db"],
        input=json.dumps([texts[int(r["row_id"])] for r in rows]),
        capture_output=True,
        text=True,
        check=True,
    )
    probs = np.array(json.loads(out.stdout.strip().splitlines()[-1]))
    # the CSV carries the sentence; row_id is the file's data row, index the Dataset's row
    assert all(r["text"] == texts[int(r["row_id"])] for r in rows)
    assert all(int(r["index"]) == int(r["row_id"]) for r in rows)  # no rows dropped here
    logged = np.array([float(r["probability"]) for r in rows])
    np.testing.assert_allclose(probs, logged, atol=1e-5)


def test_objective_uses_validation_only(finished_study):
    """The Optuna value is the best validation AUC, never a test figure."""
    tmp, _, _ = finished_study
    client, _, children = _runs(tmp, "e2e")
    for child in children:
        history = client.get_metric_history(child.info.run_id, "val_auc")
        assert child.data.metrics["best_val_auc"] == pytest.approx(max(p.value for p in history))


def test_pruned_trials_end_their_runs_without_weights(tmp_path, tiny_bert, capsys):
    """A real pruner (successive halving, keeping 1 in 2 after each epoch): a pruned trial's
    run is FINISHED with ``optuna.state`` PRUNED, holds its curve up to the cut and no
    model, and cannot be loaded; the CLI summary counts complete and pruned trials."""
    from harness.cli import main
    from harness.core.errors import HarnessError
    from harness.tracking.predict import load_run
    from tests.conftest import write_synthetic_csv

    data = write_synthetic_csv(tmp_path / "data.csv")
    path = study_yaml(
        tmp_path,
        name="pruning",
        dataset=str(data),
        encoder=str(tiny_bert),
        n_trials=6,
        epochs=4,
        extra="pruner: {name: successive_halving, min_resource: 1, reduction_factor: 2}\n",
    )
    assert main(["study", "run", str(path), "--quiet"]) == 0
    study = optuna.load_study(study_name="pruning", storage=f"sqlite:///{tmp_path}/optuna.db")
    states = [t.state for t in study.trials]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    n_complete = states.count(optuna.trial.TrialState.COMPLETE)
    assert pruned and n_complete + len(pruned) == 6
    assert f"6 finished trials ({n_complete} complete, {len(pruned)} pruned)" in (
        capsys.readouterr().out
    )

    client, _, children = _runs(tmp_path, "pruning")
    by_id = {c.info.run_id: c for c in children}
    for trial in pruned:
        run = by_id[trial.user_attrs["mlflow_run_id"]]
        assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "PRUNED"
        assert run.info.run_name == f"trial-{trial.number} (pruned)"
        assert run.data.tags["mlflow.note.content"].endswith(
            f"pruned after epoch {max(trial.intermediate_values)} "
            f"(val_auc {trial.intermediate_values[max(trial.intermediate_values)]:.4f})"
        )
        assert not run.outputs.model_outputs  # no MLflow Model either
        curve = client.get_metric_history(run.info.run_id, "val_auc")
        assert [p.value for p in curve] == [
            trial.intermediate_values[s] for s in sorted(trial.intermediate_values)
        ]
        assert "test_auc" not in run.data.metrics
        with pytest.raises(HarnessError, match="pruned or failed trial"):
            load_run(run.info.run_id, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")


def test_a_non_attention_model_fits_inside_the_study_and_reloads(finished_study):
    """The seam: a model that is not an attention reader (logistic regression on word
    count) goes through the same protocol as the trials, after the study's prepare and
    open-stores phases, on its split, as a child run under its parent; ``load_run``
    rebuilds it from its logged artifacts and reproduces the logged test probabilities."""
    from harness import load_run
    from harness.models.length import LengthModel
    from harness.study.study import open_stores, prepare
    from harness.study.trial import log_model_run
    from harness.tracking.runs import RunReader

    tmp, path, summary = finished_study
    prepared = prepare(path, progress=False)
    with open_stores(prepared) as session:
        model = LengthModel(positive_label=prepared.dataset.positive_label)
        run_id = log_model_run(session.ctx, model, "length", "baseline", {"model": "length"})
    assert session.ctx.parent_run_id == summary.parent_run_id

    reader = RunReader(f"sqlite:///{tmp}/mlflow.db")
    run = reader.run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == summary.parent_run_id
    assert run.data.tags["harness.role"] == "baseline"
    assert {f"test_{m}{s}" for m in METRICS for s in ("", "_ci_low", "_ci_high")} <= set(
        run.data.metrics
    )
    assert reader.model_config(run_id)["kind"] == "length"
    rows = reader.predictions(run_id, "test")
    assert [int(r["row_id"]) for r in rows] == prepared.split.test.tolist()

    loaded = load_run(run_id, tracking_uri=reader.tracking_uri)
    texts = [prepared.dataset.texts[int(r["row_id"])] for r in rows]
    logged = np.array([float(r["probability"]) for r in rows])
    np.testing.assert_allclose(loaded.predict_proba(texts), logged, atol=1e-6)
    parent, children = reader.study_runs("e2e")
    assert parent.info.run_id == summary.parent_run_id
    assert run_id in {c.info.run_id for c in children}


def test_study_best_and_help_import_neither_torch_nor_transformers(finished_study):
    """Cheap commands stay cheap: the table of a real study, ``--help`` and an argument
    error answer without importing torch or transformers."""
    tmp, _, _ = finished_study
    script = (
        "import sys\n"
        "from harness.cli import main\n"
        "try:\n"
        "    code = main(sys.argv[1:])\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "print('CODE', code, 'HEAVY', ','.join(heavy) or '-')\n"
    )
    cases = {
        ("study", "best", "e2e", "--storage", f"sqlite:///{tmp}/optuna.db"): 0,
        ("--help",): 0,
        ("study", "run", "x.yaml", "--n-trials", "0"): 2,
    }
    for argv, code in cases.items():
        out = subprocess.run(
            [sys.executable, "-c", script, *argv], capture_output=True, text=True, check=True
        ).stdout
        assert out.strip().splitlines()[-1] == f"CODE {code} HEAVY -", (argv, out)
        if argv[0] == "study" and argv[1] == "best":
            assert "finished trials" in out and "test_auc" in out
