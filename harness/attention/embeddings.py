"""The encoder's own sentence embedding (mean-pooled last hidden state), cached on disk.

The embedding baseline asks whether attention maps add anything to what the encoder
already says about a sentence. Its inputs cost one forward pass over the data set, so
they are cached with the attention maps: one safetensors file inside the attention cache
entry of the same encoder × texts × ``max_len``. Attention extraction runs the same
forward pass, so it pools the embeddings on its way and writes them into the entry
before the entry is renamed into place: a study whose attention was just extracted fits
the embedding baseline without running the encoder again. An entry made before this
file existed gets it on first use, written to a temporary name and renamed under a file
lock (a reader never sees half a file); a file that does not load is rebuilt.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import safetensors.numpy

from harness.core import waiting_lock

if TYPE_CHECKING:
    from harness.encoders import Encoder

log = logging.getLogger("harness")

#: beside the layer files of an attention cache entry (whose key already names the
#: encoder's fingerprint, the texts and ``max_len``), outside its checksummed files
EMBEDDINGS_FILE = "embeddings.safetensors"
BATCH_SIZE = 64


def mean_pool(hidden, mask) -> np.ndarray:
    """``[B, hidden]`` float32 means of ``hidden`` ``[B, T, hidden]`` over the positions
    where ``mask`` ``[B, T]`` is 1: a sentence's real tokens, [CLS] and [SEP] included."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return ((hidden * weights).sum(1) / weights.sum(1)).float().cpu().numpy()


def mean_pooled(
    encoder: Encoder, texts: list[str], max_len: int, batch_size: int = BATCH_SIZE
) -> np.ndarray:
    """``[N, hidden]`` float32 mean-pooled last hidden states, in the texts' order."""
    import torch

    from harness.core import extraction_threads, num_threads
    from harness.encoders import length_sorted_batches

    out = np.zeros((len(texts), encoder.config.hidden_size), np.float32)
    with torch.inference_mode(), num_threads(extraction_threads()):
        for idx, _, inputs in length_sorted_batches(encoder, texts, max_len, batch_size):
            hidden = encoder.model(**inputs).last_hidden_state
            out[idx] = mean_pool(hidden, inputs["attention_mask"])
    return out


def write_embeddings(path: Path, encoder: Encoder, max_len: int, emb: np.ndarray) -> None:
    """Write ``emb`` to ``path`` atomically (a temporary name, then a rename)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    meta = {"encoder": encoder.name, "fingerprint": encoder.fingerprint, "max_len": str(max_len)}
    try:
        safetensors.numpy.save_file({"embeddings": emb}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cached_embeddings(
    encoder: Encoder | Callable[[], Encoder], texts: list[str], max_len: int, entry: Path
) -> np.ndarray:
    """The embeddings of the texts of attention cache ``entry`` (same encoder, texts and
    ``max_len``), computed and stored there if it has none. ``encoder`` may be a function
    that loads it: then it is loaded only when the entry has no embeddings yet (extraction
    writes them), so a study never loads its encoder a second time."""
    path = Path(entry) / EMBEDDINGS_FILE
    with waiting_lock(path.with_suffix(".lock"), "the embedding cache", "cache_dir"):
        if path.exists():
            try:
                emb = safetensors.numpy.load_file(str(path))["embeddings"]
                if emb.shape[0] == len(texts):
                    log.info("reusing cached embeddings %s: encoder not run", path)
                    return emb
            except Exception as exc:  # a damaged file of any kind is rebuilt, not read
                log.warning("embedding cache %s is unreadable (%s); rebuilding it", path, exc)
        log.info("computing mean-pooled embeddings of %d sentences", len(texts))
        encoder = encoder() if callable(encoder) else encoder
        emb = mean_pooled(encoder, texts, max_len)
        write_embeddings(path, encoder, max_len, emb)
        return emb
