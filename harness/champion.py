"""The study's best trial, made visible: settings and a link on the parent run, the
``harness.best`` tag on the best child run, and the registry's ``champion`` alias.

Called whenever a finished trial changes the study's best (``callbacks.UpdateParent``).
Params in MLflow are write-once, so the best trial's settings go on the parent as
``best.*`` tags, which can move.
"""

from __future__ import annotations

from optuna.trial import FrozenTrial

from harness.registry import promote
from harness.run_metadata import DESCRIPTION_TAG, describe_model
from harness.trial import StudyContext

BEST_TAG = "harness.best"


def parent_description(study_description: str, experiment_id: str, run_id: str, line: str) -> str:
    """The study file's description, then a Markdown link to the best trial's run."""
    link = f"**Best trial:** [{line}](#/experiments/{experiment_id}/runs/{run_id})"
    return f"{study_description.strip()}\n\n{link}" if study_description.strip() else link


def mark_best(ctx: StudyContext, best: FrozenTrial, previous_run_id: str | None) -> None:
    """Point everything at ``best`` (whose run is ``best.user_attrs['mlflow_run_id']``)."""
    tracker, run_id = ctx.tracker, best.user_attrs.get("mlflow_run_id")
    if not run_id:
        return
    params = tracker.client.get_run(run_id).data.params
    line = f"trial {best.number}: {describe_model(params)} — val AUC {best.value:.3f}"
    tags = {f"best.{k}": v for k, v in params.items()}
    description = parent_description(ctx.config.description, tracker.experiment_id, run_id, line)
    tracker.set_tags(ctx.parent_run_id, {**tags, DESCRIPTION_TAG: description})
    tracker.set_tags(run_id, {BEST_TAG: "true"})
    if previous_run_id and previous_run_id != run_id:
        tracker.set_tags(previous_run_id, {BEST_TAG: "false"})
    if ctx.config.register:
        promote(tracker.client, ctx.config.name, run_id, ctx.config.description)
