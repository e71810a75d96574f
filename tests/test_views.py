"""Position-free views: the arithmetic against hand-computed maps, independence from
padding and batch position, per-map selection, and the on-disk view's reuse and repair."""

from __future__ import annotations

import logging
from math import log

import numpy as np
import pytest

from harness.attention import cache as view_cache
from harness.attention.cache import AttentionCache, ViewCache, open_view
from harness.attention.extract import extract_attention, iter_attention
from harness.attention.stream import mean_over_tokens
from harness.attention.views import (
    STATS,
    VIEWS,
    decode_view,
    feature_names,
    token_features_from_attention,
    token_stats,
    view_block,
    view_size,
)
from harness.core.errors import HarnessError
from harness.encoders.load import Encoder, load_encoder

LN2 = log(2)
MAX_LEN = 32

#: a hand-written 4-token map (row i: token i's attention; rows sum to 1)
HEAD0 = [
    [0.5, 0.25, 0.125, 0.125],
    [0.25, 0.5, 0.125, 0.125],
    [0.1, 0.2, 0.3, 0.4],
    [0.25, 0.0, 0.25, 0.5],
]
#: its features, worked out by hand:
#: cls, sep, self, prev, next, entropy, max, rel-3, rel-2, rel+2, rel+3
HEAD0_EXPECTED = [
    [0.5, 0.125, 0.5, 0.0, 0.25, 1.75 * LN2, 0.5, 0.0, 0.0, 0.125, 0.125],
    [0.25, 0.125, 0.5, 0.25, 0.125, 1.75 * LN2, 0.5, 0.0, 0.0, 0.125, 0.0],
    [0.1, 0.4, 0.3, 0.2, 0.4, 0.1 * log(10) + 0.2 * log(5) + 0.3 * log(10 / 3) + 0.4 * log(2.5),
     0.4, 0.0, 0.1, 0.0, 0.0],
    [0.25, 0.5, 0.5, 0.25, 0.0, 1.5 * LN2, 0.5, 0.25, 0.0, 0.0, 0.0],
]  # fmt: skip
#: uniform attention: only the out-of-sentence neighbours and offsets read 0
HEAD1 = [[0.25] * 4] * 4
Q, E = 0.25, 2 * LN2
HEAD1_EXPECTED = [
    [Q, Q, Q, 0, Q, E, Q, 0, 0, Q, Q],
    [Q, Q, Q, Q, Q, E, Q, 0, 0, Q, 0],
    [Q, Q, Q, Q, Q, E, Q, 0, Q, 0, 0],
    [Q, Q, Q, Q, 0, E, Q, Q, Q, 0, 0],
]


def hand_block() -> np.ndarray:
    """Two sentences of 4 tokens with 2 maps each; the second has its maps swapped."""
    return np.array([[HEAD0, HEAD1], [HEAD1, HEAD0]], dtype=np.float32)


def test_feature_names_and_sizes():
    assert VIEWS == ("rows", "stats", "relative")
    assert feature_names("stats") == STATS
    assert feature_names("relative", 3) == (
        *("cls", "sep", "self", "prev", "next", "entropy", "max"),
        *("rel-3", "rel-2", "rel+2", "rel+3"),
    )
    assert feature_names("relative", 1) == STATS
    assert [view_size("relative", w) for w in (1, 2, 3, 5)] == [7, 9, 11, 15]
    assert view_size("stats", 5) == 7
    assert view_size("rows", max_len=80) == 80


def test_token_stats_against_hand_computed_maps():
    out = token_stats(hand_block(), w=3)
    assert out.dtype == np.float32 and out.shape == (2, 4, 2, 11)  # [k, n, M, F]
    np.testing.assert_allclose(out[0, :, 0], HEAD0_EXPECTED, atol=1e-6)
    np.testing.assert_allclose(out[0, :, 1], HEAD1_EXPECTED, atol=1e-6)
    np.testing.assert_allclose(out[1, :, 0], HEAD1_EXPECTED, atol=1e-6)
    np.testing.assert_allclose(out[1, :, 1], HEAD0_EXPECTED, atol=1e-6)


