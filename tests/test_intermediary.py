"""Intermediary encoders in studies (issue 13): encoder.finetune through the study path,
its tracking, reloading from the store, baseline-finetuned, the leak guard through the
CLI, and encoder conditions compared side by side."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import harness
import harness.encoders.finetune as ft
from harness.core.errors import HarnessError
from harness.data.datasets import load_dataset
from harness.data.split import make_split
from harness.encoders.load import load_encoder
from harness.study.study import run_study
from harness.tracking.runs import RunReader
from tests.conftest import serve_and_predict, write_synthetic_csv
from tests.test_finetune import as_tokens, record_training_inputs

FINETUNE = "{epochs: 2, lr: 1.0e-3, batch_size: 16, max_len: 32}"
SEARCH = """\
search:
  layers: [[0, 1]]
  view: {stats: {reducer: stack}}
  classifier:
    linear: {c: [0.1, 1.0]}
"""


def write_study(tmp: Path, name: str, data: Path, bert: Path, encoder_extra: str) -> Path:
    """A study file with stores under ``tmp`` and extra ``encoder:`` keys."""
    text = textwrap.dedent(
        f"""\
        name: {name}
        data: {{dataset: "{data}", group_column: group}}
        encoder:
          name: "{bert}"
          max_len: 32
          batch_size: 16
        """
    )
    text += textwrap.indent(encoder_extra, "  ")
    text += textwrap.dedent(
        f"""\
        train: {{epochs: 2, patience: 2, batch_size: 16}}
        bootstrap: {{n_resamples: 200}}
        n_trials: 2
        pruner: {{name: none}}
        storage: "sqlite:///{tmp}/optuna.db"
        tracking_uri: "sqlite:///{tmp}/mlflow.db"
        artifact_location: "{tmp}/artifacts"
        cache_dir: "{tmp}/cache"
        """
    )
    path = tmp / f"{name}.yaml"
    path.write_text(text + SEARCH)
    return path


def runs_of(tmp: Path, experiment: str, role: str | None = None):
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, [r for r in runs if role is None or r.data.tags.get("harness.role") == role]


@pytest.fixture(scope="module")
def ft_study(tmp_path_factory, tiny_bert):
    """One study on a fine-tuned tiny BERT, with every sentence the fine-tuning model saw
    in training mode recorded (the hook of test_finetune, through the study path)."""
    tmp = tmp_path_factory.mktemp("inter")
    data = write_synthetic_csv(tmp / "data.csv")
    path = write_study(tmp, "inter", data, tiny_bert, f"finetune: {FINETUNE}\n")
    with pytest.MonkeyPatch.context() as mp:
        seen = record_training_inputs(mp)
        summary = run_study(path, progress=False)
    return tmp, path, summary, seen


def test_the_study_fine_tunes_on_its_train_split_only(ft_study, tiny_bert):
    tmp, _, _, seen = ft_study
    dataset = load_dataset(str(tmp / "data.csv"), group_column="group")
    split = make_split(dataset, seed=0)
    base = load_encoder(str(tiny_bert))
    held_out = set(as_tokens(base, [dataset.texts[i] for i in [*split.val, *split.test]]))
    assert seen and not held_out & set(seen)
    train = as_tokens(base, [dataset.texts[i] for i in split.train])
    assert Counter(seen) == Counter(train * 2)  # every train sentence, once per epoch


def test_fine_tuning_is_one_encoder_run_that_every_trial_names(ft_study):
    tmp, _, summary, _ = ft_study
    client, encoders = runs_of(tmp, "inter", "encoder")
    assert len(encoders) == 1
    run = encoders[0]
    assert run.info.run_name == "encoder-finetune"
    assert run.data.tags["mlflow.parentRunId"] == summary.parent_run_id
    assert [p.step for p in client.get_metric_history(run.info.run_id, "val_auc")] == [0, 1]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    files = {a.path for a in client.list_artifacts(run.info.run_id, "encoder")}
    assert {"encoder/model.safetensors", "encoder/config.json", "encoder/finetune.json"} <= files
    fp = run.data.params["encoder_fingerprint"]
    assert run.data.params["finetune_epochs"] == "2"
    _, trials = runs_of(tmp, "inter", "trial")
    assert len(trials) == 2
    for trial in trials:
        assert trial.data.params["encoder_run_id"] == run.info.run_id
        assert trial.data.params["encoder_fingerprint"] == fp
        config = RunReader(f"sqlite:///{tmp}/mlflow.db").model_config(trial.info.run_id)
        assert config["inputs"]["encoder"]["run_id"] == run.info.run_id


def test_baseline_finetuned_is_scored_like_a_trial(ft_study):
    tmp, _, summary, _ = ft_study
    client, baselines = runs_of(tmp, "inter", "baseline")
    baselines = [b for b in baselines if b.info.run_name == "baseline-finetuned"]
    assert len(baselines) == 1  # beside the study's default baselines
    m = baselines[0].data.metrics
    assert m["test_auc_ci_low"] <= m["test_auc"] <= m["test_auc_ci_high"]
    files = {a.path for a in client.list_artifacts(baselines[0].info.run_id, "predictions")}
    assert files == {"predictions/test.csv", "predictions/val.csv"}


def test_trial_and_baseline_reload_from_the_store_in_a_new_process(ft_study):
    """The local fine-tuning cache is deleted first: the encoder must come from the run."""
    tmp, _, summary, _ = ft_study
    _, baselines = runs_of(tmp, "inter", "baseline")
    run_ids = [summary.rows[0]["run_id"], baselines[0].info.run_id]
    shutil.rmtree(tmp / "cache" / "finetuned")
    script = textwrap.dedent(
        f"""
        import sys, harness
        from harness.tracking.runs import RunReader
        data = harness.load_dataset("{tmp}/data.csv", group_column="group")
        text = dict(zip(data.row_ids, data.texts))
        uri = "sqlite:///{tmp}/mlflow.db"
        for run_id in sys.argv[1:]:
            rows = RunReader(uri).predictions(run_id)
            probs = harness.load_run(run_id, tracking_uri=uri).predict_proba(
                [text[int(r["row_id"])] for r in rows]
            )
            print(max(abs(p - float(r["probability"])) for p, r in zip(probs, rows)))
        """
    )
    env = {**os.environ, "HARNESS_CACHE_DIR": str(tmp / "downloads")}
    out = subprocess.run(
        [sys.executable, "-c", script, *run_ids], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    worst = [float(x) for x in out.stdout.split()]
    assert len(worst) == 2 and max(worst) < 1e-5
    assert len(list((tmp / "downloads" / "encoders").glob("*/model.safetensors"))) == 1
    assert not (tmp / "cache" / "finetuned").exists()


def test_a_served_fine_tuned_trial_fetches_its_encoder_into_an_empty_cache(ft_study):
    """``mlflow models serve`` on a machine that never saw the encoder (an empty cache
    folder) answers like ``load_run``."""
    tmp, _, summary, _ = ft_study
    run_id, uri = summary.rows[0]["run_id"], f"sqlite:///{tmp}/mlflow.db"
    texts = ["officials said the city plan was announced", "an outrageous scandal"]
    empty = tmp / "served-cache"
    answer = serve_and_predict(
        f"runs:/{run_id}/model", uri, texts, env={"HARNESS_CACHE_DIR": str(empty)}
    )
    want = harness.load_run(run_id, tracking_uri=uri).predict_proba(texts)
    np.testing.assert_allclose(answer, want, atol=1e-6)
    assert len(list((empty / "encoders").glob("*/model.safetensors"))) == 1


def test_a_second_run_fine_tunes_and_extracts_nothing(ft_study, caplog, monkeypatch):
    tmp, path, summary, _ = ft_study
    from harness.encoders.load import Encoder

    def no_model(self):
        raise AssertionError("the encoder must not run when both caches are warm")

    def no_training(*args, **kwargs):
        raise AssertionError("fine-tuning must not run again")

    monkeypatch.setattr(Encoder, "model", property(no_model))
    monkeypatch.setattr(ft, "train_classifier", no_training)
    if not (tmp / "cache" / "finetuned").exists():  # the reload test deleted it: rebuild
        monkeypatch.undo()
        run_study(path, progress=False)
        monkeypatch.setattr(Encoder, "model", property(no_model))
        monkeypatch.setattr(ft, "train_classifier", no_training)
    with caplog.at_level(logging.INFO, logger="harness"):
        again = run_study(path, n_trials=3, progress=False)
    assert "(no fine-tuning)" in caplog.text and "encoder not run" in caplog.text
    assert again.parent_run_id == summary.parent_run_id and again.n_finished == 3
    assert len(runs_of(tmp, "inter", "encoder")[1]) == 1
    baselines = [r.info.run_name for r in runs_of(tmp, "inter", "baseline")[1]]
    assert "baseline-finetuned" in baselines and len(baselines) == len(set(baselines))


def test_an_overlapping_intermediary_file_is_refused_before_anything_exists(tmp_path, tiny_bert):
    data = write_synthetic_csv(tmp_path / "data.csv")
    dataset = load_dataset(str(data), group_column="group")
    split = make_split(dataset, seed=0)
    other = write_synthetic_csv(tmp_path / "other.csv", n=60, seed=5)
    lines = other.read_text().splitlines()
    shared = [dataset.texts[split.test[0]], dataset.texts[split.val[0]]]
    lines += [f"{text},1,x" for text in shared]
    other.write_text("\n".join(lines) + "\n")
    stores = tmp_path / "stores"
    stores.mkdir()
    path = write_study(
        stores, "leaky", data, tiny_bert, f'finetune: {{data: "{other}", epochs: 1}}\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "harness", "study", "run", str(path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("harness: error: ")
    assert "shares 2 sentence(s)" in out.stderr and "Traceback" not in out.stderr
    assert sorted(p.name for p in stores.iterdir()) == ["leaky.yaml"]


def test_the_leak_check_passes_a_clean_file_and_names_the_count(tmp_path, tiny_bert):
    from harness.study.intermediary import check_leaks
    from harness.studyfile.schema import load_config

    data = write_synthetic_csv(tmp_path / "data.csv")
    dataset = load_dataset(str(data), group_column="group")
    split = make_split(dataset, seed=0)
    clean = write_synthetic_csv(tmp_path / "clean.csv", n=60, seed=9)
    held_out = {" ".join(dataset.texts[i].split()) for i in [*split.val, *split.test]}
    rows = [r for r in csv.DictReader(open(clean))]
    assert not held_out & {" ".join(r["text"].split()) for r in rows}
    path = write_study(tmp_path, "clean", data, tiny_bert, f'finetune: {{data: "{clean}"}}\n')
    check_leaks(load_config(path), dataset, split)  # no error
    with open(clean, "a") as fh:
        fh.write(f"  {dataset.texts[split.val[3]]}  ,0,x\n")
    with pytest.raises(HarnessError, match=r"shares 1 sentence\(s\)"):
        check_leaks(load_config(path), dataset, split)


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        ("finetune: {epoch: 2}\n", "'encoder.finetune.epoch': unknown key; did you mean"),
        ("finetune: {text_column: t}\n", "text_column applies to an intermediary file"),
        ("init: random\nfinetune: {}\n", "fine-tuning starts from pretrained weights"),
        ("conditions: [pretrained, randon]\n", "unknown condition 'randon' (did you mean"),
        (
            "conditions: [pretrained, {finetune: {epohcs: 1}}]\n",
            "'encoder.conditions[1].finetune.epohcs': unknown key; did you mean",
        ),
        ("conditions: [random, {init: random}]\n", "two conditions are called 'random'"),
    ],
)
def test_study_file_errors_name_the_key_and_line(tmp_path, tiny_bert, extra, phrase):
    from harness.studyfile.schema import load_config

    path = write_study(tmp_path, "bad", tmp_path / "d.csv", tiny_bert, extra)
    with pytest.raises(HarnessError) as err:
        load_config(path)
    assert phrase in str(err.value)
    assert str(err.value).startswith(f"{path}:")


@pytest.fixture(scope="module")
def conditions(tmp_path_factory, tiny_bert):
    """pretrained, fine-tuned and random-init, one command."""
    tmp = tmp_path_factory.mktemp("conditions")
    data = write_synthetic_csv(tmp / "data.csv")
    extra = f"conditions: [pretrained, {{finetune: {FINETUNE}}}, {{init: random, seed: 3}}]\n"
    path = write_study(tmp, "cmp", data, tiny_bert, extra)
    out = subprocess.run(
        [sys.executable, "-m", "harness", "study", "run", str(path), "--quiet"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp, out.stdout


def test_each_condition_is_its_own_study_with_its_own_cache_and_sweep(conditions):
    tmp, _ = conditions
    for label in ("pretrained", "finetuned", "random"):
        _, sweeps = runs_of(tmp, f"cmp.{label}", "probe")
        assert [s.info.run_name for s in sweeps] == ["head-sweep"]
        _, trials = runs_of(tmp, f"cmp.{label}", "trial")
        assert len(trials) == 2
    _, random_trials = runs_of(tmp, "cmp.random", "trial")
    assert {t.data.params["encoder_seed"] for t in random_trials} == {"3"}
    entries = [json.loads(m.read_text()) for m in (tmp / "cache").glob("*/meta.json")]
    fingerprints = {e["encoder_fingerprint"] for e in entries}
    assert len(entries) == len(fingerprints) == 3  # one attention cache entry per encoder
    random_fp = load_encoder(entries[0]["encoder"], init="random", seed=3).fingerprint
    assert random_fp in fingerprints


def test_the_comparison_report_is_logged_and_printed(conditions):
    tmp, stdout = conditions
    client, runs = runs_of(tmp, "cmp", "comparison")
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    local = Path(client.download_artifacts(run_id, "report", str(tmp / "report")))
    pngs = sorted(p.name for p in local.glob("*.png"))
    assert pngs == [
        "heads-finetuned-vs-pretrained.png",
        "heads-random-vs-finetuned.png",
        "heads-random-vs-pretrained.png",
        "test-auc.png",
    ]
    for png in local.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    report = (local / "report.md").read_text()
    for phrase in ("finetuned − pretrained", "random − pretrained", "baseline-finetuned"):
        assert phrase in report and phrase in stdout
    assert "Top 5 heads per condition" in stdout
    assert run_id in stdout
