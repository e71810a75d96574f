"""Position-free views of attention maps: per-token statistics that mean the same thing
wherever the token sits (issue #9).

The absolute-position view (``rows``, built by ``AttentionCache.features``) shows row i as
attention over column positions, so "how much this token attends to [SEP] or to its
neighbour" lands in a different column in every sentence. These views put it in the same
feature every time:

* ``stats`` (7 per map): attention to [CLS], to [SEP], to itself, to the previous and
  next token, the row's entropy and its maximum;
* ``relative`` (7 + 2(w-1)): ``stats`` plus attention at relative offsets -w..-2, +2..+w.

``stats`` is a prefix of ``relative``, so one stored ``relative`` view serves both. The
view of every (layer, head) of a cache entry is computed once and stored beside it (see
``harness.attention.cache``); new sentences go through the same ``view_block``, ``pool`` and
``combine`` here, so a reloaded model sees exactly the features it was trained on.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from harness.core import HarnessError

VIEWS = ("rows", "stats", "relative")
REDUCERS = ("stack", "sum", "mean", "max")
STATS = ("cls", "sep", "self", "prev", "next", "entropy", "max")
#: the relative offsets already covered by ``stats`` (self, prev, next)
_STATS_OFFSETS = {"self": 0, "prev": -1, "next": 1}
#: the stats before the entropy (cls, sep, self, prev, next) copy one entry of a row
_FIRST_COPIED = STATS.index("entropy")

#: how a stored view keeps its values: fp16, or one byte each (``cache: {keep: views,
#: bits: 8}``: 36 instead of 70 KB per MiniLM sentence, BENCHMARKS.md "The 8-bit
#: compact view"). Probabilities are coded as round(255 sqrt p), which keeps small ones
#: apart, and the entropy linearly over [0, ln max_len], its whole range.
VIEW_BITS = (16, 8)
_ENTROPY = STATS.index("entropy")

Map = tuple[int, int]
#: what ``extract.iter_attention`` yields: (indices, lengths, fp16 [L, B, H, T, T])
Batch = tuple[np.ndarray, np.ndarray, np.ndarray]


def relative_offsets(w: int) -> list[int]:
    """The offsets beyond ``stats``: -w..-2, then +2..+w."""
    if not isinstance(w, int) or w < 1:
        raise HarnessError(f"views: the relative window w must be an integer >= 1, got {w!r}")
    return [*range(-w, -1), *range(2, w + 1)]


def feature_names(view: str, w: int = 3) -> tuple[str, ...]:
    """Names of a position-free view's features, in storage order."""
    if view == "stats":
        return STATS
    if view == "relative":
        return STATS + tuple(f"rel{d:+d}" for d in relative_offsets(w))
    raise HarnessError(_unknown_view(view))


def view_size(view: str, w: int = 3, max_len: int | None = None) -> int:
    """Features per token and map: ``max_len`` for ``rows``, 7 for ``stats``, 7 + 2(w-1)
    for ``relative``."""
    if view == "rows":
        if max_len is None:
            raise HarnessError("views: the size of the 'rows' view is max_len; pass max_len")
        return max_len
    return len(feature_names(view, w))


def _unknown_view(view: str) -> str:
    if view == "rows":
        return "views: 'rows' is the absolute-position view; build it with AttentionCache.features"
    return f"views: unknown view {view!r}; choose one of {', '.join(VIEWS)}"


def token_stats(block: np.ndarray | torch.Tensor, w: int = 3) -> np.ndarray:
    """Per-token statistics of ``k`` sentences of one length ``n``.

    ``block`` is ``[k, M, n, n]`` (fp16 or fp32): M maps per sentence, row i is token i's
    attention. Returns float32 ``[k, n, M, F]`` with the features of ``feature_names
    ("relative", w)``; offsets that fall outside the sentence read 0.
    """
    return _token_stats(block, w).numpy()


def _token_stats(block: np.ndarray | torch.Tensor, w: int) -> torch.Tensor:
    """``token_stats`` as a tensor. Runs in torch in float32 (numpy reduces fp16 through
    a slow scalar path). Every feature that copies one entry of a row (to [CLS], to
    [SEP], self, neighbours, offsets) comes from one ``gather`` over precomputed columns
    instead of one strided diagonal copy per feature: 4x faster for those features, the
    same values bit for bit.
    The entropy takes ``a * log(max(a, tiny))``, which is 0 where ``a`` is 0 and otherwise
    ``a log a`` (fp16 maps hold nothing below ``tiny``): 2x faster than ``xlogy``."""
    a = torch.as_tensor(block).float()
    k, m, n, _ = a.shape
    columns, inside = _copied_columns(n, w)
    copied = a.gather(-1, columns.expand(k, m, n, -1)).mul_(inside)
    out = torch.empty((k, n, m, len(STATS) + len(relative_offsets(w))), dtype=torch.float32)
    per_map = out.permute(0, 2, 1, 3)  # a [k, M, n, F] view of the same memory
    per_map[..., :_FIRST_COPIED] = copied[..., :_FIRST_COPIED]
    per_map[..., len(STATS) :] = copied[..., _FIRST_COPIED:]
    per_map[..., STATS.index("max")] = a.amax(-1)
    a_log_a = a.clamp_min(torch.finfo(torch.float32).tiny).log_().mul_(a)
    per_map[..., STATS.index("entropy")] = a_log_a.sum(-1).neg_()
    return out


