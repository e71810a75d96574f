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

from harness.attention import Features, cached_embeddings, mean_over_tokens, mean_pooled
from harness.core import HarnessError

if TYPE_CHECKING:
    from harness.attention import AttentionCache
    from harness.encoders import Encoder
    from harness.studyfile import FeatureSpec

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
    """Attention features of one encoder, ``(x [N, T, D] float32, lengths [N])``.

    Sequence readers get one row per token (``T = max_len``); probes get each sentence's
    mean over its tokens (``pooled``: ``T = 1``, lengths all 1), so every attention model
    reads the same ``(x, lengths)`` pair.
    """

    features: FeatureSpec
    encoder: str
    fingerprint: str
    max_len: int
    #: the encoder's heads per layer (counts the maps of ``all``)
    num_heads: int
    pooled: bool = False
    #: ``random``: the seeded random-weight control of ``encoder`` (``harness.encoders.load``)
    init: str = "pretrained"
    seed: int = 0
    #: a fine-tuned encoder: the MLflow run that logged it; ``load_run`` downloads it from
    #: there into the local encoder cache (``harness.study.intermediary``), found by fingerprint
    encoder_run: str | None = None
    #: bits per value of the cache's stored view (8: ``cache: {keep: views, bits: 8}``);
    #: new sentences' position-free features are coded the same way
    view_bits: int = 16
    _encoders: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def input_size(self) -> int:
        return self.features.input_size(self.max_len, self.num_heads)

    def to_dict(self) -> dict:
        return {
            "type": "attention",
            "features": self.features.to_dict(),
            "encoder": {
                "name": self.encoder,
                "fingerprint": self.fingerprint,
                "init": self.init,
                "seed": self.seed,
                "run_id": self.encoder_run,
            },
            "max_len": self.max_len,
            "num_heads": self.num_heads,
            "pooled": self.pooled,
            "view_bits": self.view_bits,
        }

    def build(
        self, texts: list[str], cache: AttentionCache | None = None, device: str = "cpu"
    ) -> tuple[Features, np.ndarray]:
        """From ``cache`` when given (a study's texts: streamed from disk, pooled in one
        pass), else by running the encoder: both go through the same arithmetic, so a
        reloaded model sees what it was trained on."""
        spec = self.features
        if cache is not None:
            if self.pooled and spec.view != "rows" and spec.reducer == "stack":
                # the stored per-sentence means: no [N, T, maps x F] array on the way
                maps = spec.maps(self.num_heads)
                return _as_pooled(cache.view().sentence_features(maps, spec.view))
            x, lengths = cache.features(spec)
        else:
            x, lengths = self._from_texts(texts, device)
        return _as_pooled(mean_over_tokens(x, lengths)) if self.pooled else (x, lengths)

    def _from_texts(self, texts: list[str], device: str) -> tuple[np.ndarray, np.ndarray]:
        from harness.attention import iter_attention

        spec, encoder = self.features, self._encoder(device)
        batches = iter_attention(encoder, texts, self.max_len)
        if spec.view != "rows":
            from harness.attention import token_features_from_attention

            maps = spec.maps(self.num_heads)
            return token_features_from_attention(
                batches, len(texts), self.max_len, maps, spec.view, spec.reducer,
                bits=self.view_bits,
            )  # fmt: skip
        from harness.attention import reduce_maps

        x = np.zeros((len(texts), self.max_len, self.input_size), np.float32)
        lengths = np.zeros(len(texts), np.int64)
        heads = spec.reduce_heads()
        for idx, lens, maps in batches:
            for b, (i, n) in enumerate(zip(idx, lens, strict=True)):
                per_layer = [maps[layer, b : b + 1, :, :n, :n] for layer in spec.layers]
                reduced = reduce_maps(per_layer, heads, spec.reducer, self.max_len)[0]
                x[i, :n, : reduced.shape[1]] = reduced
                lengths[i] = n
        return x, lengths

    def _encoder(self, device: str) -> Encoder:
        if device not in self._encoders:
            self._encoders[device] = load_recorded_encoder(
                self.encoder, self.fingerprint, device, self.init, self.seed, self.encoder_run
            )
        return self._encoders[device]


