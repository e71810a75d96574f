"""Row 10: fine-tuning MiniLM, length-sorted batches against padding every batch to max_len.

Both loops train the very same batches (same sentences, same order) from the same
weights; only the padding differs: to the batch's longest sentence, or to ``max_len`` as a
plain loop does. With ``--full`` the row also times one whole epoch over BABE's train
split with the harness's loop (issue 13 quotes about 95 s for a plain loop here).
"""

from __future__ import annotations

import math
import time

import numpy as np

from bench.common import MAX_LEN, Context, Row, log, ratio, rng_subset
from harness.core.runtime import extraction_threads, num_threads
from harness.encoders.finetune import build_model
from harness.encoders.finetune_loop import make_optimizer, train_batches, train_epoch
from harness.encoders.load import tokenize
from harness.studyfile.schema import FinetuneConfig

BATCH_SIZE = 32


def timed_epoch(ctx: Context, ids, batches: list[np.ndarray], pad_to: int | None) -> float:
    """Wall seconds of one training pass over ``batches`` from fresh MiniLM weights (the
    model is built before the clock starts)."""
    model = build_model(ctx.encoder, ctx.dataset.positive_label, seed=0)
    optimizer, scheduler = make_optimizer(model, FinetuneConfig(), steps=len(batches))
    pad_id = ctx.encoder.tokenizer.pad_token_id or 0
    start = time.perf_counter()
    train_epoch(model, optimizer, scheduler, ids, ctx.dataset.labels, batches, pad_id, pad_to)
    return time.perf_counter() - start


def row_finetune(ctx: Context) -> list[Row]:
    n = 256 if ctx.quick else 512
    repeats = 1 if ctx.quick else 2
    train = ctx.split.train
    idx = train[rng_subset(len(train), n)]
    ids = tokenize(ctx.encoder, ctx.dataset.texts, MAX_LEN)
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    batches = train_batches(lengths, idx, BATCH_SIZE, np.random.default_rng(0))
    seconds: dict[str, list[float]] = {"sorted": [], "padded": []}
    with num_threads(extraction_threads()):
        timed_epoch(ctx, ids, batches[:2], None)  # one-off costs of the first training step
        for r in range(repeats):  # taking turns, so a burst of load lands on both
            for name, pad_to in (("sorted", None), ("padded", MAX_LEN)):
                log(f"row 10: {n} sentences, {name} batches, repeat {r + 1}/{repeats}")
                seconds[name].append(timed_epoch(ctx, ids, batches, pad_to))
        full = None
        if ctx.full:
            log(f"row 10: one epoch over all {len(train)} training sentences, length-sorted")
            all_batches = train_batches(lengths, train, BATCH_SIZE, np.random.default_rng(0))
            full = timed_epoch(ctx, ids, all_batches, None)
    best = {name: min(s) for name, s in seconds.items()}
    rate = {name: n / s for name, s in best.items()}
    speedup = ratio(best["padded"], best["sorted"])
    values = {
        "sentences": n,
        "batch_size": BATCH_SIZE,
        "max_len": MAX_LEN,
        "threads": extraction_threads(),
        "mean_tokens": float(lengths[idx].mean()),
        "seconds": seconds,
        "sentences_per_s": rate,
        "speedup": speedup,
    }
    rows = [
        Row(
            "10",
            f"fine-tuning MiniLM, length-sorted vs padded to {MAX_LEN} "
            f"({n} BABE train sentences, batch {BATCH_SIZE}, AdamW)",
            f"{math.floor(100 * speedup) / 100:.2f}× ({rate['sorted']:.1f} vs "
            f"{rate['padded']:.1f} sentences/s)",
            "≥ 1.5×",
            speedup >= 1.5,
            values,
        )
    ]
    if full is not None:
        rows.append(
            Row(
                "10",
                f"one fine-tuning epoch over BABE's train split ({len(train)} sentences), "
                "length-sorted",
                f"{full:.0f} s ({len(train) / full:.1f} sentences/s)",
                "a few minutes for 2 epochs",
                2 * full <= 300,
                {"seconds": full, "sentences": len(train)},
            )
        )
    return rows
