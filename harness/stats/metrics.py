"""Binary-classification metrics and bootstrap confidence intervals.

A probe result is only worth reporting with its uncertainty, so every metric comes with a
percentile-bootstrap interval. The vectorized bootstrap reproduces the obvious
sklearn-in-a-loop computation (``bootstrap_ci_reference``) to float rounding, about a
thousand times faster, so the interval can be computed for every run instead of only at the end.
``paired_bootstrap`` uses the same resampling to say whether one model beats another on the
same test rows. Cross-validation adds pooled out-of-fold intervals over every sentence
(``pooled_ci``, ``pooled_paired``) and the corrected t-test across folds
(``corrected_t_test``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from harness.core import HarnessError

METRICS: tuple[str, ...] = ("auc", "accuracy", "f1", "precision", "recall")


def _validate(labels: object, probs: object, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Check inputs once at the boundary and return (int64 labels, float64 probs).

    Probabilities are widened to float64 so the ``>= threshold`` comparison does not depend on
    the caller's dtype (numpy would otherwise compare a float32 array in float32).
    """
    y = np.asarray(labels)
    p = np.asarray(probs)
    if y.ndim != 1 or p.ndim != 1:
        raise HarnessError(
            f"labels and probs must be 1-D arrays, got shapes {y.shape} and {p.shape}"
        )
    if len(y) != len(p):
        raise HarnessError(f"labels and probs differ in length: {len(y)} vs {len(p)}")
    if len(y) == 0:
        raise HarnessError("labels and probs are empty; need at least one sample")
    if y.dtype.kind not in "biuf":
        raise HarnessError(f"labels must be 0/1 numbers, got dtype {y.dtype}")
    if not np.isin(y, (0, 1)).all():
        bad = np.unique(y[~np.isin(y, (0, 1))])[:5].tolist()
        raise HarnessError(f"labels must be 0 or 1 only, found {bad}")
    if p.dtype.kind not in "biuf":
        raise HarnessError(f"probs must be real numbers, got dtype {p.dtype}")
    p = p.astype(np.float64)
    if not np.isfinite(p).all():
        raise HarnessError(f"probs must be finite; {int((~np.isfinite(p)).sum())} are nan or inf")
    if not math.isfinite(threshold):
        raise HarnessError(f"threshold must be a finite number, got {threshold}")
    return y.astype(np.int64), p


def _validate_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise HarnessError(f"confidence must be strictly between 0 and 1, got {confidence}")


