"""Batched attention extraction and the padding-free on-disk cache.

Layout of one cache entry (a directory named by its key)::

    meta.json        encoder identity, max_len, lengths, order, sizes and crc32 per file
    layer_00.bin     fp16 maps of layer 0: for each sentence in extraction order, [H, n, n]
    layer_01.bin     ...

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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.embeddings import EMBEDDINGS_FILE, mean_pool, write_embeddings
from harness.encoder import Encoder, load_encoder
from harness.errors import HarnessError
from harness.features import FeatureSpec, is_pairs, parse_heads, reduce_maps
from harness.locks import waiting_lock
from harness.preflight import check_writable_dir
from harness.threads import extraction_threads, num_threads, train_threads

log = logging.getLogger("harness")

CACHE_FORMAT = 1
#: Bytes of one layer file read at a time when building features: bounds memory use.
READ_CHUNK_BYTES = 32 << 20


def default_cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_CACHE_DIR", "mlruns/cache"))


def texts_sha256(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def cache_key(encoder: Encoder, texts: list[str], max_len: int) -> str:
    """Everything that changes the maps: encoder weights and tokenizer, max_len, the texts."""
    parts = [f"v{CACHE_FORMAT}", encoder.fingerprint, str(max_len), texts_sha256(texts)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def tokenize(encoder: Encoder, texts: list[str], max_len: int) -> list[list[int]]:
    return encoder.tokenizer(list(texts), truncation=True, max_length=max_len)["input_ids"]


def length_sorted_batches(
    encoder: Encoder, texts: list[str], max_len: int = 80, batch_size: int = 64
) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor]]]:
    """Yield ``(indices, lengths, model inputs)`` in order of decreasing token length.

    Each batch is padded only to its own longest sentence; sorting first makes that
    nearly no padding at all. Shared by extraction and by the benchmark's forward-only
    baseline, so both run the very same batches.
    """
    if batch_size < 1:
        raise HarnessError(f"batch_size must be >= 1, got {batch_size}")
    ids = tokenize(encoder, texts, max_len)
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    pad_id = encoder.tokenizer.pad_token_id or 0
    device = encoder.model.device
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        lens = lengths[idx]
        width = int(lens.max())
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        for row, i in enumerate(idx):
            input_ids[row, : lens[row]] = torch.tensor(ids[i])
        mask = (torch.arange(width) < torch.from_numpy(lens)[:, None]).long()
        yield idx, lens, {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


def iter_attention(
    encoder: Encoder,
    texts: list[str],
    max_len: int = 80,
    batch_size: int = 64,
    progress: bool = False,
    pooled: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(indices, lengths, maps)`` per batch in order of decreasing length; with
    ``pooled`` (``[N, hidden]``), also fill it with the sentences' mean-pooled last hidden
    states from the same forward pass (the embedding baseline's inputs, for free).

    ``maps`` is fp16 ``[L, B, H, T, T]`` with ``T`` the batch's longest sentence; rows and
    columns of sentence ``b`` past ``lengths[b]`` are padding and must be ignored.

    Each layer's float32 maps are converted straight into one fp16 buffer (no float32
    stack of all layers), and the model's float32 outputs are dropped before the batch is
    handed on, so they are not alive during the next forward pass: both keep the peak
    memory of a study process down (BENCHMARKS.md, row 4).
    """
    model = encoder.model
    bar = tqdm(total=len(texts), desc="extracting attention", unit="sent", disable=not progress)
    with torch.inference_mode(), num_threads(extraction_threads()):
        for idx, lens, inputs in length_sorted_batches(encoder, texts, max_len, batch_size):
            out = model(**inputs, output_attentions=True)
            attentions = out.attentions
            if pooled is not None:
                pooled[idx] = mean_pool(out.last_hidden_state, inputs["attention_mask"])
            del out
            maps = torch.empty((len(attentions), *attentions[0].shape), dtype=torch.float16)
            for layer, a in enumerate(attentions):
                maps[layer].copy_(a)
            del attentions
            bar.update(len(idx))
            yield idx, lens, maps.numpy()
    bar.close()


def length_runs(lengths: np.ndarray) -> list[tuple[int, int]]:
    """``[(a, b), …]`` such that ``lengths[a:b]`` are equal and the runs cover the array.

    Extraction sorts sentences by length, so runs are long: a whole run is written or
    reduced in one numpy/torch call instead of one call per sentence.
    """
    starts = np.flatnonzero(np.diff(lengths, prepend=-1))
    return list(zip(starts.tolist(), [*starts[1:].tolist(), len(lengths)], strict=True))


