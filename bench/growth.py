"""The growth curve (issue #19): what one study's parts cost as the corpus grows.

``python -m bench.growth [--sizes 3673,20000,100000]`` builds a corpus of each size,
extracts it into the compact cache (``cache: {keep: views}``), then measures, each in a
fresh child process so that its peak RSS is its own: one trial of a reader, one trial of
the linear probe, and the head sweep. It prints a table, writes the figures as JSON and
draws ``bench/growth.png``. ``--parts linear,sweep`` measures only those parts again, on
the caches an earlier run left in ``--workdir``, and keeps the other figures of ``--out``.

The corpora are real text: BABE's 3,673 sentences as they are, and beyond that BABE's
sentences drawn again with seeded word-level edits (each word, with probability 0.15,
dropped, doubled, swapped with the next or replaced by a word from another sentence),
labelled as their source and grouped with its article, so near-copies never cross the
split. No registry package ships a larger labelled English sentence corpus that this
machine can install without the Hugging Face hub.

Full maps are not extracted beyond BABE (100k sentences would take 28 GB): their bytes per
sentence are computed from the token lengths, exactly as the full entry would store them
(BENCHMARKS.md, row 2: the entry is 1.00× its unpadded fp16 size).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import MAX_LEN, ROOT, log, run_child

#: the reader and the probe each trial trains: babe-quick's largest inputs
READER = {"kind": "gru", "hidden_size": 64, "bidirectional": True}
LAYERS = (3, 4, 5)
EPOCHS = 2
EDIT_P = 0.15

CHILD = """
import json, sys
from bench import growth
print("RESULT", json.dumps(getattr(growth, sys.argv[1])(*sys.argv[2:])), flush=True)
"""


def build_corpus(n: int, path: Path, seed: int = 0) -> Path:
    """``n`` labelled sentences: BABE's own first, then edited copies (module docstring)."""
    from harness.data.datasets import load_dataset

    babe = load_dataset("babe")
    rng = np.random.default_rng(seed)
    vocabulary = sorted({w for t in babe.texts for w in t.split()})
    own = zip(babe.texts, babe.labels, babe.groups, strict=True)
    rows = [(t, int(y), str(g)) for t, y, g in own][:n]
    while len(rows) < n:
        i = int(rng.integers(len(babe)))
        words = babe.texts[i].split()
        out: list[str] = []
        j = 0
        while j < len(words):
            r = rng.random()
            if r < EDIT_P / 4:  # drop
                pass
            elif r < EDIT_P / 2:  # double
                out += [words[j], words[j]]
            elif r < 3 * EDIT_P / 4 and j + 1 < len(words):  # swap with the next
                out += [words[j + 1], words[j]]
                j += 1
            elif r < EDIT_P:  # replace
                out.append(vocabulary[int(rng.integers(len(vocabulary)))])
            else:
                out.append(words[j])
            j += 1
        rows.append((" ".join(out or words), int(babe.labels[i]), str(babe.groups[i])))
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label", "group"])
        writer.writerows(rows)
    return path


def _data(corpus: str):
    from harness.data.datasets import load_dataset
    from harness.data.split import make_split

    dataset = load_dataset(corpus, text_column="text", label_column="label", group_column="group")
    return dataset, make_split(dataset, val_fraction=0.15, test_fraction=0.15, seed=0)


def _cache(corpus: str, cache_dir: str, encoder=None):
    from harness.attention.extract import extract_attention
    from harness.encoders.load import load_encoder

    dataset, _ = _data(corpus)
    return extract_attention(
        encoder or load_encoder("minilm"),
        dataset.texts,
        max_len=MAX_LEN,
        cache_dir=cache_dir,
        progress=False,
        keep_maps=(),
    )


