"""A non-attention baseline: logistic regression on a sentence's word count.

The trivial model every attention reader must beat (long sentences are more often
biased in BABE), and the proof that the model protocol is not tied to attention: it
reads plain texts, fits with scikit-learn, and saves three small tensors. Loading it
needs neither torch nor an encoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import safetensors.numpy
from sklearn.linear_model import LogisticRegression

from harness.models.base import EpochCallback, FitResult, one_pass_result, write_model
from harness.models.inputs import TextInputs


def word_counts(texts: list[str]) -> np.ndarray:
    """Whitespace words per sentence: no tokenizer, so the baseline needs no encoder."""
    return np.array([len(t.split()) for t in texts], dtype=np.float64)


class LengthModel:
    """``p(positive) = sigmoid(coef * (words - mean) / std + intercept)``."""

    kind = "length"

    def __init__(self, c: float = 1.0, positive_label: str | None = None):
        self.c = c
        self.inputs = TextInputs()
        self.positive_label = positive_label
        self.coef: np.ndarray | None = None
        self.intercept: np.ndarray | None = None
        #: mean and standard deviation of the training word counts
        self.scaling: np.ndarray | None = None

    def _scaled(self, texts: list[str], idx: np.ndarray | None) -> np.ndarray:
        counts = word_counts(texts if idx is None else [texts[i] for i in idx])
        return ((counts - self.scaling[0]) / self.scaling[1])[:, None]

    def fit(
        self,
        inputs: list[str],
        labels: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        on_epoch: EpochCallback | None = None,
    ) -> FitResult:
        counts = word_counts([inputs[i] for i in train_idx])
        self.scaling = np.array([counts.mean(), counts.std() or 1.0])
        fitted = LogisticRegression(C=self.c).fit(
            self._scaled(inputs, train_idx), labels[train_idx]
        )
        self.coef, self.intercept = fitted.coef_[0].copy(), fitted.intercept_.copy()
        return one_pass_result(self, inputs, labels, train_idx, val_idx, on_epoch)

    def predict_proba(self, inputs: list[str], idx: np.ndarray | None = None) -> np.ndarray:
        if self.coef is None:
            raise RuntimeError("predict_proba before fit")
        logits = self._scaled(inputs, idx) @ self.coef + self.intercept[0]
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def save(self, directory: Path) -> None:
        tensors = {"coef": self.coef, "intercept": self.intercept, "scaling": self.scaling}
        write_model(self, directory, {"c": self.c}, safetensors.numpy.save(tensors))

    @classmethod
    def load(cls, directory: Path, config: dict) -> LengthModel:
        model = cls(config["c"], positive_label=config.get("positive_label"))
        tensors = safetensors.numpy.load(Path(directory, "weights.safetensors").read_bytes())
        model.coef, model.intercept = tensors["coef"], tensors["intercept"]
        model.scaling = tensors["scaling"]
        return model
