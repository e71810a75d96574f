"""Intermediary encoders inside a study: fine-tune before extraction, track it, reload it.

``harness.finetune`` fine-tunes an encoder and caches the result; this module puts that
into a study's life:

* ``finetune_for_study`` runs in ``prepare``, after the data is split and before the
  attention is extracted, so the fine-tuned encoder's attention is cached and probed
  exactly like a pretrained one's (under its own fingerprint). Its leak check runs before
  any study, run or cache entry exists.
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
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from harness.encoder import Encoder, fingerprint
from harness.errors import HarnessError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from harness.config import StudyConfig
    from harness.data import Dataset
    from harness.finetune import Finetuned
    from harness.split import Split
    from harness.tracking import Tracker
    from harness.trial import StudyContext

log = logging.getLogger("harness")

ENCODER_ROLE = "encoder"
ENCODER_RUN = "encoder-finetune"
BASELINE_RUN = "baseline-finetuned"
#: the artifact folder of the encoder run
ARTIFACT = "encoder"
FINGERPRINT_TAG = "harness.encoder_fingerprint"


def finetune_for_study(
    config: StudyConfig, base: Encoder, dataset: Dataset, split: Split, progress: bool
) -> Finetuned | None:
    """The study's fine-tuned encoder (trained now, or reused from the cache), or ``None``
    when the study file has no ``encoder.finetune``. Refuses a leaking file first."""
    if config.encoder.finetune is None:
        return None
    from harness.finetune import finetune_encoder

    return finetune_encoder(
        base,
        config.encoder.finetune.settings(),
        dataset,
        split,
        cache_dir=config.cache_dir,
        progress=progress,
    )


def check_leaks(config: StudyConfig, dataset: Dataset, split: Split) -> None:
    """The leak check alone (reads the intermediary file, trains nothing): a comparison
    runs it for every condition before its first sub-study exists."""
    if config.encoder.finetune is not None:
        from harness.finetune_split import finetune_data

        finetune_data(config.encoder.finetune.settings(), dataset, split)


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
    found = ctx.tracker.find_children(ctx.parent_run_id, "baseline", BASELINE_RUN)
    if found:
        return found[0]
    from harness.models.finetuned import FinetunedModel
    from harness.trial import log_model_run

    ref = {
        "name": finetuned.encoder.name,
        "fingerprint": finetuned.encoder.fingerprint,
        "run_id": ctx.encoder_run_id,
    }
    model = FinetunedModel(finetuned.path, ref, ctx.dataset.positive_label)
    return log_model_run(ctx, model, BASELINE_RUN, "baseline", {"classifier": "finetuned"})


def encoders_dir() -> Path:
    """The local cache of encoders downloaded from tracking stores, one folder per
    fingerprint, beside the attention cache (``HARNESS_CACHE_DIR``, else mlruns/cache)."""
    from harness.attention import default_cache_dir

    return default_cache_dir() / "encoders"


def _cached(fp: str) -> Path | None:
    folder = encoders_dir() / fp[:32]
    if (folder / "config.json").is_file() and fingerprint(folder) == fp:
        return folder
    return None


def local_encoder(fp: str, run_id: str) -> Path:
    """The downloaded encoder of fingerprint ``fp``; ``load_run`` fetches it first."""
    folder = _cached(fp)
    if folder is None:
        raise HarnessError(
            f"the fine-tuned encoder {fp[:12]}… of run {run_id} is not in the local encoder "
            f"cache {encoders_dir()}; load the model with harness.load_run(RUN_ID), which "
            "downloads it from the tracking store"
        )
    return folder


def fetch_encoder(client: MlflowClient, run_id: str, fp: str) -> Path:
    """Download run ``run_id``'s ``encoder/`` artifact into the local encoder cache
    (unless a folder with fingerprint ``fp`` is there) and check its fingerprint."""
    folder = _cached(fp)
    if folder is not None:
        return folder
    root = encoders_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / fp[:32]
    with FileLock(str(root / f"{fp[:32]}.lock")):
        if _cached(fp) is not None:
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
