"""What an 8-bit relative view would cost in validation AUC (decision input for issue #19).

``python -m bench.quantized`` extracts BABE into the compact cache (``cache: {keep:
views}``, 69 KB a sentence), writes a copy whose view went through one byte a value and
back, and trains the same reader, linear probe and head sweep on both, on three split
seeds. Only validation AUCs are compared (the head sweep also scores the test split for
its own report; that is not read here). The copy's bytes are those an 8-bit entry would
store (11 × 72 bytes a token, the pooled means as stored).

One byte a value: the attention features (all but the entropy) lie in [0, 1] and are coded
as ``round(255 √p)``, which keeps small attention weights apart; the entropy lies in
[0, ln max_len] and is coded linearly. Beside each difference the bench reports the
difference that only a new training seed makes, so the two can be weighed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from bench.common import MAX_LEN, log
from harness.attention.cache import RELATIVE_W, AttentionCache
from harness.attention.extract import extract_attention
from harness.attention.views import STATS

LAYERS = (3, 4, 5)
READER = {"kind": "gru", "hidden_size": 64, "bidirectional": True}
SEEDS = (0, 1, 2)


def quantize(values: np.ndarray, max_len: int) -> np.ndarray:
    """fp16 view rows ``[..., F]`` through one byte a value and back (fp16)."""
    out = np.empty_like(values)
    ent = STATS.index("entropy")
    probs = np.delete(np.arange(values.shape[-1]), ent)
    p = values[..., probs].astype(np.float32).clip(0, 1)
    out[..., probs] = (np.round(np.sqrt(p) * 255) / 255) ** 2
    top = np.log(max_len)
    e = values[..., ent].astype(np.float32).clip(0, top)
    out[..., ent] = np.round(e / top * 255) / 255 * top
    return out


def quantized_copy(cache: AttentionCache, root: Path) -> AttentionCache:
    """A copy of the compact entry ``cache`` whose view rows and pooled means come from
    the 8-bit values; checksums written again, so it opens like any entry."""
    dest = root / cache.path.name
    shutil.copytree(cache.path, dest)
    view = cache.view()
    folder = dest / "views" / f"relative-w{view.w}"
    meta = json.loads((folder / "meta.json").read_text())
    pooled = np.fromfile(folder / "pooled.bin", np.float32).reshape(view.pooled.shape)
    starts = view.token_offsets[:-1]
    counts = np.diff(view.token_offsets)[:, None, None]
    for layer in range(cache.num_layers):
        name = f"layer_{layer:02d}.bin"
        rows = np.fromfile(folder / name, np.float16).reshape(
            -1, cache.num_heads, view.num_features
        )
        rows = quantize(rows, cache.max_len)
        rows.tofile(folder / name)
        meta["files"][name]["crc32"] = zlib.crc32(rows)
        means = np.add.reduceat(rows.astype(np.float32), starts, axis=0) / counts
        pooled[cache.order, layer] = means
    pooled.tofile(folder / "pooled.bin")
    meta["files"]["pooled.bin"]["crc32"] = zlib.crc32(pooled)
    (folder / "meta.json").write_text(json.dumps(meta))
    return AttentionCache(dest)


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
    log("quantized: the compact cache of all BABE, then its 8-bit copy")
    cache = extract_attention(
        load_encoder("minilm"), dataset.texts, max_len=MAX_LEN, cache_dir=work / "fp16",
        progress=False, keep_maps=(), view_w=RELATIVE_W,
    )  # fmt: skip
    copy = quantized_copy(cache, Path(tempfile.mkdtemp(dir=work)))
    view = cache.view()
    tokens = int(cache.lengths.sum())
    pooled_bytes = view.pooled.nbytes / len(cache)
    sizes = {
        "fp16": view.nbytes / len(cache),
        "8-bit": tokens * cache.num_layers * cache.num_heads * view.num_features / len(cache)
        + pooled_bytes,
    }
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
    args.out.write_text(json.dumps({"bytes_per_sentence": sizes, "splits": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
