import json
import re

import pytest
import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from harness.models.reader import AttentionReader, build_classifier, reverse_within
from harness.studyfile.specs import POOLINGS, ClassifierSpec
from harness.studyfile.specs import READERS as KINDS

MAX_LEN = 80

# Every RNN variant twice (uni- and bidirectional); the transformer ignores bidirectional.
VARIANTS = [(k, p, False) for k in KINDS for p in POOLINGS] + [
    (k, p, True) for k in ("gru", "lstm") for p in POOLINGS
]


pytestmark = pytest.mark.usefixtures("one_thread")


def upgrade_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the weights of an RNN saved as one ``nn.GRU``/``nn.LSTM`` (``rnn.*``) to the
    readers' hand-stacked layout; other keys pass unchanged. That layout never shipped in a
    saved model; the test uses it to compare the dense readers with torch's packed RNNs."""
    pattern = re.compile(r"rnn\.(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?$")
    upgraded = {}
    for key, value in state.items():
        if m := pattern.match(key):
            key = f"layers.{m[2]}.{1 if m[3] else 0}.{m[1]}_l0"
        upgraded[key] = value
    return upgraded


def make_spec(kind: str, pooling: str = "last", bidirectional: bool = False) -> ClassifierSpec:
    return ClassifierSpec(
        kind=kind,
        hidden_size=16,
        num_layers=2,
        dropout=0.1,
        bidirectional=bidirectional,
        pooling=pooling,
        num_heads=4,
        ff_size=32,
    )


def random_rows(lengths: list[int], T: int, gen: torch.Generator) -> torch.Tensor:
    """Row-softmaxed random attention for each sentence, zero past its length."""
    x = torch.zeros(len(lengths), T, MAX_LEN)
    for b, n in enumerate(lengths):
        x[b, :n, :n] = torch.randn(n, n, generator=gen).softmax(-1)
    return x


def pad_to(x: torch.Tensor, T: int) -> torch.Tensor:
    out = torch.zeros(x.shape[0], T, x.shape[2])
    out[:, : x.shape[1]] = x
    return out


@pytest.mark.parametrize("kind,pooling,bidirectional", VARIANTS)
def test_logit_does_not_depend_on_padding(kind, pooling, bidirectional):
    torch.manual_seed(0)
    model = build_classifier(make_spec(kind, pooling, bidirectional), MAX_LEN, MAX_LEN).eval()
    gen = torch.Generator().manual_seed(1)
    for n in (1, 7, 33):
        sentence = random_rows([n], n, gen)  # [1, n, F]: padded to its own length
        others = random_rows([80, 50, 3, 65], MAX_LEN, gen)
        # Grad on/off matters: PyTorch takes an inference fast path under no_grad.
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                ref = model(sentence, torch.tensor([n]))
                for T in (50, 80):
                    alone = model(pad_to(sentence, T), torch.tensor([n]))
                    torch.testing.assert_close(alone, ref, atol=1e-5, rtol=0)
                batch = torch.cat([others[:2], pad_to(sentence, MAX_LEN), others[2:]])
                lengths = torch.tensor([80, 50, n, 3, 65])
                batched = model(batch, lengths)
                torch.testing.assert_close(batched[2:3], ref, atol=1e-5, rtol=0)
                # The other sentences are also unaffected by their neighbours.
                solo = model(others[1:2, :50], torch.tensor([50]))
                torch.testing.assert_close(batched[1:2], solo, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_dense_rnn_equals_pytorchs_packed_rnn_with_the_same_weights(kind, bidirectional):
    """The hand-stacked dense RNN computes what one 2-layer nn.GRU/nn.LSTM computes on packed
    sequences: the same states at every valid step, and "last" pooling reads the top layer's
    forward state at step n-1 and backward state at step 0. Loading the nn.GRU's weights
    through upgrade_state_dict is also how weights saved in the old layout are read."""
    torch.manual_seed(0)
    spec = make_spec(kind, "last", bidirectional)
    H = spec.hidden_size
    rnn = (torch.nn.GRU if kind == "gru" else torch.nn.LSTM)(
        MAX_LEN, H, 2, batch_first=True, bidirectional=bidirectional
    ).eval()
    model = build_classifier(spec, MAX_LEN, MAX_LEN).eval()
    old_layout = {f"rnn.{k}": v for k, v in rnn.state_dict().items()}
    old_layout |= {k: v for k, v in model.state_dict().items() if not k.startswith("layers.")}
    model.load_state_dict(upgrade_state_dict(old_layout))

    lengths = torch.tensor([9, 40, 1, 23])
    x = random_rows(lengths.tolist(), 40, torch.Generator().manual_seed(0))
    with torch.no_grad():
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, h_n = rnn(packed)
        h_n = h_n[0] if kind == "lstm" else h_n
        ref_states, _ = pad_packed_sequence(out, batch_first=True, total_length=40)
        ref_last = h_n[-(2 if bidirectional else 1) :].transpose(0, 1).reshape(4, -1)
        states, last = model._read(x, lengths)
        logits = model(x, lengths)
    valid = (torch.arange(40) < lengths[:, None]).unsqueeze(-1)
    torch.testing.assert_close(states * valid, ref_states, atol=1e-5, rtol=0)
    torch.testing.assert_close(last, ref_last, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, model.head(ref_last).squeeze(-1), atol=1e-5, rtol=0)


def test_reverse_within_reverses_each_sentence_and_keeps_the_padding():
    x = torch.arange(2 * 5, dtype=torch.float32).reshape(2, 5, 1)
    rev = reverse_within(x, torch.tensor([3, 5]))
    assert rev.squeeze(-1).tolist() == [[2, 1, 0, 3, 4], [9, 8, 7, 6, 5]]
    torch.testing.assert_close(reverse_within(rev, torch.tensor([3, 5])), x)


@pytest.mark.parametrize("kind", KINDS)
def test_output_shape_and_gradients_reach_first_layer(kind):
    torch.manual_seed(0)
    model = build_classifier(make_spec(kind, "attention", kind != "transformer"), MAX_LEN, MAX_LEN)
    x = random_rows([5, 1, 30], 30, torch.Generator().manual_seed(0))
    logits = model(x, torch.tensor([5, 1, 30]))
    assert logits.shape == (3,)
    logits.sum().backward()
    first = model.proj.weight if kind == "transformer" else model.layers[0][0].weight_ih_l0
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_spec_json_round_trip():
    spec = ClassifierSpec(kind="lstm", hidden_size=120, num_layers=2, bidirectional=True)
    again = ClassifierSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert ClassifierSpec.from_dict({}) == ClassifierSpec()


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="hiden_size"):
        ClassifierSpec.from_dict({"hiden_size": 32})


