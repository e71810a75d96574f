"""Row 9: the position-free ``relative`` view of all 72 MiniLM heads on all of BABE,
computed from the warm attention cache, against a plain per-sentence numpy loop; the
peak memory of computing it; and the head sweep's access to its pooled features."""

from __future__ import annotations

import os
import shutil
import sys
import time

import numpy as np

from bench.common import Context, Row, interleaved, log, ratio, run_child
from harness.attention import cache as view_cache
from harness.attention.cache import AttentionCache, open_view
from harness.attention.views import view_size

W = 3
#: sentences on which the loop's and the view's features are compared
SAMPLE = 200
GB = 1e9

#: a fresh process: open the cache, drop its stored view, compute it again; print VmHWM
PEAK_CHILD = """
import shutil, sys
from harness.attention.cache import AttentionCache
from harness.attention.cache import open_view
cache = AttentionCache(sys.argv[1])
shutil.rmtree(cache.path / "views", ignore_errors=True)
before = [l for l in open("/proc/self/status") if l.startswith("VmRSS:")][0].split()[1]
open_view(cache, w=int(sys.argv[2]), progress=False)
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print("RSS_BEFORE_KB", before, "PEAK_RSS_KB", peak, flush=True)
"""


def loop_stats(cache: AttentionCache, i: int, w: int = W) -> np.ndarray:
    """The plain way: one sentence at a time, numpy on its ``[L*H, n, n]`` maps.
    Returns ``[n, L*H, F]`` float32 in ``feature_names("relative", w)`` order."""
    a = cache.maps(i).astype(np.float32)
    n = a.shape[-1]
    a = a.reshape(-1, n, n)
    rows = np.arange(n)
    out = np.zeros((n, a.shape[0], view_size("relative", w)), np.float32)
    out[:, :, 0] = a[:, :, 0].T
    out[:, :, 1] = a[:, :, n - 1].T
    offsets = [(2, 0), (3, -1), (4, 1)] + list(
        enumerate([*range(-w, -1), *range(2, w + 1)], start=7)
    )
    for col, d in offsets:
        ok = (rows + d >= 0) & (rows + d < n)
        out[ok, :, col] = a[:, rows[ok], rows[ok] + d].T
    safe = np.where(a > 0, a, 1.0)
    out[:, :, 5] = -(a * np.log(safe)).sum(-1).T
    out[:, :, 6] = a.max(-1).T
    return out


def loop_all(cache: AttentionCache) -> list[np.ndarray]:
    return [loop_stats(cache, i) for i in range(len(cache))]


def rebuild(cache: AttentionCache, threads: int) -> None:
    """Drop the stored view and compute it again on ``threads`` threads."""
    shutil.rmtree(cache.path / "views", ignore_errors=True)
    before = os.environ.get("HARNESS_NUM_THREADS")
    os.environ["HARNESS_NUM_THREADS"] = str(threads)
    try:
        open_view(cache, W, progress=False)
    finally:
        if before is None:
            os.environ.pop("HARNESS_NUM_THREADS", None)
        else:
            os.environ["HARNESS_NUM_THREADS"] = before


def sample_max_diff(cache: AttentionCache) -> float:
    """The loop's float32 statistics against the stored (fp16) view on a sample."""
    view = open_view(cache, W, progress=False)
    sample = np.random.default_rng(0).choice(len(cache), SAMPLE, replace=False)
    expected = {int(i): loop_stats(cache, int(i)) for i in sample}  # [n, L*H, F]
    worst, h = 0.0, cache.num_heads
    for layer in range(cache.num_layers):  # one layer at a time: 155 MB, not 930
        x, lengths = view.token_features([(layer, head) for head in range(h)], "relative")
        for i, stats in expected.items():
            n = int(lengths[i])
            ours = x[i, :n].reshape(n, h, -1)
            worst = max(worst, float(np.abs(ours - stats[:, layer * h : (layer + 1) * h]).max()))
            assert not x[i, n:].any()
    return worst


