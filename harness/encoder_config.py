"""The ``encoder:`` section of a study file: which encoder, its initialisation, fine-tuning
first (``finetune:``) or several conditions to compare (``conditions:``); checked at parse
time, before torch is imported, so a typo costs no extraction or fine-tuning.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from harness.space import Strict
from harness.studyfile import did_you_mean


class FinetuneConfig(Strict):
    """``encoder.finetune``: the fields of ``harness.finetune.FinetuneSettings`` (checked
    here, before torch is imported, so a typo costs no fine-tuning)."""

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

    def settings(self):
        """The ``FinetuneSettings`` these keys describe (imports torch: call it late)."""
        from harness.finetune import FinetuneSettings

        return FinetuneSettings(**self.model_dump())


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
