"""Rebuild any logged model from its MLflow artifacts and predict on new sentences.

Only ``model/config.json`` and ``model/weights.safetensors`` are read (no pickle); the
config's ``kind`` picks the model class and its ``inputs`` recipe rebuilds the inputs
from raw sentences (running the encoder it names, for attention readers).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.intermediary import fetch_model_encoders
from harness.models.base import Model, load_model, read_config
from harness.tracking import RunReader, check_tracking_uri, default_tracking_uri

#: ``harness ui`` resolves and checks its store with these two, like every command
__all__ = ["LoadedRun", "check_tracking_uri", "default_tracking_uri", "load_run"]


class LoadedRun:
    """A logged model plus its inputs recipe; scikit-learn-like ``predict_proba`` on
    sentences returns the positive-class probability."""

    def __init__(self, run_id: str, config: dict, model: Model, device: str = "cpu"):
        self.run_id = run_id
        self.config = config
        self.model = model
        self.device = device
        self.threshold: float = config.get("threshold", 0.5)

    def predict_proba(self, texts: list[str] | str) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise HarnessError("predict_proba needs a non-empty list of non-empty strings")
        inputs = self.model.inputs.build(list(texts), device=self.device)
        return self.model.predict_proba(inputs)

    def predict(self, texts: list[str] | str) -> np.ndarray:
        return (self.predict_proba(texts) >= self.threshold).astype(np.int64)


def load_saved(directory: Path, run_id: str = "", device: str = "cpu") -> LoadedRun:
    """A saved model folder (``config.json`` + ``weights.safetensors``), ready to predict:
    what ``load_run`` and the MLflow pyfunc (``harness/pyfunc_entry.py``) both use."""
    config = read_config(directory)
    return LoadedRun(run_id, config, load_model(directory, config), device)


def load_run(run_id: str, tracking_uri: str | None = None, device: str = "cpu") -> LoadedRun:
    """Rebuild the model of run ``run_id`` (or ``runs:/ID``) from its logged artifacts.

    ``runs:/ID/model`` holds ``config.json`` and ``weights.safetensors`` at its top level
    both in runs logged as MLflow Models (MLflow 3 serves the path from the run's logged
    model) and in older runs (plain run artifacts), so both load the same way."""
    reader = RunReader(tracking_uri)
    run_id = reader.run(run_id).info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        local = reader.download_model(run_id, Path(tmp))
        fetch_model_encoders(read_config(local), reader.client)  # a fine-tuned encoder
        return load_saved(local, run_id, device)
