"""The training loop: one function to read top to bottom.

Batches are bucketed by sentence length by default: each batch is cut to its own
longest sentence, so a GRU reading 42-token sentences does not step through 80 rows.
The readers ignore padding (RNN states past a length are never read, the transformer
masks padded keys), so bucketing changes the speed, not what a given set of weights
computes. Features come as an array or as a cache's stream (``harness.attention.stream``):
either way only the current batch's rows are float32 tensors.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from harness.attention import Features
from harness.core import TrainingDiverged, make_batches
from harness.models.base import FitResult
from harness.stats import compute_metrics


@dataclass
class TrainSettings:
    epochs: int = 10
    patience: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    bucketing: bool = True
    seed: int = 0


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so a CPU run repeats exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _batch(
    x: Features,
    lengths: torch.Tensor,
    b: np.ndarray,
    bucketing: bool,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``b`` of ``x`` (an array, or a cache's stream that builds just these rows),
    cut to their longest sentence when bucketing, on the model's device."""
    lens = lengths[torch.from_numpy(b)]
    width = int(lens.max()) if bucketing else x.shape[1]
    return torch.from_numpy(np.ascontiguousarray(x[b, :width])).to(device), lens.to(device)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    x: Features,
    lengths: torch.Tensor,
    idx: np.ndarray,
    batch_size: int = 256,
    bucketing: bool = True,
) -> np.ndarray:
    """Logits for rows ``idx``, in that order (the output does not depend on padding, so
    ``bucketing`` changes only the speed)."""
    model.eval()
    device = next(model.parameters()).device
    out = np.empty(len(idx), dtype=np.float32)
    pos = {int(i): p for p, i in enumerate(idx)}
    for b in make_batches(lengths.numpy(), idx, batch_size, bucketing):
        xb, lb = _batch(x, lengths, b, bucketing, device)
        out[[pos[int(i)] for i in b]] = model(xb, lb).cpu().numpy()
    return out


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return torch.sigmoid(torch.from_numpy(logits)).numpy()


def train(
    model: nn.Module,
    x: Features,
    lengths: torch.Tensor,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    settings: TrainSettings,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> FitResult:
    """Fit ``model`` with Adam on BCE-with-logits; early-stop on validation AUC.

    ``on_epoch(epoch, train_loss, val_auc)`` runs after each epoch; it may raise (Optuna's
    ``TrialPruned``) to stop the trial. The model ends with its best-epoch weights.
    """
    seed_everything(settings.seed)
    device = next(model.parameters()).device  # the batches go where the model is
    rng = np.random.default_rng(settings.seed)
    y = torch.from_numpy(labels.astype(np.float32))
    optimizer = torch.optim.Adam(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    loss_fn = nn.BCEWithLogitsLoss()
    result = FitResult(best_epoch=-1, best_val_auc=float("-inf"))
    best_state = copy.deepcopy(model.state_dict())
    for epoch in range(settings.epochs):
        model.train()
        total, seen = 0.0, 0
        for b in make_batches(
            lengths.numpy(), train_idx, settings.batch_size, settings.bucketing, rng
        ):
            xb, lb = _batch(x, lengths, b, settings.bucketing, device)
            loss = loss_fn(model(xb, lb), y[torch.from_numpy(b)].to(device))
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} in epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(b)
            seen += len(b)
        val_probs = sigmoid(
            predict_logits(model, x, lengths, val_idx, bucketing=settings.bucketing)
        )
        val_auc = compute_metrics(labels[val_idx], val_probs)["auc"]
        result.history.append({"epoch": epoch, "train_loss": total / seen, "val_auc": val_auc})
        if val_auc > result.best_val_auc:
            result.best_epoch, result.best_val_auc = epoch, val_auc
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch is not None:
            on_epoch(epoch, total / seen, val_auc)
        if epoch - result.best_epoch >= settings.patience:
            break
    model.load_state_dict(best_state)
    return result
