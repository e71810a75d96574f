"""The training loop: bucketing is only a speed-up, runs repeat, early stopping keeps the
best epoch, and a diverging loss fails loudly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.core.batching import make_batches
from harness.core.errors import TrainingDiverged
from harness.models import train as train_module
from harness.models.reader import build_classifier
from harness.models.train import TrainSettings, _batch, predict_logits, train
from harness.studyfile.specs import ClassifierSpec

MAX_LEN = 24
SPECS = {
    "gru": ClassifierSpec(kind="gru", hidden_size=8, bidirectional=True, pooling="attention"),
    "lstm": ClassifierSpec(kind="lstm", hidden_size=8, num_layers=2, pooling="mean"),
    "transformer": ClassifierSpec(
        kind="transformer", hidden_size=8, num_heads=2, ff_size=16, pooling="last"
    ),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def attention_like(
    n_sentences: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Row-softmaxed maps of varied lengths, zero past each length; label 1 sentences
    attend to their diagonal, so there is something to learn."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, MAX_LEN + 1, (n_sentences,), generator=gen)
    labels = np.arange(n_sentences) % 2
    x = torch.zeros(n_sentences, MAX_LEN, MAX_LEN)
    for i, n in enumerate(lengths.tolist()):
        scores = torch.randn(n, n, generator=gen) + 2.0 * labels[i] * torch.eye(n)
        x[i, :n, :n] = scores.softmax(-1)
    return x, lengths, labels


def model_for(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_classifier(SPECS[kind], MAX_LEN, MAX_LEN)


@pytest.mark.parametrize("kind", list(SPECS))
@pytest.mark.parametrize("grad", [False, True])
def test_bucketed_and_padded_batches_give_the_same_logits(kind, grad):
    x, lengths, _ = attention_like(40)
    model = model_for(kind).eval()
    idx = np.arange(40)
    logits = {}
    for bucketing in (True, False):
        out = torch.empty(40)
        for b in make_batches(lengths.numpy(), idx, 8, bucketing):
            xb, lb = _batch(x, lengths, b, bucketing)
            assert xb.shape[1] == (int(lb.max()) if bucketing else MAX_LEN)
            with torch.set_grad_enabled(grad):
                out[torch.from_numpy(b)] = model(xb, lb).detach()
        logits[bucketing] = out
    torch.testing.assert_close(logits[True], logits[False], atol=1e-5, rtol=0)
    # and predict_logits (either way, any order of rows) agrees with both
    order = np.random.default_rng(0).permutation(40)
    for bucketing in (True, False):
        np.testing.assert_allclose(
            predict_logits(model, x, lengths, order, batch_size=7, bucketing=bucketing),
            logits[False][order],
            atol=1e-5,
        )


@pytest.mark.parametrize("bucketing", [True, False])
def test_batches_cover_every_row_once(bucketing):
    lengths = np.array([5, 1, 9, 9, 3, 7, 2, 8, 4, 6, 5])
    idx = np.array([0, 2, 3, 5, 6, 7, 8, 10])
    rng = np.random.default_rng(0)
    batches = make_batches(lengths, idx, 3, bucketing, rng)
    assert sorted(np.concatenate(batches).tolist()) == idx.tolist()
    assert [len(b) for b in batches].count(3) == 2
    if bucketing:  # each batch holds neighbours in length order
        spans = sorted((lengths[b].min(), lengths[b].max()) for b in batches)
        assert all(
            hi <= lo_next for (_, hi), (lo_next, _) in zip(spans[:-1], spans[1:], strict=True)
        )


def test_fixed_order_without_rng():
    lengths = np.array([3, 1, 2, 1])
    assert [b.tolist() for b in make_batches(lengths, np.arange(4), 2, True)] == [[1, 3], [2, 0]]
    assert [b.tolist() for b in make_batches(lengths, np.arange(4), 3, False)] == [[0, 1, 2], [3]]


@pytest.mark.parametrize("kind", list(SPECS))
def test_training_repeats_exactly_with_a_seed(kind):
    x, lengths, labels = attention_like(96)
    settings = TrainSettings(epochs=2, patience=5, batch_size=16, lr=3e-3, seed=7)
    runs = []
    for _ in range(2):
        model = model_for(kind, seed=1)
        result = train(model, x, lengths, labels, np.arange(64), np.arange(64, 96), settings)
        runs.append((result.history, model.state_dict()))
    assert runs[0][0] == runs[1][0]
    for name, value in runs[0][1].items():
        torch.testing.assert_close(value, runs[1][1][name], atol=0, rtol=0)


def test_early_stopping_restores_the_best_epoch(monkeypatch):
    """A scripted validation AUC peaks at epoch 1; with patience 2 training stops after
    epoch 3 and the model ends with epoch 1's weights, not the last ones."""
    script = iter([0.50, 0.70, 0.60, 0.65, 0.99])
    monkeypatch.setattr(
        train_module, "compute_metrics", lambda y, p: {"auc": next(script)}, raising=True
    )
    x, lengths, labels = attention_like(48)
    model = model_for("gru")
    snapshots = []

    def on_epoch(epoch: int, loss: float, auc: float) -> None:
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})

    settings = TrainSettings(epochs=5, patience=2, batch_size=16, lr=1e-2)
    result = train(model, x, lengths, labels, np.arange(32), np.arange(32, 48), settings, on_epoch)
    assert [h["val_auc"] for h in result.history] == [0.50, 0.70, 0.60, 0.65]
    assert (result.best_epoch, result.best_val_auc) == (1, 0.70)
    final = model.state_dict()
    for name, value in snapshots[1].items():
        torch.testing.assert_close(final[name], value, atol=0, rtol=0)
    assert any(not torch.equal(final[k], v) for k, v in snapshots[3].items())


def test_on_epoch_may_stop_training():
    x, lengths, labels = attention_like(32)

    class Stop(Exception):
        pass

    def on_epoch(epoch: int, loss: float, auc: float) -> None:
        raise Stop

    with pytest.raises(Stop):
        train(
            model_for("lstm"),
            x,
            lengths,
            labels,
            np.arange(24),
            np.arange(24, 32),
            TrainSettings(epochs=3),
            on_epoch,
        )


def test_nan_loss_raises_training_diverged():
    x, lengths, labels = attention_like(32)
    x[3, 0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="loss became nan in epoch 0"):
        train(
            model_for("gru"),
            x,
            lengths,
            labels,
            np.arange(24),
            np.arange(24, 32),
            TrainSettings(epochs=2, batch_size=24),
        )
