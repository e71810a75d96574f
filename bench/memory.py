"""Row 4: peak RSS of a study process (extraction, features, one short trial)."""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.common import (
    LAYERS,
    MAX_LEN,
    Context,
    Row,
    harness_cli,
    log,
    peak_rss_bytes,
    write_study,
)
from harness.data.datasets import load_dataset
from harness.encoders.load import resolve_encoder_path, tokenize

#: sentences of the BERT-base measurement without --full (see row_memory)
BERT_BASE_SUBSET = 600
GB = 1e9


def random_bert_base(ctx: Context) -> Path:
    """A randomly initialised BERT-base-shaped encoder (12 layers × 12 heads, hidden 768)
    with MiniLM's tokenizer, saved once in the work dir: same memory as the real one."""
    path = ctx.workdir / "bert-base-random"
    if (path / "config.json").exists():
        return path
    import torch
    from transformers import BertConfig, BertModel

    log("row 4: saving a random BERT-base-shaped encoder")
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    minilm = resolve_encoder_path("minilm")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (minilm / name).exists():
            shutil.copy(minilm / name, tmp / name)
    torch.manual_seed(0)
    BertModel(BertConfig()).save_pretrained(tmp)
    tmp.rename(path)
    return path


def study_peak_gb(ctx: Context, name: str, encoder: str, max_rows: int | None) -> float:
    """Peak RSS of ``harness study run`` on a fresh cache: extraction, the features of
    LAYERS summed, and one GRU trial of one epoch, with MLflow logging."""
    folder = ctx.tmp(f"memory-{name}")
    data = {"dataset": "babe", **({"max_rows": max_rows} if max_rows else {})}
    study = write_study(
        {
            "name": f"bench-memory-{name}",
            "data": data,
            "encoder": {"name": encoder, "max_len": MAX_LEN, "batch_size": 64},
            "train": {"epochs": 1, "patience": 1, "batch_size": 64},
            "n_trials": 1,
            "pruner": {"name": "none"},
            "cache_dir": str(folder / "cache"),
            "search": {
                "layers": list(LAYERS),
                "heads": "all",
                "reducer": "sum",
                "classifier": {"gru": {"hidden_size": 64, "bidirectional": True}},
            },
        },
        folder,
    )
    log(f"row 4: study process with {name} on {max_rows or 'all'} sentences")
    run = harness_cli("study", "run", str(study), "--quiet")
    shutil.rmtree(folder / "cache", ignore_errors=True)
    return peak_rss_bytes(run) / GB


def row_memory(ctx: Context) -> list[Row]:
    n_full = len(ctx.dataset)
    minilm = study_peak_gb(ctx, "minilm", "minilm", None)
    bert_rows = None if ctx.full else BERT_BASE_SUBSET
    bert = study_peak_gb(ctx, "bert-base", str(random_bert_base(ctx)), bert_rows)
    values = {"minilm_full_gb": minilm, "bert_base_gb": bert, "bert_base_sentences": bert_rows}
    if bert_rows is None:
        bert_full, how = bert, "measured on all BABE"
    else:
        # Extraction's peak is set by the largest batch (64 × 80 tokens), reached by any
        # subset holding a max-length sentence; what grows with N is the [N, 80, 80]
        # float32 feature array, so add it for the sentences the subset lacks.
        subset = load_dataset("babe", max_rows=bert_rows, seed=0).texts
        longest = max(len(ids) for ids in tokenize(ctx.encoder, subset, MAX_LEN))
        growth = (n_full - bert_rows) * MAX_LEN * MAX_LEN * 4 / GB
        bert_full = bert + growth
        how = f"{bert:.2f} GB on {bert_rows} sentences + {growth:.2f} GB of features"
        values.update(subset_longest_tokens=longest, feature_growth_gb=growth)
    values["bert_base_full_gb"] = bert_full
    return [
        Row(
            "4",
            "peak RSS of a study process, MiniLM, all BABE",
            f"{minilm:.2f} GB",
            "≤ 1.5 GB",
            minilm <= 1.5,
            values,
        ),
        Row(
            "4",
            "peak RSS of a study process, 12 × 12 BERT-base shape",
            f"{bert_full:.2f} GB ({how})",
            "≤ 2.5 GB",
            bert_full <= 2.5,
        ),
    ]