def _peak() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def extract(corpus: str, cache_dir: str) -> dict:
    """Child: extract the compact entry; seconds (reading the corpus included, loading
    the encoder not) and the bytes of each form. The compact entry of a study that reads
    no relative view (stats alone) and the one whose view is coded in 8 bits (``bits:
    8``) are not extracted again: their bytes follow from the same token counts by
    ``view_bytes``, which tests/test_streaming.py checks against written entries."""
    from harness.attention.cache import RELATIVE_W, view_bytes
    from harness.encoders.load import load_encoder

    encoder = load_encoder("minilm")
    start = time.perf_counter()
    cache = _cache(corpus, cache_dir, encoder)
    seconds = time.perf_counter() - start
    n = len(cache)
    maps = 2 * cache.num_layers * cache.num_heads * int((cache.lengths**2).sum())
    view = cache.meta["view_bytes"]
    tokens = int(cache.lengths.sum())
    stats = view_bytes(n, tokens, cache.num_layers, cache.num_heads, 1)
    bits8 = view_bytes(n, tokens, cache.num_layers, cache.num_heads, RELATIVE_W, bits=8)
    return {
        "sentences": n,
        "tokens": tokens,
        "seconds": seconds,
        "bytes_per_sentence": {
            "maps": maps / n,
            "maps + view": (maps + view) / n,
            "compact": cache.nbytes / n,
            "compact, stats only": (cache.nbytes - view + stats) / n,
            "compact, 8-bit view": (cache.nbytes - view + bits8) / n,
        },
        "peak_rss_bytes": _peak(),
    }


def trial(corpus: str, cache_dir: str, kind: str) -> dict:
    """Child: one trial's fit and test prediction on the cached features (streamed)."""
    import torch

    from harness.core.runtime import train_threads
    from harness.models import AttentionInputs, LinearProbe, ReaderModel
    from harness.models.train import TrainSettings
    from harness.studyfile.specs import ClassifierSpec, FeatureSpec, ProbeSpec

    torch.set_num_threads(train_threads())
    dataset, split = _data(corpus)
    cache = _cache(corpus, cache_dir)
    features = FeatureSpec(LAYERS, None, "stack", "relative")
    pooled = kind == "linear"
    meta = cache.meta
    inputs = AttentionInputs(
        features, meta["encoder"], meta["encoder_fingerprint"], MAX_LEN, cache.num_heads, pooled
    )
    if pooled:
        model = LinearProbe(ProbeSpec(c=0.1), inputs)
    else:
        model = ReaderModel(
            ClassifierSpec(**READER), inputs, TrainSettings(epochs=EPOCHS, patience=EPOCHS)
        )
    start = time.perf_counter()
    x = inputs.build(dataset.texts, cache)
    result = model.fit(x, dataset.labels, split.train, split.val)
    model.predict_proba(x, split.test)
    return {
        "seconds": time.perf_counter() - start,
        "val_auc": result.best_val_auc,
        "peak_rss_bytes": _peak(),
    }


def sweep(corpus: str, cache_dir: str) -> dict:
    """Child: the head sweep (72 linear probes on pooled single-map features)."""
    from harness.study.sweep import SweepSettings, sweep_heads

    dataset, split = _data(corpus)
    cache = _cache(corpus, cache_dir)
    start = time.perf_counter()
    scores = sweep_heads(cache, dataset, split, SweepSettings(), progress=False)
    return {
        "seconds": time.perf_counter() - start,
        "best_val_auc": max(s.val_auc for s in scores),
        "peak_rss_bytes": _peak(),
    }


def _child(name: str, *args: str) -> dict:
    out = run_child([sys.executable, "-c", CHILD, name, *args], timeout=7200).output
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


PARTS = ("extraction", "reader", "linear", "sweep")


