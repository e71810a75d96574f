"""Text baselines that need no encoder: the majority class, and TF-IDF + logistic regression.

They answer "what does the data give away without attention?": a study's table means
little until its trials are seen beside them. The TF-IDF transform is written out here
(counts of word 1-2 grams -> sublinear tf × smoothed idf -> l2 norm, as scikit-learn's
``TfidfVectorizer(sublinear_tf=True)``) so that a saved model is a vocabulary (JSON) and
three arrays (safetensors): reloading rebuilds the very same transform, no pickle.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import safetensors.numpy
import scipy.sparse as sp
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from harness.models.base import WEIGHTS_FILE, EpochCallback, FitResult, one_pass_result, write_model
from harness.models.inputs import TextInputs
from harness.stats import compute_metrics

#: inverse regularisation strengths tried; the one with the best validation AUC is kept
C_GRID: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
VOCABULARY_FILE = "vocabulary.json"
#: word 1-2 grams seen in at least this many training sentences
MIN_DF = 2


def fit_logistic(
    x: np.ndarray | sp.spmatrix,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    grid: Sequence[float] = C_GRID,
) -> tuple[LogisticRegression, float, float, list[dict[str, float]]]:
    """Logistic regression on ``x[train_idx]`` for each C of ``grid``; the one with the
    best validation AUC (the first on ties, so the result is deterministic) and its
    scores. Test rows never reach this function."""
    best: tuple[float, float, LogisticRegression] | None = None
    history = []
    # one BLAS thread, like every trial: these matrices are small, and OpenBLAS's waiting
    # threads made a fit 40-80x slower on a busy 2-core machine (0.05 s vs 2-4 s on BABE)
    with threadpool_limits(1, user_api="blas"):
        for c in grid:
            fitted = LogisticRegression(C=c, max_iter=2000).fit(x[train_idx], labels[train_idx])
            probs = fitted.predict_proba(x[val_idx])[:, 1]
            val_auc = compute_metrics(labels[val_idx], probs)["auc"]
            history.append({"c": c, "val_auc": val_auc})
            if best is None or val_auc > best[1]:
                best = (c, val_auc, fitted)
    c, val_auc, fitted = best
    return fitted, c, val_auc, history


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


class MajorityModel:
    """Every sentence gets the training split's positive rate: AUC 0.5 by construction,
    accuracy that of always guessing the larger class."""

    kind = "majority"

    def __init__(self, positive_label: str | None = None):
        self.inputs = TextInputs()
        self.positive_label = positive_label
        self.rate: np.ndarray | None = None

    def fit(
        self,
        inputs: list[str],
        labels: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        on_epoch: EpochCallback | None = None,
    ) -> FitResult:
        self.rate = np.array([labels[train_idx].mean()], dtype=np.float64)
        return one_pass_result(self, inputs, labels, train_idx, val_idx, on_epoch)

    def predict_proba(self, inputs: list[str], idx: np.ndarray | None = None) -> np.ndarray:
        if self.rate is None:
            raise RuntimeError("predict_proba before fit")
        n = len(inputs) if idx is None else len(idx)
        return np.full(n, self.rate[0], dtype=np.float32)

    def save(self, directory: Path) -> None:
        write_model(self, directory, {}, safetensors.numpy.save({"rate": self.rate}))

    @classmethod
    def load(cls, directory: Path, config: dict) -> MajorityModel:
        model = cls(positive_label=config.get("positive_label"))
        model.rate = safetensors.numpy.load(Path(directory, WEIGHTS_FILE).read_bytes())["rate"]
        return model


class TfidfModel:
    """Word 1-2 gram TF-IDF (fitted on the training split) + logistic regression, its C
    chosen on validation AUC."""

    kind = "tfidf"

    def __init__(self, positive_label: str | None = None, grid: Sequence[float] = C_GRID):
        self.inputs = TextInputs()
        self.positive_label = positive_label
        self.grid = tuple(grid)
        self.c: float | None = None
        self.vocabulary: list[str] | None = None
        self.idf: np.ndarray | None = None
        self.coef: np.ndarray | None = None
        self.intercept: np.ndarray | None = None

    def _counter(self, vocabulary: list[str] | None = None) -> CountVectorizer:
        if vocabulary is None:
            return CountVectorizer(ngram_range=(1, 2), min_df=MIN_DF)
        return CountVectorizer(ngram_range=(1, 2), vocabulary=vocabulary)

    def transform(self, texts: list[str]) -> sp.csr_matrix:
        """Sublinear tf × idf, rows l2-normalised (float64)."""
        counts = self._counter(self.vocabulary).transform(texts).astype(np.float64)
        counts.data = 1.0 + np.log(counts.data)
        x = counts @ sp.diags(self.idf)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        return sp.csr_matrix(sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ x)

    def fit(
        self,
        inputs: list[str],
        labels: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        on_epoch: EpochCallback | None = None,
    ) -> FitResult:
        train_texts = [inputs[i] for i in train_idx]
        counter = self._counter().fit(train_texts)
        self.vocabulary = counter.get_feature_names_out().tolist()
        df = np.asarray((counter.transform(train_texts) > 0).sum(axis=0)).ravel()
        self.idf = np.log((1 + len(train_texts)) / (1 + df)) + 1.0
        x = self.transform(inputs)
        fitted, self.c, _, _ = fit_logistic(x, labels, train_idx, val_idx, self.grid)
        self.coef, self.intercept = fitted.coef_[0].copy(), fitted.intercept_.copy()
        return one_pass_result(self, inputs, labels, train_idx, val_idx, on_epoch)

    def predict_proba(self, inputs: list[str], idx: np.ndarray | None = None) -> np.ndarray:
        if self.coef is None:
            raise RuntimeError("predict_proba before fit")
        texts = inputs if idx is None else [inputs[i] for i in idx]
        return sigmoid(self.transform(texts) @ self.coef + self.intercept[0])

    def save(self, directory: Path) -> None:
        tensors = {"idf": self.idf, "coef": self.coef, "intercept": self.intercept}
        settings = {"c": self.c, "c_grid": list(self.grid), "ngram_range": [1, 2]}
        write_model(self, directory, settings, safetensors.numpy.save(tensors))
        Path(directory, VOCABULARY_FILE).write_text(json.dumps(self.vocabulary))

    @classmethod
    def load(cls, directory: Path, config: dict) -> TfidfModel:
        model = cls(positive_label=config.get("positive_label"), grid=config["c_grid"])
        tensors = safetensors.numpy.load(Path(directory, WEIGHTS_FILE).read_bytes())
        model.idf, model.coef, model.intercept = (
            tensors["idf"],
            tensors["coef"],
            tensors["intercept"],
        )
        model.c = config["c"]
        model.vocabulary = json.loads(Path(directory, VOCABULARY_FILE).read_text())
        return model
