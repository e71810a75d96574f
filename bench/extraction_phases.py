"""Where compact extraction's time goes beyond the forward pass (issue #19's 0.9x goal).

``python -m bench.extraction_phases`` runs the same sentences through five ways, in
interleaved repeats, and reports each one's throughput against the forward-only pass:

* ``forward_only``: the eager model, no maps returned (bench row 1's ceiling);
* ``maps``: ``forward_batches``, i.e. the forward with its maps returned (no view);
* ``maps + view``: and the compact view of every map of every length run, as extraction
  computes it (``view_block``, then the pooled means of the values as read back);
* ``maps + 8-bit view``: the same with ``bits: 8``;
* ``extract_attention (compact)``: the whole compact extraction into a fresh entry, as
  bench row 1 times it, so what lies between it and ``maps + view`` is writing the entry.

The sentences go through in two orders, BABE's and a shuffled one: both have the same
lengths, so the same batch shapes, but row 1's figure has been seen to move with it (see
BENCHMARKS.md), and this shows by how much.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import MAX_LEN, interleaved, log, rng_subset
from bench.extraction import SUBSET, forward_only
from harness.attention.cache import RELATIVE_W
from harness.attention.extract import extract_attention, forward_batches
from harness.attention.views import decode_view, length_runs, pool, view_block

REPEATS = 4


def maps_and_view(encoder, texts: list[str], bits: int | None) -> None:
    """``forward_batches``' batches, and with ``bits`` the view of each map as the
    compact writer computes it: each run's fp16 block, its view and pooled means (no
    file written)."""
    for _, lens, attentions in forward_batches(encoder, texts, MAX_LEN):
        if bits is None:
            continue
        # as _write_entry does: still under forward_batches' extraction threads
        for a, b in length_runs(lens):
            n = int(lens[a])
            for att in attentions:
                block = att[a:b, :, :n, :n].half().contiguous()
                values = view_block(block, RELATIVE_W, bits, MAX_LEN)
                pool(decode_view(values, MAX_LEN))


def phases(encoder, orders: dict[str, list[str]], workdir: Path) -> dict:
    """Every way on every order in one interleaved cycle, so drift in the machine's
    speed lands on all of them alike."""
    runs = itertools.count()

    def extract(texts: list[str]) -> None:
        # the whole compact extraction into a fresh entry, kept until the end, so
        # its writes reach the disk as a study's do
        folder = workdir / f"entry-{next(runs)}"
        extract_attention(
            encoder, texts, max_len=MAX_LEN, cache_dir=folder, progress=False, keep_maps=()
        )

    ways = {
        "forward_only": lambda texts: forward_only(encoder, texts),
        "maps": lambda texts: maps_and_view(encoder, texts, None),
        "maps + view": lambda texts: maps_and_view(encoder, texts, 16),
        "maps + 8-bit view": lambda texts: maps_and_view(encoder, texts, 8),
        "extract_attention (compact)": extract,
    }
    fns = {
        (order, way): (lambda fn=fn, texts=texts: fn(texts))
        for order, texts in orders.items()
        for way, fn in ways.items()
    }
    with torch.inference_mode():
        times = interleaved(fns, REPEATS)
    results = {}
    for order in orders:
        best = {way: min(times[order, way]) for way in ways}
        results[order] = {
            "seconds": {way: times[order, way] for way in ways},
            "vs_forward": {way: best["forward_only"] / t for way, t in best.items()},
            "view_share_of_forward": (best["maps + view"] - best["maps"]) / best["forward_only"],
        }
    return results


def main(argv: list[str] | None = None) -> int:
    from harness.data.datasets import load_dataset
    from harness.encoders.load import load_encoder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/extraction_phases.json"))
    args = parser.parse_args(argv)
    dataset, encoder = load_dataset("babe"), load_encoder("minilm")
    texts = [dataset.texts[i] for i in rng_subset(len(dataset), SUBSET)]
    shuffled = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))]
    forward_only(encoder, texts[:64])  # load the model and warm up its kernels
    log(f"extraction phases: {SUBSET} sentences in two orders, {REPEATS} interleaved repeats")
    with tempfile.TemporaryDirectory(prefix="bench-phases-") as workdir:
        results = phases(encoder, {"BABE's order": texts, "shuffled": shuffled}, Path(workdir))
    print("| order | maps | maps + view | maps + 8-bit view | view / forward | extract_attention |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for order, r in results.items():
        v = r["vs_forward"]
        print(
            f"| {order} | {v['maps']:.3f}× | {v['maps + view']:.3f}× "
            f"| {v['maps + 8-bit view']:.3f}× | {r['view_share_of_forward']:.1%} "
            f"| {v['extract_attention (compact)']:.3f}× |"
        )
    args.out.write_text(json.dumps({"sentences": SUBSET, "results": results}, indent=1))
    log(f"figures in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
