"""Input recipes: how a model's inputs are rebuilt from raw sentences.

A model is trained on inputs a study prepared once (attention features from the cache,
or the texts themselves) and must see the very same inputs when a user reloads it to
score new sentences. Each model carries its recipe and saves it as the ``inputs``
section of its config, so ``load_run(...).predict_proba(texts)`` works for any kind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.attention import AttentionCache
    from harness.encoder import Encoder
    from harness.features import FeatureSpec

log = logging.getLogger("harness")


class InputSpec(Protocol):
    def to_dict(self) -> dict: ...

    def build(
        self, texts: list[str], cache: AttentionCache | None = None, device: str = "cpu"
    ) -> Any: ...


@dataclass(frozen=True)
class TextInputs:
    """The sentences themselves (text baselines)."""

    def to_dict(self) -> dict:
        return {"type": "text"}

    def build(
        self, texts: list[str], cache: AttentionCache | None = None, device: str = "cpu"
    ) -> list[str]:
        return list(texts)


@dataclass(frozen=True)
class AttentionInputs:
    """Reduced attention maps ``([N, max_len, F] float32, lengths [N])`` of one encoder."""

    features: FeatureSpec
    encoder: str
    fingerprint: str
    max_len: int
    _encoders: dict = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict:
        return {
            "type": "attention",
            "features": self.features.to_dict(),
            "encoder": {"name": self.encoder, "fingerprint": self.fingerprint},
            "max_len": self.max_len,
        }

    def build(
        self, texts: list[str], cache: AttentionCache | None = None, device: str = "cpu"
    ) -> tuple[np.ndarray, np.ndarray]:
        """From ``cache`` when given (a study's texts), else by running the encoder: both
        go through the same ``reduce_maps``, so a reloaded model sees what it was trained on."""
        if cache is not None:
            return cache.features(self.features)
        from harness.attention import iter_attention
        from harness.features import reduce_maps

        spec, encoder = self.features, self._encoder(device)
        x = np.zeros((len(texts), self.max_len, spec.input_size(self.max_len)), np.float32)
        lengths = np.zeros(len(texts), np.int64)
        for idx, lens, maps in iter_attention(encoder, texts, self.max_len):
            for b, (i, n) in enumerate(zip(idx, lens, strict=True)):
                per_layer = [maps[layer, b : b + 1, :, :n, :n] for layer in spec.layers]
                reduced = reduce_maps(per_layer, spec.heads, spec.reducer, self.max_len)[0]
                x[i, :n, : reduced.shape[1]] = reduced
                lengths[i] = n
        return x, lengths

    def _encoder(self, device: str) -> Encoder:
        if device not in self._encoders:
            from harness.encoder import load_encoder

            encoder = load_encoder(self.encoder, device=device)
            if encoder.fingerprint != self.fingerprint:
                log.warning(
                    "encoder %r differs from the one the model was trained with "
                    "(fingerprint mismatch)",
                    encoder.name,
                )
            self._encoders[device] = encoder
        return self._encoders[device]


def inputs_from_dict(d: dict) -> InputSpec:
    """The recipe saved in a model's config."""
    if d.get("type") == "text":
        return TextInputs()
    if d.get("type") == "attention":
        from harness.features import FeatureSpec

        return AttentionInputs(
            FeatureSpec.from_dict(d["features"]),
            d["encoder"]["name"],
            d["encoder"]["fingerprint"],
            d["max_len"],
        )
    if d.get("type") == "embedding":
        from harness.embeddings import EmbeddingInputs

        return EmbeddingInputs.from_dict(d)
    raise HarnessError(f"unknown inputs type {d.get('type')!r} in a model config")
