"""The on-disk attention cache: reading a finished entry (verifying it, one sentence's maps,
features streamed a batch of sentences at a time, so neither the entry nor a trial's
features ever have to fit in memory) and the position-free views stored under it.

Layout of one cache entry (a directory named by its key, written by ``harness.attention.extract``)::

    meta.json        encoder identity, max_len, lengths, order, sizes and crc32 per file
    layer_00.bin     fp16 maps of layer 0: for each sentence in extraction order, [H, n, n]
    layer_01.bin     ...
    views/relative-w3/meta.json     w, shapes, crc32 and size per file
    views/relative-w3/layer_00.bin  fp16 [tokens, H, F], storage order (a compact
                                    entry of ``bits: 8``: one-byte codes)
    views/relative-w3/pooled.bin    float32 [N, L, H, F], original order

A compact entry (``cache: {keep: views}``) holds only the maps of ``map_layers`` and the
view it was extracted with: ``relative-w1`` (which is ``stats``) when its study searches
no ``relative`` view, and with ``cache: {keep: views, bits: 8}`` one byte per value
instead of fp16 (``views.view_block``).

Sentences lie sorted by token length, so equal lengths are next to each other on disk and
a whole run of them is reduced in one call. No padding is stored.

The ``relative`` view of every (layer, head) is computed once and stored, so trials and
head sweeps only read and index it. Its token rows follow the attention files' order. The
pooled means (mean over each sentence's tokens, [CLS] and [SEP] included) are what linear
probes and the head sweep read: 3.2 KB per sentence for MiniLM (12 MB for BABE, 320 MB
for 100k sentences), so they stay in memory. As with
the attention entry, a view is written in a temporary directory and renamed into place
under a file lock: a killed writer leaves no half entry, and a corrupt one is rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from harness.attention.features import reduce_maps
from harness.attention.stream import StreamedFeatures, read_spans
from harness.attention.views import (
    Map,
    check_request,
    combine,
    decode_view,
    feature_width,
    length_runs,
    pool,
    view_block,
    view_size,
)
from harness.core import (
    HarnessError,
    check_free_space,
    num_threads,
    train_threads,
    waiting_lock,
)
from harness.studyfile import FeatureSpec, is_pairs, parse_heads

#: Bytes of one layer file read at a time when building features: bounds memory use.
READ_CHUNK_BYTES = 32 << 20


#: the window of the stored ``relative`` view (its offsets -w..+w)
RELATIVE_W = 3


def compact_view_w(views: Iterable[str], sweeps_heads: bool) -> int:
    """The window of the view a compact entry stores for a study searching ``views``:
    ``RELATIVE_W`` when ``relative`` is among them or the study ranks maps by the head
    sweep (which reads ``relative``), else 1, which is ``stats`` alone (7 of 11 features:
    44 instead of 70 KB per MiniLM sentence of BABE)."""
    return RELATIVE_W if "relative" in views or sweeps_heads else 1


class AttentionCache:
    """A finished cache entry: all layers × all heads of every sentence, fp16, unpadded;
    or, in its compact form (``cache: {keep: views}``), the ``relative`` view of every map
    (``stats`` alone when its study searches no ``relative`` view: ``compact_view_w``)
    plus the full maps of the layers in ``map_layers`` only.

    ``features`` reads only the layers and sentences it is asked for, so the entry never
    has to fit in memory.
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
        #: position[i] = where sentence i is stored (the inverse of ``order``)
        self.position = np.empty_like(self.order)
        self.position[self.order] = np.arange(len(self.order))
        #: the layers whose full maps are stored (all but in a compact entry)
        self.map_layers: tuple[int, ...] = tuple(
            self.meta.get("map_layers", range(self.num_layers))
        )
        self._view = None

    @property
    def compact(self) -> bool:
        """Whether the entry keeps views rather than every map (its view is part of it)."""
        return self.meta.get("keep", "maps") == "views"

    @property
    def view_bits(self) -> int:
        """Bits per value of the stored view: 16 (fp16), or 8 in a compact entry of
        ``cache: {keep: views, bits: 8}``."""
        return self.meta.get("view_bits", 16)

    @property
    def views(self) -> tuple[str, ...]:
        """The position-free views this entry serves (a compact entry: those it stores)."""
        stats_only = self.compact and self.meta["view_w"] != RELATIVE_W
        return ("stats",) if stats_only else ("stats", "relative")

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def nbytes(self) -> int:
        """Bytes on disk: the maps, and a compact entry's view (part of the entry)."""
        return int(sum(f["bytes"] for f in self.meta["files"].values())) + self.meta.get(
            "view_bytes", 0
        )

    def _layer_file(self, layer: int) -> Path:
        if layer not in self.map_layers:
            raise HarnessError(
                f"the rows view reads the full maps of layer {layer}, which this compact cache "
                f"entry does not keep (cache: {{keep: views}} keeps those of layers "
                f"{list(self.map_layers)}, the ones the study's rows view can choose); use "
                "cache: {keep: maps} or a position-free view for it"
            )
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
        """All maps of sentence ``i`` as fp16 ``[L, H, n, n]`` (of a full entry)."""
        if not 0 <= i < len(self):
            raise IndexError(f"sentence {i} out of range for a cache of {len(self)}")
        pos = int(self.position[i])
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
    ) -> tuple[StreamedFeatures, np.ndarray]:
        """Reduced maps of every sentence: ``([N, max_len, F] float32, lengths [N])``, the
        array streamed (``harness.attention.stream``): rows are built when indexed.

        Takes a ``FeatureSpec`` (what trials pass), or its parts in the spellings a
        notebook user types (``layers=None`` for all layers, ``heads="all"``, ``[0, 7]``
        or ``"L5H6,L1H10"``, ``view="stats"``).

        Rows and columns past a sentence's length are zero. Only the chosen layers' files
        are read, and of them only the asked-for sentences; only the chosen heads are
        reduced, so a 1-head trial costs 1/H of an all-heads one.
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
        maps = spec.maps(self.num_heads)
        bad = sorted({x for x, _ in maps if not 0 <= x < self.num_layers})
        bad_heads = sorted({h for _, h in maps if not 0 <= h < self.num_heads})
        if bad or bad_heads:
            raise HarnessError(
                f"features: layers {bad} / heads {bad_heads} out of range for this cache "
                f"({self.num_layers} layers × {self.num_heads} heads)"
            )
        if spec.view != "rows":
            return self.view().token_features(maps, spec.view, spec.reducer)
        for layer in spec.layers:
            self._layer_file(layer)  # a compact entry without these maps refuses now
        width = spec.input_size(self.max_len, self.num_heads)

        def read(sentences: np.ndarray, tokens: int) -> np.ndarray:
            return self._read_rows(spec, sentences, tokens, width)

        return StreamedFeatures(self.lengths, self.max_len, width, read), self.lengths.copy()

    def view(self, progress: bool = False):
        """The position-free views of this entry (``ViewCache``),
        computed once and stored beside it; opened once per process."""
        if self._view is None:
            w = self.meta["view_w"] if self.compact else RELATIVE_W
            self._view = open_view(self, w, progress=progress)
        return self._view

    def _read_rows(
        self, spec: FeatureSpec, sentences: np.ndarray, tokens: int, width: int
    ) -> np.ndarray:
        """The ``rows`` view of ``sentences``: ``[k, tokens, width]`` float32. Sentences of
        one length are reduced together (one ``reduce_maps`` call per run)."""
        out = np.zeros((len(sentences), tokens, width), np.float32)
        pos = self.position[sentences]
        by_pos = np.argsort(pos, kind="stable")  # storage order: equal lengths together
        lens = self.lengths[sentences[by_pos]]
        starts, ends = self.offsets[pos[by_pos]], self.offsets[pos[by_pos] + 1]
        spans = [(int(a), int(b - a)) for a, b in zip(starts, ends, strict=True)]
        with num_threads(train_threads()):
            flat = [read_spans(self._layer_file(layer), spans) for layer in spec.layers]
            start = 0
            for a, b in length_runs(lens):
                n, k = int(lens[a]), b - a
                size = k * self.num_heads * n * n
                run = [x[start : start + size].reshape(k, -1, n, n) for x in flat]
                start += size
                reduced = reduce_maps(run, spec.reduce_heads(), spec.reducer, self.max_len)
                m = min(n, tokens)
                out[by_pos[a:b], :m, : reduced.shape[2]] = reduced[:, :m]
        return out

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


log = logging.getLogger("harness")

VIEW_FORMAT = 1


class ViewCache:
    """A finished ``relative`` view of one attention cache entry (which holds ``stats``)."""

    def __init__(self, cache: AttentionCache, path: Path):
        self.cache = cache
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        if self.meta["attention_key"] != cache.key or self.meta["sentences"] != len(cache):
            raise CacheCorrupt(f"{self.path} belongs to another attention cache entry")
        self.w: int = self.meta["w"]
        #: 16: fp16 token rows; 8: one-byte codes, read through ``decode_view``
        self.bits: int = self.meta.get("bits", 16)
        self.num_layers, self.num_heads = cache.num_layers, cache.num_heads
        self.num_features = view_size("relative", self.w)
        shape = (len(cache), self.num_layers, self.num_heads, self.num_features)
        #: mean over each sentence's tokens, [N, L, H, F] float32 in original order
        self.pooled = np.fromfile(self.path / "pooled.bin", np.float32).reshape(shape)
        sorted_lengths = cache.lengths[cache.order]
        #: token offset of storage position p in a layer file (in rows of [H, F])
        self.token_offsets = np.concatenate([[0], np.cumsum(sorted_lengths)])

    def __len__(self) -> int:
        return len(self.cache)

    @property
    def nbytes(self) -> int:
        """Bytes on disk: the maps, and a compact entry's view (part of the entry)."""
        return int(sum(f["bytes"] for f in self.meta["files"].values())) + self.meta.get(
            "view_bytes", 0
        )

    def verify(self) -> None:
        """Check every file's size and crc32 against meta.json; raise ``CacheCorrupt``."""
        for name, info in self.meta["files"].items():
            file = self.path / name
            if not file.exists() or file.stat().st_size != info["bytes"]:
                raise CacheCorrupt(f"{file} is missing or has the wrong size")
            if _crc32(file) != info["crc32"]:
                raise CacheCorrupt(f"{file} fails its checksum")

    def _layer_file(self, layer: int) -> Path:
        """Layer ``layer``'s token rows, ``[tokens, H, F]`` in storage order."""
        return self.path / f"layer_{layer:02d}.bin"

    def _request(self, maps: Sequence[Map], view: str) -> tuple[list[Map], int]:
        """``check_request``; a compact entry that stores ``stats`` alone refuses
        ``relative``."""
        if view == "relative" and view not in self.cache.views:
            raise HarnessError(
                "this compact cache entry keeps the stats view only, since its study searched "
                "no relative view; add relative to search.view (a new entry is extracted) or "
                "use cache: {keep: maps}"
            )
        return check_request(maps, view, self.num_layers, self.num_heads, self.w)

    def token_features(
        self, maps: Sequence[Map], view: str = "relative", reducer: str = "stack"
    ) -> tuple[StreamedFeatures, np.ndarray]:
        """Per-token features of the chosen maps: ``([N, max_len, D] float32, lengths)``,
        zero past each sentence's length, the array streamed (built when indexed).
        ``stack`` keeps each map as its own ``F`` channels in the order given; sum/mean/max
        combine the maps elementwise."""
        pairs, size = self._request(maps, view)
        width = feature_width(pairs, size, reducer)

        def read(sentences: np.ndarray, tokens: int) -> np.ndarray:
            return self._read_tokens(pairs, size, reducer, sentences, tokens, width)

        lengths = self.cache.lengths
        return StreamedFeatures(lengths, self.cache.max_len, width, read), lengths.copy()

    def _read_tokens(
        self,
        pairs: list[Map],
        size: int,
        reducer: str,
        sentences: np.ndarray,
        tokens: int,
        width: int,
    ) -> np.ndarray:
        """``[k, tokens, width]`` float32 features of ``sentences``: their stored token rows
        of the chosen layers, read with one ``preadv`` each, combined in one call."""
        lens = np.minimum(self.cache.lengths[sentences], tokens)
        starts = self.token_offsets[self.cache.position[sentences]]
        row = self.num_heads * self.num_features
        spans = [(int(t) * row, int(n) * row) for t, n in zip(starts, lens, strict=True)]
        dtype, max_len = np.uint8 if self.bits == 8 else np.float16, self.cache.max_len
        with num_threads(train_threads()):
            per_layer = {
                layer: decode_view(
                    read_spans(self._layer_file(layer), spans, dtype).reshape(
                        -1, self.num_heads, self.num_features
                    ),
                    max_len,
                )
                for layer in {layer for layer, _ in pairs}
            }
            out = np.zeros((len(sentences), tokens, width), np.float32)
            out[np.arange(tokens) < lens[:, None]] = combine(per_layer, pairs, size, reducer)
        return out

    def sentence_features(self, maps: Sequence[Map], view: str = "relative") -> np.ndarray:
        """Each sentence's mean over its tokens, maps side by side: ``[N, len(maps) * F]``
        float32, for linear/MLP probes and the head sweep."""
        pairs, size = self._request(maps, view)
        per_layer = {layer: self.pooled[:, layer] for layer, _ in pairs}
        return combine(per_layer, pairs, size, "stack")


