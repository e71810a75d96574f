"""Work a cluster does once: the attention cache entry of a study, shared between machines
through the MLflow server.

Workers on several machines share the Optuna storage (PostgreSQL) and an MLflow server,
but each has its own cache folder. The first worker that needs an entry takes the entry's
cluster lease (``tracking.cluster_lease``: an advisory lock of the PostgreSQL database,
dropped by the server when that worker dies), extracts it and logs it as the artifact
``attention/`` of a cache run (experiment ``harness-cache``, tag ``harness.role=cache``,
``harness.cache_key`` its key, which fingerprints encoder, texts, max_len and form). The
others wait for the lease, find the run, download the entry and open it, which checks
every file's crc32 against its meta.json, instead of extracting it again. A cache run is
used only once FINISHED: one left RUNNING by a worker that died while logging it is
marked FAILED by the next lease holder, which extracts and logs the entry anew.

With a local tracking store, or storage that is not PostgreSQL, nothing is shared:
``extract_attention``'s file lock already makes the workers of one machine extract once.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from harness.attention import AttentionCache, cache_key, extract_attention
from harness.core import default_cache_dir, waiting_lock
from harness.encoders import Encoder
from harness.studyfile import is_local_store
from harness.tracking import ROLE_TAG, Tracker, cluster_lease

log = logging.getLogger("harness")

CACHE_EXPERIMENT = "harness-cache"
CACHE_ROLE = "cache"
KEY_TAG = "harness.cache_key"
ARTIFACT = "attention"


def shares_cache(tracking_uri: str, storage_url: str) -> bool:
    """Whether workers of this study may run on several machines and share entries."""
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
        )

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    key = cache_key(encoder, texts, max_len, keep_maps)
    if not shares_cache(tracking_uri, storage_url) or (root / key / "meta.json").exists():
        return extract()  # reuses (and verifies) the local entry, or extracts it
    what = f"the attention cache entry {key} (extracted once per cluster)"
    with cluster_lease(storage_url, f"harness-cache-{key}", what, root / "locks"):
        tracker = Tracker(tracking_uri, CACHE_EXPERIMENT, None)
        run_id = _finished_run(tracker, key)
        if run_id is not None and not (root / key / "meta.json").exists():
            _download(tracker, run_id, root, key)
            cache = extract()  # opens the download: every file's crc32 checked
            log.info(
                "downloaded attention cache entry %s (%.0f MB) from cache run %s; "
                "checksums verified, not extracted here",
                key,
                cache.nbytes / 1e6,
                run_id,
            )
            return cache
        start = time.perf_counter()
        cache = extract()
        if run_id is None:
            _log_entry(tracker, cache, encoder, time.perf_counter() - start)
        return cache


def _finished_run(tracker: Tracker, key: str) -> str | None:
    """The FINISHED cache run of ``key``; RUNNING ones are a dead worker's (the caller
    holds the lease, so no one else is logging one) and are marked FAILED."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`{KEY_TAG}` = '{key}'",
        order_by=["attributes.start_time ASC"],
    )
    for run in runs:
        if run.info.status == "RUNNING":
            log.warning(
                "cache run %s of entry %s was left RUNNING by a worker that died while "
                "logging it; marking it FAILED",
                run.info.run_id,
                key,
            )
            tracker.finish(run.info.run_id, "FAILED")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    return finished[0].info.run_id if finished else None


def _download(tracker: Tracker, run_id: str, root: Path, key: str) -> None:
    """The run's entry into ``root/key``, renamed into place whole under the entry's lock
    (the one ``extract_attention`` takes), so no reader sees half of it."""
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{key}.download-") as tmp:
        local = tracker.client.download_artifacts(run_id, ARTIFACT, tmp)
        with waiting_lock(root / f"{key}.lock", "the attention cache entry", "cache_dir"):
            if (root / key).exists():
                shutil.rmtree(root / key)  # a half entry of a killed local writer
            os.replace(local, root / key)


def _log_entry(tracker: Tracker, cache: AttentionCache, encoder: Encoder, seconds: float) -> None:
    """A FINISHED cache run holding the entry, or a FAILED one if logging it fails."""
    run = tracker.client.create_run(
        tracker.experiment_id,
        run_name=f"cache-{cache.key[:12]}",
        tags={ROLE_TAG: CACHE_ROLE, KEY_TAG: cache.key},
    )
    run_id = run.info.run_id
    try:
        tracker.log_params(
            run_id,
            {
                "encoder": encoder.name,
                "encoder_fingerprint": encoder.fingerprint,
                "max_len": cache.max_len,
                "sentences": len(cache),
                "form": "views" if cache.compact else "maps",
                "map_layers": ",".join(map(str, cache.map_layers)),
                "texts_sha256": cache.meta["texts_sha256"],
            },
        )
        tracker.log_metrics(
            run_id, {"extraction_seconds": seconds, "entry_bytes": float(cache.nbytes)}
        )
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        tracker.client.log_artifacts(run_id, str(cache.path), ARTIFACT)
    except BaseException:
        tracker.finish(run_id, "FAILED")
        raise
    tracker.finish(run_id)
    log.info(
        "logged attention cache entry %s (%.0f MB) as cache run %s for the cluster's other "
        "machines",
        cache.key,
        cache.nbytes / 1e6,
        run_id,
    )
