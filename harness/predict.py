"""Rebuild a logged trial from its MLflow artifacts and predict on new sentences.

Only ``model/config.json`` and ``model/weights.safetensors`` are read (no pickle), plus
the encoder the config names; features go through the same ``reduce_maps`` as training.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import mlflow.artifacts
import numpy as np
import safetensors.torch
import torch
from mlflow.tracking import MlflowClient

from harness.attention import iter_attention
from harness.classifiers import ClassifierSpec, build_classifier, upgrade_state_dict
from harness.encoder import Encoder, load_encoder
from harness.errors import HarnessError
from harness.features import FeatureSpec, reduce_maps
from harness.storage import sqlalchemy_url
from harness.tracking import get_run_or_fail
from harness.train import predict_logits, sigmoid

log = logging.getLogger("harness")

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def check_tracking_uri(uri: str) -> None:
    """A missing local store is a mistake to report, not an empty database to create."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise HarnessError(
            f"no MLflow store at {uri.removeprefix('sqlite:///')}; run a study first "
            "(harness study run FILE) or pass --tracking-uri"
        )


class LoadedRun:
    """A trained reader plus its feature recipe and encoder; scikit-learn-like
    ``predict_proba`` returns the positive-class probability."""

    def __init__(self, run_id: str, config: dict, model: torch.nn.Module, encoder: Encoder):
        self.run_id = run_id
        self.config = config
        self.model = model
        self.encoder = encoder
        self.features = FeatureSpec.from_dict(config["features"])
        self.max_len: int = config["max_len"]
        self.threshold: float = config.get("threshold", 0.5)

    def transform(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Sentences -> ``([N, max_len, F] float32, lengths)``, as the cache would give."""
        spec = self.features
        x = np.zeros((len(texts), self.max_len, spec.input_size(self.max_len)), np.float32)
        lengths = np.zeros(len(texts), np.int64)
        for idx, lens, maps in iter_attention(self.encoder, texts, self.max_len, batch_size):
            for b, (i, n) in enumerate(zip(idx, lens, strict=True)):
                per_layer = [maps[layer, b : b + 1, :, :n, :n] for layer in spec.layers]
                reduced = reduce_maps(per_layer, spec.heads, spec.reducer, self.max_len)[0]
                x[i, :n, : reduced.shape[1]] = reduced
                lengths[i] = n
        return x, lengths

    def predict_proba(self, texts: list[str] | str, batch_size: int = 64) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise HarnessError("predict_proba needs a non-empty list of non-empty strings")
        x, lengths = self.transform(list(texts), batch_size)
        logits = predict_logits(
            self.model, torch.from_numpy(x), torch.from_numpy(lengths), np.arange(len(texts))
        )
        return sigmoid(logits)

    def predict(self, texts: list[str] | str) -> np.ndarray:
        return (self.predict_proba(texts) >= self.threshold).astype(np.int64)


def parse_run_ref(ref: str) -> str:
    """Accept ``RUN_ID`` or ``runs:/RUN_ID[/model]``."""
    if ref.startswith("runs:/"):
        ref = ref.removeprefix("runs:/").split("/")[0]
    if not ref or not ref.isalnum():
        raise HarnessError(f"{ref!r} is not a run id; copy one from `harness study best NAME`")
    return ref


def load_run(run_id: str, tracking_uri: str | None = None, device: str = "cpu") -> LoadedRun:
    """Rebuild trial ``run_id`` (or ``runs:/ID``) from its logged artifacts."""
    run_id = parse_run_ref(run_id)
    uri = sqlalchemy_url(tracking_uri or default_tracking_uri())
    check_tracking_uri(uri)
    client = MlflowClient(uri)
    get_run_or_fail(client, run_id)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="model", dst_path=tmp, tracking_uri=uri
            )
        except Exception:
            raise HarnessError(
                f"run {run_id} has no model artifacts (a pruned or failed trial?); "
                "choose a COMPLETE trial from `harness study best NAME`"
            ) from None
        config = json.loads(Path(local, "config.json").read_text())
        state = safetensors.torch.load_file(str(Path(local, "weights.safetensors")))
    encoder = load_encoder(config["encoder"]["name"], device=device)
    if encoder.fingerprint != config["encoder"]["fingerprint"]:
        log.warning(
            "encoder %r differs from the one run %s was trained with (fingerprint mismatch)",
            encoder.name,
            run_id,
        )
    model = build_classifier(
        ClassifierSpec.from_dict(config["classifier"]), config["input_size"], config["max_len"]
    )
    model.load_state_dict(upgrade_state_dict(state))
    model.eval()
    return LoadedRun(run_id, config, model, encoder)
