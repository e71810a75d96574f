"""The study file: schema, validation and clear errors.

A study file is data (YAML read with ``safe_load``), validated completely before any
study, run or cache entry is created, because a mistake found three hours into a study
costs three hours. Every error is one line naming the file, the line and the key, with
the nearest valid key or value when there is one. ``check_encoder`` adds the checks that
need the chosen encoder (layer and head indices, ``max_len``).

A search dimension is written as one of:

* a fixed value: ``reducer: sum``, ``hidden_size: 64``, ``layers: [3, 4, 5]``;
* a list of choices: ``reducer: [sum, mean]``, ``layers: [[3, 4, 5], [5]]``,
  ``heads: [all, [0, 7]]``;
* a range: ``lr: {low: 1.0e-4, high: 1.0e-2, log: true}`` (``step`` for ints).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticUndefined

from harness.classifiers import KINDS, POOLINGS, ClassifierSpec
from harness.errors import HarnessError
from harness.features import REDUCERS

if TYPE_CHECKING:
    from harness.encoder import Encoder

#: a study name becomes an MLflow experiment and folder names, so it stays path-safe
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
#: tracking stores MLflow can open (SQLAlchemy dialects take a ``+driver`` suffix)
_TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
EXAMPLE_STUDY = "studies/smoke.yaml"


class StudyKeyError(HarnessError):
    """A problem at one key (``loc``) of a study; ``parse_study`` adds the file and line."""

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


def _suggest(word: Any, options: Iterable[Any]) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_url(url: str, what: str, examples: str) -> None:
    if not _URL_SCHEME.match(url):
        raise ValueError(f"{what} {url!r} is not a URL; use {examples}")
    if url.startswith("sqlite:") and (not url.startswith("sqlite:///") or url == "sqlite:///"):
        raise ValueError(
            f"{what} {url!r}: an SQLite URL is sqlite:/// followed by a file path, e.g. "
            "sqlite:///mlruns/x.db (relative) or sqlite:////abs/path/x.db"
        )


def validate_storage_url(url: str) -> str:
    """An Optuna storage URL the harness can open; raises ``ValueError`` saying what to write.

    Checked before any work so that a typo does not surface after the attention cache
    is built."""
    examples = (
        "sqlite:///mlruns/optuna.db, journal:///mlruns/optuna.log or postgresql://user@host/db"
    )
    if url.startswith("journal:"):
        if not url.removeprefix("journal:").strip("/"):
            raise ValueError(
                f"storage {url!r} names no file; use e.g. journal:///mlruns/optuna.log"
            )
        return url
    _check_url(url, "storage", examples)
    return url


def validate_tracking_uri(uri: str) -> str:
    """An MLflow tracking URI the harness can open; raises ``ValueError`` saying what to write.

    A plain path would select MLflow's file store, which MLflow >= 3.7 refuses, and only
    after the attention cache was built."""
    examples = "sqlite:///mlruns/mlflow.db or http://host:5000"
    if uri == "databricks":
        return uri
    _check_url(uri, "tracking URI", examples)
    scheme = _URL_SCHEME.match(uri).group(1).split("+")[0].lower()
    if scheme == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        raise ValueError(
            f"tracking URI {uri!r} selects MLflow's file store, which MLflow no longer accepts; "
            f"use {examples}"
        )
    if scheme != "file" and scheme not in _TRACKING_SCHEMES:
        raise ValueError(
            f"tracking URI {uri!r} has an unknown scheme {scheme!r}; use {examples} "
            f"(schemes: {', '.join(_TRACKING_SCHEMES)})"
        )
    return uri


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(_Strict):
    """A numeric search range; ``study.py`` draws ints with ``suggest_int`` and floats
    with ``suggest_float``."""

    low: float
    high: float
    log: bool = False
    step: float | None = None


Scalar = int | float | str | bool
#: fixed value, list of choices, or a range
Dim = Range | list[Scalar] | Scalar


class DataConfig(_Strict):
    dataset: str = Field(default="babe", min_length=1)
    text_column: str | None = None
    label_column: str | None = None
    positive_label: str | None = None
    group_column: str | None = None
    delimiter: str | None = None
    max_rows: int | None = Field(default=None, ge=2)

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, value: str | None) -> str | None:
        if value is not None and len(value) != 1:
            tab = ' (for a tab write delimiter: "\\t" in double quotes)' if value == "\\t" else ""
            raise ValueError(f"a delimiter is one character such as ',' or ';', got {value!r}{tab}")
        return value


class SplitConfig(_Strict):
    val: float = Field(default=0.15, gt=0, lt=1)
    test: float = Field(default=0.15, gt=0, lt=1)
    seed: int = 0
    group_by: bool = True

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitConfig:
        if self.val + self.test >= 1:
            raise ValueError(
                f"val + test = {self.val + self.test:g} leaves no training rows; keep their sum "
                "below 1, e.g. val: 0.15, test: 0.15"
            )
        return self


class EncoderConfig(_Strict):
    name: str = Field(default="minilm", min_length=1)
    max_len: int = Field(default=80, ge=2, le=512)
    batch_size: int = Field(default=64, ge=1)


class TrainConfig(_Strict):
    epochs: int = Field(default=10, gt=0)
    patience: int = Field(default=3, gt=0)
    batch_size: int = Field(default=64, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    bucketing: bool = True
    seed: int = 0


class BootstrapConfig(_Strict):
    n_resamples: int = Field(default=1000, gt=0)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    seed: int = 0


class SamplerConfig(_Strict):
    name: Literal["tpe", "random"] = "tpe"
    seed: int = 0
    n_startup_trials: int = Field(default=5, ge=0)


#: pruner name -> the settings it reads; steps and resources are epochs
PRUNER_SETTINGS: dict[str, tuple[str, ...]] = {
    "median": ("n_startup_trials", "n_warmup_steps"),
    "percentile": ("percentile", "n_startup_trials", "n_warmup_steps"),
    "successive_halving": ("min_resource", "reduction_factor"),
    "hyperband": ("min_resource", "reduction_factor"),
    "none": (),
}


class PrunerConfig(_Strict):
    """Optuna's pruners by name, with the settings each reads (a setting the chosen pruner
    would ignore is an error, so a study never silently runs with another pruner's knob)."""

    name: Literal["median", "percentile", "successive_halving", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(default=3, ge=0)
    n_warmup_steps: int = Field(default=1, ge=0)
    #: percentile: a trial is pruned when below this percentile of the others at its epoch
    percentile: float = Field(default=25.0, gt=0, lt=100)
    #: successive_halving / hyperband: epochs before the first cut, and 1/keep per rung
    min_resource: int = Field(default=1, ge=1)
    reduction_factor: int = Field(default=3, ge=2)

    @model_validator(mode="after")
    def _settings_apply(self) -> PrunerConfig:
        # ``none`` keeps the others' settings, so pruning can be switched off by name alone
        reads = PRUNER_SETTINGS[self.name]
        unread = sorted(self.model_fields_set - {"name", *reads})
        if unread and self.name != "none":
            raise ValueError(
                f"the {self.name} pruner does not read {unread[0]} (it takes {', '.join(reads)})"
            )
        return self


#: classifier hyperparameters a study may set, with the type each must have
HPARAMS: dict[str, type] = {
    "hidden_size": int,
    "num_layers": int,
    "dropout": float,
    "bidirectional": bool,
    "pooling": str,
    "num_heads": int,
    "ff_size": int,
}
#: hyperparameters that only some kinds read; elsewhere they would be a dead search axis
_ONLY_FOR = {
    "bidirectional": ("gru", "lstm"),
    "num_heads": ("transformer",),
    "ff_size": ("transformer",),
}
_TYPES: dict[str, type] = {**HPARAMS, "lr": float, "reducer": str}
_OPTIONS: dict[str, tuple[str, ...]] = {"reducer": REDUCERS, "pooling": POOLINGS}


class SearchConfig(_Strict):
    """The search space; ``_check`` normalises the raw YAML first so that every mistake
    gets a message naming the exact key instead of pydantic's union-member errors."""

    layers: list[int] | list[list[int]]
    heads: str | int | list[int] | list[str | int | list[int]] = "all"
    reducer: str | list[str] = "sum"
    lr: Range | float | list[float] = 1.0e-3
    #: classifier kind -> its hyperparameters (each a Dim); the kind itself is chosen
    #: among the keys
    classifier: dict[str, dict[str, Dim]]

    @model_validator(mode="before")
    @classmethod
    def _check(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw  # pydantic reports "must be a mapping"
        search = dict(raw)
        if "layers" in search:
            search["layers"] = _check_layers(search["layers"])
        if "heads" in search:
            search["heads"] = _check_heads(search["heads"])
        for name in ("reducer", "lr"):
            if name in search:
                search[name] = _check_dim(name, search[name], ("search", name))
        if "classifier" in search:
            search["classifier"] = _check_classifiers(search["classifier"])
        return search


def _check_indices(values: Any, loc: tuple, what: str) -> None:
    """A non-empty list of distinct non-negative indices (ranges per encoder come later)."""
    if not isinstance(values, list) or not values:
        raise StudyKeyError(loc, f"empty {what} list; give {what} indices such as [0, 1]")
    for value in values:
        if not _is_int(value) or value < 0:
            hint = _suggest(value, ["all"]) if what == "head" else ""
            raise StudyKeyError(loc, f"{value!r} is not a {what} index (0, 1, 2, …){hint}")
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:
        raise StudyKeyError(loc, f"{what} {twice} is listed twice; list each {what} once")


def _no_repeats(options: list, loc: tuple) -> None:
    """A choice offered twice skews the sampler towards it without the user meaning to."""
    seen = [repr(o) for o in options]
    twice = next((o for i, o in enumerate(seen) if o in seen[:i]), None)
    if twice is not None:
        raise StudyKeyError(loc, f"the choice {twice} is listed twice; list each choice once")


def _check_layers(value: Any) -> list:
    loc = ("search", "layers")
    if _is_int(value):
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
        _no_repeats(value, loc)
    elif any(nested):
        raise StudyKeyError(
            loc,
            f"{value!r} mixes indices and lists; write [[3], [4, 5]] to choose among subsets "
            "or [3, 4, 5] for one subset",
        )
    else:
        _check_indices(value, loc, "layer")
    return value


def _check_heads(value: Any) -> Any:
    loc = ("search", "heads")
    if value == "all":
        return value
    if _is_int(value):
        _check_indices([value], loc, "head")
    elif isinstance(value, list) and any(isinstance(x, list) or x == "all" for x in value):
        for i, option in enumerate(value):
            if option != "all":
                _check_indices(option if isinstance(option, list) else [option], (*loc, i), "head")
        _no_repeats(value, loc)
    elif isinstance(value, list):
        _check_indices(value, loc, "head")
    else:
        raise StudyKeyError(
            loc,
            f"{value!r} is not 'all', a head index or a list of head indices"
            f"{_suggest(value, ['all'])}; e.g. heads: all, heads: [0, 7] or heads: [all, [0, 7]]",
        )
    return value


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
    if kind is int and not _is_int(value):
        raise ValueError(f"{value!r} is not a whole number")
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    if kind is str and value not in _OPTIONS[name]:
        raise ValueError(
            f"unknown {name} {value!r}{_suggest(value, _OPTIONS[name])}; "
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
    _no_repeats(out, loc)
    return out


def _check_range(name: str, value: dict, loc: tuple) -> dict:
    for key in value:
        if key not in Range.model_fields:
            raise StudyKeyError(
                (*loc, key),
                f"unknown range key{_suggest(key, Range.model_fields)}; a range has low and high, "
                "optionally log and step",
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
        if not (_is_int(step) if whole else _is_number(step)) or step <= 0:
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
                f"unknown classifier kind{_suggest(kind, KINDS)}; choose among {', '.join(KINDS)}",
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
                    f"unknown hyperparameter{_suggest(name, HPARAMS)}; valid: {', '.join(HPARAMS)}",
                )
            if kind not in _ONLY_FOR.get(name, KINDS):
                raise StudyKeyError(
                    where, f"{name} applies to {', '.join(_ONLY_FOR[name])} only; remove it here"
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
            bad = [h for h in (low, low + step) if h <= sizes["high"] and h % n]
        else:
            bad = [h for h in (sizes if isinstance(sizes, list) else [sizes]) if h % n]
        if bad:
            key = "hidden_size" if "hidden_size" in hparams else "num_heads"
            raise StudyKeyError(
                (*loc, key) if key in hparams else loc,
                f"hidden_size {bad[0]} is not divisible by num_heads {n}, so those trials would "
                "fail; make every hidden_size a multiple of every num_heads "
                "(e.g. hidden_size: 64, num_heads: 4)",
            )


class StudyConfig(_Strict):
    name: str
    description: str = ""
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    encoder: EncoderConfig = EncoderConfig()
    train: TrainConfig = TrainConfig()
    bootstrap: BootstrapConfig = BootstrapConfig()
    n_trials: int = Field(default=20, gt=0)
    timeout: float | None = Field(default=None, gt=0)
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    storage: str = "sqlite:///mlruns/optuna.db"
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_location: str = Field(default="mlruns/artifacts", min_length=1)
    cache_dir: str | None = None
    search: SearchConfig

    #: where the config came from and its YAML tree, so later checks can cite lines
    _source: str = PrivateAttr(default="<config>")
    _root: yaml.Node | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _path_safe(cls, name: str) -> str:
        if not NAME_PATTERN.fullmatch(name):
            fixed = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("._-")[:100]
            hint = f" (did you mean {fixed!r}?)" if fixed else ""
            raise ValueError(
                f"{name!r} is not a valid study name{hint}; it names folders and the MLflow "
                "experiment, so use up to 100 letters, digits, '.', '_' or '-', starting with a "
                "letter or digit"
            )
        return name

    @field_validator("storage")
    @classmethod
    def _storage(cls, url: str) -> str:
        return validate_storage_url(url)

    @field_validator("tracking_uri")
    @classmethod
    def _tracking(cls, uri: str) -> str:
        return validate_tracking_uri(uri)

    def located(self, loc: tuple[str | int, ...], problem: str) -> HarnessError:
        """An error at key ``loc`` of this study, citing the file and line it came from."""
        return HarnessError(
            _place(self._source, self._root, loc) + f": key '{dotted(loc)}': {problem}"
        )


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
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


def _place(where: str, root: yaml.Node | None, loc: tuple) -> str:
    line = _line_of(root, loc)
    return f"{where}:{line}" if line else where


def _model_for(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that holds the key at ``loc`` (for 'did you mean')."""
    model: type[BaseModel] = StudyConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type):
            return None
        if not issubclass(field.annotation, BaseModel):
            return None
        model = field.annotation
    return model


def _explain(err: dict) -> StudyKeyError:
    """Turn pydantic's first error into a message that says how to fix it."""
    loc = tuple(err["loc"])
    model = _model_for(loc)
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


def parse_study(text: str, where: str = "<study>") -> StudyConfig:
    """Validate study-file text; raise ``HarnessError`` naming file, line and key."""
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
        config = StudyConfig.model_validate(raw)
    except StudyKeyError as exc:
        raise HarnessError(f"{_place(where, root, exc.loc)}: {exc}") from None
    except ValidationError as exc:
        problem = _explain(exc.errors()[0])
        raise HarnessError(f"{_place(where, root, problem.loc)}: {problem}") from None
    config._source, config._root = where, root
    return config


def load_study_file(path: str | Path) -> tuple[StudyConfig, str]:
    """Read and validate a study file; return the config and its text (logged as-is)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
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
    return parse_study(text, str(path)), text


def check_encoder(config: StudyConfig, encoder: Encoder) -> None:
    """Layer and head indices and ``max_len`` that this encoder cannot serve.

    Needs the encoder's config, so it runs after parsing, but still before any study,
    run or cache entry exists."""
    n_layers, n_heads = encoder.num_layers, encoder.num_heads
    for layers in layer_choices(config.search.layers):
        bad = [layer for layer in layers if layer >= n_layers]
        if bad:
            raise config.located(
                ("search", "layers"),
                f"layer(s) {bad} out of range for encoder {encoder.name!r}, which has {n_layers} "
                f"layers; use indices 0..{n_layers - 1}",
            )
    for heads in head_choices(config.search.heads):
        bad = [head for head in heads or () if head >= n_heads]
        if bad:
            raise config.located(
                ("search", "heads"),
                f"head(s) {bad} out of range for encoder {encoder.name!r}, which has {n_heads} "
                f"heads per layer; use indices 0..{n_heads - 1} or 'all'",
            )
    positions = getattr(encoder.config, "max_position_embeddings", None)
    if isinstance(positions, int) and config.encoder.max_len > positions:
        raise config.located(
            ("encoder", "max_len"),
            f"{config.encoder.max_len} exceeds the {positions} positions encoder "
            f"{encoder.name!r} can read; use max_len <= {positions}",
        )


def choices(dim: Any) -> list:
    """The candidate values of a categorical or fixed dimension."""
    return list(dim) if isinstance(dim, list) else [dim]


def layer_choices(layers: list) -> list[tuple[int, ...]]:
    """``[3, 4, 5]`` is one fixed subset; ``[[3, 4, 5], [5]]`` is a choice among subsets."""
    if all(isinstance(x, list) for x in layers):
        return [tuple(x) for x in layers]
    return [tuple(layers)]


def head_choices(heads: Any) -> list[tuple[int, ...] | None]:
    """``all`` / ``3`` / ``[0, 7]`` are fixed; ``[all, [0, 7], 3]`` is a choice."""

    def one(v: Any) -> tuple[int, ...] | None:
        if v == "all":
            return None
        return (v,) if isinstance(v, int) else tuple(v)

    if isinstance(heads, list) and any(isinstance(x, list) or x == "all" for x in heads):
        return [one(x) for x in heads]
    return [one(heads)]
