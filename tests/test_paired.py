"""The paired bootstrap must match a plain sklearn loop on the same indices, and behave as a
test of "is A better than B?" should: zero against itself, confident when the gap is real."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from harness.core.errors import HarnessError
from harness.stats.metrics import bootstrap_ci, bootstrap_indices, compute_metrics, paired_bootstrap

TOL = 1e-12


def _two_models(n: int, seed: int, gap: float = 0.05) -> tuple[np.ndarray, ...]:
    """Labels and two correlated probability vectors; B is A plus noise, shifted by ``gap``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    pa = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0.0, 1.0)
    pb = np.clip(pa + rng.normal(0.0, 0.15, n) - gap * (2 * y - 1), 0.0, 1.0)
    return y, pa, pb


def _reference(y, pa, pb, metric, idx, confidence, threshold=0.5):
    """Slow paired bootstrap: sklearn per resample row, same p-value definition as documented."""

    def score(yb, pbatch):
        if metric == "auc":
            return math.nan if yb.min() == yb.max() else roc_auc_score(yb, pbatch)
        pred = (pbatch >= threshold).astype(int)
        if metric == "accuracy":
            return accuracy_score(yb, pred)
        return f1_score(yb, pred, zero_division=0)

    diffs = np.array([score(y[r], pa[r]) - score(y[r], pb[r]) for r in idx])
    diffs = diffs[~np.isnan(diffs)]
    alpha = (1 - confidence) / 2
    lo, hi = np.percentile(diffs, [100 * alpha, 100 * (1 - alpha)])
    b = len(diffs)
    p = min(1.0, 2 * min(((diffs <= 0).sum() + 1) / (b + 1), ((diffs >= 0).sum() + 1) / (b + 1)))
    full = np.arange(len(y))
    return score(y[full], pa) - score(y[full], pb), lo, hi, p, b


@pytest.mark.parametrize("metric", ["auc", "accuracy", "f1"])
@pytest.mark.parametrize("decimals", [None, 1])
def test_matches_reference_loop(metric: str, decimals: int | None) -> None:
    y, pa, pb = _two_models(200, 1, gap=0.02)
    if decimals is not None:  # heavy ties, including probabilities equal to the threshold
        pa, pb = pa.round(decimals), pb.round(decimals)
    idx = bootstrap_indices(200, 120, seed=5)
    got = paired_bootstrap(y, pa, pb, metric, indices=idx, confidence=0.9)
    diff, lo, hi, p, b = _reference(y, pa, pb, metric, idx, 0.9)
    assert got.n_resamples == b == 120
    np.testing.assert_allclose(
        [got.diff, got.ci_low, got.ci_high, got.p_value], [diff, lo, hi, p], rtol=0, atol=TOL
    )
    assert 0 < got.p_value < 1  # the case under test is not a degenerate one
    assert got.a == compute_metrics(y, pa)[metric]
    assert got.b == compute_metrics(y, pb)[metric]
    assert got.metric == metric and got.confidence == 0.9


def test_matches_reference_with_one_class_resamples() -> None:
    y = np.array([0, 0, 0, 0, 0, 1, 0, 1, 0, 0])
    pa = np.linspace(0.05, 0.95, 10)
    pb = pa[::-1].copy()
    idx = bootstrap_indices(10, 200, seed=0)
    n_one_class = int((y[idx].min(axis=1) == y[idx].max(axis=1)).sum())
    assert 0 < n_one_class < 200
    got = paired_bootstrap(y, pa, pb, "auc", indices=idx)
    diff, lo, hi, p, b = _reference(y, pa, pb, "auc", idx, 0.95)
    assert got.n_resamples == b == 200 - n_one_class
    np.testing.assert_allclose(
        [got.diff, got.ci_low, got.ci_high, got.p_value], [diff, lo, hi, p], rtol=0, atol=TOL
    )


@pytest.mark.parametrize("metric", ["auc", "accuracy", "f1"])
def test_self_comparison_is_exactly_zero_with_p_one(metric: str) -> None:
    y, pa, _ = _two_models(150, 2)
    r = paired_bootstrap(y, pa, pa.copy(), metric, n_resamples=300)
    assert (r.diff, r.ci_low, r.ci_high, r.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert r.a == r.b


def test_clearly_better_model_excludes_zero_with_small_p() -> None:
    y, _, _ = _two_models(400, 3)
    rng = np.random.default_rng(3)
    good = np.clip(rng.normal(0.3 + 0.4 * y, 0.15), 0, 1)  # AUC near 0.97
    weak = np.clip(rng.normal(0.45 + 0.1 * y, 0.2), 0, 1)  # AUC near 0.64
    r = paired_bootstrap(y, good, weak, n_resamples=1000)
    assert 0 < r.ci_low <= r.diff <= r.ci_high
    assert r.p_value == pytest.approx(2 / 1001)  # no resample crossed 0: the smallest p
    flipped = paired_bootstrap(y, weak, good, n_resamples=1000)
    assert flipped.diff == -r.diff and flipped.p_value == r.p_value
    assert (flipped.ci_low, flipped.ci_high) == pytest.approx((-r.ci_high, -r.ci_low))


def test_paired_interval_is_much_narrower_than_marginal_ones() -> None:
    # B is A plus a little noise: the marginal CIs overlap almost fully, the paired one is tight.
    y, pa, _ = _two_models(300, 4)
    pb = np.clip(pa + np.random.default_rng(4).normal(0.0, 0.03, 300), 0, 1)
    r = paired_bootstrap(y, pa, pb, n_resamples=500)
    lo_a, hi_a = bootstrap_ci(y, pa, n_resamples=500)["auc"]
    lo_b, hi_b = bootstrap_ci(y, pb, n_resamples=500)["auc"]
    assert r.ci_high - r.ci_low < 0.25 * min(hi_a - lo_a, hi_b - lo_b)
    assert r.ci_low <= r.diff <= r.ci_high


def test_deterministic_given_seed() -> None:
    y, pa, pb = _two_models(150, 5, gap=0.01)
    first = paired_bootstrap(y, pa, pb, n_resamples=200, seed=9)
    assert first == paired_bootstrap(y, pa, pb, n_resamples=200, seed=9)
    assert first == paired_bootstrap(y, pa, pb, indices=bootstrap_indices(150, 200, seed=9))
    assert first != paired_bootstrap(y, pa, pb, n_resamples=200, seed=10)


def test_auc_undefined_everywhere_gives_nan() -> None:
    y = np.zeros(6, int)
    r = paired_bootstrap(y, np.linspace(0, 1, 6), np.linspace(1, 0, 6), n_resamples=20)
    assert r.n_resamples == 0
    assert all(math.isnan(v) for v in (r.a, r.b, r.diff, r.ci_low, r.ci_high, r.p_value))


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (([0, 1, 0], [0.1, 0.9, 0.2], [0.3, 0.4]), {}, "differ in length"),
        (([0, 1], [0.1, 0.9], [0.3, 0.4], "brier"), {}, "unknown metric 'brier'"),
        (([0, 1], [0.1, 0.9], [0.3, float("nan")]), {}, "finite"),
        (([0, 1], [0.1, 0.9], [0.3, 0.4]), {"confidence": 1.5}, "confidence"),
        (([0, 1], [0.1, 0.9], [0.3, 0.4]), {"n_resamples": 0}, "n_resamples"),
        (([0, 1], [0.1, 0.9], [0.3, 0.4]), {"indices": np.array([[0, 2]])}, r"\[0, 2\)"),
    ],
)
def test_bad_inputs_raise(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(HarnessError, match=match):
        paired_bootstrap(*args, **kwargs)
