"""Intermediary encoders (issue 13): fine-tuning on train rows only, the leak check, the
cache, the fine-tuned encoder's attention and head, and the random-init control."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import harness.encoders.finetune as ft
from harness.attention.extract import extract_attention
from harness.core.errors import HarnessError
from harness.data.datasets import load_dataset
from harness.data.split import make_split
from harness.encoders.guard import finetune_data, leak_check
from harness.encoders.load import load_encoder, tokenize
from harness.stats.metrics import compute_metrics
from harness.studyfile.schema import FinetuneConfig, parse_study
from tests.conftest import write_synthetic_csv

# a learning rate that moves a tiny random BERT visibly within two epochs
SETTINGS = FinetuneConfig(epochs=2, lr=1e-3, batch_size=16, max_len=32)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    path = write_synthetic_csv(tmp_path_factory.mktemp("study") / "study.csv", n=120, seed=1)
    dataset = load_dataset(str(path), group_column="group")
    return dataset, make_split(dataset, seed=0)


@pytest.fixture(scope="module")
def finetuned(tiny_bert, study, tmp_path_factory):
    """One fine-tuning shared by the tests that only read its result."""
    dataset, split = study
    cache = tmp_path_factory.mktemp("ft-cache")
    base = load_encoder(str(tiny_bert))
    return ft.finetune_encoder(base, SETTINGS, dataset, split, cache_dir=cache, progress=False)


def record_training_inputs(monkeypatch) -> list[tuple[int, ...]]:
    """Every sentence (its token ids, padding cut off) that reaches the model in training
    mode, seen by a forward pre-hook on the model fine-tuning builds."""
    seen: list[tuple[int, ...]] = []
    build = ft.build_model

    def hook(module, args, kwargs):
        if module.training:
            for row, mask in zip(kwargs["input_ids"], kwargs["attention_mask"], strict=True):
                seen.append(tuple(row[mask.bool()].tolist()))

    def build_and_watch(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_pre_hook(hook, with_kwargs=True)
        return model

    monkeypatch.setattr(ft, "build_model", build_and_watch)
    return seen


def as_tokens(encoder, texts: list[str]) -> list[tuple[int, ...]]:
    return [tuple(x) for x in tokenize(encoder, texts, SETTINGS.max_len)]


def test_study_finetuning_feeds_the_model_train_rows_only(tiny_bert, study, tmp_path, monkeypatch):
    dataset, split = study
    base = load_encoder(str(tiny_bert))
    # a training sentence duplicated into the test split must be left out as well
    texts = list(dataset.texts)
    texts[split.train[0]] = "  " + texts[split.test[0]].replace(" ", "   ") + " "
    dataset = dataclasses.replace(dataset, texts=texts)
    seen = record_training_inputs(monkeypatch)
    epochs: list[int] = []
    ft.finetune_encoder(
        base,
        SETTINGS,
        dataset,
        split,
        cache_dir=tmp_path,
        progress=False,
        on_epoch=lambda e, loss, auc: epochs.append(e),
    )
    held_out = set(as_tokens(base, [texts[i] for i in [*split.val, *split.test]]))
    assert epochs == [0, 1]
    assert seen and not held_out & set(seen)
    # and every other train sentence, once per epoch: the hook sees the real batches
    expected = Counter(as_tokens(base, [texts[i] for i in split.train[1:]]) * len(epochs))
    assert Counter(seen) == expected


def test_intermediary_file_trains_on_its_rows_minus_a_validation_slice(
    tiny_bert, study, tmp_path, monkeypatch
):
    dataset, split = study
    other = write_synthetic_csv(tmp_path / "other.csv", n=80, seed=7)
    clean = load_dataset(str(other))
    leak_check(clean.texts, [dataset.texts[i] for i in [*split.val, *split.test]])  # clean
    base = load_encoder(str(tiny_bert))
    seen = record_training_inputs(monkeypatch)
    settings = FinetuneConfig(epochs=1, lr=1e-3, batch_size=16, max_len=32, data=str(other))
    result = ft.finetune_encoder(base, settings, dataset, split, cache_dir=tmp_path, progress=False)
    data = finetune_data(settings, dataset, split)
    assert result.record["data"]["n_val"] == len(data.val) == 8  # 10 % of each class
    assert not set(data.train) & set(data.val)
    assert Counter(seen) == Counter(as_tokens(base, [clean.texts[i] for i in data.train]))
    assert not set(seen) & set(as_tokens(base, [dataset.texts[i] for i in split.test]))


def test_leak_check_refuses_shared_sentences_and_names_the_count(tiny_bert, study, tmp_path):
    dataset, split = study
    leaked = [
        dataset.texts[split.val[0]],
        dataset.texts[split.test[0]],
        dataset.texts[split.test[1]],
    ]
    rows = ["text,label"] + [f"{t},{i % 2}" for i, t in enumerate(leaked * 2)]  # repeats count once
    rows[1] = "  " + leaked[0].replace(" ", "\t ") + " ,0"  # whitespace does not hide a leak
    rows += [f"clean sentence number {i},{i % 2}" for i in range(20)]
    path = tmp_path / "leaky.csv"
    path.write_text("\n".join(rows) + "\n")
    settings = FinetuneConfig(epochs=1, data=str(path))
    with pytest.raises(HarnessError, match=r"leaky\.csv shares 3 sentence\(s\) with the study"):
        ft.finetune_encoder(
            load_encoder(str(tiny_bert)), settings, dataset, split, cache_dir=tmp_path
        )
    assert not (tmp_path / "finetuned").exists()  # refused before any work


def test_leak_check_is_exact_after_whitespace_only():
    leak_check(["The Senate voted."], ["the senate voted."])  # case-sensitive: no leak
    leak_check(["The Senate voted"], ["The Senate voted."])
    with pytest.raises(HarnessError, match="shares 1 sentence"):
        leak_check(["The  Senate\nvoted. "], ["The Senate voted.", "Other."])


def test_second_call_reuses_the_cached_encoder_without_training(
    tiny_bert, study, finetuned, monkeypatch, caplog
):
    dataset, split = study

    def no_training(*args, **kwargs):
        raise AssertionError("fine-tuning ran although a cached encoder exists")

    monkeypatch.setattr(ft, "train_classifier", no_training)
    cache = finetuned.path.parent.parent
    with caplog.at_level(logging.INFO, logger="harness"):
        again = ft.finetune_encoder(
            load_encoder(str(tiny_bert)), SETTINGS, dataset, split, cache_dir=cache
        )
    assert again.reused and not finetuned.reused
    assert again.path == finetuned.path
    assert f"reusing fine-tuned encoder {finetuned.path} (no fine-tuning)" in caplog.text
    assert again.history == finetuned.history and len(again.history) == 2
    assert again.encoder.fingerprint == finetuned.encoder.fingerprint
    # other settings are another encoder: the key covers them
    other = FinetuneConfig(epochs=2, lr=2e-3, batch_size=16, max_len=32)
    assert ft.finetune_key(again.encoder, finetune_data(other, dataset, split), other) != (
        ft.finetune_key(again.encoder, finetune_data(SETTINGS, dataset, split), SETTINGS)
    )


def test_finetuned_encoder_has_its_own_fingerprint_and_attention(
    tiny_bert, study, finetuned, tmp_path
):
    dataset, _ = study
    base = load_encoder(str(tiny_bert))
    tuned = finetuned.encoder
    assert tuned.fingerprint != base.fingerprint
    assert load_encoder(str(finetuned.path)).fingerprint == tuned.fingerprint  # stable reload
    assert tuned.fingerprint == finetuned.record["fingerprint"]
    assert (finetuned.path / "model.safetensors").is_file()
    texts = dataset.texts[:24]
    a = extract_attention(base, texts, max_len=32, cache_dir=tmp_path, progress=False)
    b = extract_attention(tuned, texts, max_len=32, cache_dir=tmp_path, progress=False)
    assert a.key != b.key
    assert np.abs(a.maps(0).astype(np.float32) - b.maps(0).astype(np.float32)).max() > 1e-3


def test_random_init_control_is_seeded_and_not_the_pretrained_weights(tiny_bert):
    # not seed 0: the tiny_bert fixture itself was drawn under torch.manual_seed(0)
    pretrained = load_encoder(str(tiny_bert))
    r0, r0_again, r1 = (load_encoder(str(tiny_bert), init="random", seed=s) for s in (3, 3, 4))
    state = torch.get_rng_state()
    weights = [e.model.state_dict() for e in (pretrained, r0, r0_again, r1)]
    assert torch.equal(state, torch.get_rng_state())  # drawing weights leaves the caller's RNG
    name = "encoder.layer.0.attention.self.query.weight"
    assert all(torch.equal(weights[1][k], weights[2][k]) for k in weights[1])
    assert not torch.equal(weights[1][name], weights[3][name])
    assert not torch.equal(weights[1][name], weights[0][name])
    prints = {e.fingerprint for e in (pretrained, r0, r1)}
    assert len(prints) == 3 and r0.fingerprint == r0_again.fingerprint
    assert r0.label == f"{tiny_bert} (random-init:3)"
    with pytest.raises(HarnessError, match="encoder init 'zeros' is unknown"):
        load_encoder(str(tiny_bert), init="zeros")
    with pytest.raises(HarnessError, match="cannot fine-tune"):
        ft.finetune_encoder(r0, SETTINGS, None, None)


def test_classifier_reloads_in_a_new_process_to_1e5(study, finetuned):
    dataset, split = study
    texts = [dataset.texts[i] for i in split.val]
    here = finetuned.classifier().predict_proba(texts)
    # the saved weights are the best epoch's: they reproduce its validation AUC
    auc = compute_metrics(dataset.labels[split.val], here)["auc"]
    assert auc == pytest.approx(finetuned.record["best_val_auc"], abs=1e-9)
    code = (
        "import json, sys; from harness.encoders.finetune import FinetunedClassifier; "
        "texts = json.load(sys.stdin); "
        f"print(json.dumps(FinetunedClassifier({str(finetuned.path)!r}).predict_proba(texts).tolist()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    there = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(there, here, atol=1e-5, rtol=0)
    assert ((here > 0) & (here < 1)).all() and here.std() > 0


def test_bad_settings_are_refused_with_the_key_named(tmp_path):
    def error(finetune: str) -> str:
        text = (
            f"name: t\ndata: {{dataset: babe}}\nencoder: {{name: minilm, finetune: {finetune}}}\n"
        )
        with pytest.raises(HarnessError) as info:
            parse_study(text, "s.yaml")
        return str(info.value)

    assert "encoder.finetune.lr" in error("{lr: 0}") and "greater than 0" in error("{lr: 0}")
    assert "encoder.finetune.schedule" in error("{schedule: cosine}")
    assert "applies to an intermediary file" in error("{text_column: sentence}")
    with pytest.raises(HarnessError, match="FinetunedClassifier|not a fine-tuned encoder"):
        ft.FinetunedClassifier(tmp_path)


def test_cache_folder_survives_a_failed_training_without_a_half_written_entry(
    tiny_bert, study, tmp_path, monkeypatch
):
    dataset, split = study

    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(ft, "train_classifier", crash)
    with pytest.raises(RuntimeError, match="killed"):
        ft.finetune_encoder(
            load_encoder(str(tiny_bert)), SETTINGS, dataset, split, cache_dir=tmp_path
        )
    assert [
        p.name for p in (tmp_path / "finetuned").iterdir() if not p.name.endswith(".lock")
    ] == []


def test_path_of_data_file_is_not_part_of_the_key(tmp_path, study, tiny_bert):
    dataset, split = study
    a = write_synthetic_csv(tmp_path / "a.csv", n=60, seed=3)
    b = Path(tmp_path / "b.csv")
    b.write_bytes(a.read_bytes())
    base = load_encoder(str(tiny_bert))
    keys = {
        ft.finetune_key(base, finetune_data(s, dataset, split), s)
        for s in (FinetuneConfig(data=str(a)), FinetuneConfig(data=str(b)))
    }
    assert len(keys) == 1
