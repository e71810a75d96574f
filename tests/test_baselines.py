"""Baselines, paired comparisons, seed repeats and the report, end to end on a real tiny
study run through the command line (tiny random BERT, synthetic data, real stores)."""

from __future__ import annotations

import csv
import logging
import re
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.stats.metrics import METRICS
from harness.studyfile.schema import BASELINES
from tests.conftest import study_yaml, write_synthetic_csv

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _children(tmp, name: str, role: str):
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("harness.role") == "study")
    return client, parent, [r for r in runs if r.data.tags.get("harness.role") == role]


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_bert):
    """A 3-trial study with all four baselines, run with ``harness study run``."""
    tmp = tmp_path_factory.mktemp("baselines")
    data = write_synthetic_csv(tmp / "data.csv")
    path = study_yaml(tmp, name="base", dataset=str(data), encoder=str(tiny_bert), n_trials=3)
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["study", "run", str(path), "--quiet"]) == 0
    return tmp, path, data, out.getvalue()


def test_each_baseline_is_one_child_run_with_trial_metrics_and_reloads(study):
    """Tag, run name, the trials' metric names and predictions; load_run rebuilds each
    baseline from its logged files and reproduces its logged test probabilities."""
    from harness.tracking.predict import load_run

    tmp, _, data, _ = study
    client, parent, baselines = _children(tmp, "base", "baseline")
    assert sorted(r.data.tags["harness.baseline"] for r in baselines) == sorted(BASELINES)
    texts = [row["text"] for row in csv.DictReader(open(data))]
    for run in baselines:
        name = run.data.tags["harness.baseline"]
        assert run.info.run_name == f"baseline-{name}" and run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {f"test_{m}{s}" for m in METRICS for s in ("", "_ci_low", "_ci_high")} <= set(
            run.data.metrics
        )
        assert {"data_sha256", "split_seed"} <= set(run.data.params)
        local = client.download_artifacts(run.info.run_id, "predictions/test.csv", str(tmp / name))
        rows = list(csv.DictReader(open(local)))
        logged = np.array([float(r["probability"]) for r in rows])
        loaded = load_run(run.info.run_id, tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        assert loaded.config["kind"] == name
        probs = loaded.predict_proba([texts[int(r["row_id"])] for r in rows])
        np.testing.assert_allclose(probs, logged, atol=1e-5, err_msg=name)
    by_name = {r.data.tags["harness.baseline"]: r for r in baselines}
    assert by_name["majority"].data.metrics["test_auc"] == 0.5
    # the synthetic label is written in the words: TF-IDF reads it, chance does not
    assert by_name["tfidf"].data.metrics["test_auc"] > 0.8
    assert float(by_name["tfidf"].data.params["selected_c"]) in (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def test_parent_gets_paired_differences_and_the_summary_prints_them(study):
    tmp, _, _, out = study
    _, parent, baselines = _children(tmp, "base", "baseline")
    m = parent.data.metrics
    for name in BASELINES:
        stem = f"best_vs_{name}_auc"
        assert m[f"{stem}_ci_low"] <= m[f"{stem}_diff"] <= m[f"{stem}_ci_high"]
    by_name = {r.data.tags["harness.baseline"]: r for r in baselines}
    diff = m["best_test_auc"] - by_name["tfidf"].data.metrics["test_auc"]
    assert m["best_vs_tfidf_auc_diff"] == pytest.approx(diff)
    trials = out.index("test_auc [95% CI]")
    block = out.index("baseline   val_auc")
    paired = out.index("best trial")
    assert trials < block < paired
    assert re.search(r"^tfidf\s+[-+]\d\.\d{3}\s+\[[-+]\d\.\d{3}, [-+]\d\.\d{3}\]", out, re.M)
    # and one plain sentence on what the split can tell, pointing to cross-validation
    assert re.search(
        r"^best trial vs tfidf: [-+]\d\.\d{3} \[.*\], vs embedding: .* on \d+ test sentences; run "
        r"`harness study evaluate base` for an estimate over all 160$",
        out,
        re.M,
    )


def test_rerun_of_a_finished_study_does_not_refit_baselines(study, caplog):
    tmp, path, _, _ = study
    _, parent, before = _children(tmp, "base", "baseline")
    with caplog.at_level(logging.INFO, logger="harness"):
        assert main(["study", "run", str(path), "--quiet"]) == 0
    _, parent_after, after = _children(tmp, "base", "baseline")
    assert sorted(r.info.run_id for r in after) == sorted(r.info.run_id for r in before)
    assert "not refitted" in caplog.text
    for key, value in parent.data.metrics.items():
        if key.startswith("best_vs_"):
            assert parent_after.data.metrics[key] == pytest.approx(value)


def test_report_folder_holds_markdown_and_pngs(study, capsys):
    tmp, _, _, _ = study
    client, parent, _ = _children(tmp, "base", "baseline")
    listed = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/forest.png", "report/history.png"} <= listed
    local = client.download_artifacts(parent.info.run_id, "report", str(tmp / "report-dl"))
    for png in (p for p in listed if p.endswith(".png")):
        data = open(f"{local}/{png.removeprefix('report/')}", "rb").read()
        assert data[:8] == PNG_SIGNATURE and len(data) > 1024
    md = open(f"{local}/report.md").read()
    assert "## Baselines" in md and "baseline tfidf" in md and "## Paired differences" in md
    assert "![test AUC with 95 % CIs](forest.png)" in md


def test_report_draws_the_head_heatmap_of_a_logged_head_sweep(study, capsys):
    """The head sweep's contract: a child run tagged ``harness.role=probe`` with heads.csv."""
    from harness.tracking.runs import Tracker

    tmp, _, _, _ = study
    tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", "base", str(tmp / "artifacts"))
    _, parent, _ = _children(tmp, "base", "baseline")
    run_id = tracker.start_child(parent.info.run_id, "heads", "probe", {})
    lines = ["layer,head,val_auc,test_auc,test_auc_ci_low,test_auc_ci_high"]
    lines += [
        f"{la},{h},{0.5 + 0.01 * (4 * la + h)},0.6,0.5,0.7" for la in range(2) for h in range(4)
    ]
    tracker.log_files(run_id, {"heads.csv": "\n".join(lines) + "\n"})
    tracker.finish(run_id)
    argv = ["study", "report", "base", "--storage", f"sqlite:///{tmp}/optuna.db"]
    assert main([*argv, "--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]) == 0
    assert "report/heads.png" in capsys.readouterr().out
    client, parent, _ = _children(tmp, "base", "baseline")
    local = client.download_artifacts(parent.info.run_id, "report", str(tmp / "report-heads"))
    assert open(f"{local}/heads.png", "rb").read()[:8] == PNG_SIGNATURE
    md = open(f"{local}/report.md").read()
    assert "## Top heads" in md and "L1H3" in md  # the best head of the grid above


def test_compare_a_run_with_itself_gives_zero_and_p_one(study, capsys):
    tmp, _, _, _ = study
    _, _, baselines = _children(tmp, "base", "baseline")
    run = next(r for r in baselines if r.data.tags["harness.baseline"] == "tfidf").info.run_id
    uri = f"sqlite:///{tmp}/mlflow.db"
    assert main(["compare", run, run, "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "over 200 resamples" in out  # the study's bootstrap settings
    assert re.search(r"A − B\s+\+0\.0000\s+95 % CI \[\+0\.0000, \+0\.0000\]", out)
    assert re.search(r"p \(two-sided\)\s+1\s", out)


def test_compare_refuses_runs_on_another_split(study, tiny_bert, capsys):
    tmp, _, data, _ = study
    other = study_yaml(
        tmp,
        name="other-split",
        dataset=str(data),
        encoder=str(tiny_bert),
        n_trials=1,
        extra="split: {seed: 1}\nbaselines: [majority]\n",
    )
    assert main(["study", "run", str(other), "--quiet"]) == 0
    _, _, a = _children(tmp, "base", "baseline")
    _, _, b = _children(tmp, "other-split", "baseline")
    uri = f"sqlite:///{tmp}/mlflow.db"
    capsys.readouterr()
    code = main(["compare", a[0].info.run_id, b[0].info.run_id, "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert code == 2 and "different splits" in err and err.count("\n") == 1


def test_repeat_retrains_top_trials_with_seeds_once(study, capsys):
    tmp, _, _, _ = study
    uri = f"sqlite:///{tmp}/mlflow.db"
    argv = ["study", "repeat", "base", "--top", "1", "--seeds", "2", "--tracking-uri", uri]
    assert main(argv) == 0
    client, parent, repeats = _children(tmp, "base", "repeat")
    assert len(repeats) == 2
    trial = {r.data.tags["harness.trial_number"] for r in repeats}
    assert len(trial) == 1 and {r.data.tags["harness.seed"] for r in repeats} == {"0", "1"}
    (number,) = trial
    aucs = {r.data.tags["harness.seed"]: r.data.metrics["test_auc"] for r in repeats}
    stem = f"repeat_trial{number}_test_auc"
    m = parent.data.metrics
    assert m[f"{stem}_seed_mean"] == pytest.approx(np.mean(list(aucs.values())))
    assert m[f"{stem}_seed_sd"] == pytest.approx(np.std(list(aucs.values()), ddof=1))
    # seed 0 is the study's own training seed: the repeat reproduces the trial exactly
    assert aucs["0"] == pytest.approx(m[stem])
    assert main(argv) == 0  # again: found by tags, nothing retrained
    assert len(_children(tmp, "base", "repeat")[2]) == 2
    local = client.download_artifacts(parent.info.run_id, "report/report.md", str(tmp / "rep"))
    assert "## Seed repeats" in open(local).read()


def test_unknown_baseline_is_a_one_line_study_file_error(tmp_path, capsys):
    path = study_yaml(
        tmp_path, name="bad", dataset="x.csv", encoder="minilm", extra="baselines: [tfid]\n"
    )
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "key 'baselines[0]': unknown baseline 'tfid' (did you mean 'tfidf'?)" in err
    assert err.count("\n") == 1 and not (tmp_path / "mlflow.db").exists()


def test_study_best_shows_baselines_without_importing_torch(study):
    tmp, _, _, _ = study
    script = (
        "import sys\nfrom harness.cli import main\ncode = main(sys.argv[1:])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "print('CODE', code, 'HEAVY', ','.join(heavy) or '-')\n"
    )
    argv = ["study", "best", "base", "--storage", f"sqlite:///{tmp}/optuna.db"]
    argv += ["--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]
    out = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "CODE 0 HEAVY -"
    assert "baseline   val_auc" in out and "embedding" in out and "best trial" in out


def test_embeddings_are_pooled_during_extraction_and_reused(study, tiny_bert):
    """Extraction stored the mean-pooled embeddings in the attention entry; they equal a
    separate forward pass, and the baseline reads them instead of running the encoder."""
    from harness.attention.embeddings import EMBEDDINGS_FILE, cached_embeddings, mean_pooled
    from harness.encoders.load import load_encoder

    tmp, _, data, _ = study
    files = list((tmp / "cache").glob(f"*/{EMBEDDINGS_FILE}"))
    assert len(files) == 1
    texts = [row["text"] for row in csv.DictReader(open(data))]
    encoder = load_encoder(str(tiny_bert))
    before = files[0].stat().st_mtime_ns
    emb = cached_embeddings(encoder, texts, 32, files[0].parent)
    assert files[0].stat().st_mtime_ns == before
    np.testing.assert_allclose(emb, mean_pooled(encoder, texts, 32, batch_size=7), atol=1e-5)
