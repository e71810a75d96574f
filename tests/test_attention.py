"""The padding-free cache against the obvious way of getting attention maps.

The obvious way is the seed's: one sentence at a time, padded to max_len, keep the
top-left n × n corner. Extraction instead batches sentences sorted by length, pads each
batch only to its longest sentence, converts to fp16 and stores no padding; these tests
pin that the maps (and every feature built from them) are the same to fp16 precision.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.attention.cache import AttentionCache
from harness.attention.extract import extract_attention, iter_attention
from harness.attention.views import length_runs
from harness.core.errors import HarnessError
from harness.data.datasets import load_dataset
from harness.encoders.load import Encoder, length_sorted_batches, load_encoder, tokenize

MAX_LEN = 32
#: fp16 keeps 11 significant bits: probabilities in [0, 1] round by at most 2**-12
FP16_ATOL = 2**-11


@pytest.fixture(scope="module")
def encoder(tiny_bert) -> Encoder:
    return load_encoder(str(tiny_bert))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Lengths from 1 word to well past MAX_LEN tokens (truncated), several of each."""
    words = "the council said on monday that its radical new plan was a disgrace".split()
    rng = np.random.default_rng(0)
    out = [" ".join(rng.choice(words, size=int(rng.integers(1, 40)))) for _ in range(37)]
    return out + ["short", "short", "a much longer sentence " * 6]


def padded_reference(encoder: Encoder, texts: list[str], max_len: int) -> list[np.ndarray]:
    """The seed's way: batch 1, padded to max_len; each sentence's float32 [L, H, n, n]."""
    ids = tokenize(encoder, texts, max_len)
    out = []
    with torch.inference_mode():
        for row in ids:
            n = len(row)
            input_ids = torch.zeros((1, max_len), dtype=torch.long)
            input_ids[0, :n] = torch.tensor(row)
            mask = torch.zeros((1, max_len), dtype=torch.long)
            mask[0, :n] = 1
            att = encoder.model(input_ids=input_ids, attention_mask=mask, output_attentions=True)
            out.append(torch.stack(att.attentions)[:, 0, :, :n, :n].numpy())
    return out


@pytest.fixture(scope="module")
def reference(encoder, texts) -> list[np.ndarray]:
    return padded_reference(encoder, texts, MAX_LEN)


@pytest.fixture(scope="module")
def cache(encoder, texts, tmp_path_factory) -> AttentionCache:
    return extract_attention(
        encoder,
        texts,
        max_len=MAX_LEN,
        batch_size=8,
        cache_dir=tmp_path_factory.mktemp("cache"),
        progress=False,
    )


@pytest.mark.parametrize("batch_size", [1, 3, 8, 64])
def test_cache_holds_the_padded_extractions_maps(encoder, texts, reference, tmp_path, batch_size):
    cache = extract_attention(
        encoder,
        texts,
        max_len=MAX_LEN,
        batch_size=batch_size,
        cache_dir=tmp_path,
        progress=False,
    )
    assert len(cache) == len(texts)
    assert (cache.num_layers, cache.num_heads) == (2, 4)
    for i, want in enumerate(reference):
        got = cache.maps(i)
        assert got.dtype == np.float16 and got.shape == want.shape
        np.testing.assert_allclose(got.astype(np.float32), want, atol=FP16_ATOL, rtol=0)


def test_cache_stores_no_padding(cache, reference):
    """Each layer file holds exactly Σ heads × n² fp16 values."""
    unpadded = sum(2 * 4 * len(m[0, 0]) ** 2 for m in reference)
    for layer in range(cache.num_layers):
        assert (cache.path / f"layer_{layer:02d}.bin").stat().st_size == unpadded
    assert cache.nbytes == cache.num_layers * unpadded


def test_iter_attention_batches_are_sorted_and_padding_is_never_read(encoder, texts, reference):
    seen, widths = [], []
    for idx, lens, maps in iter_attention(encoder, texts, MAX_LEN, batch_size=5):
        assert maps.dtype == np.float16 and maps.shape[:3] == (2, len(idx), 4)
        widths.append(maps.shape[-1])
        assert maps.shape[-1] == lens.max()
        for b, (i, n) in enumerate(zip(idx, lens, strict=True)):
            np.testing.assert_allclose(
                maps[:, b, :, :n, :n].astype(np.float32), reference[i], atol=FP16_ATOL, rtol=0
            )
            seen.append(i)
    assert sorted(seen) == list(range(len(texts)))
    assert widths == sorted(widths, reverse=True)  # longest first


def test_length_sorted_batches_mask_real_tokens_only(encoder, texts):
    lengths = []
    for idx, lens, inputs in length_sorted_batches(encoder, texts, MAX_LEN, batch_size=4):
        assert inputs["attention_mask"].sum(1).tolist() == lens.tolist()
        assert inputs["input_ids"].shape == (len(idx), lens.max())
        lengths.extend(lens.tolist())
    assert lengths == sorted(lengths, reverse=True) and lengths[0] == MAX_LEN


def test_batch_size_must_be_positive(encoder, texts):
    with pytest.raises(HarnessError, match="batch_size"):
        next(iter_attention(encoder, texts, MAX_LEN, batch_size=0))


def test_length_runs():
    assert length_runs(np.array([2, 2, 3, 5, 5, 5])) == [(0, 2), (2, 3), (3, 6)]
    assert length_runs(np.array([7])) == [(0, 1)]


