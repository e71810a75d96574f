"""Turn attention maps into classifier inputs: choose (layer, head) maps, pick a view,
then reduce.

A ``FeatureSpec`` names the maps (layers × a head selection shared by every layer, or an
explicit list of (layer, head) pairs such as L5H6 + L1H10), the view (``rows``: token i's
attention over absolute positions; ``stats`` / ``relative``: position-free statistics per
token, see ``harness.views``) and the reducer (sum / mean / max combine the maps into one,
``concat`` averages heads per layer and lays layers side by side, ``stack`` keeps every
map as its own channels).

One function, ``reduce_maps``, does the ``rows`` arithmetic for both the on-disk cache
(many sentences of one length at a time) and prediction on new sentences, so a reloaded
run sees exactly the features it was trained on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from harness.errors import HarnessError

REDUCERS = ("sum", "mean", "max", "concat", "stack")
VIEWS = ("rows", "stats", "relative")
#: features per token and map of the position-free views (``relative`` with w = 3)
VIEW_SIZES = {"stats": 7, "relative": 11}
#: the relative window of the ``relative`` view
WINDOW = 3

Map = tuple[int, int]
#: a head selection: ``None`` (all heads of each layer), head indices shared by every
#: layer, or explicit (layer, head) pairs
Heads = tuple[int, ...] | tuple[Map, ...] | None
_MAP_NAME = re.compile(r"L(\d+)H(\d+)")


def map_name(layer: int, head: int) -> str:
    """``L5H6``: how maps are named in params, tables and study files."""
    return f"L{layer}H{head}"


def parse_map_name(text: str) -> Map | None:
    """``L5H6`` -> ``(5, 6)``; ``None`` if ``text`` is not a map name."""
    m = _MAP_NAME.fullmatch(text.strip()) if isinstance(text, str) else None
    return (int(m[1]), int(m[2])) if m else None


def is_pairs(heads: Heads) -> bool:
    return bool(heads) and isinstance(heads[0], tuple)


@dataclass(frozen=True)
class FeatureSpec:
    """Which maps feed the classifier, in which view, and how they are combined.

    With explicit pairs, ``layers`` are the pairs' layers in first-seen order and the
    pairs' order is the channel order of ``stack``.
    """

    layers: tuple[int, ...]
    heads: Heads = None
    reducer: str = "sum"
    view: str = "rows"

    def __post_init__(self) -> None:
        if not self.layers:
            raise HarnessError("features: 'layers' is empty; choose at least one layer index")
        if self.heads is not None and not self.heads:
            raise HarnessError("features: 'heads' is empty; use 'all' or list head indices")
        if self.reducer not in REDUCERS:
            raise HarnessError(
                f"features: unknown reducer {self.reducer!r}; choose one of {', '.join(REDUCERS)}"
            )
        if self.view not in VIEWS:
            raise HarnessError(
                f"features: unknown view {self.view!r}; choose one of {', '.join(VIEWS)}"
            )
        if self.view != "rows" and self.reducer == "concat":
            raise HarnessError(
                f"features: concat lays absolute positions side by side and applies to the rows "
                f"view only; use stack with the {self.view} view"
            )
        if is_pairs(self.heads) and self.layers != _layers_of(self.heads):
            raise HarnessError("features: with (layer, head) pairs, layers are the pairs' layers")

    @classmethod
    def of_maps(cls, maps: tuple[Map, ...], reducer: str = "stack", view: str = "rows"):
        """A spec over explicit (layer, head) pairs, e.g. ``((5, 6), (1, 10))``."""
        maps = tuple((int(layer), int(head)) for layer, head in maps)
        return cls(_layers_of(maps), maps, reducer, view)

    def maps(self, num_heads: int | None = None) -> list[Map]:
        """Every chosen (layer, head) pair, in channel order."""
        if is_pairs(self.heads):
            return list(self.heads)
        heads = range(num_heads) if self.heads is None else self.heads
        return [(layer, head) for layer in self.layers for head in heads]

    def reduce_heads(self) -> Heads | list[Map]:
        """``heads`` as ``reduce_maps`` takes them: explicit pairs become (position in
        ``layers``, head)."""
        if is_pairs(self.heads):
            return [(self.layers.index(layer), head) for layer, head in self.heads]
        return self.heads

    def input_size(self, max_len: int, num_heads: int | None = None) -> int:
        """Features per token (per sentence for pooled inputs); ``num_heads`` (the
        encoder's) is needed only to count the maps of ``stack`` over all heads."""
        if self.reducer == "stack" and self.heads is None and num_heads is None:
            raise ValueError("input_size of stack over all heads needs num_heads")
        size = max_len if self.view == "rows" else VIEW_SIZES[self.view]
        if self.reducer == "stack":
            return size * len(self.maps(num_heads))
        return size * (len(self.layers) if self.reducer == "concat" else 1)

    def to_dict(self) -> dict:
        heads = self.heads
        if is_pairs(heads):
            heads = [map_name(*p) for p in heads]
        return {
            "layers": list(self.layers),
            "heads": None if heads is None else list(heads),
            "reducer": self.reducer,
            "view": self.view,
        }

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpec:
        heads = d.get("heads")
        if heads is not None and heads and isinstance(heads[0], str):
            heads = tuple(parse_map_name(h) for h in heads)
        elif heads is not None:
            heads = tuple(heads)
        return cls(tuple(d["layers"]), heads, d["reducer"], d.get("view", "rows"))

    @property
    def layers_param(self) -> str:
        """The MLflow param value: ``3,4,5``."""
        return ",".join(map(str, self.layers))

    @property
    def heads_param(self) -> str:
        """The MLflow param value: ``all``, ``0,7`` or ``L5H6,L1H10``."""
        if self.heads is None:
            return "all"
        if is_pairs(self.heads):
            return ",".join(map_name(*p) for p in self.heads)
        return ",".join(map(str, self.heads))


def _layers_of(maps: tuple[Map, ...]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(layer for layer, _ in maps))


def parse_heads(value: str | int | list | None) -> Heads:
    """Accept the spellings a study file or a user uses: ``all``, ``3``, ``[0, 7]``,
    ``0,7``, and explicit maps ``L5H6,L1H10``, ``[L5H6, L1H10]`` or ``[(5, 6), (1, 10)]``."""
    if value is None or value == "all":
        return None
    if isinstance(value, int):
        return (value,)
    parts = value.split(",") if isinstance(value, str) else list(value)
    if parts and all(isinstance(v, tuple | list) and len(v) == 2 for v in parts):
        return tuple((int(layer), int(head)) for layer, head in parts)
    named = [parse_map_name(v) for v in parts if isinstance(v, str)]
    if named and all(named) and len(named) == len(parts):
        return tuple(named)
    try:
        return tuple(int(v) for v in parts)
    except (TypeError, ValueError):
        raise HarnessError(
            f"features: heads {value!r} is neither 'all', head indices (0,7) nor map names "
            "(L5H6,L1H10)"
        ) from None


def _positions(per_layer: list, heads: Heads | list[Map]) -> list[Map]:
    """(position in ``per_layer``, head) of every chosen map: ``heads`` is ``None`` (all),
    head indices shared by every layer, or (position, head) pairs."""
    if heads is not None and heads and isinstance(heads[0], tuple):
        return list(heads)
    chosen = range(per_layer[0].shape[1]) if heads is None else heads
    return [(i, h) for i in range(len(per_layer)) for h in chosen]


def reduce_maps(
    per_layer: list[np.ndarray], heads: Heads | list[Map], reducer: str, max_len: int
) -> np.ndarray:
    """Combine maps of ``k`` sentences of one length ``n`` (the ``rows`` view).

    ``per_layer`` holds one ``[k, H, n, n]`` array (fp16 or fp32) per chosen layer;
    ``heads`` is ``None`` (all), head indices shared by every layer, or explicit
    (position in ``per_layer``, head) pairs. Returns ``[k, n, F]`` float32 where ``F`` is
    ``n`` (``max_len * layers`` for concat, ``max_len * maps`` for stack).

    The arithmetic runs in torch, one map at a time, accumulating in float32: numpy
    reduces float16 through a slow scalar path (its head-max is ~20× slower), and adding
    heads into one float32 buffer needs no float32 copy of the whole block. Only the chosen
    maps are touched, so a 1-head trial costs 1/H of an all-heads one.
    """
    maps = [torch.from_numpy(a) for a in per_layer]
    pairs = _positions(per_layer, heads)
    k, _, n, _ = maps[0].shape
    if reducer == "stack":
        out = torch.zeros((k, n, max_len * len(pairs)), dtype=torch.float32)
        for j, (i, h) in enumerate(pairs):
            out[:, :, j * max_len : j * max_len + n] = maps[i][:, h]
        return out.numpy()
    if reducer == "max":
        out = maps[pairs[0][0]][:, pairs[0][1]].clone()
        for i, h in pairs[1:]:
            torch.maximum(out, maps[i][:, h], out=out)
        return out.float().numpy()
    sums = {}
    for i, h in pairs:
        sums.setdefault(i, torch.zeros((k, n, n), dtype=torch.float32)).add_(maps[i][:, h])
    if reducer == "concat":
        counts = {i: sum(1 for j, _ in pairs if j == i) for i in sums}
        out = torch.zeros((k, n, max_len * len(sums)), dtype=torch.float32)
        for slot, (i, total) in enumerate(sums.items()):
            out[:, :, slot * max_len : slot * max_len + n] = total / counts[i]
        return out.numpy()
    totals = list(sums.values())
    out = totals[0]
    for total in totals[1:]:
        out += total
    if reducer == "mean":
        out /= len(pairs)
    return out.numpy()
