"""reduce_maps against values worked out by hand on tiny arrays.

The reducer is the one place where every trial's and every prediction's features are
computed, and it runs in torch one head at a time for speed, so each reducer and each way
of choosing heads is pinned to numbers that can be checked on paper.
"""

from __future__ import annotations

import numpy as np
import pytest

from harness.attention.features import reduce_maps
from harness.core.errors import HarnessError
from harness.studyfile.specs import FeatureSpec, parse_heads

MAX_LEN = 4


def tiny_layers() -> list[np.ndarray]:
    """Two layers of one 2-token sentence with 3 heads: head h of layer l is the constant
    (10 * l + h + 1) on the 2×2 map, except entry [0, 1], which is its negative."""
    layers = []
    for layer in range(2):
        maps = np.zeros((1, 3, 2, 2), dtype=np.float16)
        for h in range(3):
            value = 10 * layer + h + 1
            maps[0, h] = value
            maps[0, h, 0, 1] = -value
        layers.append(maps)
    return layers


def constant_map(value: float, corner: float) -> np.ndarray:
    """The [1, 2, 2] map holding ``value`` everywhere except ``corner`` at [0, 1]."""
    out = np.full((1, 2, 2), value, dtype=np.float32)
    out[0, 0, 1] = corner
    return out


def test_sum_all_heads_of_all_layers():
    # layer 0 heads 1+2+3 = 6, layer 1 heads 11+12+13 = 36
    out = reduce_maps(tiny_layers(), None, "sum", MAX_LEN)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, constant_map(42, -42))


def test_mean_divides_by_the_number_of_maps():
    out = reduce_maps(tiny_layers(), None, "mean", MAX_LEN)
    np.testing.assert_allclose(out, constant_map(7, -7), rtol=1e-6)


def test_max_over_heads_and_layers():
    # every positive entry peaks at layer 1 head 2 (13); the negated corner at layer 0 head 0
    out = reduce_maps(tiny_layers(), None, "max", MAX_LEN)
    np.testing.assert_array_equal(out, constant_map(13, -1))


def test_concat_puts_each_layers_head_mean_side_by_side():
    out = reduce_maps(tiny_layers(), None, "concat", MAX_LEN)
    assert out.shape == (1, 2, 2 * MAX_LEN)
    expected = np.zeros((1, 2, 2 * MAX_LEN), dtype=np.float32)
    expected[:, :, 0:2] = constant_map(2, -2)  # mean of 1, 2, 3
    expected[:, :, MAX_LEN : MAX_LEN + 2] = constant_map(12, -12)  # mean of 11, 12, 13
    np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize(
    "heads,reducer,value,corner",
    [
        ((0,), "sum", 1 + 11, -12),
        ((0, 2), "sum", 1 + 3 + 11 + 13, -28),
        ((2, 0), "sum", 28, -28),  # order does not matter
        ((1,), "mean", (2 + 12) / 2, -7),
        ((0, 1), "max", 12, -1),
        ((1,), "max", 12, -2),
    ],
)
def test_head_selection(heads, reducer, value, corner):
    out = reduce_maps(tiny_layers(), heads, reducer, MAX_LEN)
    np.testing.assert_allclose(out, constant_map(value, corner), rtol=1e-6)


def test_head_selection_in_concat():
    out = reduce_maps(tiny_layers(), (1, 2), "concat", MAX_LEN)
    np.testing.assert_allclose(out[:, :, 0:2], constant_map(2.5, -2.5), rtol=1e-6)
    np.testing.assert_allclose(out[:, :, MAX_LEN : MAX_LEN + 2], constant_map(12.5, -12.5))
    assert not out[:, :, 2:MAX_LEN].any() and not out[:, :, MAX_LEN + 2 :].any()


def test_one_layer_and_many_sentences_match_numpy():
    """Random fp16 maps of 5 sentences: the torch reduction equals numpy's, sentence by
    sentence (sum in float32 adds heads in the same order, max is exact)."""
    rng = np.random.default_rng(0)
    maps = rng.random((5, 4, 6, 6)).astype(np.float16)
    np.testing.assert_allclose(
        reduce_maps([maps], None, "sum", 8), maps.sum(axis=1, dtype=np.float32), rtol=1e-6
    )
    np.testing.assert_array_equal(
        reduce_maps([maps], (3, 1), "max", 8), maps[:, [3, 1]].max(axis=1).astype(np.float32)
    )


def test_float32_input_is_accepted():
    maps = [a.astype(np.float32) for a in tiny_layers()]
    np.testing.assert_array_equal(reduce_maps(maps, None, "sum", MAX_LEN), constant_map(42, -42))


def test_inputs_are_not_modified():
    layers = tiny_layers()
    before = [a.copy() for a in layers]
    for reducer in ("sum", "mean", "max", "concat"):
        reduce_maps(layers, None, reducer, MAX_LEN)
    for a, b in zip(layers, before, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "value,expected",
    [("all", None), (None, None), (3, (3,)), ([0, 7], (0, 7)), ("0,7", (0, 7))],
)
def test_parse_heads_spellings(value, expected):
    assert parse_heads(value) == expected


def test_parse_heads_rejects_words():
    with pytest.raises(HarnessError, match="neither 'all'"):
        parse_heads("first")


def test_feature_spec_validation_and_input_size():
    assert FeatureSpec((3, 4, 5), None, "concat").input_size(80) == 240
    assert FeatureSpec((3, 4, 5), (0,), "sum").input_size(80) == 80
    with pytest.raises(HarnessError, match="layers"):
        FeatureSpec((), None, "sum")
    with pytest.raises(HarnessError, match="reducer"):
        FeatureSpec((1,), None, "median")