def _validate_indices(indices: object, n: int) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 2 or idx.shape[0] < 1 or idx.shape[1] < 1:
        raise HarnessError(
            f"indices must be a non-empty 2-D [n_resamples, size] array, got shape {idx.shape}"
        )
    if not np.issubdtype(idx.dtype, np.integer):
        raise HarnessError(f"indices must be integers, got dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= n:
        raise HarnessError(
            f"indices must lie in [0, {n}) for {n} samples, got range [{idx.min()}, {idx.max()}]"
        )
    return idx.astype(np.int64, copy=False)


def _metrics_for_resamples(
    y: np.ndarray, p: np.ndarray, indices: np.ndarray, threshold: float
) -> dict[str, np.ndarray]:
    """All METRICS for every row of ``indices`` at once, each as a float array [n_resamples].

    Samples with the same probability are interchangeable for every metric (the prediction is a
    function of the probability), so a resample is fully described by how many positives and
    negatives it draws from each distinct-probability group. One ``bincount`` over
    (resample, label, group) codes gives those counts; sorting groups by probability makes the
    predicted-positive groups a suffix and turns the AUC into a weighted Mann-Whitney sum. All
    counting is in int64, so only the final divisions round.
    """
    uniq, group = np.unique(p, return_inverse=True)
    n_groups = len(uniq)
    n_resamples = indices.shape[0]
    code = group + n_groups * y  # per sample: (label, group) -> 0 .. 2G-1
    keys = code[indices]
    keys += (np.arange(n_resamples, dtype=np.int64) * (2 * n_groups))[:, None]
    counts = np.bincount(keys.ravel(), minlength=n_resamples * 2 * n_groups)
    counts = counts.reshape(n_resamples, 2, n_groups)
    neg, pos = counts[:, 0], counts[:, 1]

    # Groups [0, k) are predicted negative, [k, G) predicted positive.
    k = int(np.count_nonzero(uniq < threshold))
    tn, fn = neg[:, :k].sum(axis=1), pos[:, :k].sum(axis=1)
    fp, tp = neg[:, k:].sum(axis=1), pos[:, k:].sum(axis=1)
    n_neg, n_pos = tn + fp, fn + tp

    # Each positive beats the negatives strictly below its score and ties half of those equal:
    # 2 * U = sum_g pos_g * (2 * neg_below_g + neg_g), and 2 * neg_below_g + neg_g equals
    # 2 * cumsum(neg)_g - neg_g. Exact in integers.
    twice_u = (pos * (2 * np.cumsum(neg, axis=1) - neg)).sum(axis=1)
    both = (n_pos > 0) & (n_neg > 0)
    denom = 2 * n_pos * n_neg
    auc = np.full(n_resamples, np.nan)
    auc[both] = twice_u[both] / denom[both]

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        """num / den with 0 where den == 0, matching sklearn's zero_division=0."""
        out = np.zeros(n_resamples)
        ok = den > 0
        out[ok] = num[ok] / den[ok]
        return out

    return {
        "auc": auc,
        "accuracy": (tp + tn) / (n_pos + n_neg),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
    }


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Equal-tailed percentile interval over the defined (non-nan) resample values.

    Resamples where a metric is undefined carry no information about it, so they are dropped
    rather than counted as some arbitrary value; if none is defined the interval is (nan, nan).
    """
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return (math.nan, math.nan)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(defined, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return (float(lo), float(hi))


def compute_metrics(
    labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Point estimates of METRICS; predicted positive iff ``prob >= threshold``.

    ``auc`` is nan when only one class is present; precision, recall and f1 are 0 when their
    denominator is 0 (sklearn's ``zero_division=0``). Shares the bootstrap's code path, so a
    point estimate and its interval can never disagree on a definition.
    """
    y, p = _validate(labels, probs, threshold)
    values = _metrics_for_resamples(y, p, np.arange(len(y))[None, :], threshold)
    return {name: float(values[name][0]) for name in METRICS}


def bootstrap_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """Resample indices, int [n_resamples, n], from ``np.random.default_rng(seed)``.

    Exposed so callers can compare models on the same resamples (paired intervals) and so the
    fast and reference bootstraps can be checked against each other.
    """
    if n < 1:
        raise HarnessError(f"cannot bootstrap {n} samples; need at least one")
    if n_resamples < 1:
        raise HarnessError(f"n_resamples must be at least 1, got {n_resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def bootstrap_ci(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    threshold: float = 0.5,
    indices: np.ndarray | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap (lo, hi) for every metric in METRICS, vectorized over resamples.

    ``indices`` (e.g. from ``bootstrap_indices``) overrides ``n_resamples`` and ``seed``.
    Resamples with a single class are left out of the AUC interval only.
    """
    y, p = _validate(labels, probs, threshold)
    _validate_confidence(confidence)
    if indices is None:
        idx = bootstrap_indices(len(y), n_resamples, seed)
    else:
        idx = _validate_indices(indices, len(y))
    values = _metrics_for_resamples(y, p, idx, threshold)
    return {name: _percentile_interval(values[name], confidence) for name in METRICS}


def bootstrap_ci_reference(
    labels: np.ndarray,
    probs: np.ndarray,
    indices: np.ndarray,
    *,
    confidence: float = 0.95,
    threshold: float = 0.5,
) -> dict[str, tuple[float, float]]:
    """The slow, obviously-correct bootstrap: sklearn metrics in a Python loop.

    Kept as the ground truth that ``bootstrap_ci`` is tested against and as the benchmark
    baseline; not meant for production use.
    """
    y, p = _validate(labels, probs, threshold)
    _validate_confidence(confidence)
    idx = _validate_indices(indices, len(y))
    values: dict[str, list[float]] = {name: [] for name in METRICS}
    for row in idx:
        yb, pb = y[row], p[row]
        pred = (pb >= threshold).astype(np.int64)
        one_class = yb.min() == yb.max()
        values["auc"].append(math.nan if one_class else roc_auc_score(yb, pb))
        values["accuracy"].append(accuracy_score(yb, pred))
        values["f1"].append(f1_score(yb, pred, zero_division=0))
        values["precision"].append(precision_score(yb, pred, zero_division=0))
        values["recall"].append(recall_score(yb, pred, zero_division=0))
    return {
        name: _percentile_interval(np.asarray(values[name], dtype=np.float64), confidence)
        for name in METRICS
    }


@dataclass(frozen=True)
class PairedResult:
    """Model A against model B on the same test rows: point values, A − B and its uncertainty.

    ``ci_low``/``ci_high`` and ``p_value`` come from the same resamples; ``n_resamples`` counts
    those where the metric is defined for both models (all of them, except for AUC resamples
    that drew a single class).
    """

    a: float
    b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    metric: str
    confidence: float
    n_resamples: int


def _two_sided_p(diffs: np.ndarray) -> float:
    """Two-sided bootstrap p-value for H0: A − B = 0, from the resampled differences d*.

    p = min(1, 2 · min((#{d* ≤ 0} + 1) / (B + 1), (#{d* ≥ 0} + 1) / (B + 1))), B = number of
    defined resamples. Without the +1 this is the smallest 1 − confidence at which the
    equal-tailed percentile interval excludes 0, so p and the CI tell the same story. The +1
    (the usual Monte Carlo correction) keeps p from reading 0 when no resample crossed zero:
    B resamples cannot resolve a p below about 2 / (B + 1), so that is what is reported.
    Ties at 0 count on both sides, which makes a model compared with itself give p = 1.
    """
    b = diffs.size
    if b == 0:
        return math.nan
    at_most = (np.count_nonzero(diffs <= 0) + 1) / (b + 1)
    at_least = (np.count_nonzero(diffs >= 0) + 1) / (b + 1)
    return float(min(1.0, 2.0 * min(at_most, at_least)))


def paired_bootstrap(
    labels: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    metric: str = "auc",
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    threshold: float = 0.5,
    indices: np.ndarray | None = None,
) -> PairedResult:
    """Paired percentile bootstrap of ``metric(A) − metric(B)`` on the same resampled test rows.

    Marginal intervals of two models on one test set overlap even when one model is reliably
    better, because most of each interval's width is which rows were drawn, and that is shared.
    Resampling rows once (one index matrix for both models) cancels it. The interval is the
    equal-tailed percentile interval of the resampled differences; see ``_two_sided_p`` for the
    p-value. ``indices`` overrides ``n_resamples`` and ``seed`` as in ``bootstrap_ci``.
    Resamples with a single class are left out for AUC, as in ``bootstrap_ci``.
    """
    return pooled_paired(
        labels,
        np.asarray(probs_a)[None, ...],
        np.asarray(probs_b)[None, ...],
        metric,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
        threshold=threshold,
        indices=indices,
    )


def _pooled(y: np.ndarray, probs: np.ndarray, idx: np.ndarray, threshold: float) -> dict:
    """Every metric on resamples ``idx`` of each repeat's out-of-fold predictions
    (``probs`` [R, n]), averaged over the repeats: one resample draws the same sentences
    for every repeat, so the interval is over sentences, as the question is."""
    per_repeat = [_metrics_for_resamples(y, p, idx, threshold) for p in probs]
    return {m: np.mean([r[m] for r in per_repeat], axis=0) for m in METRICS}


def pooled_ci(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    threshold: float = 0.5,
) -> dict[str, list[float]]:
    """Metric -> ``[value, ci_low, ci_high]`` of pooled out-of-fold predictions.

    ``probs`` is [repeats, n]: each repeat of K-fold cross-validation predicts every
    sentence once. The value is the metric over all n sentences, averaged over repeats;
    the percentile interval resamples sentences (the same ones in every repeat)."""
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    y, _ = _validate(labels, probs[0], threshold)
    _validate_confidence(confidence)
    full = np.arange(len(y))[None, :]
    value = _pooled(y, probs, full, threshold)
    boot = _pooled(y, probs, bootstrap_indices(len(y), n_resamples, seed), threshold)
    out = {}
    for m in METRICS:
        lo, hi = _percentile_interval(boot[m], confidence)
        out[m] = [float(value[m][0]), lo, hi]
    return out


def pooled_paired(
    labels: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    metric: str = "auc",
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    threshold: float = 0.5,
    indices: np.ndarray | None = None,
) -> PairedResult:
    """``paired_bootstrap`` for pooled out-of-fold predictions [repeats, n] of two models
    on the same folds: A − B of the repeat-averaged metric, on shared resamples. With one
    repeat it is ``paired_bootstrap``, which calls it."""
    if metric not in METRICS:
        raise HarnessError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    pa = np.stack([_validate(labels, p, threshold)[1] for p in np.atleast_2d(probs_a)])
    pb = np.stack([_validate(labels, p, threshold)[1] for p in np.atleast_2d(probs_b)])
    y, _ = _validate(labels, pa[0], threshold)
    _validate_confidence(confidence)
    if indices is None:
        idx = bootstrap_indices(len(y), n_resamples, seed)
    else:
        idx = _validate_indices(indices, len(y))
    full = np.arange(len(y))[None, :]
    a = float(_pooled(y, pa, full, threshold)[metric][0])
    b = float(_pooled(y, pb, full, threshold)[metric][0])
    diffs = _pooled(y, pa, idx, threshold)[metric] - _pooled(y, pb, idx, threshold)[metric]
    diffs = diffs[~np.isnan(diffs)]
    lo, hi = _percentile_interval(diffs, confidence)
    return PairedResult(
        a=a,
        b=b,
        diff=a - b,
        ci_low=lo,
        ci_high=hi,
        p_value=_two_sided_p(diffs),
        metric=metric,
        confidence=confidence,
        n_resamples=int(diffs.size),
    )


@dataclass(frozen=True)
class CorrectedT:
    """Nadeau & Bengio's corrected resampled t-test of per-fold differences A − B."""

    diff: float
    ci_low: float
    ci_high: float
    t: float
    p_value: float
    df: int


def corrected_t_test(
    diffs: np.ndarray, n_train: float, n_test: float, confidence: float = 0.95
) -> CorrectedT:
    """Corrected resampled t-test (Nadeau & Bengio, 2003) over J = folds × repeats diffs.

    Folds share training rows, so their differences are correlated and the plain t-test's
    variance s²/J is too small. The correction uses (1/J + n_test/n_train)·s² instead,
    with J − 1 degrees of freedom; ``n_train`` and ``n_test`` are the rows a fold trains
    and tests on (their means, if folds differ in size)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 1 or d.size < 2:
        raise HarnessError(f"the corrected t-test needs >= 2 fold differences, got {d.size}")
    _validate_confidence(confidence)
    j = d.size
    mean = float(d.mean())
    se = math.sqrt((1 / j + n_test / n_train) * float(d.var(ddof=1)))
    df = j - 1
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    if se == 0:
        t, p = (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    else:
        t = mean / se
        p = float(2 * stats.t.sf(abs(t), df))
    return CorrectedT(mean, mean - half, mean + half, t, p, df)
