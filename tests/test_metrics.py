"""The fast metrics must agree with sklearn, and the vectorized bootstrap with the sklearn loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from harness.core.errors import HarnessError
from harness.stats.metrics import (
    METRICS,
    bootstrap_ci,
    bootstrap_ci_reference,
    bootstrap_indices,
    compute_metrics,
)

TOL = 1e-12


def _sklearn_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    pred = (p >= threshold).astype(int)
    return {
        "auc": roc_auc_score(y, p) if len(np.unique(y)) == 2 else math.nan,
        "accuracy": accuracy_score(y, pred),
        "f1": f1_score(y, pred, zero_division=0),
        "precision": precision_score(y, pred, zero_division=0),
        "recall": recall_score(y, pred, zero_division=0),
    }


def _signal_data(n: int, seed: int, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities with real but imperfect separation (AUC around 0.75)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0.0, 1.0)
    return y, (p if decimals is None else p.round(decimals))


def _assert_close(got: dict, want: dict) -> None:
    assert list(got) == list(METRICS)
    for name in METRICS:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=TOL, err_msg=name)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.71])
def test_compute_metrics_matches_sklearn_random(seed: int, threshold: float) -> None:
    y, p = _signal_data(300, seed)
    _assert_close(compute_metrics(y, p, threshold), _sklearn_metrics(y, p, threshold))


@pytest.mark.parametrize("seed", range(5))
def test_compute_metrics_matches_sklearn_with_ties(seed: int) -> None:
    # One decimal: many ties, and many probabilities exactly equal to the 0.5 threshold.
    y, p = _signal_data(200, seed, decimals=1)
    assert (p == 0.5).any()
    _assert_close(compute_metrics(y, p), _sklearn_metrics(y, p, 0.5))


def test_compute_metrics_accepts_float32_bool_and_lists() -> None:
    y, p = _signal_data(100, 0, decimals=2)
    want = compute_metrics(y, p, 0.1)
    _assert_close(compute_metrics(y.astype(bool), p.astype(np.float32), 0.1), want)
    _assert_close(compute_metrics(y.tolist(), p.tolist(), 0.1), want)


def test_compute_metrics_edge_cases() -> None:
    one_class = compute_metrics(np.ones(4, int), np.array([0.1, 0.6, 0.7, 0.2]))
    assert math.isnan(one_class["auc"])
    assert one_class["accuracy"] == 0.5 and one_class["precision"] == 1.0
    no_positive_predictions = compute_metrics(np.array([0, 1, 1]), np.array([0.1, 0.2, 0.3]))
    assert no_positive_predictions["precision"] == 0.0
    assert no_positive_predictions["f1"] == 0.0
    assert no_positive_predictions["auc"] == 1.0
    all_tied = compute_metrics(np.array([0, 1, 0, 1]), np.full(4, 0.5))
    assert all_tied["auc"] == 0.5 and all_tied["recall"] == 1.0


def _assert_ci_equal(y: np.ndarray, p: np.ndarray, idx: np.ndarray, **kwargs: float) -> None:
    fast = bootstrap_ci(y, p, indices=idx, **kwargs)
    ref = bootstrap_ci_reference(y, p, idx, **kwargs)
    _assert_close(fast, ref)


def test_bootstrap_ci_matches_reference_random() -> None:
    y, p = _signal_data(300, 1)
    _assert_ci_equal(y, p, bootstrap_indices(300, 80, seed=3))


def test_bootstrap_ci_matches_reference_heavy_ties() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 250)
    p = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], size=250, p=[0.1, 0.2, 0.4, 0.2, 0.1])
    # The threshold equals one of the tied values, and 0.9 probes other order statistics.
    _assert_ci_equal(y, p, bootstrap_indices(250, 80, seed=4), threshold=0.75, confidence=0.9)


def test_bootstrap_ci_matches_reference_with_one_class_resamples() -> None:
    y = np.array([0, 0, 0, 0, 0, 1, 0, 0])
    p = np.array([0.1, 0.5, 0.3, 0.3, 0.9, 0.6, 0.2, 0.5])
    idx = bootstrap_indices(8, 80, seed=0)
    one_class = (y[idx].min(axis=1) == y[idx].max(axis=1)).sum()
    assert 0 < one_class < 80  # the case under test: some resamples have no positive
    _assert_ci_equal(y, p, idx, confidence=0.5)


def test_bootstrap_ci_auc_undefined_everywhere() -> None:
    y, p = np.zeros(5, int), np.linspace(0.1, 0.9, 5)
    ci = bootstrap_ci(y, p, n_resamples=10)
    assert all(math.isnan(v) for v in ci["auc"])
    assert ci["accuracy"][0] <= ci["accuracy"][1]
    _assert_close(ci, bootstrap_ci_reference(y, p, bootstrap_indices(5, 10, seed=0)))


def test_bootstrap_indices_deterministic() -> None:
    a = bootstrap_indices(50, 30, seed=7)
    assert a.shape == (30, 50) and np.issubdtype(a.dtype, np.integer)
    assert a.min() >= 0 and a.max() < 50
    np.testing.assert_array_equal(a, bootstrap_indices(50, 30, seed=7))
    assert not np.array_equal(a, bootstrap_indices(50, 30, seed=8))


def test_bootstrap_ci_seed_equals_explicit_indices() -> None:
    y, p = _signal_data(120, 0)
    by_seed = bootstrap_ci(y, p, n_resamples=100, seed=11)
    assert by_seed == bootstrap_ci(y, p, indices=bootstrap_indices(120, 100, seed=11))
    assert by_seed == bootstrap_ci(y, p, n_resamples=100, seed=11)


def test_interval_contains_point_estimate_and_narrows_with_n() -> None:
    widths = {}
    for n in (200, 5000):
        y, p = _signal_data(n, 0)
        point = compute_metrics(y, p)
        ci = bootstrap_ci(y, p, n_resamples=500)
        for name in METRICS:
            lo, hi = ci[name]
            assert lo <= point[name] <= hi, (n, name, lo, point[name], hi)
        widths[n] = {name: ci[name][1] - ci[name][0] for name in METRICS}
    for name in METRICS:
        assert widths[5000][name] < 0.5 * widths[200][name], name


def test_higher_confidence_gives_wider_interval() -> None:
    y, p = _signal_data(300, 0)
    narrow = bootstrap_ci(y, p, confidence=0.5, n_resamples=300)
    wide = bootstrap_ci(y, p, confidence=0.99, n_resamples=300)
    for name in METRICS:
        assert wide[name][0] <= narrow[name][0] and narrow[name][1] <= wide[name][1]


GOOD_Y = np.array([0, 1, 0, 1])
GOOD_P = np.array([0.2, 0.8, 0.4, 0.6])


@pytest.mark.parametrize(
    ("labels", "probs", "match"),
    [
        (GOOD_Y, GOOD_P[:3], "differ in length"),
        (np.array([0, 1, 2, 1]), GOOD_P, "0 or 1"),
        (np.array([0, 1, 0.5, 1]), GOOD_P, "0 or 1"),
        (np.array(["a", "b", "a", "b"]), GOOD_P, "labels must be 0/1"),
        (GOOD_Y, np.array([0.2, np.nan, 0.4, 0.6]), "finite"),
        (GOOD_Y, np.array([0.2, np.inf, 0.4, 0.6]), "finite"),
        (GOOD_Y, np.array(["x", "y", "z", "w"]), "real numbers"),
        (GOOD_Y.reshape(2, 2), GOOD_P.reshape(2, 2), "1-D"),
        (np.array([], int), np.array([]), "empty"),
    ],
)
def test_bad_inputs_raise(labels: np.ndarray, probs: np.ndarray, match: str) -> None:
    with pytest.raises(HarnessError, match=match):
        compute_metrics(labels, probs)
    with pytest.raises(HarnessError, match=match):
        bootstrap_ci(labels, probs, n_resamples=10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_resamples": 0}, "n_resamples"),
        ({"confidence": 0.0}, "confidence"),
        ({"confidence": 1.0}, "confidence"),
        ({"confidence": 95}, "confidence"),
        ({"threshold": math.nan}, "threshold"),
        ({"indices": np.array([0, 1, 2])}, "2-D"),
        ({"indices": np.array([[0, 1, 4, 2]])}, r"\[0, 4\)"),
        ({"indices": np.array([[0, -1, 2, 3]])}, r"\[0, 4\)"),
        ({"indices": np.array([[0.0, 1.0, 2.0, 3.0]])}, "integers"),
    ],
)
def test_bad_bootstrap_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(HarnessError, match=match):
        bootstrap_ci(GOOD_Y, GOOD_P, **kwargs)


def test_bad_reference_and_indices_arguments_raise() -> None:
    with pytest.raises(HarnessError, match="confidence"):
        bootstrap_ci_reference(GOOD_Y, GOOD_P, np.zeros((2, 4), int), confidence=1.5)
    with pytest.raises(HarnessError, match="n_resamples"):
        bootstrap_indices(4, 0, seed=0)
    with pytest.raises(HarnessError, match="at least one"):
        bootstrap_indices(0, 10, seed=0)