def _as_pooled(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sentence vectors as one-step sequences, the ``(x, lengths)`` every reader takes."""
    return np.ascontiguousarray(x[:, None, :], dtype=np.float32), np.ones(len(x), np.int64)


def load_recorded_encoder(
    name: str,
    fingerprint: str,
    device: str = "cpu",
    init: str = "pretrained",
    seed: int = 0,
    run_id: str | None = None,
) -> Encoder:
    """The encoder a model's config names: a fine-tuned one from the local encoder cache
    (``load_run`` downloads it there from run ``run_id``), a seeded random-init control, or
    a pretrained one by name; a fingerprint that differs is warned about."""
    from harness.encoders import Encoder, load_encoder

    if run_id:
        from harness.encoders import local_encoder

        encoder = Encoder(name=name, path=local_encoder(fingerprint, run_id), device=device)
    else:
        encoder = load_encoder(name, device, init=init, seed=seed)
    if encoder.fingerprint != fingerprint:
        log.warning(
            "encoder %r differs from the one the model was trained with (fingerprint mismatch)",
            encoder.name,
        )
    return encoder


def inputs_from_dict(d: dict) -> InputSpec:
    """The recipe saved in a model's config."""
    if d.get("type") == "text":
        return TextInputs()
    if d.get("type") == "attention":
        from harness.studyfile import FeatureSpec

        return AttentionInputs(
            FeatureSpec.from_dict(d["features"]),
            d["encoder"]["name"],
            d["encoder"]["fingerprint"],
            d["max_len"],
            d["num_heads"],
            d.get("pooled", False),
            d["encoder"].get("init", "pretrained"),
            d["encoder"].get("seed", 0),
            d["encoder"].get("run_id"),
            d.get("view_bits", 16),
        )
    if d.get("type") == "embedding":
        return EmbeddingInputs.from_dict(d)
    raise HarnessError(f"unknown inputs type {d.get('type')!r} in a model config")


@dataclass(frozen=True)
class EmbeddingInputs:
    """Mean-pooled last hidden states ``[N, hidden]`` of one encoder: from the cache beside
    a study's attention cache, or by running the encoder on new sentences."""

    encoder: str
    fingerprint: str
    max_len: int
    #: the random-init control's seed, or the run of a fine-tuned encoder (as in
    #: ``AttentionInputs``)
    init: str = "pretrained"
    seed: int = 0
    encoder_run: str | None = None
    _encoders: dict = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict:
        return {
            "type": "embedding",
            "encoder": {
                "name": self.encoder,
                "fingerprint": self.fingerprint,
                "init": self.init,
                "seed": self.seed,
                "run_id": self.encoder_run,
            },
            "max_len": self.max_len,
        }

    @classmethod
    def from_dict(cls, d: dict) -> EmbeddingInputs:
        e = d["encoder"]
        return cls(
            e["name"],
            e["fingerprint"],
            d["max_len"],
            e.get("init", "pretrained"),
            e.get("seed", 0),
            e.get("run_id"),
        )

    def build(
        self, texts: list[str], cache: AttentionCache | None = None, device: str = "cpu"
    ) -> np.ndarray:
        """A study's texts (``cache`` given) go through the embedding cache next to the
        attention cache; new sentences are embedded directly and not cached."""
        if cache is not None:
            load = lambda: self._encoder(device)  # noqa: E731 - only if not cached yet
            return cached_embeddings(load, texts, self.max_len, cache.path)
        return mean_pooled(self._encoder(device), texts, self.max_len)

    def _encoder(self, device: str) -> Encoder:
        if device not in self._encoders:
            self._encoders[device] = load_recorded_encoder(
                self.encoder, self.fingerprint, device, self.init, self.seed, self.encoder_run
            )
        return self._encoders[device]
