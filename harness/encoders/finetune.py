"""Intermediary encoders: fine-tune an encoder on a labelled task, then probe its attention.

The research question is how training on a task changes which heads carry the signal.
Done naively it leaks: an encoder fine-tuned on sentences that later sit in the probe's
validation or test split makes every probe on its attention optimistic. So:

* ``data: study`` fine-tunes on the study's **train split only**, picking the best epoch
  on its validation split; train rows whose text equals a validation or test sentence
  (after whitespace normalisation) are left out too, so no held-out sentence reaches a
  training batch even by duplication.
* ``data: PATH`` fine-tunes on another labelled file (an intermediary task). It is refused
  if it shares any sentence with the study's validation or test split (``leak_check``);
  a seeded, stratified slice of it (``val_fraction``) picks the best epoch, the rest trains.
* The training batches are cut from the train positions alone (``train_batches``), and the
  model sees nothing else in training mode: the tests check the tokens it receives.

Choosing those rows is ``harness.encoders.guard``; this module trains and caches.

The model is transformers' own ``AutoModelForSequenceClassification`` with **two labels**
(softmax, cross-entropy): the standard head, which any transformers user can reload, and
whose class-1 softmax is the positive-class probability the harness reports everywhere.

A fine-tuned encoder is saved once, as safetensors + config + tokenizer files and a
``finetune.json`` record, in ``CACHE/finetuned/KEY``, KEY a hash of (base encoder
fingerprint, data sha256, split fingerprint, settings); written to a temporary folder and
renamed into place under a file lock, like the attention cache. The folder is an ordinary
encoder directory, so ``load_encoder(folder)`` and ``extract_attention`` work on it as on
any other, with a fingerprint of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from harness.core import HarnessError, default_cache_dir, default_device
from harness.data import Dataset, Split
from harness.encoders.finetune_loop import (
    EpochCallback,
    TrainedClassifier,
    length_sorted_proba,
    train_classifier,
)
from harness.encoders.guard import FinetuneData, finetune_data
from harness.encoders.load import Encoder, fingerprint, quiet_transformers, tokenize
from harness.studyfile import FinetuneConfig

log = logging.getLogger("harness")

FORMAT = 1
RECORD = "finetune.json"


def finetune_key(base: Encoder, data: FinetuneData, settings: FinetuneConfig) -> str:
    parts = {
        "format": FORMAT,
        "base": base.fingerprint,
        "data_sha256": data.sha256,
        "split": data.split_fingerprint(),
        "settings": settings.key_dict(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Finetuned:
    """A fine-tuned encoder in its cache folder, and the record of how it was made.

    ``record["history"]`` holds the per-epoch train loss and validation AUC also when the
    encoder was reused (``reused``), so a run that did not train can still log the curves.
    """

    encoder: Encoder
    path: Path
    key: str
    reused: bool
    record: dict

    @property
    def history(self) -> list[dict]:
        return self.record["history"]

    def classifier(self, device: str = "cpu") -> FinetunedClassifier:
        return FinetunedClassifier(self.path, device=device)


def finetune_encoder(
    base: Encoder,
    settings: FinetuneConfig,
    dataset: Dataset,
    split: Split,
    *,
    cache_dir: Path | str | None = None,
    device: str | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
) -> Finetuned:
    """Fine-tune ``base`` (or reuse the cached result) and return it as an ``Encoder``.

    ``cache_dir`` is the study's cache root (the attention cache's default); the folder is
    ``cache_dir/finetuned/KEY``. ``device`` defaults to ``core.default_device()``.
    ``on_epoch(epoch, train_loss, val_auc)`` runs after each epoch that is trained.
    """
    if base.init != "pretrained":
        raise HarnessError(
            f"cannot fine-tune {base.label}: fine-tuning starts from pretrained weights; "
            "use init: pretrained with finetune, or init: random without it"
        )
    data = finetune_data(settings, dataset, split)  # the leak check refuses before any work
    key = finetune_key(base, data, settings)
    root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "finetuned"
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    with FileLock(str(root / f"{key}.lock")):
        if (final / RECORD).exists():
            record = json.loads((final / RECORD).read_text())
            if fingerprint(final) == record.get("fingerprint"):
                log.info("reusing fine-tuned encoder %s (no fine-tuning)", final)
                return Finetuned(_as_encoder(base, final, key), final, key, True, record)
            log.warning("fine-tuned encoder %s does not match its record; rebuilding it", final)
        if final.exists():
            shutil.rmtree(final)
        record = _build(base, data, settings, key, final, device, progress, on_epoch)
    return Finetuned(_as_encoder(base, final, key), final, key, False, record)


def _as_encoder(base: Encoder, path: Path, key: str) -> Encoder:
    return Encoder(name=f"{base.name}+finetuned-{key[:8]}", path=path, device=base.device)


def _build(
    base: Encoder,
    data: FinetuneData,
    settings: FinetuneConfig,
    key: str,
    final: Path,
    device: str | None,
    progress: bool,
    on_epoch: EpochCallback | None,
) -> dict:
    """Train, then write the folder under a temporary name and rename it into place."""
    for stale in final.parent.glob(f"{final.name}.tmp-*"):  # only the lock holder writes
        shutil.rmtree(stale, ignore_errors=True)
    device = device or default_device()
    log.info(
        "fine-tuning %s on %d sentences of %s (%d validate), %d epoch(s) on %s into %s",
        base.name,
        len(data.train),
        data.source,
        len(data.val),
        settings.epochs,
        device,
        final,
    )
    start = time.perf_counter()
    model = build_model(base, data.positive_label, settings.seed).to(device)
    ids = tokenize(base, data.texts, settings.max_len)
    pad_id = base.tokenizer.pad_token_id or 0
    trained = train_classifier(
        model,
        ids,
        data.labels,
        data.train,
        data.val,
        settings,
        pad_id,
        on_epoch=on_epoch,
        progress=progress,
    )
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    try:
        with quiet_transformers():  # no "writing model shards" bar for one file
            model.save_pretrained(tmp)
        base.tokenizer.save_pretrained(tmp)
        record = _record(base, data, settings, key, trained, fingerprint(tmp), device, start)
        (tmp / RECORD).write_text(json.dumps(record, indent=2))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def build_model(base: Encoder, positive_label: str, seed: int) -> torch.nn.Module:
    """``base`` with a fresh two-label head drawn under ``seed``; class 1 is positive."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    with quiet_transformers():
        return AutoModelForSequenceClassification.from_pretrained(
            base.path,
            num_labels=2,
            id2label={0: f"not {positive_label}", 1: positive_label},
            label2id={f"not {positive_label}": 0, positive_label: 1},
        )


