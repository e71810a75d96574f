"""Streamed features: a trial's ``[N, max_len, D]`` inputs, read from the cache a batch at
a time instead of held in memory.

A reader trained on a stacked ``relative`` view of 36 maps needs 930 MB of float32 for
BABE's 3,673 sentences and 45 GB for 180k. ``StreamedFeatures`` looks like that array to
the training loop (``x[rows, :width]``, ``len``, ``shape``) but builds only the rows asked
for, from the fp16 files of the cache entry, with the same arithmetic as the whole-array
path (``reduce_maps`` and ``combine`` work element by element), so a trial's metrics do
not depend on which path fed it. A trial's memory is then its batch and its model.

Files are read with ``os.preadv`` rather than mapped: mapped pages a process has touched
count in its resident memory, so a trial that read a 6 GB view file through ``np.memmap``
would look 6 GB large (and may be, to a scheduler that limits it), while pages read with
``preadv`` stay in the kernel's page cache, shared and reclaimable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

#: ``read(sentences, width)``: float32 ``[len(sentences), width, D]``, zero past each length
RowReader = Callable[[np.ndarray, int], np.ndarray]

#: sentences built at a time by ``np.asarray`` and ``mean_over_tokens``
CHUNK = 256


class StreamedFeatures:
    """Array-like ``[N, max_len, D]`` float32 features of a cache entry, built on indexing.

        Indexing takes rows first (an int, a slice or an index array) and builds only those;
        ``x[rows, :n]``, what the training loop asks for, builds only their first ``n`` tokens,
        and any further index applies to the rows built (a mask of the whole shape or an ``...``
    builds the whole array). ``len(x)``, ``x.shape`` and
        ``np.asarray(x)`` (the whole array, for a notebook) work as for an array.
    """

    def __init__(self, lengths: np.ndarray, max_len: int, width: int, read: RowReader):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.shape = (len(self.lengths), max_len, width)
        self.dtype = np.dtype(np.float32)
        self._read = read

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        rows, *rest = key if isinstance(key, tuple) else (key,)
        if rows is Ellipsis or Ellipsis in rest or np.ndim(rows) > 1:  # masks, x[..., :7]
            return np.asarray(self)[key]
        width = self.shape[1]
        if rest and isinstance(rest[0], slice) and rest[0].start in (None, 0):
            if rest[0].step is None and rest[0].stop is not None:  # x[rows, :n]: read n tokens
                width = min(int(rest[0].stop), width)
                rest[0] = slice(None)
        single = isinstance(rows, int | np.integer)
        out = self._read(np.arange(len(self))[rows].reshape(-1), width)
        return out[(0, *rest) if single else (slice(None), *rest)]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.concatenate([part for _, part in self.chunks(np.arange(len(self)))])
        return out if dtype is None else out.astype(dtype)

    def chunks(self, idx: np.ndarray, size: int = CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(rows, x[rows])`` for consecutive pieces of ``idx``."""
        for start in range(0, len(idx), size):
            rows = idx[start : start + size]
            yield rows, self[rows]


#: what a trial's token inputs may be: an in-memory array (new sentences) or a stream
Features = np.ndarray | StreamedFeatures


def mean_over_tokens(x: Features, lengths: np.ndarray) -> np.ndarray:
    """Each sentence's mean over its valid rows (zero padding adds nothing): ``[N, D]``,
    a chunk of sentences at a time, so a stream is never whole in memory."""
    out = np.empty((len(lengths), x.shape[2]), np.float32)
    for start in range(0, len(lengths), CHUNK):
        part = np.asarray(x[start : start + CHUNK])
        n = lengths[start : start + CHUNK, None].astype(np.float32)
        out[start : start + CHUNK] = part.sum(axis=1) / n
    return out


def read_spans(path: Path, spans: list[tuple[int, int]], dtype=np.float16) -> np.ndarray:
    """The elements ``[start, start + count)`` of each span of a flat file, concatenated:
    one ``preadv`` per span on one open file, straight into the array returned."""
    item = np.dtype(dtype).itemsize
    out = np.empty(sum(count for _, count in spans), dtype)
    view, at = memoryview(out.view(np.uint8)), 0
    fd = os.open(path, os.O_RDONLY)
    try:
        for start, count in spans:
            if os.preadv(fd, [view[at : at + count * item]], start * item) != count * item:
                raise OSError(f"{path} is shorter than its cache entry's meta.json says")
            at += count * item
    finally:
        os.close(fd)
    return out
