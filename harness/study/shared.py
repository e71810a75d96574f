"""Work a cluster does once: the folders a study builds before its first trial (the
attention cache entry, the fine-tuned encoder), shared between machines through the MLflow
server.

Workers on several machines share the Optuna storage (PostgreSQL) and an MLflow server,
but each has its own cache folder. The first worker that needs a folder takes its cluster
lease (``tracking.cluster_lease``: an advisory lock of the PostgreSQL database, dropped by
the server when that worker dies), builds it and logs it as the artifact ``KIND/`` of a
cache run (experiment ``harness-cache``, tags ``harness.role=cache``,
``harness.cache_kind`` and ``harness.cache_key``, the key that fingerprints what the folder
was built from). The others wait for the lease, find the run, download the folder and open
it, which checks its files against its own record (the cache's crc32s, the fine-tuned
encoder's fingerprint), instead of building it again. A cache run is used only once
FINISHED: one left RUNNING by a worker that died while logging it is marked FAILED by the
next lease holder, which builds and logs the folder anew.

With a local tracking store, or storage that is not PostgreSQL, nothing is shared: the
file locks of ``extract_attention`` and ``finetune_encoder`` already make the workers of
one machine build each folder once.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from harness.attention import AttentionCache, cache_key, extract_attention
from harness.core import default_cache_dir, waiting_lock
from harness.data import Dataset, Split
from harness.encoders import Encoder, Finetuned
from harness.studyfile import FinetuneConfig, is_local_store
from harness.tracking import ROLE_TAG, Tracker, cluster_lease

log = logging.getLogger("harness")

CACHE_EXPERIMENT = "harness-cache"
CACHE_ROLE = "cache"
KIND_TAG = "harness.cache_kind"
KEY_TAG = "harness.cache_key"

T = TypeVar("T")


@dataclass(frozen=True)
class SharedFolder:
    """A folder of this machine's cache that the cluster builds once."""

    #: ``attention`` or ``finetuned``: the cache run's kind tag and its artifact's folder
    kind: str
    key: str
    #: where this machine keeps it; its parent holds the ``KEY.lock`` its builder takes
    path: Path
    #: the file its builder writes last: when it is there, the folder is whole
    marker: str
    #: how the log lines name it and what building it means
    what: str
    built: str

    @property
    def ready(self) -> bool:
        return (self.path / self.marker).exists()


def shares_work(tracking_uri: str, storage_url: str) -> bool:
    """Whether workers of this study may run on several machines and share folders."""
    return not is_local_store(tracking_uri) and storage_url.startswith("postgresql")


def shared_attention(
    encoder: Encoder,
    texts: list[str],
    *,
    max_len: int,
    batch_size: int,
    cache_dir: str | None,
    progress: bool,
    keep_maps: Sequence[int] | None,
    view_w: int,
    view_bits: int,
    tracking_uri: str,
    storage_url: str,
) -> AttentionCache:
    """The study's cache entry: from this machine's cache folder, else downloaded from
    the cluster's cache run, else extracted here (and logged for the others)."""

    def extract() -> AttentionCache:
        return extract_attention(
            encoder,
            texts,
            max_len=max_len,
            batch_size=batch_size,
            cache_dir=cache_dir,
            progress=progress,
            keep_maps=keep_maps,
            view_w=view_w,
            view_bits=view_bits,
        )

    def params(cache: AttentionCache) -> dict[str, object]:
        return {
            "encoder": encoder.name,
            "encoder_fingerprint": encoder.fingerprint,
            "max_len": cache.max_len,
            "sentences": len(cache),
            "form": "views" if cache.compact else "maps",
            "map_layers": ",".join(map(str, cache.map_layers)),
            "views": ",".join(cache.views),
            "view_bits": cache.view_bits,
            "texts_sha256": cache.meta["texts_sha256"],
        }

    key = cache_key(encoder, texts, max_len, keep_maps, view_w, view_bits)
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    folder = SharedFolder(
        "attention", key, root / key, "meta.json", f"attention cache entry {key}", "extracted"
    )
    return shared(folder, extract, params, tracking_uri, storage_url)


