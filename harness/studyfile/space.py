"""The ``search:`` section of a study file: its spellings, checked and normalised once.

A search dimension is written as one of:

* a fixed value: ``reducer: sum``, ``hidden_size: 64``, ``layers: [3, 4, 5]``;
* a list of choices: ``reducer: [sum, mean]``, ``layers: [[3, 4, 5], [5]]``,
  ``heads: [all, [0, 7]]``;
* a range: ``lr: {low: 1.0e-4, high: 1.0e-2, log: true}`` (``step`` for ints).

A head selection is ``all``, head indices shared by every chosen layer (``[0, 7]``),
explicit maps (``[L5H6, L1H10]`` or per layer ``{5: [6], 1: [10]}``), or the k best maps
of the head sweep by validation AUC (``{top: 8}``; ``{top: [1, 4, all]}`` is a choice).
The view is one name, a list of names (each read with ``reducer``), or a mapping from
view to its own reducers: ``view: {rows: {reducer: [sum, max]}, stats: {reducer: stack}}``.

Parsing leaves each value in the form the code uses: ``layers`` a tuple of layer subsets
to choose among, ``heads`` a tuple of head selections (``None`` = all heads, ``Top(k)``),
``view`` a mapping from each view to its reducer dimension. Which hyperparameters exist,
which kinds read them and which combinations fail comes from the models' own table
(``harness.studyfile.specs``), so the two cannot drift apart.
The layer and head spellings are parsed in ``harness.studyfile.selection``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from harness.studyfile.parse import StudyKeyError, did_you_mean
from harness.studyfile.specs import (
    HPARAMS,
    KINDS,
    POOLINGS,
    READ_BY,
    REDUCERS,
    VIEWS,
    ClassifierSpec,
    Heads,
    divisible,
    is_pairs,
    map_name,
    parse_map_name,
)

_TYPES: dict[str, type] = {**HPARAMS, "lr": float, "reducer": str, "view": str}
_OPTIONS: dict[str, tuple[str, ...]] = {"reducer": REDUCERS, "pooling": POOLINGS, "view": VIEWS}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(Strict):
    """A numeric search range; ``search.suggest`` draws ints with ``suggest_int`` and floats
    with ``suggest_float``."""

    low: float
    high: float
    log: bool = False
    step: float | None = None


Scalar = int | float | str | bool
#: fixed value, list of choices, or a range
Dim = Range | list[Scalar] | Scalar


class SearchConfig(Strict):
    """The search space; ``_check`` normalises the raw YAML first so that every mistake
    gets a message naming the exact key instead of pydantic's union-member errors."""

    #: layer subsets to choose among (one for a fixed subset)
    layers: tuple[tuple[int, ...], ...]
    #: head selections to choose among; ``None`` is all heads
    heads: tuple[Any, ...] = (None,)
    #: the reducer dimension of views named without their own (``view: stats``)
    reducer: str | list[str] = "sum"
    #: view -> its reducer dimension; the view itself is chosen among the keys
    view: dict[str, str | list[str]] = {"rows": "sum"}
    lr: Range | float | list[float] = 1.0e-3
    #: classifier kind -> its hyperparameters (each a Dim); the kind itself is chosen
    #: among the keys
    classifier: dict[str, dict[str, Dim]]

    def rows_layers(self) -> tuple[int, ...]:
        """The layers whose full maps a ``rows`` view of this space can read (none when
        ``rows`` is not among the views): what a compact cache keeps of the maps."""
        if "rows" not in self.view:
            return ()
        layers = {layer for subset in self.layers for layer in subset}
        for heads in self.heads:
            if isinstance(heads, tuple) and is_pairs(heads):
                layers |= {layer for layer, _ in heads}
        return tuple(sorted(layers))

    @model_validator(mode="before")
    @classmethod
    def _check(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw  # pydantic reports "must be a mapping"
        search = dict(raw)
        if "layers" in search:
            search["layers"] = check_layers(search["layers"])
        if "heads" in search:
            search["heads"] = check_heads(search["heads"])
        for name in ("reducer", "lr"):
            if name in search:
                search[name] = _check_dim(name, search[name], ("search", name))
        search["view"] = _check_view(search.get("view", "rows"), search)
        if "classifier" in search:
            search["classifier"] = _check_classifiers(search["classifier"])
        return search


def _check_view(value: Any, search: dict) -> dict[str, Any]:
    """``view: stats`` / ``[rows, stats]`` (each read with ``reducer``), or a mapping from
    each view to its own reducers. ``concat`` reads absolute positions: rows only."""
    loc = ("search", "view")
    if isinstance(value, dict):
        if "reducer" in search and any(isinstance(v, dict) for v in value.values()):
            raise StudyKeyError(
                ("search", "reducer"),
                "with a reducer under each view, remove this top-level reducer",
            )
        views = {}
        for view, settings in value.items():
            _check_dim("view", view, (*loc, view))
            if settings is None or isinstance(settings, dict):
                settings = settings or {}
                if set(settings) - {"reducer"}:
                    raise StudyKeyError(
                        (*loc, view),
                        f"a view takes only its reducer, e.g. {view}: {{reducer: [stack, sum]}}",
                    )
                default = "sum" if view == "rows" else "stack"
                settings = settings.get("reducer", default)
            views[view] = _check_dim("reducer", settings, (*loc, view, "reducer"))
    else:
        names = _check_dim("view", value, loc)
        dim = search.get("reducer", "sum")
        views = {view: dim for view in (names if isinstance(names, list) else [names])}
    for view, dim in views.items():
        if view != "rows" and "concat" in (dim if isinstance(dim, list) else [dim]):
            raise StudyKeyError(
                (*loc, view) if isinstance(value, dict) else ("search", "reducer"),
                f"concat lays absolute positions side by side: it applies to the rows view "
                f"only; use stack with the {view} view",
            )
    return views


def _check_value(name: str, value: Any) -> Any:
    """One candidate value of dimension ``name`` as its type; ``ValueError`` says what is
    expected."""
    kind = _TYPES[name]
    if kind is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 (no dot) as text; accept what the user clearly meant
            value = float(value)
        except ValueError:
            pass
    if kind is float and not (_is_number(value) and math.isfinite(value)):
        raise ValueError(f"{value!r} is not a finite number")
    if kind is int and not is_int(value):
        raise ValueError(f"{value!r} is not a whole number")
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    if kind is str and value not in _OPTIONS[name]:
        raise ValueError(
            f"unknown {name} {value!r}{did_you_mean(value, _OPTIONS[name])}; "
            f"choose among {', '.join(_OPTIONS[name])}"
        )
    if name == "dropout" and not 0 <= value < 1:
        raise ValueError(f"dropout must be in [0, 1), got {value!r}")
    if name != "dropout" and kind in (int, float) and value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return float(value) if kind is float else value


def _check_dim(name: str, value: Any, loc: tuple) -> Any:
    """A fixed value, a list of choices or (numbers only) a range ``{low, high, log, step}``."""
    if value is None:
        raise StudyKeyError(loc, "has no value; give a value or a list of choices, or remove it")
    if isinstance(value, dict):
        if _TYPES[name] not in (int, float):
            raise StudyKeyError(loc, f"{name} takes a value or a list of choices, not a range")
        return _check_range(name, value, loc)
    if isinstance(value, list) and not value:
        raise StudyKeyError(loc, f"empty list of choices; give at least one {name}")
    out = []
    for i, item in enumerate(value if isinstance(value, list) else [value]):
        try:
            out.append(_check_value(name, item))
        except ValueError as exc:
            raise StudyKeyError((*loc, i) if isinstance(value, list) else loc, str(exc)) from None
    if not isinstance(value, list):
        return out[0]
    no_repeats(out, loc)
    return out


def _check_range(name: str, value: dict, loc: tuple) -> dict:
    for key in value:
        if key not in Range.model_fields:
            raise StudyKeyError(
                (*loc, key),
                f"unknown range key{did_you_mean(key, Range.model_fields)}; a range has low and "
                "high, optionally log and step",
            )
    if "low" not in value or "high" not in value:
        raise StudyKeyError(loc, "a range needs low and high, e.g. {low: 1, high: 10}")
    bounds = {}
    for key in ("low", "high"):
        try:
            bounds[key] = _check_value(name, value[key])
        except ValueError as exc:
            raise StudyKeyError((*loc, key), str(exc)) from None
    if bounds["high"] < bounds["low"]:
        raise StudyKeyError(
            (*loc, "high"), f"high {bounds['high']!r} is below low {bounds['low']!r}; swap them"
        )
    log, step = value.get("log", False), value.get("step")
    if not isinstance(log, bool):
        raise StudyKeyError((*loc, "log"), f"{log!r} is not true or false")
    if log and bounds["low"] <= 0:
        raise StudyKeyError((*loc, "low"), "a log-scale range needs low > 0")
    if step is not None:
        whole = _TYPES[name] is int
        if not (is_int(step) if whole else _is_number(step)) or step <= 0:
            kind = "whole number" if whole else "number"
            raise StudyKeyError((*loc, "step"), f"step must be a positive {kind}, got {step!r}")
        if log:
            raise StudyKeyError(
                (*loc, "step"), "a log-scale range cannot have a step; remove step or log"
            )
    return {**bounds, "log": log, "step": step}


def _check_classifiers(value: Any) -> Any:
    loc = ("search", "classifier")
    if not isinstance(value, dict):
        return value  # pydantic reports "must be a mapping"
    if not value:
        raise StudyKeyError(loc, f"no classifier kind; give one or more of {', '.join(KINDS)}")
    out = {}
    for kind, hparams in value.items():
        if kind not in KINDS:
            raise StudyKeyError(
                (*loc, kind),
                f"unknown classifier kind{did_you_mean(kind, KINDS)}; "
                f"choose among {', '.join(KINDS)}",
            )
        hparams = {} if hparams is None else hparams
        if not isinstance(hparams, dict):
            raise StudyKeyError(
                (*loc, kind),
                f"{hparams!r} is not a mapping of hyperparameters; write e.g. "
                f"{kind}: {{hidden_size: 64}} or leave it empty for the defaults",
            )
        checked = {}
        for name, dim in hparams.items():
            where = (*loc, kind, name)
            if name not in HPARAMS:
                raise StudyKeyError(
                    where,
                    f"unknown hyperparameter{did_you_mean(name, HPARAMS)}; "
                    f"valid: {', '.join(HPARAMS)}",
                )
            if kind not in READ_BY.get(name, KINDS):
                raise StudyKeyError(
                    where, f"{name} applies to {', '.join(READ_BY[name])} only; remove it here"
                )
            checked[name] = _check_dim(name, dim, where)
        if kind == "transformer":
            _check_divisible(checked, (*loc, kind))
        out[kind] = checked
    return out


def _check_divisible(hparams: dict, loc: tuple) -> None:
    """Every hidden_size the search can draw must be divisible by every num_heads, or the
    trials that draw such a pair fail."""
    defaults = ClassifierSpec()
    sizes = hparams.get("hidden_size", defaults.hidden_size)
    heads = hparams.get("num_heads", defaults.num_heads)
    if isinstance(heads, dict):
        head_values: Iterable[int] = range(heads["low"], heads["high"] + 1, heads["step"] or 1)
    else:
        head_values = heads if isinstance(heads, list) else [heads]
    for n in head_values:
        if isinstance(sizes, dict):
            low, step = sizes["low"], sizes["step"] or 1
            bad = [h for h in (low, low + step) if h <= sizes["high"] and not divisible(h, n)]
        else:
            bad = [
                h for h in (sizes if isinstance(sizes, list) else [sizes]) if not divisible(h, n)
            ]
        if bad:
            key = "hidden_size" if "hidden_size" in hparams else "num_heads"
            raise StudyKeyError(
                (*loc, key) if key in hparams else loc,
                f"hidden_size {bad[0]} is not divisible by num_heads {n}, so those trials would "
                "fail; make every hidden_size a multiple of every num_heads "
                "(e.g. hidden_size: 64, num_heads: 4)",
            )


@dataclass(frozen=True)
class Top:
    """The ``k`` best maps of the chosen layers by the head sweep's validation AUC."""

    k: int


HeadChoice = Heads | Top


def head_choice_name(choice: HeadChoice) -> str:
    """How a head choice is drawn (an Optuna categorical) and logged: ``all``, ``0,7``,
    ``L5H6,L1H10``, ``top8``."""
    if choice is None:
        return "all"
    if isinstance(choice, Top):
        return f"top{choice.k}"
    if isinstance(choice[0], tuple):
        return ",".join(map_name(*p) for p in choice)
    return ",".join(map(str, choice))


def is_int(value: Any) -> bool:
    """A whole number that is not a bool (``true`` is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_indices(values: Any, loc: tuple, what: str) -> None:
    """A non-empty list of distinct non-negative indices (ranges per encoder come later)."""
    if not isinstance(values, list) or not values:
        raise StudyKeyError(loc, f"empty {what} list; give {what} indices such as [0, 1]")
    for value in values:
        if not is_int(value) or value < 0:
            hint = did_you_mean(value, ["all"]) if what == "head" else ""
            raise StudyKeyError(loc, f"{value!r} is not a {what} index (0, 1, 2, …){hint}")
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:
        raise StudyKeyError(loc, f"{what} {twice} is listed twice; list each {what} once")


def no_repeats(options: list, loc: tuple) -> None:
    """A choice offered twice skews the sampler towards it without the user meaning to."""
    seen = [repr(o) for o in options]
    twice = next((o for i, o in enumerate(seen) if o in seen[:i]), None)
    if twice is not None:
        raise StudyKeyError(loc, f"the choice {twice} is listed twice; list each choice once")


def plain(value: Any) -> Any:
    """Parsed values back in their YAML spelling (tuples as lists, ``None`` as ``all``), so
    a config built from a parsed one is checked the same way."""
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return "all" if value is None else value


def check_layers(value: Any) -> tuple[tuple[int, ...], ...]:
    """``[3, 4, 5]`` is one fixed subset; ``[[3, 4, 5], [5]]`` is a choice among subsets."""
    loc = ("search", "layers")
    value = plain(value)
    if is_int(value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise StudyKeyError(
            loc,
            f"got {value!r}; give layer indices: [3, 4, 5] for one subset or [[3, 4, 5], [5]] "
            "to choose among subsets",
        )
    nested = [isinstance(x, list) for x in value]
    if all(nested):
        for i, subset in enumerate(value):
            _check_indices(subset, (*loc, i), "layer")
        no_repeats(value, loc)
        return tuple(tuple(subset) for subset in value)
    if any(nested):
        raise StudyKeyError(
            loc,
            f"{value!r} mixes indices and lists; write [[3], [4, 5]] to choose among subsets "
            "or [3, 4, 5] for one subset",
        )
    _check_indices(value, loc, "layer")
    return (tuple(value),)


def check_heads(value: Any) -> tuple[HeadChoice, ...]:
    """``all`` / ``3`` / ``[0, 7]`` / ``[L5H6, L1H10]`` / ``{5: [6]}`` / ``{top: 8}`` are
    one selection; ``[all, [0, 7], {top: 8}]`` and ``{top: [1, 4, all]}`` are choices."""
    loc = ("search", "heads")
    value = plain(value)
    if isinstance(value, dict) and set(value) == {"top"} and isinstance(value["top"], list):
        value = [{"top": k} for k in value["top"]]
    if isinstance(value, list) and any(_is_one_selection(x) for x in value):
        choices = tuple(_check_selection(v, (*loc, i)) for i, v in enumerate(value))
        no_repeats([head_choice_name(c) for c in choices], loc)
        return choices
    return (_check_selection(value, loc),)


def _is_one_selection(value: Any) -> bool:
    """A list item that is a whole selection (so the list is a list of choices)."""
    return isinstance(value, list | dict) or value == "all"


def _check_selection(value: Any, loc: tuple) -> HeadChoice:
    if value == "all" or value == {"top": "all"}:
        return None
    if isinstance(value, dict):
        return _check_mapping_selection(value, loc)
    items = value if isinstance(value, list) else [value]
    names = [parse_map_name(v) for v in items if isinstance(v, str)]
    if items and len(names) == len(items) and all(names):
        no_repeats(names, loc)
        return tuple(names)
    if not isinstance(value, list) and not is_int(value):
        raise StudyKeyError(
            loc,
            f"{value!r} is not 'all', a head index, map names or a list of head indices"
            f"{did_you_mean(value, ['all'])}; e.g. heads: all, heads: [0, 7], "
            "heads: [L5H6, L1H10] or heads: {top: 8}",
        )
    _check_indices(items, loc, "head")
    return tuple(items)


def _check_mapping_selection(value: dict, loc: tuple) -> HeadChoice:
    """``{top: k}`` or per layer ``{5: [6], 1: [10]}`` (explicit maps)."""
    if "top" in value:
        k = value["top"]
        if len(value) != 1 or not is_int(k) or k < 1:
            raise StudyKeyError(
                (*loc, "top"), f"top takes a number of maps >= 1 or 'all', got {k!r}"
            )
        return Top(k)
    pairs = []
    for layer, heads in value.items():
        if not is_int(layer) or layer < 0:
            raise StudyKeyError(
                loc,
                f"{value!r} is not 'all', head indices, map names or per-layer heads "
                f"({layer!r} is not a layer index); e.g. heads: {{5: [6], 1: [10]}} or "
                "heads: {top: 8}",
            )
        heads = heads if isinstance(heads, list) else [heads]
        _check_indices(heads, (*loc, layer), "head")
        pairs += [(layer, h) for h in heads]
    if not pairs:
        raise StudyKeyError(loc, "empty head selection; give {layer: [heads]} or {top: k}")
    return tuple(pairs)
