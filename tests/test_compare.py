"""``harness compare``'s core: rows are paired by row_id, and runs on other data or splits
are refused before anything is resampled."""

from __future__ import annotations

import numpy as np
import pytest

from harness.core.errors import HarnessError
from harness.stats.compare import (
    RunPredictions,
    baseline_diff_metrics,
    best_vs_baselines,
    compare_runs,
    format_comparison,
    parse_predictions,
)
from harness.stats.metrics import paired_bootstrap

PARAMS = {"data_sha256": "ab" * 32, "split_seed": "0", "encoder": "minilm"}


def _data(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.choice(10_000, size=n, replace=False)
    y = rng.integers(0, 2, n)
    pa = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1).round(8)
    pb = np.clip(pa + rng.normal(0, 0.1, n), 0, 1).round(8)
    return ids, y, pa, pb


def _csv(ids, y, p, order=None, text_column: bool = False) -> str:
    order = np.arange(len(ids)) if order is None else order
    head = "row_id,label,probability" + (",text" if text_column else "")
    rows = [
        f"{ids[i]},{y[i]},{p[i]:.8f}" + (f',"sentence, {i}"' if text_column else "") for i in order
    ]
    return "\n".join([head, *rows]) + "\n"


def _run(name: str, csv_text: str, **params: object) -> RunPredictions:
    return RunPredictions(name=name, predictions_csv=csv_text, params={**PARAMS, **params})


def test_rows_are_paired_by_row_id_whatever_the_file_order() -> None:
    ids, y, pa, pb = _data()
    perm = np.random.default_rng(1).permutation(len(ids))
    order = np.argsort(ids)  # the expected result pairs rows in row_id order
    want = paired_bootstrap(y[order], pa[order], pb[order], n_resamples=200, seed=3)
    a = _run("a", _csv(ids, y, pa))
    b_shuffled = _run("b", _csv(ids, y, pb, order=perm, text_column=True))
    got = compare_runs(a, b_shuffled, n_resamples=200, seed=3)
    assert got == want
    both_shuffled = compare_runs(
        _run("a", _csv(ids, y, pa, order=perm[::-1])), b_shuffled, n_resamples=200, seed=3
    )
    assert both_shuffled == want
    assert got.diff != 0  # the two models do differ, so a mis-pairing would show


def test_self_compare_gives_zero_and_p_one() -> None:
    ids, y, pa, _ = _data()
    run = _run("abc123", _csv(ids, y, pa))
    for metric in ("auc", "accuracy", "f1"):
        r = compare_runs(run, run, metric, n_resamples=300)
        assert (r.diff, r.ci_low, r.ci_high, r.p_value) == (0.0, 0.0, 0.0, 1.0)
    text = format_comparison(compare_runs(run, run), "abc123", "abc123")
    assert "+0.0000  95 % CI [+0.0000, +0.0000]" in text
    assert "p (two-sided)" in text and text.splitlines()[-1].split()[2] == "1"


def test_refuses_runs_on_different_splits() -> None:
    ids, y, pa, pb = _data()
    with pytest.raises(HarnessError, match=r"different splits \(split_seed 0 vs 1\)"):
        compare_runs(_run("a", _csv(ids, y, pa)), _run("b", _csv(ids, y, pb), split_seed=1))


def test_refuses_runs_on_different_data() -> None:
    ids, y, pa, pb = _data()
    other = _run("b", _csv(ids, y, pb), data_sha256="cd" * 32)
    with pytest.raises(HarnessError, match="different data files") as err:
        compare_runs(_run("a", _csv(ids, y, pa)), other)
    assert "\n" not in str(err.value)


def test_refuses_runs_without_split_params() -> None:
    ids, y, pa, _ = _data()
    bare = RunPredictions("old", _csv(ids, y, pa), {"data_sha256": PARAMS["data_sha256"]})
    with pytest.raises(HarnessError, match="run old has no param 'split_seed'"):
        compare_runs(_run("a", _csv(ids, y, pa)), bare)


def test_split_seed_may_be_int_or_str() -> None:
    ids, y, pa, pb = _data()
    r = compare_runs(_run("a", _csv(ids, y, pa), split_seed=0), _run("b", _csv(ids, y, pb)))
    assert r.n_resamples == 1000


def test_refuses_different_rows_or_labels() -> None:
    ids, y, pa, pb = _data()
    a = _run("a", _csv(ids, y, pa))
    with pytest.raises(HarnessError, match="different test rows .1 only in a, 0 only in b"):
        compare_runs(a, _run("b", _csv(ids[1:], y[1:], pb[1:])))
    flipped = y.copy()
    flipped[5] = 1 - flipped[5]
    with pytest.raises(HarnessError, match=f"label of 1 test row.*first row_id {ids[5]}"):
        compare_runs(a, _run("b", _csv(ids, flipped, pb)))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("row_id,label\n1,0\n", "lacks column.*probability"),
        ("row_id,label,probability\n", "has no rows"),
        ("row_id,label,probability\n1,0,0.5\n1,1,0.4\n", "row_id 1 appears more than once"),
        ("row_id,label,probability\n1,0,0.5\n2,x,0.4\n", "line 3: .*'x'"),
        ("row_id,label,probability\n1,0,0.5\n2,1\n", "line 3: .*None"),
    ],
)
def test_bad_prediction_files(text: str, match: str) -> None:
    with pytest.raises(HarnessError, match=f"run r: .*{match}"):
        parse_predictions(text, "run r")


def test_best_vs_baselines_metrics() -> None:
    ids, y, pa, pb = _data()
    best = _run("best", _csv(ids, y, pa))
    baselines = {"tfidf": _run("t", _csv(ids, y, pb)), "majority": _run("m", _csv(ids, y, pa))}
    results = best_vs_baselines(best, baselines, n_resamples=200, seed=2)
    assert results["tfidf"] == compare_runs(best, baselines["tfidf"], n_resamples=200, seed=2)
    metrics = baseline_diff_metrics(results)
    assert sorted(metrics) == sorted(
        f"best_vs_{b}_auc_{s}"
        for b in ("tfidf", "majority")
        for s in ("diff", "ci_low", "ci_high", "p_value")
    )
    assert metrics["best_vs_tfidf_auc_diff"] == results["tfidf"].diff
    assert metrics["best_vs_tfidf_auc_ci_low"] == results["tfidf"].ci_low
    assert metrics["best_vs_majority_auc_p_value"] == 1.0
    with pytest.raises(HarnessError, match="baseline name 'tf idf'"):
        baseline_diff_metrics({"tf idf": results["tfidf"]})
