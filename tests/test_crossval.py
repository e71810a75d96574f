"""Cross-validation: folds over every sentence, pooled and paired statistics, and
``harness study evaluate`` (plain and ``--nested``) end to end on a tiny random BERT,
synthetic data and real stores."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats
from sklearn.metrics import roc_auc_score

from harness.cli import main
from harness.data import load_dataset, make_folds
from harness.stats import corrected_t_test, pooled_ci, pooled_paired
from harness.stats.metrics import bootstrap_indices
from harness.study import crossval
from tests.conftest import study_yaml, write_synthetic_csv

FOLDS, REPEATS = 3, 2


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = write_synthetic_csv(tmp_path_factory.mktemp("cvdata") / "data.csv", n=180)
    return load_dataset(str(path), group_column="group")


def test_folds_score_every_sentence_once_per_repeat_and_keep_groups_apart(synthetic):
    folds = make_folds(synthetic, folds=FOLDS, repeats=REPEATS, seed=0, val_fraction=0.15)
    assert len(folds) == FOLDS * REPEATS
    groups = synthetic.groups
    for r in range(REPEATS):
        tests = np.concatenate([f.split.test for f in folds if f.repeat == r])
        assert np.array_equal(np.sort(tests), np.arange(len(synthetic)))
    for f in folds:
        s = f.split
        assert np.intersect1d(np.r_[s.train, s.val], s.test).size == 0
        assert len(s.train) + len(s.val) + len(s.test) == len(synthetic)
        # no group crosses the outer fold, nor the inner train/val cut
        assert not set(groups[s.test]) & set(groups[np.r_[s.train, s.val]])
        assert not set(groups[s.train]) & set(groups[s.val])
        inner = f.inner(synthetic, seed=0)
        rows = np.r_[inner.train, inner.val, inner.test]
        assert np.array_equal(np.sort(rows), np.sort(np.r_[s.train, s.val]))
        parts = (inner.train, inner.val, inner.test)
        for i, a in enumerate(parts):
            for b in parts[i + 1 :]:
                assert not set(groups[a]) & set(groups[b])
    # repeats reshuffle: the two repeats' first folds differ
    assert not np.array_equal(folds[0].split.test, folds[FOLDS].split.test)


def test_the_main_job_says_in_one_sentence_what_its_split_can_tell():
    from harness.report import verdict

    paired = {"majority": [0.26, 0.22, 0.30, 0.002], "embedding": [-0.006, -0.041, 0.025, 0.6]}
    paired["tfidf"] = [0.003, -0.034, 0.038, 0.85]
    assert verdict(paired, 550, 3673, "babe-quick") == (
        "best trial vs embedding: -0.006 [-0.041, +0.025], vs tfidf: +0.003 [-0.034, +0.038]: "
        "no detectable difference on 550 test sentences; run `harness study evaluate "
        "babe-quick` for an estimate over all 3,673"
    )
    paired = {"tfidf": [0.05, 0.01, 0.09, 0.01]}
    assert "the best trial beats them on 550" in verdict(paired, 550, 3673, "s")


def test_corrected_t_test_matches_a_hand_computation():
    d = np.array([0.02, -0.01, 0.03, 0.015, 0.0, 0.025])
    n_train, n_test = 400.0, 100.0
    j = len(d)
    var = sum((x - d.mean()) ** 2 for x in d) / (j - 1)
    se = math.sqrt((1 / j + n_test / n_train) * var)
    t = d.mean() / se
    p = 2 * (1 - stats.t.cdf(abs(t), j - 1))
    half = stats.t.ppf(0.975, j - 1) * se
    got = corrected_t_test(d, n_train, n_test)
    assert got.t == pytest.approx(t) and got.p_value == pytest.approx(p) and got.df == j - 1
    assert (got.ci_low, got.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    # the correction widens the naive interval: folds share their training rows
    naive = stats.t.ppf(0.975, j - 1) * math.sqrt(var / j)
    assert got.ci_high - got.diff > naive


def test_pooled_bootstrap_matches_an_sklearn_loop_on_fixed_indices():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 120)
    probs = np.clip(y * 0.3 + rng.random((2, 120)) * 0.7, 0, 1)  # [repeats, n]
    other = rng.random((2, 120))
    idx = bootstrap_indices(120, 300, seed=7)
    loop = np.array([np.mean([roc_auc_score(y[i], p[i]) for p in probs]) for i in idx])
    lo, hi = np.percentile(loop, [2.5, 97.5])
    got = pooled_ci(y, probs, n_resamples=300, seed=7)["auc"]
    value = np.mean([roc_auc_score(y, p) for p in probs])
    assert got == pytest.approx([value, lo, hi], abs=1e-12)
    diffs = loop - np.array([np.mean([roc_auc_score(y[i], p[i]) for p in other]) for i in idx])
    paired = pooled_paired(y, probs, other, n_resamples=300, seed=7)
    assert (paired.ci_low, paired.ci_high) == pytest.approx(
        tuple(np.percentile(diffs, [2.5, 97.5])), abs=1e-12
    )
    assert paired.diff == pytest.approx(value - np.mean([roc_auc_score(y, p) for p in other]))


@pytest.fixture(scope="module")
def cv_study(tmp_path_factory, tiny_bert):
    """A finished 3-trial study with two baselines, then ``harness study evaluate``."""
    tmp = tmp_path_factory.mktemp("cv")
    data = write_synthetic_csv(tmp / "data.csv", n=180)
    extra = f"baselines: [majority, tfidf]\nevaluation: {{folds: {FOLDS}, repeats: {REPEATS}}}\n"
    search = (
        "search:\n  layers: [[0, 1], [1]]\n  heads: [all, {top: 2}]\n  reducer: [sum, max]\n"
        "  classifier:\n    gru: {hidden_size: 16}\n    linear: {c: 1.0}\n"
    )
    path = study_yaml(
        tmp, name="cv", dataset=str(data), encoder=str(tiny_bert), n_trials=3, extra=extra,
        search=search,
    )  # fmt: skip
    assert main(["study", "run", str(path), "--quiet"]) == 0
    return tmp, data


def _runs(tmp, contender: str | None = None):
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("cv")
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    parent = next(r for r in runs if r.data.tags.get("harness.role") == "study")
    ev = [r for r in runs if r.data.tags.get("harness.role") == "evaluate"]
    if contender is not None:
        ev = [r for r in ev if r.data.tags["harness.contender"] == contender]
    return client, parent, ev


def test_evaluate_scores_every_sentence_out_of_fold_and_never_trains_on_the_test_fold(
    cv_study, monkeypatch, capsys
):
    tmp, _ = cv_study
    seen: list[tuple[str, set, set]] = []  # (fold, rows fitted on, outer test rows)
    real = crossval.fit_and_log

    def spying(ctx, model, inputs, run_id, on_epoch=None):
        fit = model.fit

        def recorded(inputs, labels, train_idx, val_idx, *args, **kwargs):
            seen.append((run_id, set(train_idx) | set(val_idx), set(ctx.split.test)))
            return fit(inputs, labels, train_idx, val_idx, *args, **kwargs)

        monkeypatch.setattr(model, "fit", recorded)
        return real(ctx, model, inputs, run_id, on_epoch)

    monkeypatch.setattr(crossval, "fit_and_log", spying)
    uri = f"sqlite:///{tmp}/mlflow.db"
    assert main(["study", "evaluate", "cv", "--top", "2", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "Cross-validation of study 'cv': 3 folds × 2 repeats over all 180 sentences" in out
    assert "paired bootstrap" in out and "corrected t (Nadeau–Bengio)" in out
    client, parent, runs = _runs(tmp)
    contenders = {r.data.tags["harness.contender"] for r in runs}
    assert len(contenders) == 4 and {"baseline-majority", "baseline-tfidf"} <= contenders
    assert len(runs) == 4 * FOLDS * REPEATS and len(seen) == len(runs)
    assert all(fitted and not fitted & test for _, fitted, test in seen)
    for name in contenders:
        per_repeat: dict[str, list[int]] = {}
        for run in [r for r in runs if r.data.tags["harness.contender"] == name]:
            local = client.download_artifacts(run.info.run_id, "predictions/test.csv", str(tmp))
            rows = [int(row["index"]) for row in csv.DictReader(open(local))]
            per_repeat.setdefault(run.data.tags["harness.fold"][:2], []).extend(rows)
        assert sorted(per_repeat) == ["r0", "r1"]
        for rows in per_repeat.values():  # exactly one prediction per sentence per repeat
            assert sorted(rows) == list(range(180))
    m = parent.data.metrics
    # chance in every fold; pooled, the folds' constants differ (pooling mixes models)
    assert m["cv_baseline-majority_fold_auc_mean"] == 0.5
    assert m["cv_baseline-majority_fold_auc_sd"] == 0
    assert m["cv_baseline-tfidf_auc"] > 0.8  # the label is in the words
    assert m["cv_baseline-tfidf_auc_ci_low"] < m["cv_baseline-tfidf_auc"]
    assert "harness.folds_sha256" in parent.data.tags
    text = client.download_artifacts(parent.info.run_id, "evaluation/evaluation.md", str(tmp))
    assert "pooled AUC" in open(text).read()
    report = open(client.download_artifacts(parent.info.run_id, "report/report.md", str(tmp)))
    assert "## Cross-validation" in report.read()
    png = client.download_artifacts(parent.info.run_id, "report/cv_evaluation_forest.png", str(tmp))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    before = dict(m)
    # a re-run reuses every logged fold and reproduces every figure exactly
    assert main(["study", "evaluate", "cv", "--top", "2", "--tracking-uri", uri]) == 0
    _, parent, again = _runs(tmp)
    assert len(again) == len(runs)
    assert {k: v for k, v in parent.data.metrics.items() if k != "cv_seconds"} == {
        k: v for k, v in before.items() if k != "cv_seconds"
    }


def test_nested_runs_a_search_per_fold_that_never_reads_the_outer_test_fold(
    cv_study, monkeypatch, capsys
):
    tmp, _ = cv_study
    searched: list[tuple[str, set, set]] = []
    real_search, real_model_for = crossval.search_fold, crossval.model_for

    def spying_search(ctx, fold):
        outer = set(fold.split.test)

        def model_for(c, spec):
            model = real_model_for(c, spec)
            fit = model.fit

            def recorded(inputs, labels, train_idx, val_idx, *args, **kwargs):
                searched.append((fold.name, set(train_idx) | set(val_idx), outer))
                return fit(inputs, labels, train_idx, val_idx, *args, **kwargs)

            model.fit = recorded
            return model

        monkeypatch.setattr(crossval, "model_for", model_for)
        try:
            return real_search(ctx, fold)
        finally:
            monkeypatch.setattr(crossval, "model_for", real_model_for)

    monkeypatch.setattr(crossval, "search_fold", spying_search)
    uri = f"sqlite:///{tmp}/mlflow.db"
    assert main(["study", "evaluate", "cv", "--nested", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "Nested cross-validation" in out and "nested − baseline-tfidf" in out
    folds = {name for name, _, _ in searched}
    assert len(folds) == FOLDS * REPEATS
    # the study's budget per fold (3 trials), none of them fitted on an outer test row
    assert len(searched) == 3 * FOLDS * REPEATS
    assert all(fitted and not fitted & outer for _, fitted, outer in searched)
    client, parent, nested = _runs(tmp, "nested")
    assert len(nested) == FOLDS * REPEATS
    assert 0 < parent.data.metrics["cv_nested_nested_auc"] <= 1
    winners = client.download_artifacts(
        parent.info.run_id, "evaluation/nested_winners.json", str(tmp)
    )
    assert len(open(winners).read()) > 10
