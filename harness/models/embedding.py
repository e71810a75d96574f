"""The encoder's sentence embedding + logistic regression: the baseline that tells whether
reading the attention maps adds anything to the encoder's own output.

Inputs are the mean-pooled last hidden states (``harness.attention.embeddings``), standardised with
the training split's mean and SD (which also lets the solver converge quickly); C is
chosen on validation AUC. Saved as four arrays in safetensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import safetensors.numpy

from harness.models.base import WEIGHTS_FILE, EpochCallback, FitResult, one_pass_result, write_model
from harness.models.inputs import EmbeddingInputs
from harness.models.text import C_GRID, fit_logistic, sigmoid


class EmbeddingModel:
    """``p = sigmoid(coef · (embedding - mean) / sd + intercept)``."""

    kind = "embedding"

    def __init__(
        self,
        inputs: EmbeddingInputs,
        positive_label: str | None = None,
        grid: Sequence[float] = C_GRID,
    ):
        self.inputs = inputs
        self.positive_label = positive_label
        self.grid = tuple(grid)
        self.c: float | None = None
        self.mean: np.ndarray | None = None
        self.sd: np.ndarray | None = None
        self.coef: np.ndarray | None = None
        self.intercept: np.ndarray | None = None

    def _scaled(self, x: np.ndarray) -> np.ndarray:
        return (x.astype(np.float64) - self.mean) / self.sd

    def fit(
        self,
        inputs: np.ndarray,
        labels: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        on_epoch: EpochCallback | None = None,
    ) -> FitResult:
        train = inputs[train_idx].astype(np.float64)
        self.mean, sd = train.mean(axis=0), train.std(axis=0)
        self.sd = np.where(sd > 0, sd, 1.0)
        x = self._scaled(inputs)
        fitted, self.c, _, _ = fit_logistic(x, labels, train_idx, val_idx, self.grid)
        self.coef, self.intercept = fitted.coef_[0].copy(), fitted.intercept_.copy()
        return one_pass_result(self, inputs, labels, train_idx, val_idx, on_epoch)

    def predict_proba(self, inputs: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        if self.coef is None:
            raise RuntimeError("predict_proba before fit")
        x = inputs if idx is None else inputs[idx]
        return sigmoid(self._scaled(x) @ self.coef + self.intercept[0])

    def save(self, directory: Path) -> None:
        tensors = {"mean": self.mean, "sd": self.sd, "coef": self.coef, "intercept": self.intercept}
        settings = {"c": self.c, "c_grid": list(self.grid)}
        write_model(self, directory, settings, safetensors.numpy.save(tensors))

    @classmethod
    def load(cls, directory: Path, config: dict) -> EmbeddingModel:
        inputs = EmbeddingInputs.from_dict(config["inputs"])
        model = cls(inputs, config.get("positive_label"), config["c_grid"])
        t = safetensors.numpy.load(Path(directory, WEIGHTS_FILE).read_bytes())
        model.mean, model.sd, model.coef, model.intercept = (
            t["mean"],
            t["sd"],
            t["coef"],
            t["intercept"],
        )
        model.c = config["c"]
        return model
