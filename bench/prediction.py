"""Row 12: scoring a file (``harness predict --input``: chunks, length-sorted encoder
batches) against calling ``predict_proba`` one sentence at a time, on MiniLM."""

from __future__ import annotations

from bench.common import LAYERS, MAX_LEN, Context, Row, interleaved, log, ratio
from harness.models.inputs import AttentionInputs
from harness.models.reader import ReaderModel
from harness.models.train import TrainSettings
from harness.studyfile.specs import ClassifierSpec, FeatureSpec
from harness.tracking.predict import LoadedRun, predict_texts

N_BATCH = 1000
N_SINGLE = 200


def _run(ctx: Context) -> LoadedRun:
    """A bi-GRU 64 on layers 3,4,5 (sum), fitted for one epoch on 400 rows: its speed does
    not depend on how well it learned."""
    inputs = AttentionInputs(
        FeatureSpec(LAYERS, None, "sum"),
        "minilm",
        ctx.encoder.fingerprint,
        MAX_LEN,
        ctx.cache.num_heads,
    )
    spec = ClassifierSpec(kind="gru", hidden_size=64, bidirectional=True)
    model = ReaderModel(spec, inputs, TrainSettings(epochs=1), ctx.dataset.positive_label)
    features = inputs.build(ctx.dataset.texts, ctx.cache)
    model.fit(features, ctx.dataset.labels, ctx.split.train[:400], ctx.split.val[:200])
    return LoadedRun("bench", {}, model)


def row_prediction(ctx: Context) -> list[Row]:
    run = _run(ctx)
    texts = [ctx.dataset.texts[i] for i in ctx.split.test[:N_BATCH]]
    run.predict_proba(texts[:8])  # loads the encoder once, outside the timings
    log(f"row 12: prediction, {N_BATCH} sentences batched vs {N_SINGLE} one at a time")

    def batched() -> None:
        predict_texts(run, texts, progress=False)

    def single() -> None:
        for text in texts[:N_SINGLE]:
            run.predict_proba([text])

    times = interleaved({"batched": batched, "single": single}, 1 if ctx.quick else 2)
    rate = {"batched": N_BATCH / min(times["batched"]), "single": N_SINGLE / min(times["single"])}
    speedup = ratio(rate["batched"], rate["single"])
    return [
        Row(
            "12",
            f"predict --input: {N_BATCH} BABE sentences, MiniLM, bi-GRU 64 on layers 3,4,5",
            f"{rate['batched']:.0f} sentences/s vs {rate['single']:.0f} one at a time "
            f"({speedup:.1f}×)",
            "reported",
            None,
            {"seconds": times, "sentences_per_s": rate, "speedup": speedup},
        )
    ]
