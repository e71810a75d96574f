"""The model registry: a study's best trial is model version ``<study name>`` with the
alias ``champion``, and the alias moves when a better trial finishes.

Each new best becomes a new version (the registry keeps the history of champions); a
trial already registered is not registered twice, so several workers, or a re-run, may
promote the same trial safely.
"""

from __future__ import annotations

import logging

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

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
