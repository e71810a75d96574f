"""A study's runs as MLflow users expect them, on a real store: every complete trial is
an MLflow Model (pyfunc from code) that ``mlflow models serve`` serves, the best one is
the registry's ``champion``, and runs carry the data set, descriptions and provenance."""

from __future__ import annotations

import json
import os

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from harness.study.study import run_study
from harness.tracking.predict import load_run
from tests.conftest import serve_and_predict, study_yaml, write_synthetic_csv

TEXTS = ["officials said the city plan was announced", "an outrageous scandal of the week"]


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_bert):
    """One complete trial first: the tests below continue it."""
    tmp = tmp_path_factory.mktemp("mlflow")
    data = write_synthetic_csv(tmp / "data.csv")
    path = study_yaml(
        tmp,
        name="served",
        dataset=str(data),
        encoder=str(tiny_bert),
        n_trials=1,
        extra="description: Probes on synthetic data.\npruner: {name: none}\n",
    )
    summary = run_study(path, progress=False)
    uri = f"sqlite:///{tmp}/mlflow.db"
    return tmp, path, summary, uri, MlflowClient(uri)


@pytest.fixture
def tracking(study, monkeypatch):
    """``runs:/`` and ``models:/`` URIs resolve through the process-wide tracking URI."""
    _, _, _, uri, _ = study
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def test_pyfunc_from_code_predicts_what_load_run_predicts(study, tracking):
    _, _, summary, uri, client = study
    run_id = summary.rows[0]["run_id"]
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    got = pyfunc.predict(pd.DataFrame({"text": TEXTS}))
    want = load_run(run_id, tracking_uri=uri).predict_proba(TEXTS)
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, atol=1e-6)

    meta = pyfunc.metadata
    assert meta.get_input_schema().input_names() == ["text"]
    assert meta.get_output_schema().input_names() == ["probability"]
    assert meta.load_input_example(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model"))[
        "text"
    ].tolist()
    flavor = meta.flavors["python_function"]
    assert "model_code_path" in flavor and "python_model" not in flavor  # code, no pickle
    local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model")
    reqs = open(os.path.join(local, "requirements.txt")).read()
    assert "harness==" in reqs
    assert {"MLmodel", "config.json", "weights.safetensors"} <= set(os.listdir(local))
    # the run shows its model in the UI's Models column
    outputs = client.get_run(run_id).outputs.model_outputs
    assert len(outputs) == 1 and client.get_logged_model(outputs[0].model_id).name == "model"


def test_mlflow_models_serve_answers_a_rest_call(study, tracking):
    _, _, summary, uri, _ = study
    run_id = summary.rows[0]["run_id"]
    answer = serve_and_predict(f"runs:/{run_id}/model", uri, TEXTS)
    want = load_run(run_id, tracking_uri=uri).predict_proba(TEXTS)
    np.testing.assert_allclose(answer, want, atol=1e-6)


def test_runs_carry_dataset_descriptions_and_provenance(study):
    tmp, _, summary, _, client = study
    parent = client.get_run(summary.parent_run_id)
    child = client.get_run(summary.rows[0]["run_id"])
    for run in (parent, child):
        (data,) = run.inputs.dataset_inputs
        profile = json.loads(data.dataset.profile)
        assert data.dataset.name == "data" and data.dataset.source_type == "local"
        assert json.loads(data.dataset.source)["uri"] == str(tmp / "data.csv")
        assert profile["num_rows"] == 160
        assert profile["train_rows"] + profile["val_rows"] + profile["test_rows"] == 160
        assert profile["sha256"].startswith(data.dataset.digest)
        tags = run.data.tags
        for key in ("harness.version", "python.version", "torch.version", "mlflow.version"):
            assert tags[key]
        assert tags["transformers.version"] and tags["optuna.version"] and tags["numpy.version"]
        assert len(tags["harness.encoder_fingerprint"]) == 64
        assert len(tags["mlflow.source.git.commit"]) == 40  # the tests run from a checkout
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.note.content"] == "Probes on synthetic data."
    assert parent.data.tags["mlflow.note.content"].startswith("Probes on synthetic data.")
    description = child.data.tags["mlflow.note.content"]
    assert "\n" not in description and description.endswith(
        f"val AUC {child.data.metrics['best_val_auc']:.3f}"
    )
    assert f"over layers {child.data.params['layers']}" in description


WEAK = "search:\n  layers: [1]\n  lr: 1.0e-6\n  classifier:\n    gru: {hidden_size: 4}\n"
STRONG = (
    "search:\n  layers: [[0, 1]]\n  lr: 1.0e-2\n"
    "  classifier:\n    gru: {hidden_size: 16, bidirectional: true}\n"
)


def test_champion_alias_and_best_marks_move_to_a_better_trial(tmp_path, tiny_bert):
    """A study whose first trial barely learns (lr 1e-6), continued with a search space
    that learns: the alias, the ``harness.best`` tag and the parent's marks move."""
    data = write_synthetic_csv(tmp_path / "data.csv")
    common = {"name": "champ", "dataset": str(data), "encoder": str(tiny_bert), "epochs": 2}
    first = run_study(study_yaml(tmp_path, n_trials=1, search=WEAK, **common), progress=False)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    first_run = first.rows[0]["run_id"]
    assert client.get_model_version_by_alias("champ", "champion").run_id == first_run
    assert client.get_run(first_run).data.tags["harness.best"] == "true"

    again = run_study(study_yaml(tmp_path, n_trials=2, search=STRONG, **common), progress=False)
    best, best_run = again.best_trial, again.rows[0]["run_id"]
    assert best.number == 1 and best_run != first_run, "precondition: trial 1 beats trial 0"
    champion = client.get_model_version_by_alias("champ", "champion")
    assert (champion.run_id, str(champion.version)) == (best_run, "2")
    assert client.get_run(best_run).data.tags["harness.best"] == "true"
    assert client.get_run(first_run).data.tags["harness.best"] == "false"
    parent = client.get_run(first.parent_run_id).data.tags
    assert parent["best.layers"] == "0,1" and parent["best.lr"] == repr(1e-2)
    assert parent["best_run_id"] == best_run
    assert f"runs/{best_run})" in parent["mlflow.note.content"]  # a Markdown link to it


def test_register_false_leaves_the_registry_empty(tmp_path, tiny_bert):
    data = write_synthetic_csv(tmp_path / "data.csv")
    path = study_yaml(
        tmp_path, name="unregistered", dataset=str(data), encoder=str(tiny_bert), n_trials=1,
        extra="register: false\n",
    )  # fmt: skip
    run_study(path, progress=False)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.search_registered_models() == []


def test_load_run_reads_runs_logged_before_models_were_mlflow_models(study, tmp_path):
    """Older runs hold ``model/config.json`` and ``model/weights.safetensors`` as plain run
    artifacts and no logged model: ``load_run`` falls back to them."""
    _, _, summary, uri, client = study
    new = load_run(summary.rows[0]["run_id"], tracking_uri=uri)
    old_style = tmp_path / "model"
    old_style.mkdir()
    new.model.save(old_style)
    parent = client.get_run(summary.parent_run_id)
    run_id = client.create_run(parent.info.experiment_id).info.run_id
    client.log_artifacts(run_id, str(old_style), "model")
    assert not client.get_run(run_id).outputs.model_outputs
    old = load_run(run_id, tracking_uri=uri)
    np.testing.assert_allclose(old.predict_proba(TEXTS), new.predict_proba(TEXTS), atol=1e-6)
