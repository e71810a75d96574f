"""The MLflow pyfunc of a logged harness model ("models from code").

MLflow copies this file into the logged model's folder, beside ``MLmodel``,
``config.json`` and ``weights.safetensors``, and runs it when the model is loaded
(``mlflow.pyfunc.load_model``, ``mlflow models serve``). So the model is rebuilt from
JSON and safetensors by ``harness.tracking.predict.load_saved``, never unpickled, and the folder
this file sits in is the model's folder. Never imported by the harness itself.

A model on a fine-tuned encoder carries that encoder by reference: the first load
fetches it from its encoder run in the tracking store the server was started with
(``MLFLOW_TRACKING_URI``, which ``runs:/`` URIs need anyway) into the local encoder cache,
checks its fingerprint, and later loads find it there, as ``load_run`` does.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

MODEL_DIR = Path(__file__).resolve().parent
#: sentences scored per encoder pass group (bounds memory on large requests)
CHUNK = 256


class HarnessProbe(PythonModel):
    """Input: a ``text`` column; output: the positive-class probability of each row."""

    def load_context(self, context: PythonModelContext) -> None:
        from mlflow.tracking import MlflowClient

        from harness.models import read_config
        from harness.tracking.predict import fetch_model_encoders, load_saved

        fetch_model_encoders(read_config(MODEL_DIR), MlflowClient())
        self.run = load_saved(MODEL_DIR)

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> np.ndarray:
        texts = [str(t) for t in model_input["text"]]
        parts = [self.run.predict_proba(texts[i : i + CHUNK]) for i in range(0, len(texts), CHUNK)]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


mlflow.models.set_model(HarnessProbe())