def test_window_beyond_the_sentence_reads_zero_and_w1_is_stats():
    wide = token_stats(hand_block(), w=5)  # offsets ±4, ±5 never fit in 4 tokens
    assert wide.shape[-1] == 15
    names = feature_names("relative", 5)
    for name in ("rel-5", "rel-4", "rel+4", "rel+5"):
        assert not wide[..., names.index(name)].any()
    narrow, narrow_names = token_stats(hand_block(), 3), feature_names("relative", 3)
    for name in ("rel-3", "rel-2", "rel+2", "rel+3"):
        np.testing.assert_array_equal(
            wide[..., names.index(name)], narrow[..., narrow_names.index(name)]
        )
    np.testing.assert_array_equal(token_stats(hand_block(), w=1), wide[..., :7])


def test_two_token_sentence():
    """[CLS] [SEP] only: CLS's 'self' is its [CLS] column, SEP's is its [SEP] column."""
    out = token_stats(np.array([[[[0.6, 0.4], [0.3, 0.7]]]], np.float32), w=3)[0, :, 0]
    np.testing.assert_allclose(out[:, :5], [[0.6, 0.4, 0.6, 0, 0.4], [0.3, 0.7, 0.7, 0.3, 0]])
    assert not out[:, 7:].any()


def test_fp16_maps_give_the_fp32_features_to_fp16_precision():
    block = hand_block()
    np.testing.assert_allclose(
        token_stats(block.astype(np.float16)), token_stats(block), atol=2e-3, rtol=1e-3
    )


def test_the_8bit_form_codes_probabilities_by_square_root_and_the_entropy_linearly():
    """``bits=8`` (``cache: {keep: views, bits: 8}``): one byte per value, worked out by
    hand for the hand-written maps; read back, every value is within half a code step."""
    codes = view_block(hand_block(), 3, bits=8, max_len=MAX_LEN)
    assert codes.dtype == np.uint8 and codes.shape == (2, 4, 2, 11)
    exact = np.array(HEAD0_EXPECTED)
    want = np.round(255 * np.sqrt(exact))
    want[:, STATS.index("entropy")] = np.round(255 * exact[:, 5] / log(MAX_LEN))
    np.testing.assert_array_equal(codes[0, :, 0], want)
    assert codes[0, 0, 0].tolist()[:3] == [180, 90, 180]  # 255 √0.5, 255 √0.125
    back = decode_view(codes, MAX_LEN)
    assert back.dtype == np.float32
    probs = [i for i in range(11) if i != STATS.index("entropy")]
    off = np.abs(np.sqrt(back[0, :, 0]) - np.sqrt(exact))[:, probs]
    assert 0 < off.max() <= 0.5 / 255 + 1e-7
    entropy = np.abs(back[0, :, 0, 5] - exact[:, 5])
    assert np.all(entropy <= log(MAX_LEN) / 255 / 2 + 1e-6)
    assert back[0, 0, 0, 7] == 0 and back[0, 3, 0, 4] == 0  # outside the sentence: 0 exactly
    fp16 = view_block(hand_block(), 3)
    assert decode_view(fp16) is fp16  # fp16 values are read as they are
    with pytest.raises(HarnessError, match="bits must be one of"):
        view_block(hand_block(), 3, bits=4, max_len=MAX_LEN)
    with pytest.raises(HarnessError, match="8-bit codes need the entry's max_len"):
        view_block(hand_block(), 3, bits=8)


def test_bad_window_is_refused():
    with pytest.raises(HarnessError, match="w must be an integer >= 1"):
        token_stats(hand_block(), w=0)


# ---------------------------------------------------------------- cached views of real maps

SHORT = "the council said on monday"
LONGER = [
    "a much longer sentence about the council and its radical new plan for the city " * 2,
    "officials announced on monday that the plan was, according to critics, a disgrace",
    "the plan was reported",
]
ALL_MAPS = [(layer, head) for layer in range(2) for head in range(4)]


@pytest.fixture(scope="module")
def encoder(tiny_bert) -> Encoder:
    return load_encoder(str(tiny_bert))


def extract(encoder: Encoder, texts: list[str], folder, batch_size: int = 4) -> AttentionCache:
    return extract_attention(
        encoder, texts, max_len=MAX_LEN, batch_size=batch_size, cache_dir=folder, progress=False
    )


@pytest.fixture(scope="module")
def mixed(encoder, tmp_path_factory) -> ViewCache:
    """SHORT second of four, padded inside one batch with longer sentences."""
    cache = extract(encoder, [LONGER[0], SHORT, *LONGER[1:]], tmp_path_factory.mktemp("mixed"))
    return open_view(cache, progress=False)


