"""Study-file errors that cite the file, the line and the key, with the fix.

A study file is data (YAML read with ``safe_load``) validated by a pydantic schema
(``harness.studyfile.schema``). This module turns every way that can go wrong (YAML syntax, a key
written twice, an unknown or missing key, a wrong value) into one line naming the file,
the line and the key as the user wrote it, with the nearest valid key when there is one.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from harness.core import HarnessError

EXAMPLE_STUDY = "studies/smoke.yaml"
M = TypeVar("M", bound=BaseModel)


class StudyKeyError(HarnessError):
    """A problem at one key (``loc``) of a study; ``parse`` adds the file and line."""

    def __init__(self, loc: tuple[str | int, ...], problem: str):
        self.loc = loc
        super().__init__(f"key '{dotted(loc)}': {problem}")


def dotted(loc: Iterable[str | int]) -> str:
    """``("search", "layers", 1)`` -> ``search.layers[1]``: the key as the user wrote it."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def did_you_mean(word: Any, options: Iterable[Any]) -> str:
    """`` (did you mean 'max'?)`` when one option is close to ``word``, else nothing."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """Line (1-based) of the key path ``loc`` in the composed YAML, as deep as it goes."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((kv for kv in node.value if kv[0].value == str(part)), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def place(where: str, root: yaml.Node | None, loc: tuple) -> str:
    """``file:line`` of key ``loc``, or just ``file`` when the key is not in the file."""
    line = line_of(root, loc)
    return f"{where}:{line}" if line else where


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model in a field's type: ``M``, ``M | None`` or ``list[M]``."""
    if typing.get_origin(annotation) is None:
        is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        return annotation if is_model else None
    return next(filter(None, map(_model_in, typing.get_args(annotation))), None)


def _model_for(root_model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that holds the key at ``loc`` (for 'did you mean'); list
    indices (``encoder.conditions[1]``) step into the list's model."""
    model = root_model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        model = _model_in(field.annotation) if field is not None else None
        if model is None:
            return None
    return model


def explain(err: dict, root_model: type[BaseModel]) -> StudyKeyError:
    """Turn pydantic's first error into a message that says how to fix it."""
    loc = tuple(err["loc"])
    model = _model_for(root_model, loc)
    field = model.model_fields.get(str(loc[-1])) if model and loc else None
    if err["type"] == "extra_forbidden":
        options = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), options, n=1, cutoff=0.5)
        hint = (
            f"did you mean '{dotted((*loc[:-1], close[0]))}'?"
            if close
            else f"valid keys here: {', '.join(options)}"
        )
        return StudyKeyError(loc, f"unknown key; {hint}")
    if err["type"] == "missing":
        return StudyKeyError(loc, f"missing; add it (see {EXAMPLE_STUDY} for an example)")
    if err["type"] == "value_error":
        return StudyKeyError(loc, str(err["ctx"]["error"]))
    if err["type"] in ("model_type", "dict_type"):
        return StudyKeyError(
            loc,
            f"must be a mapping of keys (key: value), got {err['input']!r}; see {EXAMPLE_STUDY}",
        )
    problem = err["msg"].replace("Input should be", "must be") + f" (got {err['input']!r})"
    if field is not None and field.default is None:
        problem += "; remove the key to leave it unset"
    elif field is not None and field.default is not PydanticUndefined:
        default = field.default
        problem += f"; the default is {default if isinstance(default, str) else repr(default)}"
    return StudyKeyError(loc, problem)


def _misspelt_required(errors: list[dict]) -> StudyKeyError | None:
    """A required key that is missing because it was misspelt (``serach:``): name the key
    the user wrote, which "key 'search': missing" alone would never mention."""
    for missing in (e for e in errors if e["type"] == "missing"):
        want = tuple(missing["loc"])
        for extra in (e for e in errors if e["type"] == "extra_forbidden"):
            got = tuple(extra["loc"])
            if got[:-1] == want[:-1] and did_you_mean(got[-1], [want[-1]]):
                return StudyKeyError(
                    got,
                    f"unknown key; did you mean '{dotted(want)}'? (a required key, and missing)",
                )
    return None


def _compose(text: str, where: str) -> tuple[yaml.Node | None, Any]:
    """Parse once, keeping the node tree (for line numbers) and the plain data."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        return root, (loader.construct_document(root) if root is not None else None)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start and mark and start.line != mark.line:
            problem += f" ({context} that starts at line {start.line + 1})"
        raise HarnessError(
            f"{where}{line}: YAML syntax error: {problem}; check indentation, brackets and quotes"
        ) from None
    finally:
        loader.dispose()


def _check_duplicates(node: yaml.Node | None, where: str, loc: tuple = ()) -> None:
    """PyYAML keeps the last of two equal keys silently; a second ``search:`` block would
    replace the first without a word."""
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            line = key.start_mark.line + 1
            if key.value in first:
                raise HarnessError(
                    f"{where}:{line}: key '{dotted((*loc, key.value))}' appears twice (first at "
                    f"line {first[key.value]}); keep one"
                )
            first[key.value] = line
            _check_duplicates(value, where, (*loc, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, where, (*loc, i))


def parse(text: str, where: str, model: type[M]) -> tuple[M, yaml.Node | None]:
    """Validate YAML ``text`` against ``model``; return it and the node tree (for lines).
    Raises ``HarnessError`` naming file, line and key."""
    root, raw = _compose(text, where)
    if raw is None:
        raise HarnessError(
            f"{where}: the study file is empty; it needs at least name and search "
            f"(see {EXAMPLE_STUDY})"
        )
    if not isinstance(raw, dict):
        raise HarnessError(
            f"{where}: a study file is a YAML mapping of keys (name, search, …), not a "
            f"{type(raw).__name__}; see {EXAMPLE_STUDY}"
        )
    _check_duplicates(root, where)
    try:
        return model.model_validate(raw), root
    except StudyKeyError as exc:
        raise HarnessError(f"{place(where, root, exc.loc)}: {exc}") from None
    except ValidationError as exc:
        errors = exc.errors()
        problem = _misspelt_required(errors) or explain(errors[0], model)
        raise HarnessError(f"{place(where, root, problem.loc)}: {problem}") from None


def read_text(path: Path) -> str:
    """A study file's text; every way reading it fails says what to do."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HarnessError(
            f"study file {path} not found; check the path (examples are in studies/)"
        ) from None
    except IsADirectoryError:
        raise HarnessError(f"study file {path} is a directory; pass a .yaml file") from None
    except UnicodeDecodeError as exc:
        raise HarnessError(
            f"study file {path} is not UTF-8 text (bad byte at offset {exc.start}); "
            "re-save it as UTF-8"
        ) from None
    except OSError as exc:
        raise HarnessError(
            f"cannot read study file {path}: {exc.strerror or exc}; check its permissions"
        ) from None
