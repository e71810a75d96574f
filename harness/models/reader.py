"""Attention readers: small sequence classifiers over a sentence's attention rows.

``AttentionReader`` is the network (one logit per sentence); ``ReaderModel`` trains it
with ``harness.models.train`` and implements the model protocol of ``harness.models.base``.

A sentence arrives as a [T, F] matrix whose row i is token i's attention over positions,
plus its true length n; rows >= n are zero padding. Every kind (GRU, LSTM, transformer) is
written so that padding never reaches the output: an RNN's state at step t < n depends on
rows <= t only (the backward direction reads each sentence reversed within its own length),
the transformer masks padded keys, and all poolings look at valid positions only. That
makes a sentence's logit the same whether its batch is padded to its own length or to
``max_len``, which is what lets training bucket batches by length.

RNNs run dense (one fused call per layer and direction) rather than on packed sequences:
on a CPU a packed GRU or LSTM steps through hundreds of small ops and ran 2-5x slower than
the dense call over the same batch, padding included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import Tensor, nn

from harness.attention import Features
from harness.core import default_device
from harness.models.base import EpochCallback, FitResult, write_model
from harness.models.inputs import AttentionInputs, inputs_from_dict
from harness.models.train import TrainSettings, predict_logits, seed_everything, sigmoid, train
from harness.studyfile import (
    POOLINGS,
    READERS,
    ClassifierSpec,
    ProbeSpec,
    divisible,
    spec_from_dict,
)


def _validate(spec: ClassifierSpec, input_size: int, max_len: int) -> None:
    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if spec.kind not in READERS:
        raise ValueError(f"unknown reader kind {spec.kind!r}; expected one of {READERS}")
    if spec.pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {spec.pooling!r}; expected one of {POOLINGS}")
    sizes = {
        "hidden_size": spec.hidden_size,
        "num_layers": spec.num_layers,
        "num_heads": spec.num_heads,
        "ff_size": spec.ff_size,
        "input_size": input_size,
        "max_len": max_len,
    }
    for name, value in sizes.items():
        if not is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(spec.dropout, bool) or not isinstance(spec.dropout, int | float):
        raise ValueError(f"dropout must be a number, got {spec.dropout!r}")
    if not 0.0 <= spec.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {spec.dropout}")
    if not isinstance(spec.bidirectional, bool):
        raise ValueError(f"bidirectional must be true or false, got {spec.bidirectional!r}")
    if spec.kind == "transformer" and not divisible(spec.hidden_size, spec.num_heads):
        raise ValueError(
            f"hidden_size {spec.hidden_size} must be divisible by num_heads {spec.num_heads}"
        )


class Standardize(nn.Module):
    """``(x - mean) * scale`` per feature, fitted on the training sentences' valid tokens.

    Position-free statistics live on very different scales (attention to [SEP] near 0.5,
    to a neighbour near 0.05, row entropy near 2), and without this the readers learn
    mostly the largest. It starts as the identity (mean 0, scale 1), which is what the
    ``rows`` view keeps: its inputs are probabilities already, read as before.
    """

    def __init__(self, size: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("scale", torch.ones(size))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) * self.scale

    @torch.no_grad()
    def fit(self, x: Features, lengths: Tensor, idx: np.ndarray, chunk: int = 256) -> None:
        """Mean and standard deviation over the valid tokens of rows ``idx`` (padding rows
        are zero and are not counted), a chunk of sentences at a time."""
        total = torch.zeros(x.shape[-1], dtype=torch.float64)
        squares = torch.zeros_like(total)
        for start in range(0, len(idx), chunk):
            part = torch.from_numpy(np.asarray(x[idx[start : start + chunk]])).double()
            total += part.sum(dim=(0, 1))
            squares += (part * part).sum(dim=(0, 1))
        count = float(lengths[torch.from_numpy(idx)].sum())
        mean = total / count
        std = (squares / count - mean * mean).clamp_min(0).sqrt()
        self.mean.copy_(mean.float())
        self.scale.copy_(torch.where(std > 1e-6, 1.0 / std, torch.ones_like(std)).float())


class ProbeMLP(nn.Module):
    """The ``mlp`` probe: one hidden layer over a sentence's pooled features (inputs
    arrive as one-step sequences, ``[B, 1, F]``)."""

    def __init__(self, spec: ProbeSpec, input_size: int):
        super().__init__()
        self.norm = Standardize(input_size)
        self.hidden = nn.Linear(input_size, spec.hidden_size)
        self.drop = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.hidden_size, 1)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        h = torch.relu(self.hidden(self.norm(x[:, 0])))
        return self.head(self.drop(h)).squeeze(-1)


class AttentionReader(nn.Module):
    """Encodes the rows with an RNN or transformer, pools the valid steps, and maps to a logit."""

    def __init__(self, spec: ClassifierSpec, input_size: int, max_len: int):
        super().__init__()
        self.spec = spec
        self.max_len = max_len
        self.norm = Standardize(input_size)
        h = spec.hidden_size
        if spec.kind == "transformer":
            self.proj = nn.Linear(input_size, h)
            self.pos = nn.Embedding(max_len, h)
            layer = nn.TransformerEncoderLayer(
                h, spec.num_heads, spec.ff_size, spec.dropout, batch_first=True, norm_first=True
            )
            # The eval-only nested-tensor path handles padding differently; keep one code path.
            self.encoder = nn.TransformerEncoder(
                layer, spec.num_layers, norm=nn.LayerNorm(h), enable_nested_tensor=False
            )
            out_size = h
        else:
            rnn = nn.GRU if spec.kind == "gru" else nn.LSTM
            dirs = 2 if spec.bidirectional else 1
            out_size = h * dirs
            # layers[i][d]: layer i, direction d (0 forward, 1 backward). Stacked by hand, not
            # as one bidirectional nn.GRU, so the backward direction can read each sentence
            # reversed within its length; dropout goes between layers, as in nn.GRU.
            self.layers = nn.ModuleList(
                nn.ModuleList(
                    rnn(input_size if i == 0 else out_size, h, batch_first=True)
                    for _ in range(dirs)
                )
                for i in range(spec.num_layers)
            )
        if spec.pooling == "attention":
            self.attn = nn.Linear(out_size, out_size)
            self.attn_v = nn.Linear(out_size, 1, bias=False)
        self.drop = nn.Dropout(spec.dropout)
        self.head = nn.Linear(out_size, 1)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """x [B, T, F] float, lengths [B] int64 (1 <= n <= T) -> logits [B]."""
        B, T, _ = x.shape
        if T > self.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len {self.max_len}")
        if lengths.shape != (B,) or lengths.min() < 1 or lengths.max() > T:
            raise ValueError(f"lengths must be a [{B}] tensor with values in [1, {T}]")
        lengths_dev = lengths.to(x.device)
        valid = torch.arange(T, device=x.device) < lengths_dev[:, None]  # [B, T]
        x = self.norm(x)

        if self.spec.kind == "transformer":
            z = self.proj(x) + self.pos(torch.arange(T, device=x.device))
            states = self.encoder(z, src_key_padding_mask=~valid)
            last = states[torch.arange(B, device=x.device), lengths_dev - 1]
        else:
            states, last = self._read(x, lengths_dev)

        if self.spec.pooling == "last":
            pooled = last
        elif self.spec.pooling == "mean":
            w = valid.unsqueeze(-1).to(states.dtype)
            pooled = (states * w).sum(1) / w.sum(1)
        else:
            scores = self.attn_v(torch.tanh(self.attn(states))).squeeze(-1)
            weights = scores.masked_fill(~valid, float("-inf")).softmax(dim=1)
            pooled = (weights.unsqueeze(-1) * states).sum(1)
        return self.head(self.drop(pooled)).squeeze(-1)

    def _read(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """RNN states [B, T, D] (garbage at steps >= n) and each sentence's final state [B, D]:
        the forward direction's at step n - 1, the backward direction's at step 0."""
        h = self.spec.hidden_size
        states = x
        for i, directions in enumerate(self.layers):
            if i:
                states = nn.functional.dropout(states, self.spec.dropout, self.training)
            outs = [directions[0](states)[0]]
            if len(directions) == 2:
                backward = directions[1](reverse_within(states, lengths))[0]
                outs.append(reverse_within(backward, lengths))
            states = torch.cat(outs, dim=-1)
        at_end = states[torch.arange(len(x), device=x.device), lengths - 1]  # [B, D]
        if len(self.layers[-1]) == 2:
            # the backward direction ends at step 0, where its state is already in `states`
            at_end = torch.cat([at_end[:, :h], states[:, 0, h:]], dim=-1)
        return states, at_end


def reverse_within(x: Tensor, lengths: Tensor) -> Tensor:
    """Each row of ``x`` [B, T, F] with its first n steps reversed and the padding left in
    place, so a left-to-right RNN reads the sentence backwards and never sees padding first.
    Applying it twice gives ``x`` back."""
    t = torch.arange(x.shape[1], device=x.device)
    n = lengths[:, None]
    index = torch.where(t < n, n - 1 - t, t)  # [B, T]
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


def build_classifier(spec: ClassifierSpec, input_size: int, max_len: int) -> nn.Module:
    """Validates ``spec`` with a readable ValueError before any layer is built."""
    _validate(spec, input_size, max_len)
    return AttentionReader(spec, input_size, max_len)


class ReaderModel:
    """A network trained by gradient descent (``harness.models.train``) on attention features:
    an ``AttentionReader`` (gru, lstm, transformer) over token rows, or the ``mlp`` probe
    over pooled sentence features. The model protocol of ``harness.models.base``.

    The spec is validated here, so a bad combination fails before any training."""

    kind = "reader"

    def __init__(
        self,
        spec: ClassifierSpec | ProbeSpec,
        inputs: AttentionInputs,
        settings: TrainSettings | None = None,
        positive_label: str | None = None,
    ):
        self.spec, self.inputs = spec, inputs
        self.settings = settings or TrainSettings()
        self.positive_label = positive_label
        self.input_size = inputs.input_size
        if isinstance(spec, ClassifierSpec):
            _validate(spec, self.input_size, inputs.max_len)
        self.module: nn.Module | None = None

    def _build(self) -> nn.Module:
        if isinstance(self.spec, ProbeSpec):
            return ProbeMLP(self.spec, self.input_size)
        return AttentionReader(self.spec, self.input_size, self.inputs.max_len)

    def fit(
        self,
        inputs: tuple[Features, np.ndarray],
        labels: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        on_epoch: EpochCallback | None = None,
    ) -> FitResult:
        x, lengths = inputs[0], torch.from_numpy(inputs[1])
        seed_everything(self.settings.seed)  # the initial weights repeat too
        self.module = self._build()
        if self.inputs.features.view != "rows" or self.inputs.pooled:
            self.module.norm.fit(x, lengths, train_idx)
        self.module.to(default_device())
        return train(self.module, x, lengths, labels, train_idx, val_idx, self.settings, on_epoch)

    def predict_proba(
        self, inputs: tuple[Features, np.ndarray], idx: np.ndarray | None = None
    ) -> np.ndarray:
        if self.module is None:
            raise RuntimeError("predict_proba before fit")
        x, lengths = inputs[0], torch.from_numpy(inputs[1])
        idx = np.arange(len(lengths)) if idx is None else idx
        return sigmoid(predict_logits(self.module, x, lengths, idx))

    def save(self, directory: Path) -> None:
        settings = {"classifier": self.spec.to_dict(), "input_size": self.input_size}
        state = {k: v.cpu() for k, v in self.module.state_dict().items()}
        write_model(self, directory, settings, safetensors.torch.save(state))

    @classmethod
    def load(cls, directory: Path, config: dict) -> ReaderModel:
        inputs = inputs_from_dict(config["inputs"])
        spec = spec_from_dict(config["classifier"])
        model = cls(spec, inputs, positive_label=config.get("positive_label"))
        model.module = model._build()
        state = safetensors.torch.load_file(str(Path(directory, "weights.safetensors")))
        model.module.load_state_dict(state)
        model.module.eval()
        return model
