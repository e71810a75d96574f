"""``harness predict RUN --input FILE --output OUT``: a file of sentences scored in chunks,
the same probabilities as ``load_run(...).predict_proba``, one CSV row per input row."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from harness.cli import main
from harness.data.datasets import load_dataset
from harness.study.study import run_study
from harness.tracking.predict import load_run
from tests.conftest import study_yaml, write_synthetic_csv


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    tmp = tmp_path_factory.mktemp("batch")
    data = write_synthetic_csv(tmp / "data.csv")
    path = study_yaml(tmp, name="batch", dataset=str(data), encoder=str(tiny_bert), n_trials=1)
    summary = run_study(path, progress=False)
    return tmp, summary.rows[0]["run_id"], f"sqlite:///{tmp}/mlflow.db"


def test_scores_1000_babe_sentences(trained, babe_dir, capsys):
    tmp, run_id, uri = trained
    texts = load_dataset("babe").texts[:1000]
    source = tmp / "babe-1000.csv"
    with open(source, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "sentence"])
        writer.writerows(enumerate(texts))
    out = tmp / "scores.csv"
    argv = ["predict", run_id, "--input", str(source), "--text-column", "sentence"]
    assert main([*argv, "--output", str(out), "--tracking-uri", uri]) == 0
    assert "scored 1000 sentences" in capsys.readouterr().out

    rows = list(csv.DictReader(open(out, newline="")))
    assert [int(r["row_id"]) for r in rows] == list(range(1000))
    assert [r["text"] for r in rows] == texts
    want = load_run(run_id, tracking_uri=uri).predict_proba(texts)
    np.testing.assert_allclose([float(r["probability"]) for r in rows], want, atol=1e-6)


def test_jsonl_input_and_chunking_give_the_same_scores(trained):
    from harness.tracking.predict import predict_texts

    tmp, run_id, uri = trained
    texts = [f"the city plan {'outrageous ' * (i % 4)}was announced {i}" for i in range(50)]
    source = tmp / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp / "in-scores.csv"
    assert main(["predict", run_id, "--input", str(source), "--output", str(out),
                 "--tracking-uri", uri]) == 0  # fmt: skip
    got = [float(r["probability"]) for r in csv.DictReader(open(out, newline=""))]
    run = load_run(run_id, tracking_uri=uri)
    np.testing.assert_allclose(got, predict_texts(run, texts, chunk=7, progress=False), atol=1e-6)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--text-column", "sentense"], "no text column 'sentense'"),
        (["--output", "/nonexistent/dir/out.csv"], "folder /nonexistent/dir does not exist"),
        ([], "--input needs --output"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(trained, capsys, extra, message):
    tmp, run_id, uri = trained
    source = tmp / "bad.csv"
    source.write_text("sentence\nthe plan was announced\n")
    out = tmp / "never.csv"
    argv = ["predict", run_id, "--input", str(source), "--tracking-uri", uri]
    if "--output" not in extra and extra:
        argv += ["--output", str(out)]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness: error: ") and message in err and err.count("\n") == 1
    assert not out.exists() and not list(tmp.glob(".*.part"))
