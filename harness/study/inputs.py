"""What a study runs on (its file, arguments, stores, data and split), read and checked
before anything exists, and checked again against the study being continued: a continued
study must see the same data and the same split as its first trials."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from harness.core import HarnessError
from harness.data import Dataset, Split, load_dataset, make_split
from harness.report import n_finished
from harness.studyfile import (
    StudyConfig,
    default_tracking_uri,
    load_study_file,
    validate_storage_url,
    validate_tracking_uri,
)
from harness.tracking import make_storage, storage_exists

if TYPE_CHECKING:
    from harness.attention import AttentionCache
    from harness.encoders import Encoder, Finetuned

log = logging.getLogger("harness")


def read_study(study_file: str | Path | StudyConfig, workers: int) -> tuple[StudyConfig, str, str]:
    """The parsed config, its text (logged with the parent run) and where it came from."""
    if isinstance(study_file, StudyConfig):
        if workers > 1:
            raise HarnessError("workers > 1 needs a study file path (workers re-read the file)")
        return study_file, study_file.model_dump_json(indent=2), "<config>"
    config, text = load_study_file(study_file)
    return config, text, str(study_file)


def check_arguments(n_trials: int | None, timeout: float | None, workers: int) -> None:
    """The command's overrides, refused before the study file is read."""
    if n_trials is not None and n_trials < 1:
        raise HarnessError(f"--n-trials must be >= 1, got {n_trials}")
    if timeout is not None and timeout <= 0:
        raise HarnessError(f"--timeout must be > 0 seconds, got {timeout}")
    if workers < 1:
        raise HarnessError(f"--workers must be >= 1, got {workers}")


def resolve_stores(
    config: StudyConfig, storage: str | None, tracking_uri: str | None, workers: int
):
    """Storage and tracking URIs: argument > (``$MLFLOW_TRACKING_URI``) > study file."""
    try:
        storage_url = validate_storage_url(storage) if storage else config.storage
        flag = validate_tracking_uri(tracking_uri) if tracking_uri else None
    except ValueError as exc:
        raise HarnessError(str(exc)) from None
    if workers > 1 and storage_url.startswith("sqlite:"):
        raise HarnessError(
            f"--workers {workers} needs a storage that several processes can share; SQLite "
            "is not safe under concurrent writes: add --storage journal:///mlruns/optuna.log "
            "(one machine) or --storage postgresql://user@host/db"
        )
    return storage_url, default_tracking_uri(flag, config.tracking_uri)


def load_data(config: StudyConfig) -> tuple[Dataset, Split]:
    """The study's data set and its split, both as the study file describes them."""
    d = config.data
    dataset = load_dataset(
        d.dataset,
        text_column=d.text_column,
        label_column=d.label_column,
        positive_label=d.positive_label,
        group_column=d.group_column,
        delimiter=d.delimiter,
        max_rows=d.max_rows,
        seed=config.split.seed,
    )
    split = make_split(
        dataset,
        val_fraction=config.split.val,
        test_fraction=config.split.test,
        seed=config.split.seed,
        group_by=config.split.group_by,
    )
    return dataset, split


def check_continuation(
    config: StudyConfig, url: str, dataset: Dataset, split: Split, where: str, target: int
) -> None:
    """A continued study must see the same data and the same split as its first trials."""
    if not storage_exists(url):
        return  # never create a store just to look
    try:
        study = optuna.load_study(study_name=config.name, storage=make_storage(url))
    except KeyError:
        return
    attrs = study.user_attrs
    if "data_sha256" in attrs and attrs["data_sha256"] != dataset.sha256:
        raise HarnessError(
            f"{where}: study {study.study_name!r} was started on data with sha256 "
            f"{attrs['data_sha256'][:12]}… but {dataset.source} now has {dataset.sha256[:12]}…; "
            "restore the original file or give the study a new name"
        )
    if "split_sha256" in attrs and attrs["split_sha256"] != split_sha256(split):
        raise HarnessError(
            f"{where}: the split of study {study.study_name!r} differs from the one it started "
            "with (split settings or data changed); restore them or give the study a new name"
        )
    if n_finished(study) >= target:
        log.info(
            "study %r already has %d finished trials (target %d); raise --n-trials to run more",
            config.name,
            n_finished(study),
            target,
        )


def split_sha256(split: Split) -> str:
    return hashlib.sha256(json.dumps(split.to_dict(), sort_keys=True).encode()).hexdigest()


def stamp_study(study: optuna.Study, dataset: Dataset, split: Split, encoder: str) -> None:
    """Record the data, split and encoder a new study starts on (``check_continuation``
    compares a continued study against them)."""
    if "data_sha256" not in study.user_attrs:
        study.set_user_attr("data_sha256", dataset.sha256)
        study.set_user_attr("split_sha256", split_sha256(split))
        study.set_user_attr("encoder", encoder)


@dataclass
class Prepared:
    """A study ready to open: settings checked, data split, attention cached."""

    config: StudyConfig
    #: the study file's text (logged with the parent run) and where it came from
    text: str
    where: str
    target: int
    timeout: float | None
    storage_url: str
    tracking_uri: str
    workers: int
    progress: bool
    dataset: Dataset
    split: Split
    encoder: Encoder
    cache: AttentionCache
    #: the fine-tuned encoder (``encoder.finetune``), else ``None``
    finetuned: Finetuned | None = None