@pytest.fixture(scope="module")
def alone(encoder, tmp_path_factory) -> ViewCache:
    return open_view(extract(encoder, [SHORT], tmp_path_factory.mktemp("alone")), progress=False)


def test_cached_view_is_token_stats_of_each_sentences_maps(mixed):
    """Storage order, scattering and padding: row i of sentence s is token_stats of s's
    own maps, rounded to fp16; rows past its length are zero."""
    x, lengths = mixed.token_features(ALL_MAPS, "relative", "stack")
    assert x.shape == (4, MAX_LEN, 8 * 11)
    np.testing.assert_array_equal(lengths, mixed.cache.lengths)
    for s, n in enumerate(lengths):
        maps = mixed.cache.maps(s)  # [L, H, n, n]
        expected = np.concatenate(
            [token_stats(maps[layer][None])[0].reshape(n, -1) for layer in range(2)], axis=1
        )
        np.testing.assert_array_equal(x[s, :n], expected.astype(np.float16).astype(np.float32))
        assert not x[s, n:].any()


def test_padding_and_batch_position_do_not_change_the_features(alone, mixed):
    xa, la = alone.token_features(ALL_MAPS)
    xm, lm = mixed.token_features(ALL_MAPS)
    assert la[0] == lm[1] < lm[0]  # the long sentence set the batch's padded width
    # the maps differ only by fp16 rounding of a padded vs unpadded forward pass
    np.testing.assert_allclose(xm[1], xa[0], atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(
        mixed.sentence_features(ALL_MAPS)[1], alone.sentence_features(ALL_MAPS)[0], atol=1e-3
    )


def test_stack_reads_exactly_the_named_maps_in_order(mixed):
    maps = [(1, 2), (0, 3)]
    singles = [mixed.token_features([m], "relative", "stack")[0] for m in maps]
    x, _ = mixed.token_features(maps, "relative", "stack")
    np.testing.assert_array_equal(x, np.concatenate(singles, axis=-1))
    assert not np.array_equal(singles[0], singles[1])
    stats, _ = mixed.token_features(maps, "stats", "stack")
    np.testing.assert_array_equal(stats, np.concatenate([s[..., :7] for s in singles], axis=-1))
    np.testing.assert_array_equal(
        mixed.sentence_features(maps),
        np.concatenate([mixed.sentence_features([m]) for m in maps], axis=1),
    )


@pytest.mark.parametrize("reducer", ["sum", "mean", "max"])
def test_elementwise_reducers_combine_the_named_maps(mixed, reducer):
    maps = [(1, 2), (0, 3), (0, 0)]
    singles = np.stack([mixed.token_features([m])[0] for m in maps])
    expected = {"sum": singles.sum(0), "mean": singles.mean(0), "max": singles.max(0)}[reducer]
    x, _ = mixed.token_features(maps, "relative", reducer)
    assert x.shape == (4, MAX_LEN, 11)
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-7)


def test_sentence_features_are_the_mean_over_valid_tokens(mixed):
    x, lengths = mixed.token_features(ALL_MAPS)
    expected = np.asarray(x).sum(axis=1) / lengths[:, None]
    np.testing.assert_allclose(mixed.sentence_features(ALL_MAPS), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        mixed.sentence_features([(1, 1)], "stats"), mixed.sentence_features([(1, 1)])[:, :7]
    )


def test_new_sentences_get_exactly_the_cached_features(encoder, mixed):
    """The prediction path, from the very batches extraction ran, reproduces the cache."""
    texts = [LONGER[0], SHORT, *LONGER[1:]]
    maps = [(1, 2), (0, 3)]
    for view, reducer in [("relative", "stack"), ("stats", "mean"), ("relative", "max")]:
        batches = iter_attention(encoder, texts, MAX_LEN, batch_size=4)
        x, lengths = token_features_from_attention(batches, 4, MAX_LEN, maps, view, reducer)
        cached, cached_lengths = mixed.token_features(maps, view, reducer)
        np.testing.assert_array_equal(x, cached)
        np.testing.assert_array_equal(lengths, cached_lengths)
    batches = iter_attention(encoder, texts, MAX_LEN, batch_size=3)  # other batches, other runs
    pooled = mean_over_tokens(*token_features_from_attention(batches, 4, MAX_LEN, maps))
    # a mean over tokens: equal up to float32 summation order across run shapes
    np.testing.assert_allclose(pooled, mixed.sentence_features(maps), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("maps", "view", "reducer", "message"),
    [
        ([(0, 0)], "rows", "stack", "AttentionCache.features"),
        ([(0, 0)], "diagonal", "stack", "unknown view 'diagonal'"),
        ([(2, 0)], "stats", "stack", r"maps \[\(2, 0\)\] out of range for 2 layers × 4 heads"),
        ([(0, 4)], "stats", "stack", "out of range"),
        ([], "stats", "stack", "no maps chosen"),
        ([0, 1], "stats", "stack", "must be \\(layer, head\\) pairs"),
        ([(0, 0)], "stats", "concat", "unknown reducer 'concat'"),
    ],
)
def test_bad_requests_are_refused(mixed, maps, view, reducer, message):
    with pytest.raises(HarnessError, match=message):
        mixed.token_features(maps, view, reducer)


