"""The ``linear`` probe: L2-regularised logistic regression on a sentence's pooled
attention features, the standard probe of probing papers.

Fitted with scikit-learn on standardised float32 features; its state is four small
tensors (mean, scale, coef, intercept) in safetensors, so reloading needs neither pickle
nor scikit-learn. The ``mlp`` probe is trained by gradient descent and lives with the
other networks in ``harness.models.reader``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import safetensors.numpy
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from harness.core import train_threads
from harness.models.base import EpochCallback, FitResult, one_pass_result, write_model
from harness.models.inputs import AttentionInputs, inputs_from_dict
from harness.studyfile import ProbeSpec

#: up to this many features a probe is fitted by Newton steps, above it by lbfgs
NEWTON_MAX_FEATURES = 1024


def _logistic_regression(c: float, num_features: int) -> LogisticRegression:
    """The solver that keeps a probe's time linear in N. Pooled attention features are
    strongly correlated, so lbfgs needs more steps as N grows (104 on 3.7k sentences, 243
    on 100k: 3x the time per sentence, BENCHMARKS.md growth curve); Newton steps take ~4 at
    any N, but each solves a d x d system, which beyond ~1,000 features costs more than
    all of lbfgs's steps (a ``rows`` view concatenates up to 72 x 80 features)."""
    if num_features <= NEWTON_MAX_FEATURES:
        return LogisticRegression(C=c, solver="newton-cholesky", max_iter=100)
    return LogisticRegression(C=c, solver="lbfgs", max_iter=2000)


class LinearProbe:
    """``p(positive) = sigmoid(((x - mean) * scale) @ coef + intercept)``; ``spec.c`` is
    scikit-learn's C (smaller is stronger L2)."""

    kind = "linear"

    def __init__(self, spec: ProbeSpec, inputs: AttentionInputs, positive_label: str | None = None):
        if not spec.c > 0:
            raise ValueError(f"c must be positive, got {spec.c!r}")
        self.spec, self.inputs, self.positive_label = spec, inputs, positive_label
        self.state: dict[str, np.ndarray] | None = None

    def _scaled(self, x: np.ndarray, idx: np.ndarray | None) -> np.ndarray:
        # a new float32 array either way: x[:, 0] is a view, x[idx, 0] already a copy
        rows = x[:, 0].astype(np.float32) if idx is None else np.asarray(x[idx, 0], np.float32)
        return self._standardise(rows)

    def _standardise(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` standardised in place, in float32: at 100k sentences float64 copies of
        the features would be a third of the probe's time (memory traffic)."""
        rows -= self.state["mean"]
        rows *= self.state["scale"]
        return rows

    def fit(
        self,
        inputs: tuple[np.ndarray, np.ndarray],
        labels: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        on_epoch: EpochCallback | None = None,
    ) -> FitResult:
        x = inputs[0]
        train = np.asarray(x[train_idx, 0], np.float32)
        std = train.std(axis=0, dtype=np.float64)
        self.state = {
            "mean": train.mean(axis=0, dtype=np.float64),
            "scale": 1.0 / np.where(std > 1e-6, std, 1.0),
        }
        # BLAS on the trial's thread count (1): 72 small probe fits of the head sweep ran
        # 6x slower with a second OpenBLAS thread here.
        with warnings.catch_warnings(), threadpool_limits(train_threads()):
            # the best C is found on validation; a C that converges slowly is still scored
            warnings.simplefilter("ignore", ConvergenceWarning)
            fitted = _logistic_regression(self.spec.c, train.shape[1]).fit(
                self._standardise(train), labels[train_idx]
            )
        self.state["coef"], self.state["intercept"] = fitted.coef_[0], fitted.intercept_
        return one_pass_result(self, inputs, labels, train_idx, val_idx, on_epoch)

    def predict_proba(
        self, inputs: tuple[np.ndarray, np.ndarray], idx: np.ndarray | None = None
    ) -> np.ndarray:
        if self.state is None:
            raise RuntimeError("predict_proba before fit")
        logits = self._scaled(inputs[0], idx) @ self.state["coef"] + self.state["intercept"][0]
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def save(self, directory: Path) -> None:
        write_model(
            self,
            directory,
            {"classifier": self.spec.to_dict()},
            safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in self.state.items()}),
        )

    @classmethod
    def load(cls, directory: Path, config: dict) -> LinearProbe:
        spec = ProbeSpec.from_dict(config["classifier"])
        model = cls(spec, inputs_from_dict(config["inputs"]), config.get("positive_label"))
        model.state = safetensors.numpy.load(Path(directory, "weights.safetensors").read_bytes())
        return model
