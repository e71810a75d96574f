"""Reading a finished attention cache entry: verifying it, one sentence's maps, and reduced
features built a chunk at a time (the entry never has to fit in memory).

Layout of one cache entry (a directory named by its key, written by ``harness.attention``)::

    meta.json        encoder identity, max_len, lengths, order, sizes and crc32 per file
    layer_00.bin     fp16 maps of layer 0: for each sentence in extraction order, [H, n, n]
    layer_01.bin     ...

Sentences lie sorted by token length, so equal lengths are next to each other on disk and
a whole run of them is reduced in one call. No padding is stored.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.features import FeatureSpec, is_pairs, parse_heads, reduce_maps
from harness.threads import num_threads, train_threads

#: Bytes of one layer file read at a time when building features: bounds memory use.
READ_CHUNK_BYTES = 32 << 20


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
