"""The one protocol every trainable thing implements, and the saved-model format.

scikit-learn's habit: configuration in the constructor, learned state after ``fit``,
``predict_proba`` returns the positive-class probability. A study, ``evaluate`` and
``load_run`` see only this protocol, so an attention reader, a linear probe and a text
baseline are peers. Adding a kind is one class plus one entry in ``KINDS``.

A saved model is a folder with ``config.json`` (``format``, ``kind``, the harness
version, the ``inputs`` recipe that rebuilds the model's inputs from raw sentences, and
the kind's own settings) and ``weights.safetensors``; never a pickle.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from harness.core import HarnessError, __version__
from harness.models.inputs import InputSpec

#: the saved-model layout this harness writes and reads
FORMAT = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
#: kind -> "module:Class"; imported only when a model of that kind is loaded, so reading
#: a text baseline never imports torch
KINDS: dict[str, str] = {
    "reader": "harness.models.reader:ReaderModel",
    "length": "harness.models.length:LengthModel",
    "linear": "harness.models.probe:LinearProbe",
    "majority": "harness.models.text:MajorityModel",
    "tfidf": "harness.models.text:TfidfModel",
    "embedding": "harness.models.embedding:EmbeddingModel",
    "finetuned": "harness.models.finetuned:FinetunedModel",
}

#: ``on_epoch(epoch, train_loss, val_auc)``; it may raise (Optuna's ``TrialPruned``)
EpochCallback = Callable[[int, float, float], None]


@dataclass
class FitResult:
    """What fitting learned about itself; ``best_val_auc`` is what a study maximises."""

    best_epoch: int
    best_val_auc: float
    history: list[dict[str, float]] = field(default_factory=list)


@runtime_checkable
class Model(Protocol):
    """Validation data picks the epoch or the setting; test data never reaches ``fit``."""

    kind: str
    inputs: InputSpec
    #: the label value counted as positive (logged; ``None`` when unknown)
    positive_label: str | None

    def fit(
        self,
        inputs: Any,
        labels: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        on_epoch: EpochCallback | None = None,
    ) -> FitResult: ...

    def predict_proba(self, inputs: Any, idx: np.ndarray | None = None) -> np.ndarray: ...

    def save(self, directory: Path) -> None: ...

    @classmethod
    def load(cls, directory: Path, config: dict) -> Model: ...


def one_pass_result(
    model: Model,
    inputs: Any,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    on_epoch: EpochCallback | None = None,
) -> FitResult:
    """The curve of a model fitted in one pass (no epochs): the training log-loss and the
    validation AUC of the fitted model, reported as epoch 0."""
    from harness.stats import compute_metrics

    p = np.clip(model.predict_proba(inputs, train_idx).astype(np.float64), 1e-7, 1 - 1e-7)
    y = labels[train_idx]
    loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    val_auc = compute_metrics(labels[val_idx], model.predict_proba(inputs, val_idx))["auc"]
    if on_epoch is not None:
        on_epoch(0, loss, val_auc)
    return FitResult(0, val_auc, [{"epoch": 0, "train_loss": loss, "val_auc": val_auc}])


def write_model(model: Model, directory: Path, settings: dict, weights: bytes) -> None:
    """The common part of every ``save``: config.json (with format, kind, version and
    inputs recipe) and the safetensors bytes the kind serialised."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "kind": model.kind,
        "harness_version": __version__,
        "inputs": model.inputs.to_dict(),
        "positive_label": model.positive_label,
        "threshold": 0.5,
        **settings,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    (directory / WEIGHTS_FILE).write_bytes(weights)


def read_config(directory: Path) -> dict:
    """config.json of a saved model, refused when its format or kind is not one this
    harness knows (rather than misread)."""
    try:
        config = json.loads((Path(directory) / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read model config in {directory}: {exc}") from None
    if config.get("format") != FORMAT:
        raise HarnessError(
            f"model in {directory} has format {config.get('format')!r}; this harness "
            f"({__version__}) reads format {FORMAT} only: re-run the trial to log it again"
        )
    if config.get("kind") not in KINDS:
        raise HarnessError(
            f"model in {directory} is of unknown kind {config.get('kind')!r}; this harness "
            f"knows {', '.join(KINDS)}"
        )
    return config


def load_model(directory: Path, config: dict | None = None) -> Model:
    """Rebuild any saved model: dispatch on its config's kind (``config`` when the caller
    has already read it)."""
    config = config or read_config(directory)
    module, name = KINDS[config["kind"]].split(":")
    return getattr(import_module(module), name).load(Path(directory), config)