def head_sweep_access(cache: AttentionCache) -> dict[str, float]:
    """Open the stored view as a new process would (crc32 check included), then read
    the pooled features of each single head."""
    view_cache._VERIFIED.clear()
    start = time.perf_counter()
    view = open_view(AttentionCache(cache.path), W, progress=False)
    opened = time.perf_counter() - start
    for layer in range(view.num_layers):
        for head in range(view.num_heads):
            x = view.sentence_features([(layer, head)], "relative")
            assert x.shape == (len(cache), view.num_features)
    return {"open_s": opened, "features_s": time.perf_counter() - start - opened}


def peak_memory(cache: AttentionCache) -> tuple[float, float]:
    run = run_child([sys.executable, "-c", PEAK_CHILD, str(cache.path), str(W)])
    words = [line for line in run.output.splitlines() if line.startswith("RSS_BEFORE_KB")][-1]
    _, before, _, peak = words.split()
    return int(before) * 1024 / GB, int(peak) * 1024 / GB


def row_views(ctx: Context) -> list[Row]:
    cache, n = ctx.cache, len(ctx.cache)
    heads = cache.num_layers * cache.num_heads
    loop_all(cache)  # warms the page cache for both
    repeats = 1 if ctx.quick else 2
    log(f"row 9: relative view (w={W}) of {heads} heads × {n} sentences; {repeats} repeats")
    times = interleaved(
        {
            "view_1_thread": lambda: rebuild(cache, 1),
            "view_2_threads": lambda: rebuild(cache, 2),
            "numpy_loop": lambda: loop_all(cache),
        },
        repeats,
    )
    best = {name: min(t) for name, t in times.items()}
    speed = {name: n / s for name, s in best.items()}
    speedup = ratio(best["numpy_loop"], best["view_1_thread"])
    diff = sample_max_diff(cache)
    if diff > 4e-3:  # fp16 storage rounds entropies (< log 80 < 8) by at most 2**-9
        raise RuntimeError(f"row 9: the view and the loop disagree by {diff:.4f}")
    log("row 9: peak RSS of computing the view in a fresh process")
    rss_before, rss_peak = peak_memory(cache)
    sweep = head_sweep_access(cache)
    view = open_view(cache, W, progress=False)
    values = {
        "seconds": times,
        "sentences_per_s": speed,
        "speedup_1_thread_vs_loop": speedup,
        "max_abs_diff_loop_vs_view_on_sample": diff,
        "sample_sentences": SAMPLE,
        "rss_before_gb": rss_before,
        "peak_rss_gb": rss_peak,
        "view_disk_mb": view.nbytes / 1e6,
        "attention_cache_disk_mb": cache.nbytes / 1e6,
        "head_sweep_access": sweep,
    }
    log(f"row 9: {values}")
    return [
        Row(
            "9",
            f"relative view of all {heads} heads from a warm cache, {n:,} sentences",
            f"{speed['view_1_thread']:,.0f} sent/s on 1 thread, the default "
            f"({speedup:.1f}× a per-sentence numpy loop; "
            f"{speed['view_2_threads']:,.0f} sent/s on 2 threads; "
            f"equal to {diff:.1e} on {SAMPLE} sentences)",
            "–",
            None,
            values,
        ),
        Row(
            "9",
            "peak RSS of computing the view (fresh process)",
            f"{rss_peak:.2f} GB ({rss_before:.2f} GB before; view "
            f"{view.nbytes / 1e6:.0f} MB on disk)",
            "≤ 1.5 GB",
            rss_peak <= 1.5,
        ),
        Row(
            "9",
            f"head-sweep access: pooled features of each of {heads} single heads",
            f"{sweep['features_s'] * 1e3:.0f} ms (+ {sweep['open_s']:.2f} s to open and verify)",
            "–",
            None,
        ),
    ]