def _record(
    base: Encoder,
    data: FinetuneData,
    settings: FinetuneConfig,
    key: str,
    trained: TrainedClassifier,
    folder_fingerprint: str,
    device: str,
    start: float,
) -> dict:
    return {
        "format": FORMAT,
        "key": key,
        "fingerprint": folder_fingerprint,
        "base": {"name": base.name, "fingerprint": base.fingerprint},
        "data": {
            "source": data.source,
            "sha256": data.sha256,
            "split_fingerprint": data.split_fingerprint(),
            "positive_label": data.positive_label,
            "n_train": len(data.train),
            "n_val": len(data.val),
            "dropped_duplicates": data.dropped,
        },
        "settings": settings.model_dump(),
        "history": trained.history,
        "best_epoch": trained.best_epoch,
        "best_val_auc": trained.best_val_auc,
        "device": device,
        "seconds": time.perf_counter() - start,
    }


class FinetunedClassifier:
    """The fine-tuned model's own head, read from its folder: the ``baseline-finetuned``
    reference for the probes on its attention. Truncates at the ``max_len`` it was trained
    with; batches are length-sorted, which changes the speed, not the probabilities."""

    def __init__(self, path: Path | str, device: str = "cpu", batch_size: int = 64):
        self.path = Path(path)
        if not (self.path / RECORD).is_file():
            raise HarnessError(
                f"{self.path} is not a fine-tuned encoder folder (no {RECORD}); pass the "
                "folder finetune_encoder wrote (or its logged artifact)"
            )
        self.record = json.loads((self.path / RECORD).read_text())
        self.max_len = int(self.record["settings"]["max_len"])
        self.device = device
        self.batch_size = batch_size

    @cached_property
    def encoder(self) -> Encoder:
        return Encoder(name=self.path.name, path=self.path, device=self.device)

    @cached_property
    def model(self) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(self.path)
        return model.to(self.device).eval()

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Positive-class probability of each text, float64, in input order."""
        ids = tokenize(self.encoder, list(texts), self.max_len)
        pad_id = self.encoder.tokenizer.pad_token_id or 0
        return length_sorted_proba(self.model, ids, np.arange(len(ids)), pad_id, self.batch_size)
