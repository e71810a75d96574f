"""Any model's validation and test probabilities -> metrics, bootstrap CIs, prediction CSVs.

Done once here for every kind of model, so a reader, a probe and a baseline are scored
the same way. Test figures are only reported (never chosen on): the test split gets
percentile intervals from bootstrap resamples of its predictions.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.data import Dataset, Split
from harness.models.base import Model
from harness.stats import METRICS, bootstrap_ci, compute_metrics

PREDICTION_HEADER = ("index", "row_id", "label", "probability", "text")


@dataclass
class Evaluation:
    val_probs: np.ndarray
    test_probs: np.ndarray
    #: ``val_accuracy`` …, ``test_auc``, ``test_auc_ci_low``, ``test_auc_ci_high`` …
    metrics: dict[str, float]
    #: metric -> ``[value, ci_low, ci_high]`` on the test split
    test: dict[str, list[float]]


def evaluate(
    model: Model,
    inputs: Any,
    dataset: Dataset,
    split: Split,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Evaluation:
    """Score a fitted ``model`` on the validation and test rows of ``split``."""
    val_probs = model.predict_proba(inputs, split.val)
    test_probs = model.predict_proba(inputs, split.test)
    y_val, y_test = dataset.labels[split.val], dataset.labels[split.test]
    val = compute_metrics(y_val, val_probs)
    metrics = {f"val_{k}": v for k, v in val.items() if k != "auc"}
    test = compute_metrics(y_test, test_probs)
    ci = bootstrap_ci(y_test, test_probs, n_resamples=n_resamples, confidence=confidence, seed=seed)
    for m in METRICS:
        metrics[f"test_{m}"] = test[m]
        metrics[f"test_{m}_ci_low"], metrics[f"test_{m}_ci_high"] = ci[m]
    return Evaluation(val_probs, test_probs, metrics, {m: [test[m], *ci[m]] for m in METRICS})


def predictions_csv(dataset: Dataset, idx: np.ndarray, probs: np.ndarray) -> str:
    """``index,row_id,label,probability,text``: enough to recompute any metric, pair two
    runs, or read what was predicted. ``index`` is the position in ``dataset.texts`` (the
    study's rows, after BABE's unlabelled rows are dropped and after ``max_rows``);
    ``row_id`` is the 0-based data row of the file (header and blank lines not counted)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(PREDICTION_HEADER)
    for i, p in zip(idx, probs, strict=True):
        writer.writerow(
            [int(i), int(dataset.row_ids[i]), int(dataset.labels[i]), f"{p:.8f}", dataset.texts[i]]
        )
    return out.getvalue()


def write_predictions(directory: Path, dataset: Dataset, split: Split, ev: Evaluation) -> None:
    """``predictions/test.csv`` and ``predictions/val.csv`` under ``directory``."""
    out = Path(directory) / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    (out / "test.csv").write_text(predictions_csv(dataset, split.test, ev.test_probs))
    (out / "val.csv").write_text(predictions_csv(dataset, split.val, ev.val_probs))
