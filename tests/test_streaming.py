"""Issue #19: trials read their features from the cache a batch at a time, and learn
exactly what they learned from one in-memory array."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from harness.attention import StreamedFeatures, extract_attention
from harness.attention import cache as attention_cache
from harness.encoders import load_encoder
from harness.models.inputs import AttentionInputs
from harness.models.probe import LinearProbe
from harness.models.reader import ReaderModel
from harness.models.train import TrainSettings
from harness.studyfile import ClassifierSpec, FeatureSpec, ProbeSpec
from tests.conftest import write_synthetic_csv

MAX_LEN = 32


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    """160 labelled sentences of varied length."""
    with open(write_synthetic_csv(tmp_path_factory.mktemp("csv") / "data.csv")) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def data(rows, tiny_bert, tmp_path_factory):
    """The sentences' cache entry, the encoder, labels and a fixed split."""
    folder = tmp_path_factory.mktemp("streaming")
    texts = [r["text"] for r in rows]
    labels = np.array([int(r["label"]) for r in rows])
    encoder = load_encoder(str(tiny_bert))
    cache = extract_attention(encoder, texts, max_len=MAX_LEN, cache_dir=folder, progress=False)
    order = np.random.default_rng(0).permutation(len(texts))
    return cache, encoder, labels, order[:100], order[100:130], order[130:]


def inputs_of(encoder, cache, spec: FeatureSpec, pooled: bool) -> AttentionInputs:
    return AttentionInputs(
        spec, encoder.name, encoder.fingerprint, MAX_LEN, cache.num_heads, pooled=pooled
    )


def fit(model, inputs, labels, train, val, test):
    result = model.fit(inputs, labels, train, val)
    return result.history, model.predict_proba(inputs, test)


ROWS_SUM = FeatureSpec((0, 1), None, "sum", "rows")
RELATIVE_STACK = FeatureSpec.of_maps([(1, 2), (0, 3), (1, 0)], "stack", "relative")


