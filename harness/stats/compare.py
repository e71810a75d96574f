"""Paired comparison of two runs' test predictions: the pure core of ``harness compare``.

Two runs can only be compared row by row if they scored the same test rows of the same data,
so the inputs are checked (data sha256, split seed, row ids, labels) before any resampling.
Rows are matched by ``row_id`` and put in ``row_id`` order, so the result does not depend on
the order either file lists its rows in. Nothing here touches MLflow: the caller reads each
run's ``predictions/test.csv`` and params and hands over plain text and dicts.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from harness.core import HarnessError
from harness.stats.metrics import PairedResult, paired_bootstrap

#: Params that must agree for two runs to have scored the same test rows.
SPLIT_PARAMS: tuple[str, ...] = ("data_sha256", "split_seed")
PREDICTION_COLUMNS: tuple[str, ...] = ("row_id", "label", "probability")
_METRIC_KEY_PART = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class RunPredictions:
    """One run as ``compare`` sees it: a name for messages, its test predictions, its params."""

    name: str
    predictions_csv: str
    params: Mapping[str, object]


@dataclass(frozen=True)
class PredictionTable:
    """A ``predictions/test.csv`` sorted by ``row_id``."""

    row_ids: np.ndarray
    labels: np.ndarray
    probs: np.ndarray


def parse_predictions(text: str, source: str) -> PredictionTable:
    """Read a predictions CSV by header names (extra columns such as ``text`` are ignored)."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in PREDICTION_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise HarnessError(
            f"{source}: predictions CSV lacks column(s) {', '.join(missing)}; "
            f"expected a header with {', '.join(PREDICTION_COLUMNS)}"
        )
    row_ids, labels, probs = [], [], []
    for line, row in enumerate(reader, start=2):
        try:
            row_ids.append(int(row["row_id"]))
            labels.append(int(row["label"]))
            probs.append(float(row["probability"]))
        except (TypeError, ValueError):
            raise HarnessError(
                f"{source}: line {line}: row_id and label must be integers and probability a "
                f"number, got {row['row_id']!r}, {row['label']!r}, {row['probability']!r}"
            ) from None
    if not row_ids:
        raise HarnessError(f"{source}: predictions CSV has no rows")
    ids = np.asarray(row_ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    dup = ids[1:][ids[1:] == ids[:-1]]
    if dup.size:
        raise HarnessError(f"{source}: row_id {int(dup[0])} appears more than once")
    return PredictionTable(
        row_ids=ids,
        labels=np.asarray(labels, dtype=np.int64)[order],
        probs=np.asarray(probs, dtype=np.float64)[order],
    )


def check_same_split(a: RunPredictions, b: RunPredictions) -> None:
    """Refuse runs that were not made on the same data and split: their rows are not paired."""
    for key in SPLIT_PARAMS:
        va, vb = a.params.get(key), b.params.get(key)
        if va is None or vb is None:
            lacking = a.name if va is None else b.name
            raise HarnessError(
                f"run {lacking} has no param {key!r}, so its split cannot be checked; "
                "compare runs made by harness study run"
            )
        if str(va) != str(vb):
            what = "data files" if key == "data_sha256" else "splits"
            raise HarnessError(
                f"runs {a.name} and {b.name} were made on different {what} "
                f"({key} {va} vs {vb}); compare runs of the same data and split"
            )


def align(a: RunPredictions, b: RunPredictions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, probs_a, probs_b) over the shared test rows, in row_id order.

    The split params agreeing is necessary but not sufficient (a file could be edited, or a
    future split change could keep the seed), so the rows and labels are checked too.
    """
    ta = parse_predictions(a.predictions_csv, f"run {a.name}")
    tb = parse_predictions(b.predictions_csv, f"run {b.name}")
    if not np.array_equal(ta.row_ids, tb.row_ids):
        only_a = np.setdiff1d(ta.row_ids, tb.row_ids)
        only_b = np.setdiff1d(tb.row_ids, ta.row_ids)
        raise HarnessError(
            f"runs {a.name} and {b.name} scored different test rows "
            f"({only_a.size} only in {a.name}, {only_b.size} only in {b.name}); "
            "compare runs of the same split"
        )
    differ = np.flatnonzero(ta.labels != tb.labels)
    if differ.size:
        raise HarnessError(
            f"runs {a.name} and {b.name} disagree on the label of {differ.size} test row(s), "
            f"first row_id {int(ta.row_ids[differ[0]])}; compare runs of the same data"
        )
    return ta.labels, ta.probs, tb.probs


def compare_runs(
    a: RunPredictions,
    b: RunPredictions,
    metric: str = "auc",
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedResult:
    """Paired bootstrap of A − B on the runs' shared test rows, after checking they are shared."""
    check_same_split(a, b)
    labels, probs_a, probs_b = align(a, b)
    return paired_bootstrap(
        labels,
        probs_a,
        probs_b,
        metric,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
    )


def _fmt(x: float, spec: str) -> str:
    return "n/a" if math.isnan(x) else format(x, spec)


def format_comparison(result: PairedResult, name_a: str, name_b: str) -> str:
    """A few aligned lines: both values, A − B with its paired CI, and the p-value."""
    rows = [
        (f"A  {name_a}", _fmt(result.a, ".4f"), ""),
        (f"B  {name_b}", _fmt(result.b, ".4f"), ""),
        (
            "A − B",
            _fmt(result.diff, "+.4f"),
            f"  {100 * result.confidence:g} % CI "
            f"[{_fmt(result.ci_low, '+.4f')}, {_fmt(result.ci_high, '+.4f')}]",
        ),
        ("p (two-sided)", _fmt(result.p_value, ".3g"), "  H0: A − B = 0"),
    ]
    label_w = max(len(label) for label, _, _ in rows)
    value_w = max(len(value) for _, value, _ in rows)
    head = f"test {result.metric}, paired bootstrap over {result.n_resamples} resamples"
    body = [f"  {label:<{label_w}}  {value:>{value_w}}{tail}" for label, value, tail in rows]
    return "\n".join([head, *body])


def best_vs_baselines(
    best: RunPredictions,
    baselines: Mapping[str, RunPredictions],
    metric: str = "auc",
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, PairedResult]:
    """The best trial against each baseline (keyed by baseline name), on the same resamples."""
    return {
        name: compare_runs(
            best, run, metric, n_resamples=n_resamples, confidence=confidence, seed=seed
        )
        for name, run in baselines.items()
    }


def baseline_diff_metrics(results: Mapping[str, PairedResult]) -> dict[str, float]:
    """Parent-run metrics ``best_vs_<baseline>_<metric>_{diff,ci_low,ci_high,p_value}``."""
    out: dict[str, float] = {}
    for name, r in results.items():
        if not _METRIC_KEY_PART.fullmatch(name):
            raise HarnessError(
                f"baseline name {name!r} cannot be part of a metric name; "
                "use letters, digits and underscores"
            )
        stem = f"best_vs_{name}_{r.metric}"
        out |= {
            f"{stem}_diff": r.diff,
            f"{stem}_ci_low": r.ci_low,
            f"{stem}_ci_high": r.ci_high,
            f"{stem}_p_value": r.p_value,
        }
    return out
