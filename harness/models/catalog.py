"""The classifier kinds a study can search, their hyperparameters and who reads which.

One table for the study-file checks (``harness.space``), the sampler (``harness.search``)
and the models themselves, so the three cannot drift apart. Plain data, no torch: a
study file is checked before any heavy import.

* Sequence readers (``gru``, ``lstm``, ``transformer``) read a sentence's features token
  by token (``harness.models.reader``).
* Probes (``linear``, ``mlp``) read each sentence's mean over its tokens, as probing
  papers do (``harness.models.probe``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

READERS = ("gru", "lstm", "transformer")
PROBES = ("linear", "mlp")
KINDS = READERS + PROBES
POOLINGS = ("last", "mean", "attention")
#: hyperparameters a study may search, with the type each must have
HPARAMS: dict[str, type] = {
    "hidden_size": int,
    "num_layers": int,
    "dropout": float,
    "bidirectional": bool,
    "pooling": str,
    "num_heads": int,
    "ff_size": int,
    "c": float,
}
#: which kinds read each hyperparameter (elsewhere it would be a dead search axis)
READ_BY: dict[str, tuple[str, ...]] = {
    "hidden_size": (*READERS, "mlp"),
    "num_layers": READERS,
    "dropout": (*READERS, "mlp"),
    "bidirectional": ("gru", "lstm"),
    "pooling": READERS,
    "num_heads": ("transformer",),
    "ff_size": ("transformer",),
    "c": ("linear",),
}


def divisible(hidden_size: int, num_heads: int) -> bool:
    """A transformer splits ``hidden_size`` evenly among its heads."""
    return hidden_size % num_heads == 0


class _Spec:
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        """Rejects unknown keys, so a typo in a config is an error rather than a default."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}")
        return cls(**d)


@dataclass
class ClassifierSpec(_Spec):
    """Architecture of an ``AttentionReader``; plain values so it round-trips through JSON."""

    kind: str = "gru"
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.0
    bidirectional: bool = False  # RNNs only; ignored by the transformer
    pooling: str = "last"  # last valid state / mean over valid steps / additive attention
    num_heads: int = 4  # transformer only; must divide hidden_size
    ff_size: int = 128  # transformer only


@dataclass
class ProbeSpec(_Spec):
    """A probe on sentence-level features: ``linear`` (L2 logistic regression, ``c`` the
    inverse regularisation strength, as scikit-learn's C) or ``mlp`` (one hidden layer)."""

    kind: str = "linear"
    c: float = 1.0  # linear only
    hidden_size: int = 64  # mlp only
    dropout: float = 0.0  # mlp only


def make_spec(kind: str, values: dict) -> ClassifierSpec | ProbeSpec:
    """The spec of ``kind`` with the drawn hyperparameter ``values``."""
    return (ProbeSpec if kind in PROBES else ClassifierSpec)(kind=kind, **values)


def spec_from_dict(d: dict) -> ClassifierSpec | ProbeSpec:
    """A saved spec, rebuilt by its kind."""
    return (ProbeSpec if d.get("kind") in PROBES else ClassifierSpec).from_dict(d)