@pytest.mark.parametrize(
    "kind,features",
    [("gru", ROWS_SUM), ("lstm", RELATIVE_STACK), ("transformer", RELATIVE_STACK)],
)
def test_a_reader_on_the_stream_learns_what_it_learns_in_memory(data, kind, features):
    cache, encoder, labels, train, val, test = data
    inputs = inputs_of(encoder, cache, features, pooled=False)
    stream, lengths = inputs.build([], cache)
    assert isinstance(stream, StreamedFeatures)
    settings = TrainSettings(epochs=3, patience=3, batch_size=16, seed=1)
    spec = ClassifierSpec(kind=kind, hidden_size=16, num_heads=2, ff_size=32, pooling="mean")
    runs = [
        fit(ReaderModel(spec, inputs, settings), x, labels, train, val, test)
        for x in ((stream, lengths), (np.asarray(stream), lengths))
    ]
    (curve, p), (curve_mem, p_mem) = runs
    assert len(curve) == 3
    for a, b in zip(curve, curve_mem, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["val_auc"] == pytest.approx(b["val_auc"], abs=1e-6)
    np.testing.assert_allclose(p, p_mem, atol=1e-6, rtol=0)


@pytest.mark.parametrize("features", [ROWS_SUM, RELATIVE_STACK])
def test_probes_get_their_pooled_features_in_one_streaming_pass(data, features):
    cache, encoder, labels, train, val, test = data
    inputs = inputs_of(encoder, cache, features, pooled=True)
    x, lengths = inputs.build([], cache)
    whole, token_lengths = cache.features(features)
    whole = np.asarray(whole)
    # the whole-array mean: what probes were trained on before features were streamed
    want = whole.sum(axis=1) / token_lengths[:, None].astype(np.float32)
    assert x.shape == (len(cache), 1, whole.shape[2]) and (lengths == 1).all()
    np.testing.assert_allclose(x[:, 0], want, atol=1e-6, rtol=1e-6)
    probe = LinearProbe(ProbeSpec(c=0.5), inputs)
    curve, p = fit(probe, (x, lengths), labels, train, val, test)
    twin = LinearProbe(ProbeSpec(c=0.5), inputs)
    curve_mem, p_mem = fit(twin, (want[:, None, :], lengths), labels, train, val, test)
    assert curve[0]["val_auc"] == pytest.approx(curve_mem[0]["val_auc"], abs=1e-6)
    np.testing.assert_allclose(p, p_mem, atol=1e-6, rtol=0)


def test_a_training_batch_reads_only_its_own_sentences(data, monkeypatch):
    """What a step reads is bounded by the batch, not by the number of sentences."""
    cache, encoder, labels, train, val, test = data
    read = attention_cache.read_spans
    sizes: list[int] = []

    def spy(path, spans, *args):
        sizes.append(len(spans))
        return read(path, spans, *args)

    monkeypatch.setattr(attention_cache, "read_spans", spy)
    inputs = inputs_of(encoder, cache, ROWS_SUM, pooled=False)
    settings = TrainSettings(epochs=1, batch_size=16)
    model = ReaderModel(ClassifierSpec(hidden_size=8), inputs, settings)
    model.fit(inputs.build([], cache), labels, train, val)
    assert sizes and max(sizes) <= 256  # Standardize's chunk; a step reads 16 sentences
    assert sizes.count(16) >= len(train) // 16 - 1


@pytest.mark.parametrize("features", [ROWS_SUM, RELATIVE_STACK])
def test_any_rows_of_the_stream_are_those_rows_of_the_whole_array(data, features):
    """Batches come in any order and are cut to their longest sentence."""
    cache = data[0]
    x, lengths = cache.features(features)
    whole = np.asarray(x)
    assert whole.shape == x.shape and not whole[np.arange(MAX_LEN) >= lengths[:, None]].any()
    rng = np.random.default_rng(3)
    for _ in range(5):
        rows = rng.choice(len(cache), 17, replace=False)
        width = int(lengths[rows].max())
        np.testing.assert_array_equal(x[rows, :width], whole[rows, :width])
        np.testing.assert_array_equal(x[rows, :5], whole[rows, :5])


def test_a_view_that_would_not_fit_on_the_disk_is_refused_before_writing(
    tiny_bert, tmp_path, monkeypatch
):
    import shutil
    from collections import namedtuple

    from harness.attention.cache import open_view
    from harness.core import HarnessError, fs

    encoder = load_encoder(str(tiny_bert))
    texts = ["a short one", "and a somewhat longer sentence than that"]
    cache = extract_attention(encoder, texts, max_len=MAX_LEN, cache_dir=tmp_path, progress=False)
    real, usage = shutil.disk_usage, namedtuple("usage", "total used free")
    monkeypatch.setattr(fs.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(HarnessError, match=r"view needs .* MB in .* only 0.0 MB are free"):
        open_view(cache, progress=False)
    assert not [p.name for p in (cache.path / "views").iterdir() if p.is_dir()]
    monkeypatch.setattr(fs.shutil, "disk_usage", real)
    assert open_view(cache, progress=False).nbytes > 0


# --- the compact cache (cache: {keep: views}) ----------------------------------------


@pytest.fixture(scope="module")
def compact(data, rows, tmp_path_factory):
    """The same sentences extracted in the compact form, keeping layer 1's maps only."""
    encoder, texts = data[1], [r["text"] for r in rows]
    folder = tmp_path_factory.mktemp("compact")
    return extract_attention(
        encoder, texts, max_len=MAX_LEN, cache_dir=folder, progress=False, keep_maps=[1]
    )


def test_the_compact_cache_gives_the_views_computed_from_full_maps(data, compact):
    full = data[0]
    assert compact.compact and not full.compact and compact.key != full.key
    assert compact.map_layers == (1,) and not (compact.path / "layer_00.bin").exists()
    assert not (compact.path / "views" / "relative-w3.lock").exists()  # no second pass
    for spec in (RELATIVE_STACK, FeatureSpec((0, 1), None, "mean", "stats")):
        np.testing.assert_array_equal(
            np.asarray(compact.features(spec)[0]), np.asarray(full.features(spec)[0])
        )
    np.testing.assert_array_equal(compact.view().pooled, full.view().pooled)
    # the rows view of a kept layer is the full entry's
    rows_max = FeatureSpec((1,), None, "max", "rows")
    np.testing.assert_array_equal(
        np.asarray(compact.features(rows_max)[0]), np.asarray(full.features(rows_max)[0])
    )
    assert compact.nbytes < full.nbytes + full.view().nbytes


def test_the_compact_cache_refuses_the_rows_of_a_layer_it_does_not_keep(compact):
    from harness.core import HarnessError

    with pytest.raises(HarnessError, match=r"layer 0, which this compact cache entry does not"):
        compact.features(ROWS_SUM)


def test_a_damaged_compact_view_is_rebuilt_with_its_entry(data, rows, compact, tmp_path, caplog):
    import logging
    import shutil

    from harness.attention import extract as extract_module

    copy = tmp_path / compact.key
    shutil.copytree(compact.path, copy)
    layer = copy / "views" / "relative-w3" / "layer_00.bin"
    damaged = bytearray(layer.read_bytes())
    damaged[len(damaged) // 2] ^= 0x40
    layer.write_bytes(bytes(damaged))
    extract_module._VERIFIED.clear()
    texts = [r["text"] for r in rows]
    with caplog.at_level(logging.WARNING, logger="harness"):
        again = extract_attention(
            data[1], texts, max_len=MAX_LEN, cache_dir=tmp_path, progress=False, keep_maps=[1]
        )
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(again.view().pooled, compact.view().pooled)


def test_a_compact_cache_without_the_relative_view_keeps_stats_alone(data, rows, compact, tmp_path):
    """``view_w=1`` (a study that searches no relative view): the stored view is ``stats``,
    equal to the full entry's, 7/11 of the relative view's bytes; ``relative`` refuses."""
    from harness.attention.cache import RELATIVE_W, view_bytes
    from harness.attention.extract import cache_key
    from harness.core import HarnessError

    full, encoder = data[0], data[1]
    texts = [r["text"] for r in rows]
    stats = extract_attention(
        encoder, texts, max_len=MAX_LEN, cache_dir=tmp_path, progress=False, keep_maps=[1],
        view_w=1,
    )  # fmt: skip
    assert stats.views == ("stats",) and compact.views == full.views == ("stats", "relative")
    assert stats.key == cache_key(encoder, texts, MAX_LEN, [1], 1) != compact.key
    assert [p.name for p in (stats.path / "views").iterdir()] == ["relative-w1"]
    for spec in (FeatureSpec((0, 1), None, "mean", "stats"),
                 FeatureSpec.of_maps([(1, 2), (0, 3)], "stack", "stats")):  # fmt: skip
        np.testing.assert_array_equal(
            np.asarray(stats.features(spec)[0]), np.asarray(full.features(spec)[0])
        )
    np.testing.assert_array_equal(stats.view().pooled, full.view().pooled[..., :7])
    with pytest.raises(HarnessError, match="keeps the stats view only"):
        stats.features(RELATIVE_STACK)
    tokens, layers, heads = int(stats.lengths.sum()), stats.num_layers, stats.num_heads
    assert stats.meta["view_bytes"] == view_bytes(len(stats), tokens, layers, heads, 1)
    assert stats.meta["view_bytes"] * 11 == compact.meta["view_bytes"] * 7
    assert view_bytes(len(stats), tokens, layers, heads, RELATIVE_W) == compact.meta["view_bytes"]


def test_the_compact_view_is_relative_only_where_the_study_reads_it():
    from harness.attention import compact_view_w

    assert compact_view_w({"stats": "sum", "rows": "sum"}, sweeps_heads=False) == 1
    assert compact_view_w({"relative": "stack"}, sweeps_heads=False) == 3
    assert compact_view_w({"stats": "sum"}, sweeps_heads=True) == 3  # the sweep reads relative


COMPACT_SEARCH = """\
search:
  layers: [[1]]
  heads: [all, {top: 3}, [L1H0, L1H3]]
  view: {stats: {reducer: [stack, sum]}, relative: {reducer: stack}, rows: {reducer: sum}}
  classifier:
    linear: {c: 0.5}
    gru: {hidden_size: 8}
"""
#: no relative view and no {top: k} heads: the compact cache stores stats alone
STATS_SEARCH = COMPACT_SEARCH.replace("{top: 3}, ", "").replace(", relative: {reducer: stack}", "")


@pytest.mark.parametrize(("search", "view_w"), [(COMPACT_SEARCH, 3), (STATS_SEARCH, 1)])
def test_a_study_on_the_compact_cache_finds_what_it_finds_on_full_maps(
    tiny_bert, tmp_path, search, view_w
):
    """``cache: {keep: views}`` keeps the maps of the layers the space's rows view can read
    (here layer 1 only), the relative view only if the study reads it, and gives every
    trial the value it gets on full maps."""
    import optuna

    from harness.attention import AttentionCache
    from harness.study.study import run_study
    from tests.conftest import study_yaml

    data = write_synthetic_csv(tmp_path / "data.csv", n=120)
    values = {}
    for keep in ("maps", "views"):
        folder = tmp_path / keep
        folder.mkdir()
        path = study_yaml(
            folder,
            dataset=str(data),
            encoder=str(tiny_bert),
            n_trials=6,
            extra=f"cache: {{keep: {keep}}}\npruner: {{name: none}}\n"
            "sampler: {name: random, seed: 2}\nbaselines: []\n",
            search=search,
        )
        run_study(path, progress=False)
        study = optuna.load_study(study_name="t", storage=f"sqlite:///{folder}/optuna.db")
        values[keep] = [(t.params, t.value) for t in study.trials]
        entries = [p for p in (folder / "cache").iterdir() if (p / "meta.json").exists()]
        caches = [AttentionCache(p) for p in entries]
        assert [(c.compact, c.map_layers, c.meta.get("view_w")) for c in caches] == [
            (
                keep == "views",
                (1,) if keep == "views" else (0, 1),
                view_w if keep == "views" else None,
            )
        ]
    assert {str(p["view"]) for p, _ in values["maps"]} >= {"rows", "stats"}
    if view_w == 1:  # the head sweep needs the relative view: refused before any run opens
        from harness.core import HarnessError
        from harness.study.study import run_head_sweep

        with pytest.raises(HarnessError, match="the head sweep reads the relative view"):
            run_head_sweep(path, progress=False)
    for (params, value), (params_c, value_c) in zip(values["maps"], values["views"], strict=True):
        assert params == params_c and value == pytest.approx(value_c, abs=1e-6)


def test_the_compact_cache_keeps_only_the_maps_a_rows_view_can_read():
    from harness.studyfile.schema import parse_study

    base = "name: s\ncache: {keep: views}\nsearch:\n  classifier: {gru: {}}\n"
    assert parse_study(base + "  layers: [[3, 4], [5]]\n").search.rows_layers() == (3, 4, 5)
    stats = base + "  layers: [[3, 4]]\n  view: stats\n"
    assert parse_study(stats).search.rows_layers() == ()
    pairs = base + "  layers: [[3]]\n  heads: [all, [L0H1, L3H2]]\n"
    assert parse_study(pairs).search.rows_layers() == (0, 3)
    with pytest.raises(Exception, match="cache.keep"):
        parse_study(base.replace("keep: views", "keep: everything") + "  layers: [0]\n")


# --- the 8-bit compact cache (cache: {keep: views, bits: 8}) -----------------------------


@pytest.fixture(scope="module")
def compact8(data, rows, tmp_path_factory):
    """The compact form again, its view coded in one byte per value."""
    encoder, texts = data[1], [r["text"] for r in rows]
    folder = tmp_path_factory.mktemp("compact8")
    return extract_attention(
        encoder, texts, max_len=MAX_LEN, cache_dir=folder, progress=False, keep_maps=[1],
        view_bits=8,
    )  # fmt: skip


def test_an_8bit_compact_cache_codes_the_views_of_full_maps_in_one_byte(data, compact, compact8):
    """Each sentence's stored codes are ``view_block(..., bits=8)`` of its full maps, in
    half the bytes of the fp16 view; read back, each value is within half a code step
    (plus fp16's own rounding) of the fp16 view's, and the stored means are the means of
    the values read back."""
    from math import log

    from harness.attention.cache import view_bytes
    from harness.attention.views import STATS, decode_view, view_block

    full = data[0]
    assert (compact8.view_bits, compact.view_bits, full.view_bits) == (8, 16, 16)
    assert compact8.key != compact.key and compact8.map_layers == (1,)
    tokens, layers, heads = int(compact8.lengths.sum()), compact8.num_layers, compact8.num_heads
    assert compact8.meta["view_bytes"] == view_bytes(len(full), tokens, layers, heads, 3, bits=8)
    rows8, rows16 = (c.path / "views" / "relative-w3" / "layer_00.bin" for c in (compact8, compact))
    assert rows8.stat().st_size * 2 == rows16.stat().st_size == tokens * heads * 11 * 2
    maps = RELATIVE_STACK.maps(heads)
    x8 = np.asarray(compact8.features(RELATIVE_STACK)[0])
    for i in range(len(full)):
        m = full.maps(i)
        n = m.shape[-1]
        want = [decode_view(view_block(m[lay][None], 3, 8, MAX_LEN), MAX_LEN)[0, :, h]
                for lay, h in maps]  # fmt: skip
        np.testing.assert_array_equal(x8[i, :n], np.concatenate(want, axis=1))
    x16 = np.asarray(compact.features(RELATIVE_STACK)[0])
    entropy = np.arange(x8.shape[2]) % 11 == STATS.index("entropy")
    off = np.abs(np.sqrt(x8[..., ~entropy]) - np.sqrt(x16[..., ~entropy]))
    assert 0 < off.max() <= 0.5 / 255 + 3e-4
    assert np.abs(x8[..., entropy] - x16[..., entropy]).max() <= log(MAX_LEN) / 510 + 2e-3
    lengths = compact8.lengths[:, None].astype(np.float32)
    means = x8.sum(axis=1) / lengths
    np.testing.assert_allclose(compact8.view().sentence_features(maps), means, rtol=1e-5, atol=1e-6)


def test_new_sentences_are_coded_as_the_8bit_cache_codes_them(data, rows, compact8):
    """A reloaded model's inputs (``AttentionInputs`` of ``view_bits`` 8, from the texts)
    are the 8-bit cache's, token rows bit for bit, pooled means to float32 summation."""
    from harness.models.inputs import inputs_from_dict

    encoder, texts = data[1], [r["text"] for r in rows]
    stats_mean = FeatureSpec((0, 1), None, "mean", "stats")
    for spec, pooled in [(RELATIVE_STACK, False), (stats_mean, False), (RELATIVE_STACK, True)]:
        inputs = AttentionInputs(
            spec, encoder.name, encoder.fingerprint, MAX_LEN, compact8.num_heads, pooled=pooled,
            view_bits=8,
        )  # fmt: skip
        reloaded = inputs_from_dict(inputs.to_dict())
        assert reloaded.view_bits == 8
        cached, lengths = inputs.build(texts, compact8)
        new, new_lengths = reloaded.build(texts)
        np.testing.assert_array_equal(new_lengths, lengths)
        if pooled:
            np.testing.assert_allclose(new, cached, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(new, np.asarray(cached))


def test_bits_8_is_a_setting_of_the_compact_cache_only(data):
    from harness.core import HarnessError
    from harness.studyfile.schema import parse_study

    base = "name: s\nsearch:\n  layers: [[0]]\n  classifier: {gru: {}}\n"
    assert parse_study("cache: {keep: views, bits: 8}\n" + base).cache.bits == 8
    assert parse_study(base).cache.bits == 16
    with pytest.raises(Exception, match="bits: 8 codes the compact cache's view"):
        parse_study("cache: {bits: 8}\n" + base)
    with pytest.raises(Exception, match="cache.bits"):
        parse_study("cache: {keep: views, bits: 4}\n" + base)
    with pytest.raises(HarnessError, match="is not a stored view's precision"):
        extract_attention(data[1], ["a sentence"], max_len=MAX_LEN, view_bits=8)


SEARCH_8BIT = """\
search:
  layers: [[0, 1]]
  heads: [all, [L1H0, L0H3]]
  view: {stats: {reducer: [mean, max]}, relative: {reducer: stack}}
  classifier:
    linear: {c: 0.5}
    gru: {hidden_size: 8}
"""


def test_a_study_on_an_8bit_compact_cache_reloads_to_its_logged_probabilities(tiny_bert, tmp_path):
    """``cache: {keep: views, bits: 8}`` end to end: one 8-bit compact entry, and each
    logged trial, reloaded with ``load_run`` on its test sentences, gives the
    probabilities it logged (the new sentences' features are coded as the cache's)."""
    from mlflow import MlflowClient

    from harness import load_run
    from harness.attention import AttentionCache
    from harness.study.study import run_study
    from tests.conftest import study_yaml

    data = write_synthetic_csv(tmp_path / "data.csv", n=120)
    path = study_yaml(
        tmp_path,
        dataset=str(data),
        encoder=str(tiny_bert),
        n_trials=4,
        extra="cache: {keep: views, bits: 8}\npruner: {name: none}\n"
        "sampler: {name: random, seed: 3}\nbaselines: []\n",
        search=SEARCH_8BIT,
    )
    run_study(path, progress=False)
    entries = [p for p in (tmp_path / "cache").iterdir() if (p / "meta.json").exists()]
    assert [(c.compact, c.map_layers, c.view_bits) for c in map(AttentionCache, entries)] == [
        (True, (), 8)
    ]
    with open(data) as fh:
        texts = [r["text"] for r in csv.DictReader(fh)]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    trials = [r for r in runs if r.data.tags.get("harness.role") == "trial"]
    assert len(trials) == 4
    kinds = set()
    for run in trials:
        local = client.download_artifacts(run.info.run_id, "predictions/test.csv", str(tmp_path))
        with open(local) as fh:
            logged = list(csv.DictReader(fh))
        model = load_run(run.info.run_id, tracking_uri=uri)
        kinds.add(run.data.params["classifier"])
        probs = model.predict_proba([texts[int(r["row_id"])] for r in logged])
        want = np.array([float(r["probability"]) for r in logged])
        np.testing.assert_allclose(probs, want, atol=1e-6, rtol=0)
    assert kinds == {"linear", "gru"}
