"""The study file: schema, validation and clear errors.

A study file is data (YAML read with ``safe_load``), validated completely before any
study, run or cache entry is created. Errors name the file, the line and the key, and
suggest the nearest valid key.

A search dimension is written as one of:

* a fixed value: ``reducer: sum``, ``hidden_size: 64``, ``layers: [3, 4, 5]``;
* a list of choices: ``reducer: [sum, mean]``, ``layers: [[3, 4, 5], [5]]``,
  ``heads: [all, [0, 7]]``;
* a range: ``lr: {low: 1.0e-4, high: 1.0e-2, log: true}`` (``step`` for ints).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.classifiers import KINDS, POOLINGS
from harness.errors import HarnessError
from harness.features import REDUCERS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(_Strict):
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @field_validator("high")
    @classmethod
    def _ordered(cls, high: float, info) -> float:
        if "low" in info.data and high < info.data["low"]:
            raise ValueError("high must be >= low")
        return high


Scalar = int | float | str | bool
#: fixed value, list of choices, or a range
Dim = Range | list[Scalar] | Scalar


class DataConfig(_Strict):
    dataset: str = "babe"
    text_column: str | None = None
    label_column: str | None = None
    positive_label: str | None = None
    group_column: str | None = None
    delimiter: str | None = None
    max_rows: int | None = Field(default=None, gt=0)


class SplitConfig(_Strict):
    val: float = Field(default=0.15, gt=0, lt=1)
    test: float = Field(default=0.15, gt=0, lt=1)
    seed: int = 0
    group_by: bool = True


class EncoderConfig(_Strict):
    name: str = "minilm"
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


class PrunerConfig(_Strict):
    name: Literal["median", "none"] = "median"
    n_startup_trials: int = Field(default=3, ge=0)
    n_warmup_steps: int = Field(default=1, ge=0)


class SearchConfig(_Strict):
    layers: list[int] | list[list[int]]
    heads: Any = "all"
    reducer: Dim = "sum"
    lr: Dim = 1.0e-3
    #: classifier kind -> its hyperparameters (each a Dim); the kind itself is chosen
    #: among the keys
    classifier: dict[str, dict[str, Dim]]

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list) -> list:
        if not v or any(isinstance(x, list) and not x for x in v):
            raise ValueError("empty layer list; give layer indices, e.g. [3, 4, 5]")
        return v

    @field_validator("classifier")
    @classmethod
    def _kinds(cls, v: dict) -> dict:
        if not v:
            raise ValueError(f"no classifier kind; give one or more of {', '.join(KINDS)}")
        for kind in v:
            if kind not in KINDS:
                raise ValueError(
                    f"unknown classifier kind {kind!r}{_suggest(kind, KINDS)}; "
                    f"choose among {', '.join(KINDS)}"
                )
        return v


class StudyConfig(_Strict):
    name: str = Field(min_length=1)
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
    artifact_location: str = "mlruns/artifacts"
    cache_dir: str | None = None
    search: SearchConfig


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


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


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


def _format_error(err: dict, where: str, root: yaml.Node | None) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p[0].isupper()))
    key = ".".join(str(p) for p in loc) or "(top level)"
    line = _line_of(root, loc)
    place = f"{where}:{line}" if line else where
    if err["type"] == "extra_forbidden":
        model = _model_for(loc)
        options = list(model.model_fields) if model else []
        hint = _suggest(loc[-1], options) or (
            f"; valid keys: {', '.join(options)}" if options else ""
        )
        return f"{place}: unknown key '{key}'{hint}"
    if err["type"] == "missing":
        return f"{place}: missing required key '{key}'"
    return f"{place}: key '{key}': {err['msg']} (got {err.get('input')!r})"


def parse_study(text: str, where: str = "<study>") -> StudyConfig:
    """Validate study-file text; raise ``HarnessError`` naming file, line and key."""
    try:
        raw = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise HarnessError(f"{where}{line}: YAML syntax error: {problem}") from None
    if not isinstance(raw, dict):
        raise HarnessError(
            f"{where}: a study file must be a YAML mapping of keys (name, search, …)"
        )
    try:
        config = StudyConfig.model_validate(raw)
    except ValidationError as exc:
        raise HarnessError(_format_error(exc.errors()[0], where, root)) from None
    _check_search(config.search, where, root)
    return config


def load_study_file(path: str | Path) -> tuple[StudyConfig, str]:
    """Read and validate a study file; return the config and its text (logged as-is)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HarnessError(f"study file {path} not found; see studies/ for examples") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"cannot read study file {path}: {exc}") from None
    return parse_study(text, str(path)), text


def _check_search(search: SearchConfig, where: str, root: yaml.Node | None) -> None:
    """Checks pydantic cannot express: choice values, hyperparameter names and types."""

    def fail(loc: tuple, msg: str) -> None:
        line = _line_of(root, ("search", *loc))
        place = f"{where}:{line}" if line else where
        raise HarnessError(f"{place}: key 'search.{'.'.join(map(str, loc))}': {msg}")

    for value in choices(search.reducer):
        if value not in REDUCERS:
            fail(
                ("reducer",),
                f"unknown reducer {value!r}{_suggest(value, REDUCERS)}; "
                f"choose among {', '.join(REDUCERS)}",
            )
    for value in head_choices(search.heads):
        if value is not None and any(not isinstance(h, int) or h < 0 for h in value):
            fail(("heads",), f"{value!r} is not 'all' or a list of head indices")
    lrs = [search.lr.low] if isinstance(search.lr, Range) else choices(search.lr)
    if any(not isinstance(v, int | float) or isinstance(v, bool) or v <= 0 for v in lrs):
        fail(("lr",), "learning rate must be a positive number, e.g. 1.0e-3")
    for kind, hparams in search.classifier.items():
        for name, dim in (hparams or {}).items():
            if name not in HPARAMS:
                fail(
                    ("classifier", kind, name),
                    f"unknown hyperparameter{_suggest(name, HPARAMS)}; valid: {', '.join(HPARAMS)}",
                )
            if isinstance(dim, list) and not dim:
                fail(("classifier", kind, name), "empty list of choices")
            for value in [] if isinstance(dim, Range) else choices(dim):
                expected = HPARAMS[name]
                ok = (
                    isinstance(value, expected)
                    and not (expected is int and isinstance(value, bool))
                    or (
                        expected is float and isinstance(value, int) and not isinstance(value, bool)
                    )
                )
                if not ok:
                    fail(("classifier", kind, name), f"{value!r} is not a {expected.__name__}")
                if name == "pooling" and value not in POOLINGS:
                    fail(
                        ("classifier", kind, name),
                        f"unknown pooling {value!r}; choose among {', '.join(POOLINGS)}",
                    )
                if expected in (int, float) and name != "dropout" and value <= 0:
                    fail(("classifier", kind, name), f"must be positive, got {value!r}")
                if name == "dropout" and not 0 <= value < 1:
                    fail(("classifier", kind, name), f"dropout must be in [0, 1), got {value!r}")
    if isinstance(search.reducer, list) and not search.reducer:
        fail(("reducer",), "empty list of choices")


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
    if isinstance(heads, list) and not heads:
        return [()]
    return [one(heads)]