@functools.lru_cache(maxsize=512)
def _copied_columns(n: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For sentences of ``n`` tokens: the column each copied feature of row i reads
    (``[n, C]``: 0, n - 1, then i + d for self, prev, next and the relative offsets) and
    whether that column lies inside the sentence (``[n, C]`` float 1/0; outside reads 0)."""
    rows = torch.arange(n).unsqueeze(1)
    offsets = torch.tensor([*_STATS_OFFSETS.values(), *relative_offsets(w)])
    first_last = torch.tensor([[0, n - 1]]).expand(n, 2)
    columns = torch.cat([first_last, rows + offsets], dim=1)
    inside = ((columns >= 0) & (columns < n)).float()
    return columns.clamp(0, n - 1), inside


def view_block(
    block: np.ndarray | torch.Tensor, w: int, bits: int = 16, max_len: int = 0
) -> np.ndarray:
    """The stored form of ``token_stats``: fp16 ``[k, n, M, F]``, or with ``bits=8`` its
    one-byte codes (``decode_view`` reads them back; the entropy's range is ``ln
    max_len``). Cache and new sentences both go through this and ``decode_view``, so
    both see the same values."""
    values = _token_stats(block, w)
    if bits == 16:
        return values.half().numpy()
    if bits != 8:
        raise HarnessError(f"views: bits must be one of {VIEW_BITS}, got {bits!r}")
    if max_len < 2:
        raise HarnessError(f"views: 8-bit codes need the entry's max_len (>= 2), got {max_len!r}")
    entropy = values[..., _ENTROPY].mul(255 / float(np.log(max_len))).clamp_(0, 255).round_()
    values.clamp_(0, 1).sqrt_().mul_(255).round_()
    values[..., _ENTROPY] = entropy
    return values.to(torch.uint8).numpy()


def decode_view(stored: np.ndarray, max_len: int = 0) -> np.ndarray:
    """View values as ``view_block`` stored them, as numbers: fp16 as is, one-byte codes
    as float32 (``[..., F]``, the features in storage order): (code / 255)² for the
    probabilities, code × ln(max_len) / 255 for the entropy. In torch, 6x faster than
    numpy's table lookup of the same float32 values."""
    if stored.dtype != np.uint8:
        return stored
    codes = torch.from_numpy(stored)
    out = codes.float().div_(255).square_()
    entropy_step = float(np.float32(np.log(max_len) / 255))
    out[..., _ENTROPY] = codes[..., _ENTROPY].float().mul_(entropy_step)
    return out.numpy()


def pool(values: np.ndarray) -> np.ndarray:
    """Mean over the token axis of ``[k, n, ...]`` view values, in float32: ``[k, ...]``."""
    return torch.from_numpy(values).float().mean(dim=1).numpy()


def check_request(
    maps: Sequence[Map], view: str, num_layers: int, num_heads: int, w: int
) -> tuple[list[Map], int]:
    """Validate a (maps, view) request; return the maps as int pairs and the view's size."""
    if view not in ("stats", "relative"):
        raise HarnessError(_unknown_view(view))
    try:
        pairs = [(int(layer), int(head)) for layer, head in maps]
    except (TypeError, ValueError):
        raise HarnessError(f"views: maps must be (layer, head) pairs, got {maps!r}") from None
    if not pairs:
        raise HarnessError("views: no maps chosen; give at least one (layer, head) pair")
    bad = [p for p in pairs if not (0 <= p[0] < num_layers and 0 <= p[1] < num_heads)]
    if bad:
        raise HarnessError(
            f"views: maps {bad} out of range for {num_layers} layers × {num_heads} heads"
        )
    return pairs, view_size(view, w)


def combine(
    per_layer: Mapping[int, np.ndarray], maps: Sequence[Map], size: int, reducer: str
) -> np.ndarray:
    """Chosen maps' features: ``per_layer[l]`` is ``[T, H, F]`` (any float dtype); returns
    float32 ``[T, D]``. ``stack`` lays the maps side by side in the order given
    (``D = len(maps) * size``); sum/mean/max combine them elementwise (``D = size``)."""
    feature_width(maps, size, reducer)
    if reducer == "stack":
        # consecutive heads of one layer are one strided block, not one slice per map
        blocks = [
            per_layer[layer][:, h0:h1, :size].reshape(len(per_layer[layer]), -1)
            for layer, h0, h1 in _head_runs(maps)
        ]
        return np.concatenate(blocks, axis=1, dtype=np.float32)
    parts = (per_layer[layer][:, head, :size] for layer, head in maps)
    out = next(parts).astype(np.float32)
    for part in parts:
        if reducer == "max":
            np.maximum(out, part, out=out)
        else:
            np.add(out, part, out=out)
    if reducer == "mean":
        out /= len(maps)
    return out


def _head_runs(maps: Sequence[Map]) -> list[tuple[int, int, int]]:
    """``maps`` as ``(layer, first head, last head + 1)`` runs of consecutive heads."""
    runs: list[list[int]] = []
    for layer, head in maps:
        if runs and runs[-1][0] == layer and runs[-1][2] == head:
            runs[-1][2] += 1
        else:
            runs.append([layer, head, head + 1])
    return [(a, b, c) for a, b, c in runs]


def feature_width(maps: Sequence[Map], size: int, reducer: str) -> int:
    """Features per token of ``combine(..., maps, size, reducer)``; checks the reducer
    before any row is read."""
    if reducer not in REDUCERS:
        raise HarnessError(
            f"views: unknown reducer {reducer!r}; choose one of {', '.join(REDUCERS)}"
        )
    return size * len(maps) if reducer == "stack" else size


def _batch_views(
    batches: Iterable[Batch], layers: Iterable[int], w: int, bits: int, max_len: int
) -> Iterator[tuple[np.ndarray, int, dict[int, np.ndarray]]]:
    """For each run of equal lengths in each batch: (sentence indices, n, {layer: view
    values [k, n, H, F]}), stored and read back as a cache of ``bits`` does. All heads
    of a layer go through ``view_block`` together, as in the cache, so each map's
    arithmetic is the same op on the same shape."""
    layers = sorted(set(layers))
    for idx, lens, att in batches:
        order = np.argsort(-lens, kind="stable")  # iter_attention's batches are sorted
        for a, b in length_runs(lens[order]):
            rows, n = order[a:b], int(lens[order[a]])
            yield (
                idx[rows],
                n,
                {
                    layer: decode_view(
                        view_block(att[layer, rows, :, :n, :n], w, bits, max_len), max_len
                    )
                    for layer in layers
                },
            )


def token_features_from_attention(
    batches: Iterable[Batch],
    count: int,
    max_len: int,
    maps: Sequence[Map],
    view: str = "relative",
    reducer: str = "stack",
    w: int = 3,
    bits: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """``ViewCache.token_features`` for new sentences, straight from ``iter_attention``'s
    batches (``count`` sentences in all): ``([count, max_len, D] float32, lengths)``, the
    values coded as in a cache whose view has ``bits``."""
    num_layers, num_heads, batches = _peek(batches)
    pairs, size = check_request(maps, view, num_layers, num_heads, w)
    x = np.zeros((count, max_len, feature_width(pairs, size, reducer)), np.float32)
    lengths = np.zeros(count, np.int64)
    for idx, n, per_layer in _batch_views(batches, [p[0] for p in pairs], w, bits, max_len):
        flat = {layer: v.reshape(len(idx) * n, *v.shape[2:]) for layer, v in per_layer.items()}
        x[idx, :n] = combine(flat, pairs, size, reducer).reshape(len(idx), n, -1)
        lengths[idx] = n
    return x, lengths


def _peek(batches: Iterable[Batch]) -> tuple[int, int, Iterator[Batch]]:
    """(layers, heads) of the first batch, and all batches again: the shape is checked
    before any work, and ``iter_attention`` can still stream one batch at a time."""
    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise HarnessError("views: no sentences to compute features for")
    num_layers, _, num_heads = first[2].shape[:3]
    return num_layers, num_heads, itertools.chain([first], it)


def length_runs(lengths: np.ndarray) -> list[tuple[int, int]]:
    """``[(a, b), …]`` such that ``lengths[a:b]`` are equal and the runs cover the array.

    Extraction sorts sentences by length, so runs are long: a whole run is written or
    reduced in one numpy/torch call instead of one call per sentence.
    """
    starts = np.flatnonzero(np.diff(lengths, prepend=-1))
    return list(zip(starts.tolist(), [*starts[1:].tolist(), len(lengths)], strict=True))
