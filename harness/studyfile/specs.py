"""What a trial is made of: the ``FeatureSpec`` (which maps, which view, which reducer) and
the ``ClassifierSpec`` (which kind, which hyperparameters), with the names they are spelled in.

Plain data, no torch: a study file is checked before any heavy import.

A ``FeatureSpec`` names the maps (layers × a head selection shared by every layer, or an
explicit list of (layer, head) pairs such as L5H6 + L1H10), the view (``rows``: token i's
attention over absolute positions; ``stats`` / ``relative``: position-free statistics per
token, see ``harness.attention.views``) and the reducer (sum / mean / max combine the maps into one,
``concat`` averages heads per layer and lays layers side by side, ``stack`` keeps every
map as its own channels).

The classifier kinds share one table for the study-file checks (``harness.studyfile.space``),
the sampler (``harness.study.search``) and the models themselves, so the three cannot drift
apart.

* Sequence readers (``gru``, ``lstm``, ``transformer``) read a sentence's features token
  by token (``harness.models.reader``).
* Probes (``linear``, ``mlp``) read each sentence's mean over its tokens, as probing
  papers do (``harness.models.probe``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

from harness.core import HarnessError

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


READERS = ("gru", "lstm", "transformer")
PROBES = ("linear", "mlp")
KINDS = READERS + PROBES
POOLINGS = ("last", "mean", "attention")
#: hyperparameters a study may search, with the type each must have
HPARAMS: dict[str, type] = {
    "hidden_size": int,
    "num_layers": int,
    "dropout": float,
    "bidirectional": bool,
    "pooling": str,
    "num_heads": int,
    "ff_size": int,
    "c": float,
}
#: which kinds read each hyperparameter (elsewhere it would be a dead search axis)
READ_BY: dict[str, tuple[str, ...]] = {
    "hidden_size": (*READERS, "mlp"),
    "num_layers": READERS,
    "dropout": (*READERS, "mlp"),
    "bidirectional": ("gru", "lstm"),
    "pooling": READERS,
    "num_heads": ("transformer",),
    "ff_size": ("transformer",),
    "c": ("linear",),
}


def divisible(hidden_size: int, num_heads: int) -> bool:
    """A transformer splits ``hidden_size`` evenly among its heads."""
    return hidden_size % num_heads == 0


class _Spec:
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        """Rejects unknown keys, so a typo in a config is an error rather than a default."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}")
        return cls(**d)


@dataclass
class ClassifierSpec(_Spec):
    """Architecture of an ``AttentionReader``; plain values so it round-trips through JSON."""

    kind: str = "gru"
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.0
    bidirectional: bool = False  # RNNs only; ignored by the transformer
    pooling: str = "last"  # last valid state / mean over valid steps / additive attention
    num_heads: int = 4  # transformer only; must divide hidden_size
    ff_size: int = 128  # transformer only


@dataclass
class ProbeSpec(_Spec):
    """A probe on sentence-level features: ``linear`` (L2 logistic regression, ``c`` the
    inverse regularisation strength, as scikit-learn's C) or ``mlp`` (one hidden layer)."""

    kind: str = "linear"
    c: float = 1.0  # linear only
    hidden_size: int = 64  # mlp only
    dropout: float = 0.0  # mlp only


def make_spec(kind: str, values: dict) -> ClassifierSpec | ProbeSpec:
    """The spec of ``kind`` with the drawn hyperparameter ``values``."""
    return (ProbeSpec if kind in PROBES else ClassifierSpec)(kind=kind, **values)


def spec_from_dict(d: dict) -> ClassifierSpec | ProbeSpec:
    """A saved spec, rebuilt by its kind."""
    return (ProbeSpec if d.get("kind") in PROBES else ClassifierSpec).from_dict(d)
