"""Worker processes of one study: leases, the parent run they share, dead-trial cleanup,
and helper processes.

Every process that runs a study, on any machine, logs under one MLflow parent run: the
one that created the Optuna study creates it, the others wait for it. Each process
holds a lease (``harness.tracking.storage.WorkerLease``) for its whole life; the storage's
heartbeat and those leases tell a dead worker's trials from slow ones, which
``fail_dead_trials`` ends as FAIL (``harness.study.settle`` marks their MLflow runs KILLED).
``--workers N`` starts N - 1 helpers through this module's own entry point
(``python -m harness.study.workers``), which runs the same study on the same stores.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from harness.core import __version__, default_cache_dir
from harness.studyfile import StudyConfig
from harness.tracking import (
    DESCRIPTION_TAG,
    Tracker,
    WorkerLease,
    dataset_input,
    dumps,
    provenance_tags,
)

if TYPE_CHECKING:
    from harness.study.inputs import Prepared

log = logging.getLogger("harness")

#: study user attributes: the MLflow parent run, and the worker that created the study
PARENT_ATTR = "mlflow_parent_run_id"
CREATOR_ATTR = "creator"
#: how long a worker that did not create the study waits for its creator's parent run
PARENT_WAIT_S = 60.0


def lease_dir(config: StudyConfig) -> Path:
    """Where the workers of a study on this machine keep their leases: beside the cache."""
    root = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    return root / "workers" / config.name.replace("/", "_")


def fail_dead_trials(study: optuna.Study) -> None:
    """Mark FAIL the RUNNING trials whose worker is dead (see ``harness.tracking.storage``), and
    their MLflow runs KILLED. Optuna does this before each trial it starts; a study also
    needs it when it starts and ends, which may be when no trial is left to start."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def parent_run(
    tracker: Tracker, study: optuna.Study, created: bool, lease: WorkerLease, p: Prepared
) -> str:
    """The study's one parent run. The process that created the study creates it; every
    other process (a continued study, or workers that started at the same moment) uses
    the one the study names, waiting for it if the creator is still making it. Only if
    the creator died first, or the run was purged, is a new one made."""
    config = p.config
    if not created:
        known = _wait_for_parent(study, lease)
        if known is not None and tracker.reopen_parent(known):
            return known
        log.warning(
            "study %r has no MLflow parent run (%s); creating one",
            config.name,
            "its run was purged" if known else "the process that created the study stopped",
        )
    parent_id = tracker.create_parent(config.name)
    tracker.log_files(parent_id, {"study.yaml": p.text, "split.json": dumps(p.split.to_dict())})
    params = {
        "encoder": config.encoder.name,
        "encoder_fingerprint": p.encoder.fingerprint[:16],
        "max_len": config.encoder.max_len,
        "data": config.data.dataset,
        "data_sha256": p.dataset.sha256,
        "n_rows": len(p.dataset),
        "split_seed": config.split.seed,
        "split_sizes": f"{len(p.split.train)},{len(p.split.val)},{len(p.split.test)}",
        "group_by": p.split.group_by or "none",
        "sampler": config.sampler.name,
        "pruner": config.pruner.name,
        "harness_version": __version__,
    }
    tracker.log_params(parent_id, params)
    describe_study(tracker, parent_id, p)
    study.set_user_attr(PARENT_ATTR, parent_id)
    return parent_id


def describe_study(tracker: Tracker, parent_id: str, p: Prepared) -> None:
    """The study's description on its experiment and parent run (the UI's Description),
    the data as a dataset input and the reproducibility tags."""
    tags = provenance_tags(p.encoder.fingerprint)
    if p.config.description.strip():
        tags[DESCRIPTION_TAG] = p.config.description.strip()
        tracker.client.set_experiment_tag(
            tracker.experiment_id, DESCRIPTION_TAG, p.config.description.strip()
        )
    tracker.set_tags(parent_id, tags)
    tracker.client.log_inputs(parent_id, [dataset_input(p.dataset, p.split)])


def _wait_for_parent(study: optuna.Study, lease: WorkerLease) -> str | None:
    """The parent run id the study names; while it names none, wait for the creator to
    register it, unless the creator is seen dead or ``PARENT_WAIT_S`` passes."""
    deadline = time.monotonic() + PARENT_WAIT_S
    while True:
        attrs = study.user_attrs
        if PARENT_ATTR in attrs:
            return attrs[PARENT_ATTR]
        if lease.alive(attrs.get(CREATOR_ATTR)) is False or time.monotonic() > deadline:
            return None
        time.sleep(0.5)


def start_workers(
    study_file: str | Path,
    workers: int,
    target: int,
    timeout: float | None,
    storage: str,
    tracking: str,
) -> list[subprocess.Popen]:
    """Start ``workers - 1`` more processes of this study on the same storage."""
    env = {**os.environ, "HARNESS_EXTRACT_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
    cmd = [sys.executable, "-m", "harness.cli.worker", str(study_file), "--n-trials", str(target)]
    cmd += ["--storage", storage, "--tracking-uri", tracking]
    if timeout:
        cmd += ["--timeout", str(timeout)]
    return [subprocess.Popen(cmd, env=env) for _ in range(1, workers)]