_VERIFIED: set[tuple[str, float]] = set()


def _crc32(file: Path) -> int:
    crc = 0
    with open(file, "rb") as fh:
        while chunk := fh.read(32 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def _open_verified(cache: AttentionCache, path: Path) -> ViewCache:
    """Open and verify a view once per process."""
    try:
        stamp = (str(path), (path / "meta.json").stat().st_mtime)
        view = ViewCache(cache, path)
        if stamp not in _VERIFIED:
            view.verify()
            _VERIFIED.add(stamp)
    except (OSError, ValueError, KeyError) as exc:
        raise CacheCorrupt(f"{path}: {exc}") from None
    return view


def open_view(cache: AttentionCache, w: int = RELATIVE_W, progress: bool = True) -> ViewCache:
    """The ``relative`` view (window ``w``) of ``cache``, computed only if no valid one is
    stored. Safe from several processes at once: one computes, the others wait and reuse.
    A compact entry's view was written with it and cannot be computed again from maps.
    """
    if cache.compact:
        final = cache.path / "views" / f"relative-w{w}"
        if w != cache.meta["view_w"]:
            raise HarnessError(
                f"this compact cache entry keeps the relative view with w = "
                f"{cache.meta['view_w']}, not {w}; use cache: {{keep: maps}} for other windows"
            )
        return _open_verified(cache, final)
    view_size("relative", w)  # validates w before anything is created
    root = cache.path / "views"
    root.mkdir(exist_ok=True)
    name = f"relative-w{w}"
    final = root / name
    with waiting_lock(root / f"{name}.lock", "the stored attention view", "cache_dir"):
        if (final / "meta.json").exists():
            try:
                view = _open_verified(cache, final)
                log.info(
                    "reusing the stored %s view %s (%.0f MB): not recomputed",
                    name,
                    final,
                    view.nbytes / 1e6,
                )
                return view
            except CacheCorrupt as exc:
                log.warning("stored view is corrupt (%s); recomputing it", exc)
                shutil.rmtree(final)
        elif final.exists():
            log.warning("stored view %s is incomplete; recomputing it", final)
            shutil.rmtree(final)
        _write_view(cache, w, final, progress)
        _VERIFIED.add((str(final), (final / "meta.json").stat().st_mtime))
        return _open_verified(cache, final)


def view_bytes(
    num_sentences: int, tokens: int, num_layers: int, num_heads: int, w: int, bits: int = 16
) -> int:
    """Bytes of a stored ``relative`` view: token rows of every map (fp16, or one byte
    each with ``bits=8``), float32 means."""
    per_map = view_size("relative", w)
    return num_layers * num_heads * per_map * (bits // 8 * tokens + 4 * num_sentences)


class ViewWriter:
    """Writes a ``relative`` view into a new folder: each layer's token rows in storage
    order, as they come, and each sentence's pooled means. Used when a view is computed
    from a full entry's maps and when a compact entry is extracted (whose ``bits`` may be
    8: ``views.view_block``; ``max_len`` is the entry's, the range of its coded entropy)."""

    def __init__(
        self,
        folder: Path,
        num_sentences: int,
        num_layers: int,
        num_heads: int,
        w: int,
        bits: int = 16,
        max_len: int = 0,
    ):
        self.folder, self.w, self.bits, self.max_len = folder, w, bits, max_len
        folder.mkdir(parents=True)
        shape = (num_sentences, num_layers, num_heads, view_size("relative", w))
        self.pooled = np.zeros(shape, np.float32)
        self.files = [open(folder / f"layer_{x:02d}.bin", "wb") for x in range(num_layers)]
        self.crcs, self.sizes = [0] * num_layers, [0] * num_layers

    def add(self, layer: int, sentences: np.ndarray, values: np.ndarray) -> None:
        """``values``: ``view_block`` of ``sentences`` (``[k, n, H, F]`` of this writer's
        ``bits``), the next ones of ``layer`` in storage order. The means are those of
        the values as read back, so a probe sees what a reader of the token rows sees."""
        self.files[layer].write(values)
        self.crcs[layer] = zlib.crc32(values, self.crcs[layer])
        self.sizes[layer] += values.nbytes
        self.pooled[sentences, layer] = pool(decode_view(values, self.max_len))

    def close(self) -> None:
        for fh in self.files:
            fh.close()

    def finish(self, attention_key: str, tokens: int) -> None:
        """Close the layer files; write the pooled means and meta.json."""
        self.close()
        self.pooled.tofile(self.folder / "pooled.bin")
        files = {
            f"layer_{layer:02d}.bin": {"bytes": size, "crc32": crc}
            for layer, (size, crc) in enumerate(zip(self.sizes, self.crcs, strict=True))
        }
        files["pooled.bin"] = {"bytes": self.pooled.nbytes, "crc32": zlib.crc32(self.pooled)}
        n, num_layers, num_heads, num_features = self.pooled.shape
        meta = {
            "format": VIEW_FORMAT,
            "view": "relative",
            "w": self.w,
            "bits": self.bits,
            "attention_key": attention_key,
            "sentences": n,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "num_features": num_features,
            "tokens": tokens,
            "files": files,
        }
        (self.folder / "meta.json").write_text(json.dumps(meta))


def _write_view(cache: AttentionCache, w: int, final: Path, progress: bool) -> None:
    # only the lock holder writes, so any other half-written view is a killed writer's
    for stale in final.parent.glob(f"{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tokens = int(cache.lengths.sum())
    needed = view_bytes(len(cache), tokens, cache.num_layers, cache.num_heads, w)
    check_free_space(final.parent, needed, f"the stored {final.name} view", "cache_dir")
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    start = time.perf_counter()
    writer = ViewWriter(tmp, len(cache), cache.num_layers, cache.num_heads, w)
    try:
        bar = tqdm(
            total=len(cache), desc="computing attention views", unit="sent", disable=not progress
        )
        try:
            # one thread by default, as feature building: on this 2-core machine a second
            # gained ~10 % in two runs of bench row 9 and lost 44 % in one under load
            with num_threads(train_threads()):
                for lo, hi in cache._chunks():
                    for layer, sentences, values in _chunk_views(cache, lo, hi, w):
                        writer.add(layer, sentences, values)
                    bar.update(hi - lo)
        finally:
            bar.close()
            writer.close()
        writer.finish(cache.key, tokens)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "computed the %s view of %d sentences in %.1f s",
        final.name,
        len(cache),
        time.perf_counter() - start,
    )


def _chunk_views(
    cache: AttentionCache, lo: int, hi: int, w: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Storage positions ``lo:hi``, layer by layer, one run of equal lengths at a time:
    ``(layer, sentence indices, fp16 [k, n, H, F])``. Each run is one ``view_block``
    call over all its sentences and heads; a chunk's maps are read once per layer."""
    start, count = int(cache.offsets[lo]), int(cache.offsets[hi] - cache.offsets[lo])
    lens = cache.lengths[cache.order[lo:hi]]
    runs = length_runs(lens)
    for layer in range(cache.num_layers):
        flat = np.fromfile(cache._layer_file(layer), np.float16, count, offset=2 * start)
        for a, b in runs:
            n, k = int(lens[a]), b - a
            s = int(cache.offsets[lo + a] - cache.offsets[lo])
            block = flat[s : s + k * cache.num_heads * n * n].reshape(k, -1, n, n)
            yield layer, cache.order[lo + a : lo + b], view_block(block, w)
