"""The study file's schema: one parsed, typed config, validated before anything exists.

A mistake found three hours into a study costs three hours, so every key is checked
before any study, run or cache entry is created, and each value is left in the form the
code uses. Errors cite file, line and key (``parse``); the ``search:`` section has its
own module (``space``); URLs are checked in ``urls``. The ``encoder:`` section says which
encoder a study reads and under which conditions (pretrained, fine-tuned, random).
``check_encoder`` adds the checks that need the chosen encoder (layer and head indices,
``max_len``).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import Field, PrivateAttr, field_validator, model_validator

from harness.core import HarnessError
from harness.studyfile.parse import StudyKeyError, did_you_mean, dotted, parse, place, read_text
from harness.studyfile.space import SearchConfig, Strict
from harness.studyfile.urls import DEFAULT_STORAGE, validate_storage_url, validate_tracking_uri

if TYPE_CHECKING:
    pass

#: the baselines a study fits beside its trials, in the order they run and are shown
BASELINES: tuple[str, ...] = ("majority", "length", "tfidf", "embedding")

#: a study name becomes an MLflow experiment and folder names, so it stays path-safe
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class DataConfig(Strict):
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


class SplitConfig(Strict):
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


class CacheConfig(Strict):
    """``cache``: what an attention cache entry keeps. ``maps`` (the default, where it
    fits): every full map, from which any view is built. ``views``: the position-free
    ``relative`` view of every map, computed during extraction, plus the full maps of only
    the layers a ``rows`` view of the search can read: about a quarter of the bytes for
    MiniLM (docs/scale.md), for corpora whose full maps would not fit on the disk.
    ``bits: 8`` stores that view in one byte per value instead of fp16: half its bytes
    again, at a validation cost measured in BENCHMARKS.md ("The 8-bit compact view")."""

    keep: Literal["maps", "views"] = "maps"
    bits: Literal[16, 8] = 16

    @model_validator(mode="after")
    def _bits_of_views(self) -> CacheConfig:
        if self.bits != 16 and self.keep != "views":
            raise ValueError(
                f"bits: {self.bits} codes the compact cache's view; full maps are kept in fp16 "
                "(use keep: views with bits: 8, or drop bits)"
            )
        return self


class EvaluationConfig(Strict):
    """``harness study evaluate``: repeated, grouped, stratified K-fold cross-validation
    over every sentence (``data.make_folds``)."""

    folds: int = Field(default=5, ge=2)
    repeats: int = Field(default=2, ge=1)
    seed: int = 0
    #: configurations ``study evaluate`` scores by default: the study's K best trials
    top: int = Field(default=3, ge=1)
    #: evaluate at the end of ``study run`` (``studies/babe-cv.yaml``)
    after_search: bool = False


class TrainConfig(Strict):
    epochs: int = Field(default=10, gt=0)
    patience: int = Field(default=3, gt=0)
    batch_size: int = Field(default=64, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    bucketing: bool = True
    seed: int = 0


class BootstrapConfig(Strict):
    n_resamples: int = Field(default=1000, gt=0)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    seed: int = 0


class SamplerConfig(Strict):
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


class PrunerConfig(Strict):
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


# The study-file key ``register`` is also the name of ABCMeta's ``register`` (pydantic
# models are ABCs); a config class never registers virtual subclasses, so the field wins.
warnings.filterwarnings("ignore", 'Field name "register" in "StudyConfig" shadows', UserWarning)


class FinetuneConfig(Strict):
    """``encoder.finetune``: how to fine-tune (checked here, before torch is imported, so a
    typo costs no fine-tuning). The one form of these settings: fine-tuning reads it too.

    ``text_column``, ``label_column``, ``positive_label`` and ``delimiter`` apply to an
    intermediary file only (``data`` a path); ``data: study`` uses the study's own labels.
    ``schedule: linear`` warms the learning rate up over ``warmup_fraction`` of the steps,
    then decays it linearly to 0; ``constant`` keeps ``lr`` throughout.
    """

    epochs: int = Field(default=2, ge=1)
    lr: float = Field(default=3e-5, gt=0)
    batch_size: int = Field(default=32, ge=1)
    max_len: int = Field(default=80, ge=2, le=512)
    seed: int = 0
    #: ``study`` (its train split; validation picks the epoch) or a labelled file's path
    data: str = Field(default="study", min_length=1)
    text_column: str | None = None
    label_column: str | None = None
    positive_label: str | None = None
    delimiter: str | None = None
    val_fraction: float = Field(default=0.1, gt=0, lt=1)
    patience: int = Field(default=2, ge=1)
    weight_decay: float = Field(default=0.01, ge=0)
    schedule: Literal["linear", "constant"] = "linear"
    warmup_fraction: float = Field(default=0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _columns_need_a_file(self) -> FinetuneConfig:
        given = [
            f for f in ("text_column", "label_column", "positive_label", "delimiter")
            if getattr(self, f) is not None
        ]  # fmt: skip
        if self.data == "study" and given:
            raise ValueError(
                f"{given[0]} applies to an intermediary file (data: PATH); with data: study "
                "the study's own columns are used"
            )
        return self

    def key_dict(self) -> dict:
        """The fields that change the weights. The file's path is not one: its content
        is keyed by its sha256, so a moved or renamed file reuses the same encoder."""
        d = self.model_dump()
        d["data"] = "study" if self.data == "study" else "file"
        return d


#: the short spellings of a condition in ``encoder.conditions``
CONDITION_WORDS = {"pretrained": {}, "finetuned": {"finetune": {}}, "random": {"init": "random"}}


class ConditionConfig(Strict):
    """One encoder condition of a comparison: pretrained, fine-tuned or random-init.
    Its sub-study is named ``<study>.<label>``."""

    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,30}$")
    init: Literal["pretrained", "random"] = "pretrained"
    seed: int = 0
    finetune: FinetuneConfig | None = None

    @model_validator(mode="after")
    def _fine_tune_pretrained_only(self) -> ConditionConfig:
        if self.init == "random" and self.finetune is not None:
            raise ValueError(
                "fine-tuning starts from pretrained weights; use init: random without finetune"
            )
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.finetune is not None:
            return "finetuned"
        return "random" if self.init == "random" else "pretrained"


class EncoderConfig(Strict):
    name: str = Field(default="minilm", min_length=1)
    max_len: int = Field(default=80, ge=2, le=512)
    batch_size: int = Field(default=64, ge=1)
    #: ``random``: the same architecture and tokenizer with seeded random weights (control)
    init: Literal["pretrained", "random"] = "pretrained"
    seed: int = 0
    #: fine-tune the encoder first and probe the fine-tuned encoder's attention
    finetune: FinetuneConfig | None = None
    #: several encoder conditions, each run as its own sub-study, then compared
    conditions: list[ConditionConfig] | None = None

    @field_validator("conditions", mode="before")
    @classmethod
    def _words(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        out = []
        for item in value:
            if isinstance(item, str):
                if item not in CONDITION_WORDS:
                    raise ValueError(
                        f"unknown condition {item!r}{did_you_mean(item, CONDITION_WORDS)}; write "
                        f"{', '.join(CONDITION_WORDS)} or a mapping such as {{init: random, "
                        "seed: 1} or {finetune: {epochs: 2}}"
                    )
                item = dict(CONDITION_WORDS[item])
            out.append(item)
        return out

    @model_validator(mode="after")
    def _one_way(self) -> EncoderConfig:
        if self.init == "random" and self.finetune is not None:
            raise ValueError(
                "fine-tuning starts from pretrained weights; use init: random without finetune"
            )
        if self.conditions is None:
            return self
        if self.init != "pretrained" or self.finetune is not None:
            raise ValueError(
                "conditions name each condition's init and finetune; move init/finetune into "
                "the conditions list"
            )
        labels = [c.label for c in self.conditions]
        if len(labels) < 2:
            raise ValueError("list at least two conditions to compare, e.g. [pretrained, random]")
        repeated = next((x for x in labels if labels.count(x) > 1), None)
        if repeated:
            raise ValueError(
                f"two conditions are called {repeated!r}; give one a name (name: random-2)"
            )
        return self


class StudyConfig(Strict):
    name: str
    description: str = ""
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    encoder: EncoderConfig = EncoderConfig()
    train: TrainConfig = TrainConfig()
    bootstrap: BootstrapConfig = BootstrapConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    n_trials: int = Field(default=20, gt=0)
    timeout: float | None = Field(default=None, gt=0)
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    storage: str = DEFAULT_STORAGE
    #: unset: ``$MLFLOW_TRACKING_URI``, else ``tracking.DEFAULT_TRACKING_URI``
    tracking_uri: str | None = None
    artifact_location: str = Field(default="mlruns/artifacts", min_length=1)
    cache_dir: str | None = None
    cache: CacheConfig = CacheConfig()
    #: register each new best trial as model version ``name`` with alias ``champion``
    register: bool = True
    search: SearchConfig
    #: fitted once per study on its split and logged beside the trials (``[]``: none)
    baselines: list[str] = Field(default_factory=lambda: list(BASELINES))

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

    @field_validator("baselines")
    @classmethod
    def _known_baselines(cls, names: list[str]) -> list[str]:
        for i, name in enumerate(names):
            if name not in BASELINES:
                raise StudyKeyError(
                    ("baselines", i),
                    f"unknown baseline {name!r}{did_you_mean(name, BASELINES)}; choose among "
                    f"{', '.join(BASELINES)}, or write baselines: [] for none",
                )
            if name in names[:i]:
                raise StudyKeyError(("baselines", i), f"{name!r} is listed twice; list it once")
        return names

    @field_validator("storage")
    @classmethod
    def _storage(cls, url: str) -> str:
        return validate_storage_url(url)

    @field_validator("tracking_uri")
    @classmethod
    def _tracking(cls, uri: str | None) -> str | None:
        return None if uri is None else validate_tracking_uri(uri)

    def for_condition(self, condition: ConditionConfig) -> StudyConfig:
        """The sub-study of one condition: its own name (``<name>.<label>``), hence its own
        Optuna study, MLflow experiment and parent run; the same data, split and search."""
        encoder = self.encoder.model_copy(
            update={
                "init": condition.init,
                "seed": condition.seed,
                "finetune": condition.finetune,
                "conditions": None,
            }
        )
        name = f"{self.name}.{condition.label}"
        if not NAME_PATTERN.fullmatch(name):
            raise self.located(("name",), f"{name!r} is too long for a condition's study name")
        return self.model_copy(update={"name": name, "encoder": encoder})

    def located(self, loc: tuple[str | int, ...], problem: str) -> HarnessError:
        """An error at key ``loc`` of this study, citing the file and line it came from."""
        return HarnessError(
            place(self._source, self._root, loc) + f": key '{dotted(loc)}': {problem}"
        )


def parse_study(text: str, where: str = "<study>") -> StudyConfig:
    """Validate study-file text; raise ``HarnessError`` naming file, line and key."""
    config, root = parse(text, where, StudyConfig)
    config._source, config._root = where, root
    return config


def load_study_file(path: str | Path) -> tuple[StudyConfig, str]:
    """Read and validate a study file; return the config and its text (logged as-is)."""
    text = read_text(Path(path))
    return parse_study(text, str(path)), text


def load_config(path: str | Path) -> StudyConfig:
    """Validate a study file without running it."""
    return load_study_file(path)[0]