def test_maps_of_one_sentence(cache, reference):
    assert cache.maps(0).shape == reference[0].shape
    with pytest.raises(IndexError):
        cache.maps(len(cache))


def naive_features(
    reference: list[np.ndarray], layers: list[int], heads: list[int] | None, reducer: str
) -> np.ndarray:
    """Features the slow, obvious way: per sentence, in numpy, from the float32 maps."""
    width = MAX_LEN * (len(layers) if reducer == "concat" else 1)
    out = np.zeros((len(reference), MAX_LEN, width), np.float32)
    for i, maps in enumerate(reference):
        n = maps.shape[-1]
        chosen = maps[layers] if heads is None else maps[layers][:, heads]  # [l, h, n, n]
        if reducer == "sum":
            out[i, :n, :n] = chosen.sum(axis=(0, 1))
        elif reducer == "mean":
            out[i, :n, :n] = chosen.mean(axis=(0, 1))
        elif reducer == "max":
            out[i, :n, :n] = chosen.max(axis=(0, 1))
        else:
            for j, layer_maps in enumerate(chosen):
                out[i, :n, j * MAX_LEN : j * MAX_LEN + n] = layer_maps.mean(axis=0)
    return out


@pytest.mark.parametrize("reducer", ["sum", "mean", "max", "concat"])
@pytest.mark.parametrize(
    "layers,heads",
    [([0, 1], "all"), ([1], "all"), ([1, 0], [0, 3]), ([0], 2), ([0, 1], [1])],
)
def test_features_equal_a_naive_computation(cache, reference, layers, heads, reducer):
    x, lengths = cache.features(layers, heads, reducer)
    head_list = None if heads == "all" else ([heads] if isinstance(heads, int) else heads)
    want = naive_features(reference, layers, head_list, reducer)
    assert x.dtype == np.float32 and x.shape == want.shape
    # fp16 storage: each map is off by <= FP16_ATOL, a sum of up to 8 maps by 8 times that
    np.testing.assert_allclose(x, want, atol=8 * FP16_ATOL, rtol=0)
    np.testing.assert_array_equal(lengths, [m.shape[-1] for m in reference])
    np.testing.assert_array_equal(x[want == 0], 0)  # padding is exactly zero


def test_features_of_all_layers_by_default(cache):
    np.testing.assert_array_equal(cache.features(None)[0], cache.features([0, 1])[0])


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The files the cache's streams open, in order."""
    from harness.attention import stream

    opened: list[str] = []
    real = stream.os.open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(stream.os, "open", spy)
    return opened


def test_features_are_read_only_when_indexed_and_only_the_chosen_layers(cache, reads):
    x, lengths = cache.features([1], [2], "sum")
    assert x.shape == (len(cache), cache.max_len, cache.max_len) and not reads
    x[[0, 3]]
    assert reads == [str(cache.path / "layer_01.bin")]


def test_streamed_rows_equal_the_whole_array(cache):
    """Any subset, any order, any token prefix: the rows of the whole array."""
    x, lengths = cache.features([0, 1], [1, 2], "concat")
    whole = np.asarray(x)
    rows = np.array([5, 0, 2, 2, 7])
    np.testing.assert_array_equal(x[rows], whole[rows])
    np.testing.assert_array_equal(x[rows, :3], whole[rows, :3])
    np.testing.assert_array_equal(x[4], whole[4])
    np.testing.assert_array_equal(x[2:6], whole[2:6])
    np.testing.assert_array_equal(x[rows, 2:, 1], whole[rows, 2:, 1])
    np.testing.assert_array_equal(x[whole > 0.3], whole[whole > 0.3])


def test_features_reject_out_of_range_layers_and_heads(cache):
    with pytest.raises(HarnessError, match=r"layers \[2\]"):
        cache.features([2])
    with pytest.raises(HarnessError, match=r"heads \[4\]"):
        cache.features([0], [4])


@pytest.mark.slow
def test_minilm_on_babe_sentences(babe_dir, tmp_path, monkeypatch):
    """The real encoder (6 × 12 heads) on 50 real sentences, lengths up to max_len 80."""
    monkeypatch.setenv("HARNESS_DATA_DIR", str(babe_dir))
    texts = load_dataset("babe").texts
    lengths = np.array([len(x) for x in tokenize(load_encoder("minilm"), texts, 80)])
    chosen = np.argsort(lengths)[:: len(texts) // 49][:49].tolist() + [int(lengths.argmax())]
    sample = [texts[i] for i in chosen]
    encoder = load_encoder("minilm")
    cache = extract_attention(
        encoder, sample, max_len=80, batch_size=16, cache_dir=tmp_path, progress=False
    )
    reference = padded_reference(encoder, sample, 80)
    assert (cache.num_layers, cache.num_heads) == (6, 12)
    assert max(m.shape[-1] for m in reference) == 80
    for i, want in enumerate(reference):
        np.testing.assert_allclose(cache.maps(i).astype(np.float32), want, atol=FP16_ATOL, rtol=0)
    x, _ = cache.features([3, 4, 5], "all", "sum")
    i = len(sample) - 1
    n = reference[i].shape[-1]
    np.testing.assert_allclose(
        x[i, :n, :n], reference[i][3:].sum(axis=(0, 1)), atol=36 * FP16_ATOL, rtol=0
    )