def shared_finetune(
    base: Encoder,
    settings: FinetuneConfig,
    dataset: Dataset,
    split: Split,
    *,
    cache_dir: str | None,
    progress: bool,
    tracking_uri: str,
    storage_url: str,
) -> Finetuned:
    """The study's fine-tuned encoder: from this machine's cache, else downloaded from the
    cluster's cache run, else fine-tuned here (and logged for the others). The leak check
    runs first, on every machine."""
    from harness.encoders import RECORD, finetune_data, finetune_encoder, finetune_key

    def finetune() -> Finetuned:
        return finetune_encoder(
            base, settings, dataset, split, cache_dir=cache_dir, progress=progress
        )

    def params(done: Finetuned) -> dict[str, object]:
        return {
            "base_encoder": base.name,
            "base_fingerprint": base.fingerprint,
            "encoder_fingerprint": done.encoder.fingerprint,
            "finetune_data_sha256": done.record["data"]["sha256"],
            "device": done.record["device"],
        }

    key = finetune_key(base, finetune_data(settings, dataset, split), settings)
    root = (Path(cache_dir) if cache_dir else default_cache_dir()) / "finetuned"
    what = f"fine-tuned encoder {key}"
    folder = SharedFolder("finetuned", key, root / key, RECORD, what, "fine-tuned")
    return shared(folder, finetune, params, tracking_uri, storage_url)


def shared(
    folder: SharedFolder,
    build: Callable[[], T],
    params: Callable[[T], dict[str, object]],
    tracking_uri: str,
    storage_url: str,
) -> T:
    """``build()`` once per cluster (module docstring). ``build`` reuses and verifies the
    folder when it is already there, which is how a downloaded one is checked."""
    if not shares_work(tracking_uri, storage_url) or folder.ready:
        return build()
    what = f"the {folder.what} ({folder.built} once per cluster)"
    name = f"harness-{folder.kind}-{folder.key}"
    with cluster_lease(storage_url, name, what, folder.path.parent / "locks"):
        tracker = Tracker(tracking_uri, CACHE_EXPERIMENT, None)
        run_id = _finished_run(tracker, folder)
        if run_id is not None and not folder.ready:
            _download(tracker, run_id, folder)
            result = build()  # opens the download: its files checked against its record
            log.info(
                "downloaded %s (%.0f MB) from cache run %s; checksums verified, not %s here",
                folder.what,
                _size(folder.path) / 1e6,
                run_id,
                folder.built,
            )
            return result
        start = time.perf_counter()
        result = build()
        if run_id is None:
            _log_folder(tracker, folder, params(result), time.perf_counter() - start)
        return result


def _finished_run(tracker: Tracker, folder: SharedFolder) -> str | None:
    """The FINISHED cache run of ``folder``; RUNNING ones are a dead worker's (the caller
    holds the lease, so no one else is logging one) and are marked FAILED."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`{KIND_TAG}` = '{folder.kind}' and tags.`{KEY_TAG}` = '{folder.key}'",
        order_by=["attributes.start_time ASC"],
    )
    for run in runs:
        if run.info.status == "RUNNING":
            log.warning(
                "cache run %s of the %s was left RUNNING by a worker that died while "
                "logging it; marking it FAILED",
                run.info.run_id,
                folder.what,
            )
            tracker.finish(run.info.run_id, "FAILED")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    return finished[0].info.run_id if finished else None


def _download(tracker: Tracker, run_id: str, folder: SharedFolder) -> None:
    """The run's folder into place, renamed whole under the lock its builder takes, so no
    reader sees half of it."""
    root = folder.path.parent
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{folder.key}.download-") as tmp:
        local = tracker.client.download_artifacts(run_id, folder.kind, tmp)
        with waiting_lock(root / f"{folder.key}.lock", f"the {folder.what}", "cache_dir"):
            if folder.path.exists():
                shutil.rmtree(folder.path)  # a half folder of a killed local builder
            os.replace(local, folder.path)


def _log_folder(
    tracker: Tracker, folder: SharedFolder, params: dict[str, object], seconds: float
) -> None:
    """A FINISHED cache run holding the folder, or a FAILED one if logging it fails."""
    run = tracker.client.create_run(
        tracker.experiment_id,
        run_name=f"{folder.kind}-{folder.key[:12]}",
        tags={ROLE_TAG: CACHE_ROLE, KIND_TAG: folder.kind, KEY_TAG: folder.key},
    )
    run_id = run.info.run_id
    size = _size(folder.path)
    try:
        tracker.log_params(run_id, params)
        tracker.log_metrics(run_id, {"build_seconds": seconds, "folder_bytes": float(size)})
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        tracker.client.log_artifacts(run_id, str(folder.path), folder.kind)
    except BaseException:
        tracker.finish(run_id, "FAILED")
        raise
    tracker.finish(run_id)
    log.info(
        "logged %s (%.0f MB) as cache run %s for the cluster's other machines",
        folder.what,
        size / 1e6,
        run_id,
    )


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
