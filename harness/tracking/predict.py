"""Rebuild any logged model from its MLflow artifacts and predict on new sentences.

Only ``model/config.json`` and ``model/weights.safetensors`` are read (no pickle); the
config's ``kind`` picks the model class and its ``inputs`` recipe rebuilds the inputs
from raw sentences (running the encoder it names, for attention readers).

``predict_texts`` scores a file (``harness predict RUN --input FILE``) in chunks, so
memory stays bounded however long the file is; the output goes to a temporary file moved
into place at the end, so an interrupted run leaves no half-written CSV.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from filelock import FileLock
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from harness.core import HarnessError
from harness.encoders import cached_encoder, encoders_dir, fingerprint
from harness.models import Model, load_model, read_config
from harness.studyfile import default_tracking_uri
from harness.tracking.runs import RunReader, check_tracking_uri

log = logging.getLogger("harness")

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
    what ``load_run`` and the MLflow pyfunc (``harness/tracking/pyfunc_entry.py``) both use."""
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


#: the artifact folder of the encoder run
ARTIFACT = "encoder"


def fetch_encoder(client: MlflowClient, run_id: str, fp: str) -> Path:
    """Download run ``run_id``'s ``encoder/`` artifact into the local encoder cache
    (unless a folder with fingerprint ``fp`` is there) and check its fingerprint."""
    folder = cached_encoder(fp)
    if folder is not None:
        return folder
    root = encoders_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / fp[:32]
    with FileLock(str(root / f"{fp[:32]}.lock")):
        if cached_encoder(fp) is not None:
            return final
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
        try:
            try:
                local = Path(client.download_artifacts(run_id, ARTIFACT, str(tmp)))
            except Exception as exc:
                raise HarnessError(
                    f"cannot download the fine-tuned encoder from run {run_id} "
                    f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}); "
                    "pass the --tracking-uri of the store the study logged to"
                ) from None
            got = fingerprint(local)
            if got != fp:
                raise HarnessError(
                    f"the encoder artifact of run {run_id} has fingerprint {got[:12]}…, not "
                    f"{fp[:12]}… as the model config says; it was changed after logging"
                )
            if final.exists():
                shutil.rmtree(final)
            os.replace(local, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("fine-tuned encoder %s… downloaded from run %s into %s", fp[:12], run_id, final)
    return final


def fetch_model_encoders(config: dict, client: MlflowClient) -> None:
    """Fetch every fine-tuned encoder a saved model's config names by run id: the one
    its attention inputs come from, or the one a ``finetuned`` baseline is."""
    refs = (config.get("inputs", {}).get("encoder"), config.get("encoder"))
    for ref in refs:
        if isinstance(ref, dict) and ref.get("run_id"):
            fetch_encoder(client, ref["run_id"], ref["fingerprint"])


#: sentences per call of ``predict_proba``: enough to sort by length within, small enough
#: to keep the attention features of one chunk in memory
CHUNK = 1024
OUTPUT_HEADER = ("row_id", "probability", "text")


def check_output(path: Path) -> None:
    """Refuse an output path that cannot be written before any work is done."""
    if path.is_dir():
        raise HarnessError(f"--output {path} is a folder; give a file name such as scores.csv")
    if not path.parent.is_dir():
        raise HarnessError(f"--output {path}: folder {path.parent} does not exist; create it")


def predict_texts(
    run: LoadedRun, texts: list[str], chunk: int = CHUNK, progress: bool = True
) -> np.ndarray:
    """Positive-class probabilities of ``texts``, ``chunk`` sentences at a time."""
    out = np.empty(len(texts), dtype=np.float32)
    with tqdm(total=len(texts), unit="sentence", desc="predict", disable=not progress) as bar:
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            out[start : start + len(part)] = run.predict_proba(part)
            bar.update(len(part))
    return out


def write_scores(path: Path, row_ids: np.ndarray, probs: np.ndarray, texts: list[str]) -> None:
    """``row_id,probability,text``: ``row_id`` is the input file's 0-based data row."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(OUTPUT_HEADER)
            for row_id, p, text in zip(row_ids, probs, texts, strict=True):
                writer.writerow([int(row_id), f"{p:.8f}", text])
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