# ---------------------------------------------------------------- reuse and repair on disk


@pytest.fixture
def fresh(encoder, tmp_path) -> AttentionCache:
    return extract(encoder, [SHORT, *LONGER], tmp_path, batch_size=2)


def test_a_stored_view_is_reused_not_recomputed(fresh, monkeypatch, caplog):
    first = open_view(fresh, progress=False)
    expected = first.token_features(ALL_MAPS)[0]
    monkeypatch.setattr(view_cache, "_VERIFIED", set())  # as a new process would open it

    def fail(*args):
        raise AssertionError("the view was recomputed")

    monkeypatch.setattr(view_cache, "_write_view", fail)
    with caplog.at_level(logging.INFO, logger="harness"):
        again = open_view(AttentionCache(fresh.path), progress=False)
    assert "not recomputed" in caplog.text
    np.testing.assert_array_equal(again.token_features(ALL_MAPS)[0], expected)
    assert sorted(p.name for p in (fresh.path / "views").iterdir()) == [
        "relative-w3",
        "relative-w3.lock",
    ]


def test_each_window_is_its_own_entry(fresh):
    w2 = open_view(fresh, w=2, progress=False)
    assert w2.path.name == "relative-w2" and w2.pooled.shape[-1] == 9
    np.testing.assert_array_equal(
        w2.sentence_features([(0, 1)], "stats"),
        open_view(fresh, progress=False).sentence_features([(0, 1)], "stats"),
    )


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "no meta.json", "no pooled"])
def test_a_corrupt_or_half_written_view_is_rebuilt(fresh, monkeypatch, caplog, damage):
    view = open_view(fresh, progress=False)
    expected = view.token_features(ALL_MAPS)[0], view.sentence_features(ALL_MAPS)
    layer = view.path / "layer_01.bin"
    if damage == "flip a byte":
        data = bytearray(layer.read_bytes())
        data[100] ^= 0xFF
        layer.write_bytes(bytes(data))
    elif damage == "truncate":
        layer.write_bytes(layer.read_bytes()[:-10])
    else:
        (view.path / ("meta.json" if damage == "no meta.json" else "pooled.bin")).unlink()
    monkeypatch.setattr(view_cache, "_VERIFIED", set())
    with caplog.at_level(logging.WARNING, logger="harness"):
        rebuilt = open_view(fresh, progress=False)
    assert "recomputing it" in caplog.text
    np.testing.assert_array_equal(rebuilt.token_features(ALL_MAPS)[0], expected[0])
    np.testing.assert_array_equal(rebuilt.sentence_features(ALL_MAPS), expected[1])


def test_a_killed_writer_leaves_no_entry_and_its_leftovers_are_cleared(fresh, monkeypatch):
    calls = []

    def dies_midway(block, w):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return original(block, w)

    original = view_cache.view_block
    monkeypatch.setattr(view_cache, "view_block", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        open_view(fresh, progress=False)
    views = fresh.path / "views"
    assert not (views / "relative-w3").exists()
    assert not list(views.glob("relative-w3.tmp-*"))
    monkeypatch.undo()
    (views / "relative-w3.tmp-99999").mkdir()  # as a writer killed by SIGKILL leaves it
    (views / "relative-w3.tmp-99999" / "layer_00.bin").write_bytes(b"half")
    assert open_view(fresh, progress=False).pooled.shape == (4, 2, 4, 11)
    assert not list(views.glob("relative-w3.tmp-*"))
