"""The encoder's own sentence embedding (mean-pooled last hidden state), cached on disk.

The embedding baseline asks whether attention maps add anything to what the encoder
already says about a sentence. Its inputs cost one forward pass over the data set, so
they are cached like the attention maps: one safetensors file per encoder × texts ×
``max_len`` under ``CACHE_DIR/embeddings/``, written to a temporary name and renamed into
place under a file lock (a reader never sees half a file; two processes never compute
the same entry twice). A file that does not load is rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import safetensors.numpy

from harness.locks import waiting_lock

if TYPE_CHECKING:
    from harness.attention import AttentionCache
    from harness.encoder import Encoder

log = logging.getLogger("harness")

EMBEDDING_FORMAT = 1
BATCH_SIZE = 64


def embedding_key(fingerprint: str, texts: list[str], max_len: int) -> str:
    """Everything that changes the embeddings: encoder files, ``max_len``, the texts."""
    from harness.attention import texts_sha256

    parts = [f"emb-v{EMBEDDING_FORMAT}", fingerprint, str(max_len), texts_sha256(texts)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def mean_pooled(
    encoder: Encoder, texts: list[str], max_len: int, batch_size: int = BATCH_SIZE
) -> np.ndarray:
    """``[N, hidden]`` float32: the mean of each sentence's last hidden states over its
    real tokens ([CLS] and [SEP] included, padding excluded), in the texts' order."""
    import torch

    from harness.attention import length_sorted_batches
    from harness.threads import extraction_threads, num_threads

    out = np.zeros((len(texts), encoder.config.hidden_size), np.float32)
    with torch.inference_mode(), num_threads(extraction_threads()):
        for idx, _, inputs in length_sorted_batches(encoder, texts, max_len, batch_size):
            hidden = encoder.model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out[idx] = ((hidden * mask).sum(1) / mask.sum(1)).float().cpu().numpy()
    return out


def cached_embeddings(
    encoder: Encoder, texts: list[str], max_len: int, cache_root: Path
) -> np.ndarray:
    """``mean_pooled`` through the on-disk cache under ``cache_root/embeddings``."""
    folder = Path(cache_root) / "embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    key = embedding_key(encoder.fingerprint, texts, max_len)
    final = folder / f"{key}.safetensors"
    with waiting_lock(folder / f"{key}.lock", "the embedding cache entry", "cache_dir"):
        if final.exists():
            try:
                emb = safetensors.numpy.load_file(str(final))["embeddings"]
                if emb.shape[0] == len(texts):
                    log.info("reusing cached embeddings %s: encoder not run", final)
                    return emb
            except Exception as exc:  # a damaged file of any kind is rebuilt, not read
                log.warning("embedding cache %s is unreadable (%s); rebuilding it", final, exc)
        log.info("computing mean-pooled embeddings of %d sentences", len(texts))
        emb = mean_pooled(encoder, texts, max_len)
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        meta = {
            "encoder": encoder.name,
            "fingerprint": encoder.fingerprint,
            "max_len": str(max_len),
        }
        try:
            safetensors.numpy.save_file({"embeddings": emb}, str(tmp), metadata=meta)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return emb


@dataclass(frozen=True)
class EmbeddingInputs:
    """Mean-pooled last hidden states ``[N, hidden]`` of one encoder: from the cache beside
    a study's attention cache, or by running the encoder on new sentences."""

    encoder: str
    fingerprint: str
    max_len: int
    _encoders: dict = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict:
        return {
            "type": "embedding",
            "encoder": {"name": self.encoder, "fingerprint": self.fingerprint},
            "max_len": self.max_len,
        }

    @classmethod
    def from_dict(cls, d: dict) -> EmbeddingInputs:
        return cls(d["encoder"]["name"], d["encoder"]["fingerprint"], d["max_len"])

    def build(
        self, texts: list[str], cache: AttentionCache | None = None, device: str = "cpu"
    ) -> np.ndarray:
        """A study's texts (``cache`` given) go through the embedding cache next to the
        attention cache; new sentences are embedded directly and not cached."""
        encoder = self._encoder(device)
        if cache is not None:
            return cached_embeddings(encoder, texts, self.max_len, cache.path.parent)
        return mean_pooled(encoder, texts, self.max_len)

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
