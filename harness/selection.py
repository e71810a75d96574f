"""Which maps a trial reads: the ``layers`` and ``heads`` spellings of the ``search:`` section,
checked and normalised once (layer subsets as tuples, head selections as tuples of
indices or (layer, head) maps, ``None`` for all heads, ``Top(k)`` for the sweep's k best).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.features import Heads, map_name, parse_map_name
from harness.studyfile import StudyKeyError, did_you_mean


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
