"""Row 5: a training epoch with length bucketing against the plain padded loop."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from bench.common import LAYERS, MAX_LEN, Context, Row, log, ratio
from harness.core.runtime import num_threads, train_threads
from harness.models.reader import build_classifier
from harness.models.train import TrainSettings, train
from harness.studyfile.specs import ClassifierSpec

#: one reader of each kind, sized like babe-quick's (the GRU as the seed notebook's)
READERS = {
    "bi-GRU 64": ClassifierSpec(kind="gru", hidden_size=64, bidirectional=True),
    "LSTM 64": ClassifierSpec(kind="lstm", hidden_size=64),
    "transformer 64×2": ClassifierSpec(
        kind="transformer", hidden_size=64, num_layers=2, num_heads=4, ff_size=128, pooling="mean"
    ),
}


def timed_training(
    ctx: Context, spec: ClassifierSpec, x, lengths, bucketing: bool, epochs: int, rows: int = 0
) -> tuple[list[float], list[float], float]:
    """Wall and CPU seconds of each epoch (training plus validation) and the best
    validation AUC; ``rows`` > 0 trains on that many rows only (a warm-up)."""
    torch.manual_seed(0)
    model = build_classifier(spec, MAX_LEN, MAX_LEN)
    stamps = [(time.perf_counter(), time.process_time())]
    settings = TrainSettings(epochs=epochs, patience=epochs, bucketing=bucketing, seed=0)
    train_idx, val_idx = ctx.split.train, ctx.split.val
    if rows:
        train_idx, val_idx = train_idx[:rows], val_idx[:rows]
    result = train(
        model,
        x,
        lengths,
        ctx.dataset.labels,
        train_idx,
        val_idx,
        settings,
        on_epoch=lambda *_: stamps.append((time.perf_counter(), time.process_time())),
    )
    wall, cpu = np.diff(np.array(stamps), axis=0).T
    return wall.tolist(), cpu.tolist(), result.best_val_auc


def row_training(ctx: Context) -> list[Row]:
    stream, lengths_np = ctx.cache.features(LAYERS, "all", "sum")
    x, lengths = np.asarray(stream), torch.from_numpy(lengths_np)
    epochs = 2 if ctx.quick else 3
    rows = []
    with num_threads(train_threads()):
        # one-off costs of a process's first training (torch.optim imports torch._dynamo)
        timed_training(ctx, READERS["LSTM 64"], x, lengths, True, 1, rows=200)
        for name, spec in READERS.items():
            log(f"row 5: {name}, {epochs} epochs bucketed, then {epochs} padded")
            runs = {b: timed_training(ctx, spec, x, lengths, b, epochs) for b in (True, False)}
            # the least disturbed epoch of each; CPU time (1 thread) as a load-free check
            epoch = {b: min(wall) for b, (wall, _, _) in runs.items()}
            cpu = {b: min(c) for b, (_, c, _) in runs.items()}
            auc = {b: a for b, (_, _, a) in runs.items()}
            speedup = ratio(epoch[False], epoch[True])
            gap = auc[True] - auc[False]
            values = {
                "epochs": epochs,
                "threads": train_threads(),
                "epoch_seconds": {"bucketed": runs[True][0], "padded": runs[False][0]},
                "epoch_cpu_seconds": {"bucketed": runs[True][1], "padded": runs[False][1]},
                "best_val_auc": {"bucketed": auc[True], "padded": auc[False]},
                "speedup": speedup,
                "cpu_speedup": ratio(cpu[False], cpu[True]),
            }
            rows.append(
                Row(
                    "5",
                    f"training epoch, bucketed vs padded: {name} (3 layers summed, all BABE)",
                    # rounded down, so that a figure that misses 1.5 never prints as 1.50
                    f"{math.floor(100 * speedup) / 100:.2f}× ({epoch[True]:.1f} vs "
                    f"{epoch[False]:.1f} s/epoch; CPU "
                    f"{values['cpu_speedup']:.2f}×); val AUC {auc[True]:.4f} vs "
                    f"{auc[False]:.4f} (Δ {gap:+.4f})",
                    "≥ 1.5×, AUC within ±0.01",
                    speedup >= 1.5 and abs(gap) <= 0.01,
                    values,
                )
            )
    return rows
