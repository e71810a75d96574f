"""Intermediary encoders inside a study: fine-tune before extraction, track it, reload it.

``harness.encoders.finetune`` fine-tunes an encoder and caches the result; this module puts that
into a study's life:

* ``finetune_for_study`` runs in ``prepare``, after the data is split and before the
  attention is extracted, so the fine-tuned encoder's attention is cached and probed
  exactly like a pretrained one's (under its own fingerprint). Its leak check runs before
  any study, run or cache entry exists; the fine-tuning runs once per cluster
  (``harness.study.shared``).
* ``ensure_encoder_run`` logs the fine-tuning once per study as a child run (tag
  ``harness.role=encoder``): settings, per-epoch train loss and validation AUC, and the
  saved encoder folder as the artifact ``encoder/``. Trials on the encoder name that run
  in their model config, so a reloaded trial does not depend on a local path.
* ``ensure_baseline`` logs the fine-tuned model's own classification head as the
  baseline ``baseline-finetuned``, scored like every trial.
* ``fetch_model_encoders`` (called by ``load_run``) downloads the encoder a model config
  names from its run into the local encoder cache, keyed and verified by fingerprint.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from harness.encoders import Encoder
from harness.study.shared import shared_finetune
from harness.tracking import ARTIFACT

if TYPE_CHECKING:
    from harness.data import Dataset, Split
    from harness.encoders import Finetuned
    from harness.study.trial import StudyContext
    from harness.studyfile import StudyConfig
    from harness.tracking import Tracker

log = logging.getLogger("harness")

ENCODER_ROLE = "encoder"
ENCODER_RUN = "encoder-finetune"
BASELINE_RUN = "baseline-finetuned"
FINGERPRINT_TAG = "harness.encoder_fingerprint"


def finetune_for_study(
    config: StudyConfig,
    base: Encoder,
    dataset: Dataset,
    split: Split,
    progress: bool,
    tracking_uri: str,
    storage_url: str,
) -> Finetuned | None:
    """The study's fine-tuned encoder (trained now, reused from the cache, or downloaded
    from the cluster's cache run: ``shared``), or ``None`` when the study file has no
    ``encoder.finetune``. Refuses a leaking file first."""
    if config.encoder.finetune is None:
        return None
    return shared_finetune(
        base,
        config.encoder.finetune,
        dataset,
        split,
        cache_dir=config.cache_dir,
        progress=progress,
        tracking_uri=tracking_uri,
        storage_url=storage_url,
    )


def check_leaks(config: StudyConfig, dataset: Dataset, split: Split) -> None:
    """The leak check alone (reads the intermediary file, trains nothing): a comparison
    runs it for every condition before its first sub-study exists."""
    if config.encoder.finetune is not None:
        from harness.encoders import finetune_data

        finetune_data(config.encoder.finetune, dataset, split)


def ensure_encoder_run(
    tracker: Tracker, parent_id: str, finetuned: Finetuned, params: dict[str, str]
) -> str:
    """The encoder's child run under ``parent_id``: found again by fingerprint on a re-run
    (or in another worker), else logged now. The curves come from the fine-tuning record,
    so a reused encoder logs the history it was trained with."""
    fp = finetuned.encoder.fingerprint
    for run_id in tracker.find_children(parent_id, ENCODER_ROLE, ENCODER_RUN):
        if tracker.client.get_run(run_id).data.tags.get(FINGERPRINT_TAG) == fp:
            log.info("fine-tuned encoder: found its run %s", run_id)
            return run_id
    record = finetuned.record
    run_params = {
        **params,
        **{f"finetune_{k}": v for k, v in record["settings"].items()},
        "finetune_data_source": record["data"]["source"],
        "finetune_data_sha256": record["data"]["sha256"],
        "finetune_n_train": record["data"]["n_train"],
        "finetune_n_val": record["data"]["n_val"],
        "finetune_dropped_duplicates": record["data"]["dropped_duplicates"],
        "base_encoder": record["base"]["name"],
        "base_fingerprint": record["base"]["fingerprint"],
        "encoder_fingerprint": fp,
        "finetune_key": finetuned.key,
        "device": record["device"],
    }
    run_id = tracker.start_child(
        parent_id, ENCODER_RUN, ENCODER_ROLE, run_params, {FINGERPRINT_TAG: fp}
    )
    try:
        for point in record["history"]:
            tracker.log_metrics(
                run_id,
                {"train_loss": point["train_loss"], "val_auc": point["val_auc"]},
                int(point["epoch"]),
            )
        tracker.log_metrics(
            run_id,
            {
                "best_epoch": record["best_epoch"],
                "best_val_auc": record["best_val_auc"],
                "finetune_seconds": record["seconds"],
            },
        )
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        tracker.client.log_artifacts(run_id, str(finetuned.path), ARTIFACT)
    except BaseException:
        tracker.finish(run_id, "FAILED")
        raise
    tracker.finish(run_id)
    log.info("fine-tuned encoder: logged as run %s (artifact %s/)", run_id, ARTIFACT)
    return run_id


def ensure_baseline(ctx: StudyContext, finetuned: Finetuned) -> str:
    """``baseline-finetuned`` under the study's parent, logged once: the fine-tuned
    model's own head, scored on the study's validation and test rows like a trial."""
    from harness.models import FinetunedModel
    from harness.study.trial import log_model_run

    with ctx.lease(BASELINE_RUN, f"{BASELINE_RUN} (scored once per study)"):
        found = ctx.tracker.find_children(ctx.parent_run_id, "baseline", BASELINE_RUN)
        if found:
            return found[0]
        ref = {
            "name": finetuned.encoder.name,
            "fingerprint": finetuned.encoder.fingerprint,
            "run_id": ctx.encoder_run_id,
        }
        model = FinetunedModel(finetuned.path, ref, ctx.dataset.positive_label)
        return log_model_run(ctx, model, BASELINE_RUN, "baseline", {"classifier": "finetuned"})
