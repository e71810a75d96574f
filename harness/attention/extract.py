"""Batched attention extraction into the padding-free on-disk cache (``harness.attention.cache``
reads an entry; its docstring shows the layout).

Sentences are extracted sorted by token length, longest first, so each batch is padded
only to its own longest sentence and equal lengths lie next to each other on disk, which
lets extraction write and feature building reduce whole runs of sentences in one call.
Longest first because the first batch then makes the largest allocations and every later,
smaller one fits into memory already freed: in increasing order each batch needed a little
more than any freed block and the heap grew batch after batch (peak RSS of a MiniLM study
1.60 → 1.24 GB, BENCHMARKS.md row 4). No padding is stored. Files are written in a
temporary directory and renamed into place, under a file lock, so a reader never sees
half an entry and two processes never extract the same entry twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.attention.cache import RELATIVE_W, AttentionCache, CacheCorrupt, ViewWriter
from harness.attention.embeddings import EMBEDDINGS_FILE, mean_pool, write_embeddings
from harness.attention.views import VIEW_BITS, length_runs, relative_offsets, view_block
from harness.core import (
    HarnessError,
    check_writable_dir,
    default_cache_dir,
    extraction_threads,
    num_threads,
    texts_sha256,
    waiting_lock,
)
from harness.encoders import Encoder, length_sorted_batches, load_encoder

log = logging.getLogger("harness")

CACHE_FORMAT = 1


def cache_key(
    encoder: Encoder,
    texts: list[str],
    max_len: int,
    keep_maps: Sequence[int] | None = None,
    view_w: int = RELATIVE_W,
    view_bits: int = 16,
) -> str:
    """Everything that changes the maps: encoder weights and tokenizer, max_len, the texts;
    and, for a compact entry, which maps it keeps, the window of its stored view and its
    bits per value (8 only adds to the key, so fp16 entries keep theirs)."""
    parts = [f"v{CACHE_FORMAT}", encoder.fingerprint, str(max_len), texts_sha256(texts)]
    if keep_maps is not None:
        coding = "" if view_bits == 16 else f"-{view_bits}bit"
        parts.append(f"views-w{view_w}{coding}+maps:{','.join(map(str, sorted(keep_maps)))}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def forward_batches(
    encoder: Encoder,
    texts: list[str],
    max_len: int = 80,
    batch_size: int = 64,
    progress: bool = False,
    pooled: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, tuple[torch.Tensor, ...]]]:
    """Yield ``(indices, lengths, attentions)`` per batch in order of decreasing length;
    with ``pooled`` (``[N, hidden]``), also fill it with the sentences' mean-pooled last
    hidden states from the same forward pass (the embedding baseline's inputs, for free).

    ``attentions`` holds one ``[B, H, T, T]`` tensor per layer, on the CPU: float32 as
    the model made them, or fp16 when a GPU made them (one transfer, half the bytes; the
    same values once rounded to fp16, as every consumer does). ``T`` is the batch's
    longest sentence; rows and columns of sentence ``b`` past ``lengths[b]`` are padding
    and must be ignored. The model's other outputs are dropped before the batch is handed
    on, and the maps when the consumer asks for the next one, so neither is alive during
    the next forward pass (BENCHMARKS.md, row 4).
    """
    model = encoder.model
    bar = tqdm(total=len(texts), desc="extracting attention", unit="sent", disable=not progress)
    with torch.inference_mode(), num_threads(extraction_threads()):
        for idx, lens, inputs in length_sorted_batches(encoder, texts, max_len, batch_size):
            out = model(**inputs, output_attentions=True)
            if pooled is not None:
                pooled[idx] = mean_pool(out.last_hidden_state, inputs["attention_mask"])
            attentions = tuple(
                a if a.device.type == "cpu" else a.half().cpu() for a in out.attentions
            )
            del out
            bar.update(len(idx))
            yield idx, lens, attentions
            del attentions
    bar.close()


def iter_attention(
    encoder: Encoder,
    texts: list[str],
    max_len: int = 80,
    batch_size: int = 64,
    progress: bool = False,
    pooled: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``forward_batches`` with each batch's maps as one fp16 array ``[L, B, H, T, T]``,
    the form new sentences' features are read from (``views.token_features_from_attention``).
    Each layer's maps are converted straight into that buffer: no float32 stack of all
    layers is made."""
    for idx, lens, attentions in forward_batches(
        encoder, texts, max_len, batch_size, progress, pooled
    ):
        maps = torch.empty((len(attentions), *attentions[0].shape), dtype=torch.float16)
        for layer, a in enumerate(attentions):
            maps[layer].copy_(a)
        del attentions
        yield idx, lens, maps.numpy()


_VERIFIED: set[tuple[str, float]] = set()


def _stamp(path: Path) -> tuple[str, float]:
    return (str(path), (path / "meta.json").stat().st_mtime)


def _open_verified(path: Path) -> AttentionCache:
    """Open and verify an entry once per process (crc32 reads at ~3 GB/s), a compact
    entry's view included."""
    try:
        stamp = _stamp(path)
        cache = AttentionCache(path)
        if stamp not in _VERIFIED:
            cache.verify()
            if cache.compact:
                cache.view()
            _VERIFIED.add(stamp)
    except (OSError, ValueError, KeyError) as exc:
        raise CacheCorrupt(f"{path}: {exc}") from None
    return cache


def extract_attention(
    encoder: Encoder | str,
    texts: list[str],
    *,
    max_len: int = 80,
    batch_size: int = 64,
    cache_dir: Path | str | None = None,
    progress: bool = True,
    keep_maps: Sequence[int] | None = None,
    view_w: int = RELATIVE_W,
    view_bits: int = 16,
) -> AttentionCache:
    """Return the cache entry for these texts, extracting it only if no valid one exists.

    ``keep_maps`` given: the compact form (``cache: {keep: views}``), which stores the
    ``relative`` view (window ``view_w``) of every map, computed from each batch as it is
    extracted, and the full maps of those layers only (``()``: none). ``view_w=1`` stores
    ``stats`` alone (``compact_view_w``: for a study that searches no ``relative`` view).
    ``view_bits=8`` stores the compact view in one byte per value instead of fp16.

    Safe to call from several processes at once: one extracts, the others wait (saying who
    they wait for) and reuse. A corrupt entry is reported, removed and rebuilt, never read
    as data. A cache folder that cannot hold files is a ``HarnessError``, not a hang.
    """
    if isinstance(encoder, str):
        encoder = load_encoder(encoder)
    if max_len < 2:
        raise HarnessError(f"max_len must be >= 2, got {max_len}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    setting = "cache_dir (study file) or HARNESS_CACHE_DIR"
    check_writable_dir(root, "attention cache folder", setting)
    root.mkdir(parents=True, exist_ok=True)
    if keep_maps is not None:
        keep_maps = tuple(sorted({int(x) for x in keep_maps}))
        bad = [x for x in keep_maps if not 0 <= x < encoder.num_layers]
        if bad:
            raise HarnessError(f"keep_maps: layers {bad} out of range for {encoder.num_layers}")
        relative_offsets(view_w)  # validates the window before anything is created
    if view_bits not in VIEW_BITS or (view_bits != 16 and keep_maps is None):
        raise HarnessError(
            f"view_bits: {view_bits!r} is not a stored view's precision; a compact entry "
            f"(keep_maps given) keeps one of {VIEW_BITS} bits per value, a full one fp16"
        )
    key = cache_key(encoder, texts, max_len, keep_maps, view_w, view_bits)
    final = root / key
    with waiting_lock(root / f"{key}.lock", "the attention cache entry", setting):
        if (final / "meta.json").exists():
            try:
                cache = _open_verified(final)
                log.info(
                    "reusing cached attention %s (%d sentences, %.0f MB): encoder not run",
                    final,
                    len(cache),
                    cache.nbytes / 1e6,
                )
                return cache
            except CacheCorrupt as exc:
                log.warning("attention cache is corrupt (%s); rebuilding it", exc)
                shutil.rmtree(final)
        elif final.exists():
            log.warning("attention cache %s is incomplete; rebuilding it", final)
            shutil.rmtree(final)
        _write_entry(
            encoder, texts, max_len, batch_size, final, progress, keep_maps, view_w, view_bits
        )
        # The crc32s were computed over the very bytes just written: reading the whole
        # entry back to check them again would only re-read the page cache.
        _VERIFIED.add(_stamp(final))
        return _open_verified(final)


def _write_entry(
    encoder: Encoder,
    texts: list[str],
    max_len: int,
    batch_size: int,
    final: Path,
    progress: bool,
    keep_maps: tuple[int, ...] | None,
    view_w: int,
    view_bits: int,
) -> None:
    # only the lock holder writes, so any other half-written entry is a killed writer's
    for stale in final.parent.glob(f"{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    form = ""
    if keep_maps is not None:
        view = "stats" if view_w == 1 else f"relative w={view_w}"
        coding = "fp16" if view_bits == 16 else f"{view_bits}-bit"
        form = f" (compact: the {coding} {view} view, the maps of layers {list(keep_maps)})"
    log.info(
        "extracting attention of %d sentences with %s into %s%s",
        len(texts),
        encoder.name,
        final,
        form,
    )
    try:
        n_layers, n_heads = encoder.num_layers, encoder.num_heads
        kept = tuple(range(n_layers)) if keep_maps is None else keep_maps
        files = {layer: open(tmp / f"layer_{layer:02d}.bin", "wb") for layer in kept}
        crcs, sizes = dict.fromkeys(kept, 0), dict.fromkeys(kept, 0)
        lengths = np.zeros(len(texts), dtype=np.int64)
        pooled = np.zeros((len(texts), encoder.config.hidden_size), np.float32)
        views = None
        if keep_maps is not None:
            folder = tmp / "views" / f"relative-w{view_w}"
            views = ViewWriter(folder, len(texts), n_layers, n_heads, view_w, view_bits, max_len)
        order: list[int] = []
        try:
            batches = forward_batches(encoder, texts, max_len, batch_size, progress, pooled)
            for idx, lens, attentions in batches:
                lengths[idx] = lens
                order.extend(idx.tolist())
                # one contiguous fp16 [k, H, n, n] block per run of equal lengths and
                # layer, rounded from the model's maps while the run is in cache: one
                # pass instead of a padded fp16 copy of the batch and a second unpadded
                # one, the same values (in one A/B run against the forward pass: compact
                # 0.83x -> 0.87x, full 0.90x -> 0.92x)
                for a, b in length_runs(lens):
                    n = int(lens[a])
                    for layer in range(n_layers) if views is not None else kept:
                        block = attentions[layer][a:b, :, :n, :n].half().contiguous()
                        if views is not None:
                            values = view_block(block, view_w, view_bits, max_len)
                            views.add(layer, idx[a:b], values)
                        if layer in files:
                            data = block.numpy()
                            files[layer].write(data)
                            crcs[layer] = zlib.crc32(data, crcs[layer])
                            sizes[layer] += data.nbytes
                del attentions  # not alive during the next forward pass
        finally:
            for fh in files.values():
                fh.close()
            if views is not None:
                views.close()
        meta = {
            "format": CACHE_FORMAT,
            "encoder": encoder.name,
            "encoder_fingerprint": encoder.fingerprint,
            "texts_sha256": texts_sha256(texts),
            "max_len": max_len,
            "num_layers": n_layers,
            "num_heads": n_heads,
            "lengths": lengths.tolist(),
            "order": order,
            "files": {
                f"layer_{layer:02d}.bin": {"bytes": sizes[layer], "crc32": crcs[layer]}
                for layer in kept
            },
        }
        if views is not None:
            views.finish(final.name, int(lengths.sum()))
            view_files = json.loads((views.folder / "meta.json").read_text())["files"]
            meta.update(
                keep="views",
                map_layers=list(kept),
                view_w=view_w,
                view_bits=view_bits,
                view_bytes=sum(f["bytes"] for f in view_files.values()),
            )
        write_embeddings(tmp / EMBEDDINGS_FILE, encoder, max_len, pooled)
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
