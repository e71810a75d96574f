"""Row 5: a training epoch with length bucketing against the plain padded loop."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from bench.common import LAYERS, MAX_LEN, Context, Row, log, ratio
from harness.classifiers import ClassifierSpec, build_classifier
from harness.threads import num_threads, train_threads
from harness.train import TrainSettings, train

GRU = ClassifierSpec(kind="gru", hidden_size=64, bidirectional=True)
OTHERS = {
    "lstm": ClassifierSpec(kind="lstm", hidden_size=64),
    "transformer": ClassifierSpec(
        kind="transformer", hidden_size=64, num_layers=2, num_heads=4, ff_size=128, pooling="mean"
    ),
}


def timed_training(
    ctx: Context, spec: ClassifierSpec, x, lengths, bucketing: bool, epochs: int
) -> tuple[list[float], float]:
    """Seconds of each epoch (training plus validation) and the best validation AUC."""
    torch.manual_seed(0)
    model = build_classifier(spec, MAX_LEN, MAX_LEN)
    stamps = [time.perf_counter()]
    settings = TrainSettings(epochs=epochs, patience=epochs, bucketing=bucketing, seed=0)
    result = train(
        model,
        x,
        lengths,
        ctx.dataset.labels,
        ctx.split.train,
        ctx.split.val,
        settings,
        on_epoch=lambda *_: stamps.append(time.perf_counter()),
    )
    return list(np.diff(stamps)), result.best_val_auc


def row_training(ctx: Context) -> list[Row]:
    x_np, lengths_np = ctx.cache.features(LAYERS, "all", "sum")
    x, lengths = torch.from_numpy(x_np), torch.from_numpy(lengths_np)
    epochs = 2 if ctx.quick else 4
    values: dict = {"epochs": epochs, "threads": train_threads()}
    with num_threads(train_threads()):
        # one-off costs of a process's first training (torch.optim imports torch._dynamo)
        timed_training(ctx, GRU, x[:200], lengths[:200], True, 1)
        log(f"row 5: bidirectional GRU 64, {epochs} epochs bucketed, then {epochs} padded")
        runs = {b: timed_training(ctx, GRU, x, lengths, b, epochs) for b in (True, False)}
        others = {}
        if not ctx.quick:
            for name, spec in OTHERS.items():
                log(f"row 5: {name}, 2 epochs each way (for information)")
                times = {b: timed_training(ctx, spec, x, lengths, b, 2)[0] for b in (True, False)}
                others[name] = ratio(min(times[False]), min(times[True]))
    epoch = {b: statistics.median(t) for b, (t, _) in runs.items()}
    auc = {b: a for b, (_, a) in runs.items()}
    speedup = ratio(epoch[False], epoch[True])
    gap = abs(auc[True] - auc[False])
    values.update(
        epoch_seconds={"bucketed": runs[True][0], "padded": runs[False][0]},
        best_val_auc={"bucketed": auc[True], "padded": auc[False]},
        speedup=speedup,
        other_kinds_speedup=others,
    )
    extra = ", ".join(f"{k} {v:.2f}×" for k, v in others.items())
    return [
        Row(
            "5",
            "training epoch, bucketed vs padded (bi-GRU 64, 3 layers summed)",
            f"{speedup:.2f}× ({epoch[True]:.1f} vs {epoch[False]:.1f} s/epoch)"
            + (f"; {extra}" if extra else ""),
            "≥ 1.5×",
            speedup >= 1.5,
            values,
        ),
        Row(
            "5",
            "best validation AUC, bucketed vs padded, same seed",
            f"{auc[True]:.4f} vs {auc[False]:.4f} (Δ {gap:.4f})",
            "|Δ| ≤ 0.01",
            gap <= 0.01,
        ),
    ]
