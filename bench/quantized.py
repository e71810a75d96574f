"""What the 8-bit compact view (``cache: {keep: views, bits: 8}``) costs in validation AUC.

``python -m bench.quantized`` extracts BABE into the compact cache twice, its view in fp16
(69 KB a sentence) and in one byte a value (36 KB), and trains the same reader, linear
probe and head sweep on both, on three split seeds. Only validation AUCs are compared
(the head sweep also scores the test split for its own report; that is not read here).

One byte a value (``harness.attention.views.view_block``): the attention features (all
but the entropy) lie in [0, 1] and are coded as ``round(255 √p)``, which keeps small
attention weights apart; the entropy lies in [0, ln max_len] and is coded linearly. Beside
each difference the bench reports the difference that only a new training seed makes, so
the two can be weighed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from bench.common import MAX_LEN, interleaved, log
from harness.attention.cache import RELATIVE_W, AttentionCache
from harness.attention.extract import extract_attention

LAYERS = (3, 4, 5)
READER = {"kind": "gru", "hidden_size": 64, "bidirectional": True}
SEEDS = (0, 1, 2)


def val_aucs(cache: AttentionCache, dataset, split, train_seed: int = 0) -> dict:
    """Validation AUC of the reader, the linear probe and each map of the head sweep."""
    from harness.models import AttentionInputs, LinearProbe, ReaderModel
    from harness.models.train import TrainSettings
    from harness.study.sweep import SweepSettings, sweep_heads
    from harness.studyfile.specs import ClassifierSpec, FeatureSpec, ProbeSpec

    out = {}
    for kind in ("reader", "linear"):
        meta = cache.meta
        inputs = AttentionInputs(
            FeatureSpec(LAYERS, None, "stack", "relative"), meta["encoder"],
            meta["encoder_fingerprint"], MAX_LEN, cache.num_heads, kind == "linear",
            view_bits=cache.view_bits,
        )  # fmt: skip
        if kind == "linear":
            model = LinearProbe(ProbeSpec(c=0.1), inputs)
        else:
            settings = TrainSettings(epochs=8, patience=2, seed=train_seed)
            model = ReaderModel(ClassifierSpec(**READER), inputs, settings)
        x = inputs.build(dataset.texts, cache)
        out[kind] = model.fit(x, dataset.labels, split.train, split.val).best_val_auc
    scores = sweep_heads(cache, dataset, split, SweepSettings(), progress=False)
    out["sweep"] = {f"{s.layer}.{s.head}": s.val_auc for s in scores}
    return out


def read_seconds(caches: dict[str, AttentionCache]) -> dict[str, float]:
    """Seconds to build the reader's whole token-feature array (layers 3–5 stacked, 36
    maps × 11 features) from each entry: fp16 rows converted, or one-byte codes decoded
    through their table. Fastest of 3 interleaved repeats."""
    from harness.studyfile.specs import FeatureSpec

    spec = FeatureSpec(LAYERS, None, "stack", "relative")
    streams = {name: cache.features(spec)[0] for name, cache in caches.items()}
    reads = {name: (lambda s=s: np.asarray(s)) for name, s in streams.items()}
    return {name: min(t) for name, t in interleaved(reads, 3).items()}


def main(argv: list[str] | None = None) -> int:
    from harness.data.datasets import load_dataset
    from harness.data.split import make_split
    from harness.encoders.load import load_encoder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/quantized.json"))
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-quantized-"))
    dataset = load_dataset("babe")
    log("quantized: the compact cache of all BABE, its view in fp16 and in 8 bits")
    cache, copy = (
        extract_attention(
            load_encoder("minilm"),
            dataset.texts,
            max_len=MAX_LEN,
            cache_dir=work / f"b{bits}",
            progress=False,
            keep_maps=(),
            view_w=RELATIVE_W,
            view_bits=bits,
        )  # fmt: skip
        for bits in (16, 8)
    )
    sizes = {"fp16": cache.view().nbytes / len(cache), "8-bit": copy.view().nbytes / len(copy)}
    reads = read_seconds({"fp16": cache, "8-bit": copy})
    rows = []
    for seed in SEEDS:
        split = make_split(dataset, val_fraction=0.15, test_fraction=0.15, seed=seed)
        log(f"quantized: split seed {seed}")
        fp16, q8 = val_aucs(cache, dataset, split), val_aucs(copy, dataset, split)
        reseeded = val_aucs(cache, dataset, split, train_seed=1)["reader"]
        maps = sorted(fp16["sweep"])
        rho = spearmanr([fp16["sweep"][m] for m in maps], [q8["sweep"][m] for m in maps])
        best = [max(d["sweep"], key=d["sweep"].get) for d in (fp16, q8)]
        rows.append(
            {
                "split_seed": seed,
                "reader": [fp16["reader"], q8["reader"]],
                "reader_other_training_seed": reseeded,
                "linear": [fp16["linear"], q8["linear"]],
                "sweep_spearman": float(rho.statistic),
                "sweep_best_map": best,
                "sweep_largest_change": max(abs(fp16["sweep"][m] - q8["sweep"][m]) for m in maps),
            }
        )
    print(
        f"bytes a sentence: fp16 {sizes['fp16'] / 1e3:.1f} KB, 8-bit {sizes['8-bit'] / 1e3:.1f} KB"
    )
    print(
        f"reader's token features of all BABE: fp16 {reads['fp16']:.2f} s, "
        f"8-bit {reads['8-bit']:.2f} s ({reads['8-bit'] / reads['fp16']:.2f}×)"
    )
    print(
        "| split seed | reader val AUC fp16 / 8-bit (another training seed) "
        "| linear fp16 / 8-bit | sweep: Spearman, best map fp16 / 8-bit, largest change |"
    )
    print("| ---: | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['split_seed']} | {r['reader'][0]:.4f} / {r['reader'][1]:.4f} "
            f"({r['reader_other_training_seed']:.4f}) | {r['linear'][0]:.4f} / "
            f"{r['linear'][1]:.4f} | {r['sweep_spearman']:.4f}, {r['sweep_best_map'][0]} / "
            f"{r['sweep_best_map'][1]}, {r['sweep_largest_change']:.4f} |"
        )
    args.out.write_text(
        json.dumps({"bytes_per_sentence": sizes, "read_seconds": reads, "splits": rows}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