class AttentionCache:
    """A finished cache entry: all layers × all heads of every sentence, fp16, unpadded.

    ``features`` reads only the layers it needs, a chunk at a time, so the entry never has
    to fit in memory.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.num_layers: int = self.meta["num_layers"]
        self.num_heads: int = self.meta["num_heads"]
        self.max_len: int = self.meta["max_len"]
        #: token length of sentence i (original order)
        self.lengths = np.asarray(self.meta["lengths"], dtype=np.int64)
        #: order[p] = sentence stored at position p of each layer file
        self.order = np.asarray(self.meta["order"], dtype=np.int64)
        sizes = self.num_heads * self.lengths[self.order] ** 2
        #: element offset of position p in a layer file
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self._memo: tuple[FeatureSpec, tuple[np.ndarray, np.ndarray]] | None = None
        self._view = None

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def nbytes(self) -> int:
        return int(sum(f["bytes"] for f in self.meta["files"].values()))

    def _layer_file(self, layer: int) -> Path:
        return self.path / f"layer_{layer:02d}.bin"

    def verify(self) -> None:
        """Check every file's size and crc32 against meta.json; raise ``CacheCorrupt``."""
        for name, info in self.meta["files"].items():
            file = self.path / name
            if not file.exists() or file.stat().st_size != info["bytes"]:
                raise CacheCorrupt(f"{file} is missing or has the wrong size")
            crc = 0
            with open(file, "rb") as fh:
                while chunk := fh.read(READ_CHUNK_BYTES):
                    crc = zlib.crc32(chunk, crc)
            if crc != info["crc32"]:
                raise CacheCorrupt(f"{file} fails its checksum")

    def maps(self, i: int) -> np.ndarray:
        """All maps of sentence ``i`` as fp16 ``[L, H, n, n]``."""
        if not 0 <= i < len(self):
            raise IndexError(f"sentence {i} out of range for a cache of {len(self)}")
        pos = int(np.flatnonzero(self.order == i)[0])
        n, start = int(self.lengths[i]), int(self.offsets[pos])
        return np.stack(
            [
                np.fromfile(
                    self._layer_file(layer), np.float16, n * n * self.num_heads, offset=2 * start
                ).reshape(self.num_heads, n, n)
                for layer in range(self.num_layers)
            ]
        )

    def features(
        self,
        layers: FeatureSpec | list[int] | tuple[int, ...] | None = None,
        heads: str | int | list[int] | None = "all",
        reducer: str = "sum",
        view: str = "rows",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Reduced maps of every sentence: ``([N, max_len, F] float32, lengths [N])``.

        Takes a ``FeatureSpec`` (what trials pass), or its parts in the spellings a
        notebook user types (``layers=None`` for all layers, ``heads="all"``, ``[0, 7]``
        or ``"L5H6,L1H10"``, ``view="stats"``).

        Rows and columns past a sentence's length are zero. Only the chosen layers' files
        are read, in sequential chunks; only the chosen heads are reduced. The last result
        is memoised, so trials that share a feature spec do not read the cache again.
        Older results are not kept: each is ``N × max_len × F`` float32 (94 MB for BABE,
        6× that for concat of 6 layers) while rebuilding one from the page cache takes
        about a second, a few percent of a trial (BENCHMARKS.md, row 3).
        """
        if isinstance(layers, FeatureSpec):
            spec = layers
        else:
            chosen = parse_heads(heads)
            if is_pairs(chosen):
                spec = FeatureSpec.of_maps(chosen, reducer, view)
            else:
                all_layers = tuple(range(self.num_layers))
                layers = all_layers if layers is None else tuple(layers)
                spec = FeatureSpec(layers, chosen, reducer, view)
        if self._memo is not None and self._memo[0] == spec:
            return self._memo[1]
        maps = spec.maps(self.num_heads)
        bad = sorted({x for x, _ in maps if not 0 <= x < self.num_layers})
        bad_heads = sorted({h for _, h in maps if not 0 <= h < self.num_heads})
        if bad or bad_heads:
            raise HarnessError(
                f"features: layers {bad} / heads {bad_heads} out of range for this cache "
                f"({self.num_layers} layers × {self.num_heads} heads)"
            )
        if spec.view != "rows":
            return self._view_features(spec, maps)
        self._memo = None  # let the previous trial's array go before allocating this one
        width = spec.input_size(self.max_len, self.num_heads)
        out = np.zeros((len(self), self.max_len, width), np.float32)
        # per-trial work: on the trial's threads (1), as its many small ops gain nothing from
        # a second thread but its wake-ups (up to 10× slower with the other core busy)
        with num_threads(train_threads()):
            for lo, hi in self._chunks():
                self._reduce_chunk(spec, lo, hi, out)
        result = (out, self.lengths.copy())
        self._memo = (spec, result)
        return result

    def view(self, progress: bool = False):
        """The position-free views of this entry (``harness.view_cache.ViewCache``),
        computed once and stored beside it; opened once per process."""
        if self._view is None:
            from harness.view_cache import open_view

            self._view = open_view(self, progress=progress)
        return self._view

    def _view_features(self, spec: FeatureSpec, maps: list) -> tuple[np.ndarray, np.ndarray]:
        """A position-free view of the chosen maps; memoised like the rows."""
        self._memo = None
        with num_threads(train_threads()):
            result = self.view().token_features(maps, spec.view, spec.reducer)
        self._memo = (spec, result)
        return result

    def _reduce_chunk(self, spec: FeatureSpec, lo: int, hi: int, out: np.ndarray) -> None:
        """Read positions ``lo:hi`` of the chosen layers; reduce each run of equal lengths
        (contiguous, as extraction sorted them) in one call into its sentences' rows."""
        start, count = int(self.offsets[lo]), int(self.offsets[hi] - self.offsets[lo])
        per_layer = [
            np.fromfile(self._layer_file(layer), np.float16, count, offset=2 * start)
            for layer in spec.layers
        ]
        lens = self.lengths[self.order[lo:hi]]
        for a, b in length_runs(lens):
            n, k = int(lens[a]), b - a
            s = int(self.offsets[lo + a] - self.offsets[lo])
            run = [x[s : s + k * self.num_heads * n * n].reshape(k, -1, n, n) for x in per_layer]
            reduced = reduce_maps(run, spec.reduce_heads(), spec.reducer, self.max_len)
            out[self.order[lo + a : lo + b], :n, : reduced.shape[2]] = reduced

    def _chunks(self) -> Iterator[tuple[int, int]]:
        """Position ranges of about READ_CHUNK_BYTES per layer file."""
        lo = 0
        while lo < len(self):
            limit = self.offsets[lo] + READ_CHUNK_BYTES // 2
            hi = max(lo + 1, int(np.searchsorted(self.offsets, limit, side="right")) - 1)
            hi = min(hi, len(self))
            yield lo, hi
            lo = hi


class CacheCorrupt(Exception):
    """A cache entry on disk does not match its own meta.json."""


_VERIFIED: set[tuple[str, float]] = set()


def _stamp(path: Path) -> tuple[str, float]:
    return (str(path), (path / "meta.json").stat().st_mtime)


def _open_verified(path: Path) -> AttentionCache:
    """Open and verify an entry once per process (crc32 reads at ~3 GB/s)."""
    try:
        stamp = _stamp(path)
        cache = AttentionCache(path)
        if stamp not in _VERIFIED:
            cache.verify()
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
) -> AttentionCache:
    """Return the cache entry for these texts, extracting it only if no valid one exists.

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
    key = cache_key(encoder, texts, max_len)
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
        _write_entry(encoder, texts, max_len, batch_size, final, progress)
        # The crc32s were computed over the very bytes just written: reading the whole
        # entry back to check them again would only re-read the page cache.
        _VERIFIED.add(_stamp(final))
        return _open_verified(final)


def _write_entry(
    encoder: Encoder, texts: list[str], max_len: int, batch_size: int, final: Path, progress: bool
) -> None:
    # only the lock holder writes, so any other half-written entry is a killed writer's
    for stale in final.parent.glob(f"{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    log.info(
        "extracting attention of %d sentences with %s into %s", len(texts), encoder.name, final
    )
    try:
        n_layers, n_heads = encoder.num_layers, encoder.num_heads
        files = [open(tmp / f"layer_{layer:02d}.bin", "wb") for layer in range(n_layers)]
        crcs, sizes = [0] * n_layers, [0] * n_layers
        lengths = np.zeros(len(texts), dtype=np.int64)
        pooled = np.zeros((len(texts), encoder.config.hidden_size), np.float32)
        order: list[int] = []
        try:
            batches = iter_attention(encoder, texts, max_len, batch_size, progress, pooled)
            for idx, lens, maps in batches:
                lengths[idx] = lens
                order.extend(idx.tolist())
                # one contiguous [k, H, n, n] block per run of equal lengths and layer
                for a, b in length_runs(lens):
                    n = int(lens[a])
                    for layer in range(n_layers):
                        block = np.ascontiguousarray(maps[layer, a:b, :, :n, :n])
                        files[layer].write(block)
                        crcs[layer] = zlib.crc32(block, crcs[layer])
                        sizes[layer] += block.nbytes
        finally:
            for fh in files:
                fh.close()
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
                for layer in range(n_layers)
            },
        }
        write_embeddings(tmp / EMBEDDINGS_FILE, encoder, max_len, pooled)
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