@pytest.mark.parametrize(
    "overrides",
    [
        {"kind": "cnn"},
        {"pooling": "max"},
        {"hidden_size": 0},
        {"num_layers": -1},
        {"hidden_size": 30, "num_heads": 4, "kind": "transformer"},
        {"num_heads": 0, "kind": "transformer"},
        {"ff_size": 0},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"hidden_size": "64"},
        {"bidirectional": "yes"},
    ],
)
def test_bad_spec_raises(overrides):
    with pytest.raises(ValueError):
        build_classifier(ClassifierSpec(**overrides), MAX_LEN, MAX_LEN)


@pytest.mark.parametrize("input_size,max_len", [(0, 80), (80, 0)])
def test_bad_sizes_raise(input_size, max_len):
    with pytest.raises(ValueError):
        build_classifier(ClassifierSpec(), input_size, max_len)


def test_rnn_hidden_size_need_not_divide_heads():
    assert isinstance(build_classifier(ClassifierSpec(hidden_size=30), 8, 8), AttentionReader)


@pytest.mark.parametrize("lengths", [[0, 3], [3, 9], [3]])
def test_bad_lengths_raise(lengths):
    model = build_classifier(ClassifierSpec(), 8, 8)
    with pytest.raises(ValueError):
        model(torch.zeros(2, 8, 8), torch.tensor(lengths))


@pytest.mark.parametrize("kind", KINDS)
def test_learns_diagonal_vs_uniform(kind):
    """Bright-diagonal attention (class 1) vs uniform attention (class 0), lengths 2..12."""
    torch.manual_seed(0)
    T, n_samples = 12, 64
    lengths = torch.randint(2, T + 1, (n_samples,))
    y = (torch.arange(n_samples) % 2).float()
    x = torch.zeros(n_samples, T, T)
    for b, n in enumerate(lengths.tolist()):
        rows = torch.full((n, n), 1.0 / n)
        if y[b]:
            rows = 0.5 * rows + 0.5 * torch.eye(n)
        x[b, :n, :n] = rows + 0.02 * torch.rand(n, n)
    spec = ClassifierSpec(kind=kind, hidden_size=16, num_heads=2, ff_size=32)
    model = build_classifier(spec, T, T)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(100):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x, lengths), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = ((model(x, lengths) > 0).float() == y).float().mean().item()
    assert accuracy > 0.9
