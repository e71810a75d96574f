"""Row 15: one trial's training with its features streamed from the cache a batch at a
time, against the same training on the whole float32 array in memory (the path before
issue #19). Same model, same seed, same batches: the curves must agree to 1e-6."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from bench.common import LAYERS, MAX_LEN, Context, Row, log, ratio, run_child
from harness.attention.cache import AttentionCache
from harness.core.runtime import num_threads, train_threads
from harness.data.datasets import load_dataset
from harness.data.split import make_split
from harness.models.reader import build_classifier
from harness.models.train import TrainSettings, train
from harness.studyfile.specs import ClassifierSpec, FeatureSpec

#: the two ends of babe-quick's space: a small rows view and the largest stacked view
CASES = {
    "bi-GRU 64, rows, sum of layers 3-5": (
        ClassifierSpec(kind="gru", hidden_size=64, bidirectional=True),
        FeatureSpec(LAYERS, None, "sum", "rows"),
    ),
    "transformer 64×2, relative, stack of 36 maps": (
        ClassifierSpec(kind="transformer", hidden_size=64, num_layers=2, num_heads=4, ff_size=128),
        FeatureSpec(LAYERS, None, "stack", "relative"),
    ),
}

CHILD = """
import json, sys
from bench.scale import child
print("RESULT", json.dumps(child(*sys.argv[1:])), flush=True)
"""


def child(cache_path: str, case: str, mode: str, epochs: str) -> dict:
    """One training in a fresh process: epoch wall times, the curve and the peak RSS."""
    spec, features = CASES[case]
    cache = AttentionCache(cache_path)
    dataset = load_dataset("babe")
    split = make_split(dataset, val_fraction=0.15, test_fraction=0.15, seed=0)
    with num_threads(train_threads()):
        start = time.perf_counter()
        x, lengths = cache.features(features)
        if mode == "memory":
            x = np.asarray(x)
        built = time.perf_counter() - start
        torch.manual_seed(0)
        model = build_classifier(spec, x.shape[2], MAX_LEN)
        stamps = [time.perf_counter()]
        settings = TrainSettings(epochs=int(epochs), patience=int(epochs), seed=0)
        result = train(
            model,
            x,
            torch.from_numpy(lengths),
            dataset.labels,
            split.train,
            split.val,
            settings,
            on_epoch=lambda *_: stamps.append(time.perf_counter()),
        )
    peak = next(
        int(line.split()[1]) * 1024
        for line in open("/proc/self/status")
        if line.startswith("VmHWM:")
    )
    return {
        "build_seconds": built,
        "epoch_seconds": np.diff(stamps).tolist(),
        "history": result.history,
        "peak_rss_bytes": peak,
    }


def row_streaming(ctx: Context) -> list[Row]:
    cache = ctx.cache
    epochs = 2  # the first carries a process's one-off costs (torch's lazy imports)
    rows = []
    for case in CASES:
        runs: dict[str, list[dict]] = {"stream": [], "memory": []}
        for _ in range(1 if ctx.quick else 2):  # A B A B: load lands on both
            for mode in runs:
                log(f"row 15: {case}, {mode}, {epochs} epoch(s) in a child process")
                out = run_child(
                    [sys.executable, "-c", CHILD, str(cache.path), case, mode, str(epochs)]
                ).output
                line = next(x for x in out.splitlines() if x.startswith("RESULT "))
                runs[mode].append(json.loads(line[len("RESULT ") :]))
        best = {m: min(min(r["epoch_seconds"][1:]) for r in rs) for m, rs in runs.items()}
        peak = {m: min(r["peak_rss_bytes"] for r in rs) for m, rs in runs.items()}
        curves = [runs[m][0]["history"] for m in runs]
        diff = max(
            abs(a[k] - b[k])
            for a, b in zip(*curves, strict=True)
            for k in ("train_loss", "val_auc")
        )
        slowdown = ratio(best["stream"], best["memory"])
        rows.append(
            Row(
                "15",
                f"a trial's epoch, features streamed vs in memory ({case})",
                f"{best['stream']:.1f} s vs {best['memory']:.1f} s ({slowdown:.2f}×); "
                f"peak RSS {peak['stream'] / 1e6:.0f} MB vs {peak['memory'] / 1e6:.0f} MB; "
                f"curves differ by {diff:.1e}",
                "≤ 1.3× the time, less memory, same curve (≤ 1e-6)",
                slowdown <= 1.3 and peak["stream"] < peak["memory"] and diff <= 1e-6,
                {"runs": runs, "slowdown": slowdown, "max_curve_diff": diff},
            )
        )
    return rows