def measure(
    n: int, workdir: Path, parts: tuple[str, ...] = PARTS, kept: dict | None = None
) -> dict:
    """One point of the curve. Parts not in ``parts`` are copied from ``kept`` (an earlier
    run's point for this N), and their cache is the one that run left in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    corpus = str(build_corpus(n, workdir / f"corpus-{n}.csv"))
    cache_dir = str(workdir / "cache")
    point = {"n": n, **{part: kept[part] for part in PARTS if part not in parts}}
    date = time.strftime("%Y-%m-%d")
    if "extraction" in parts:
        log(f"growth: {n} sentences: extraction (compact cache)")
        point["extraction"] = {**_child("extract", corpus, cache_dir), "date": date}
    for kind in ("reader", "linear"):
        if kind in parts:
            log(f"growth: {n} sentences: one {kind} trial")
            point[kind] = {**_child("trial", corpus, cache_dir, kind), "date": date}
    if "sweep" in parts:
        log(f"growth: {n} sentences: head sweep")
        point["sweep"] = {**_child("sweep", corpus, cache_dir), "date": date}
    return {"n": n, **{part: point[part] for part in PARTS}}


def linearity(points: list[dict]) -> dict[str, float]:
    """Seconds per sentence at the largest N over that at the smallest, per part."""
    first, last = points[0], points[-1]
    return {
        part: (last[part]["seconds"] / last["n"]) / (first[part]["seconds"] / first["n"])
        for part in PARTS
    }


def table(points: list[dict]) -> str:
    head = (
        "| N | extraction s (sent/s) | maps KB/sent | maps + view KB/sent | compact KB/sent "
        "| compact, stats only KB/sent | compact, 8-bit view KB/sent "
        "| reader trial s / peak RSS | linear trial s / peak RSS | head sweep s |\n"
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    lines = [head]
    for p in points:
        e, b = p["extraction"], p["extraction"]["bytes_per_sentence"]
        lines.append(
            f"| {p['n']:,} | {e['seconds']:.0f} ({p['n'] / e['seconds']:.0f}) "
            f"| {b['maps'] / 1e3:.0f} | {b['maps + view'] / 1e3:.0f} | {b['compact'] / 1e3:.1f} "
            f"| {b['compact, stats only'] / 1e3:.1f} | {b['compact, 8-bit view'] / 1e3:.1f} "
            f"| {p['reader']['seconds']:.0f} / {p['reader']['peak_rss_bytes'] / 1e6:.0f} MB "
            f"| {p['linear']['seconds']:.1f} / {p['linear']['peak_rss_bytes'] / 1e6:.0f} MB "
            f"| {p['sweep']['seconds']:.1f} |"
        )
    return "\n".join(lines)


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.array([p["n"] for p in points], float)
    colour = dict(zip(PARTS, ("C0", "C1", "C2", "C3"), strict=True))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for part in PARTS:
        seconds = np.array([p[part]["seconds"] for p in points])
        left.plot(n, seconds, "o-", color=colour[part], label=part)
        left.plot(n, seconds[0] * n / n[0], ":", color=colour[part], lw=0.8)
        rss = [p[part]["peak_rss_bytes"] / 1e9 for p in points]
        right.plot(n, rss, "o-", color=colour[part], label=part)
    left.set(xscale="log", yscale="log", xlabel="sentences", ylabel="seconds")
    left.set_title("time (dotted: linear from the first point)")
    left.legend()
    right.axhline(2.0, color="grey", ls="--", lw=0.8, label="goal for a trial: 2 GB")
    right.set(xscale="log", xlabel="sentences", ylabel="peak RSS (GB)", ylim=(0, None))
    right.set_title("peak RSS of one child process")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.growth", description=__doc__)
    parser.add_argument("--sizes", default="3673,20000,100000", help="corpus sizes, ascending")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "harness-growth"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "growth.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "growth.png")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="the parts to measure; the others are kept from --out, whose caches in "
        "--workdir are reused (e.g. --parts linear,sweep after a change to the probes)",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    parts = tuple(args.parts.split(","))
    if unknown := set(parts) - set(PARTS):
        parser.error(f"--parts: unknown {sorted(unknown)}; choose from {', '.join(PARTS)}")
    kept: dict[int, dict] = {}
    if set(parts) != set(PARTS):
        earlier = json.loads(args.out.read_text())["points"] if args.out.exists() else []
        kept = {p["n"]: p for p in earlier}
        if missing := [n for n in sizes if n not in kept]:
            parser.error(f"--parts: {args.out} has no figures for N = {missing} to keep")
    points = []
    for n in sizes:
        points.append(measure(n, args.workdir, parts, kept.get(n)))
        args.out.write_text(json.dumps({"points": points}, indent=2))  # kept as it goes
    ratios = linearity(points)
    peak = max(points[-1][k]["peak_rss_bytes"] for k in ("reader", "linear", "sweep"))
    compact = points[-1]["extraction"]["bytes_per_sentence"]["compact"]
    stats_only = points[-1]["extraction"]["bytes_per_sentence"]["compact, stats only"]
    bits8 = points[-1]["extraction"]["bytes_per_sentence"]["compact, 8-bit view"]
    summary = {
        "seconds_per_sentence_largest_over_smallest": ratios,
        "linear_within_1.2": all(r <= 1.2 for r in ratios.values()),
        "peak_rss_largest_bytes": peak,
        "peak_rss_within_2GB": peak <= 2e9,
        "compact_bytes_per_sentence": compact,
        "compact_within_50KB": compact <= 50e3,
        "compact_stats_only_bytes_per_sentence": stats_only,
        "compact_stats_only_within_50KB": stats_only <= 50e3,
        "compact_8bit_bytes_per_sentence": bits8,
        "compact_8bit_within_50KB": bits8 <= 50e3,
    }
    args.out.write_text(json.dumps({"points": points, "summary": summary}, indent=2))
    plot(points, args.plot)
    print(table(points))
    print()
    for key, value in summary.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
