"""The fine-tuning loop of an encoder with a classification head, read top to bottom.

Batches are **length-sorted**: the train positions are sorted by token length (random
order among equal lengths), cut into batches and the batches shuffled, each epoch from
one seeded generator. Each batch is padded only to its own longest sentence, so a batch
of 20-token sentences does not run 80 positions through every layer (BENCHMARKS.md,
row 10, measures the gain against padding every batch to ``max_len``). The loss is
cross-entropy over the two labels; AdamW with an optional linear warm-up and decay.

Only ``train_batches`` decides what a training step sees, and it draws from the train
positions alone; the validation positions are only ever predicted, in inference mode.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness.core import TrainingDiverged, extraction_threads, make_batches, num_threads
from harness.stats import compute_metrics

if TYPE_CHECKING:
    from harness.studyfile import FinetuneConfig

log = logging.getLogger("harness")

#: ``on_epoch(epoch, train_loss, val_auc)``, e.g. to log the curves to MLflow
EpochCallback = Callable[[int, float, float], None]
#: gradients are clipped to this norm, the usual guard for BERT fine-tuning at lr ~ 3e-5
MAX_GRAD_NORM = 1.0


@dataclass
class TrainedClassifier:
    best_epoch: int
    best_val_auc: float
    history: list[dict[str, float]] = field(default_factory=list)


def batch_inputs(
    ids: list[np.ndarray], idx: np.ndarray, pad_id: int, device, width: int | None = None
) -> dict[str, torch.Tensor]:
    """Token ids and attention mask of sentences ``idx``, padded to ``width`` (default:
    the batch's longest sentence)."""
    lens = [len(ids[i]) for i in idx]
    width = width or max(lens)
    input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, (i, n) in enumerate(zip(idx, lens, strict=True)):
        input_ids[row, :n] = torch.tensor(ids[i])
        mask[row, :n] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


def train_batches(
    lengths: np.ndarray, train_idx: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch's batches of train positions: length-sorted, batch order shuffled."""
    return make_batches(lengths, train_idx, batch_size, bucketing=True, rng=rng)


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    ids: list[np.ndarray],
    labels: np.ndarray,
    batches: list[np.ndarray],
    pad_id: int,
    pad_to: int | None = None,
    bar: tqdm | None = None,
) -> float:
    """One pass over ``batches``; the mean training loss. ``pad_to`` pads every batch to
    that width (the plain loop the benchmark compares with) instead of its longest."""
    model.train()
    device = next(model.parameters()).device
    total, seen = 0.0, 0
    for b in batches:
        inputs = batch_inputs(ids, b, pad_id, device, pad_to)
        y = torch.from_numpy(labels[b].astype(np.int64)).to(device)
        loss = F.cross_entropy(model(**inputs).logits, y)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"fine-tuning loss became {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * len(b)
        seen += len(b)
        if bar is not None:
            bar.update(len(b))
            bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
    return total / seen


@torch.inference_mode()
def length_sorted_proba(
    model: torch.nn.Module,
    ids: list[np.ndarray],
    idx: np.ndarray,
    pad_id: int,
    batch_size: int = 64,
) -> np.ndarray:
    """Class-1 softmax of sentences ``idx``, float64, in the order of ``idx``."""
    model.eval()
    device = next(model.parameters()).device
    idx = np.asarray(idx)
    order = np.argsort([-len(ids[i]) for i in idx], kind="stable")
    out = np.empty(len(idx), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        pos = order[start : start + batch_size]
        logits = model(**batch_inputs(ids, idx[pos], pad_id, device)).logits
        out[pos] = torch.softmax(logits.float(), dim=-1)[:, 1].double().cpu().numpy()
    return out


def make_optimizer(model: torch.nn.Module, settings: FinetuneConfig, steps: int):
    """AdamW, no weight decay on biases and LayerNorm weights (the BERT recipe), and the
    linear warm-up/decay schedule or none."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": settings.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=settings.lr)
    if settings.schedule == "constant":
        return optimizer, None
    from transformers import get_linear_schedule_with_warmup

    warmup = round(settings.warmup_fraction * steps)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, steps)


def train_classifier(
    model: torch.nn.Module,
    ids: list[np.ndarray],
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    settings: FinetuneConfig,
    pad_id: int,
    *,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
) -> TrainedClassifier:
    """Fine-tune ``model`` on ``train_idx``; keep the weights of the epoch with the best
    validation AUC, stopping after ``patience`` epochs without a better one."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    steps = settings.epochs * math.ceil(len(train_idx) / settings.batch_size)
    optimizer, scheduler = make_optimizer(model, settings, steps)
    result = TrainedClassifier(best_epoch=-1, best_val_auc=float("-inf"))
    best_state = None
    # the encoder's matrix products are large enough to split across cores (threads.py)
    with num_threads(extraction_threads()):
        for epoch in range(settings.epochs):
            batches = train_batches(lengths, train_idx, settings.batch_size, rng)
            desc = f"fine-tuning, epoch {epoch + 1}/{settings.epochs}"
            with tqdm(total=len(train_idx), desc=desc, unit="sent", disable=not progress) as bar:
                loss = train_epoch(
                    model, optimizer, scheduler, ids, labels, batches, pad_id, bar=bar
                )
            probs = length_sorted_proba(model, ids, val_idx, pad_id)
            val_auc = compute_metrics(labels[val_idx], probs)["auc"]
            result.history.append({"epoch": epoch, "train_loss": loss, "val_auc": val_auc})
            log.info(
                "fine-tuning epoch %d: train loss %.4f, validation AUC %.4f", epoch, loss, val_auc
            )
            if result.best_epoch < 0 or val_auc > result.best_val_auc:
                result.best_epoch, result.best_val_auc = epoch, val_auc
                best_state = {
                    k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
                }
            if on_epoch is not None:
                on_epoch(epoch, loss, val_auc)
            if epoch - result.best_epoch >= settings.patience:
                break
    if result.best_epoch != len(result.history) - 1:
        model.load_state_dict(best_state)
    return result
