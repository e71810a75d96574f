"""Turn attention maps into classifier inputs: choose layers and heads, then reduce.

One function, ``reduce_maps``, does the arithmetic for both the on-disk cache (many
sentences of one length at a time) and prediction on new sentences, so a reloaded run
sees exactly the features it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.errors import HarnessError

REDUCERS = ("sum", "mean", "max", "concat")


@dataclass(frozen=True)
class FeatureSpec:
    """Which maps feed the classifier and how they are combined.

    ``heads`` is ``None`` for all heads. ``concat`` averages the chosen heads within each
    layer and lays the layers side by side on the feature axis (``len(layers) * max_len``
    features per row); the other reducers combine every chosen (layer, head) map into one.
    """

    layers: tuple[int, ...]
    heads: tuple[int, ...] | None = None
    reducer: str = "sum"

    def __post_init__(self) -> None:
        if not self.layers:
            raise HarnessError("features: 'layers' is empty; choose at least one layer index")
        if self.heads is not None and not self.heads:
            raise HarnessError("features: 'heads' is empty; use 'all' or list head indices")
        if self.reducer not in REDUCERS:
            raise HarnessError(
                f"features: unknown reducer {self.reducer!r}; choose one of {', '.join(REDUCERS)}"
            )

    def input_size(self, max_len: int) -> int:
        return max_len * (len(self.layers) if self.reducer == "concat" else 1)

    def to_dict(self) -> dict:
        return {
            "layers": list(self.layers),
            "heads": None if self.heads is None else list(self.heads),
            "reducer": self.reducer,
        }

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpec:
        heads = d.get("heads")
        return cls(tuple(d["layers"]), None if heads is None else tuple(heads), d["reducer"])

    @property
    def layers_param(self) -> str:
        """The MLflow param value: ``3,4,5``."""
        return ",".join(map(str, self.layers))

    @property
    def heads_param(self) -> str:
        """The MLflow param value: ``all`` or ``0,7``."""
        return "all" if self.heads is None else ",".join(map(str, self.heads))


def parse_heads(value: str | int | list[int] | None) -> tuple[int, ...] | None:
    """Accept the spellings a study file or a user uses: ``all``, ``3``, ``[0, 7]``, ``0,7``."""
    if value is None or value == "all":
        return None
    if isinstance(value, int):
        return (value,)
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.split(","))
        except ValueError:
            raise HarnessError(
                f"features: heads {value!r} is neither 'all' nor a comma-separated list of ints"
            ) from None
    return tuple(int(v) for v in value)


def reduce_maps(
    per_layer: list[np.ndarray], heads: tuple[int, ...] | None, reducer: str, max_len: int
) -> np.ndarray:
    """Combine maps of ``k`` sentences of one length ``n``.

    ``per_layer`` holds one ``[k, H, n, n]`` array (fp16 or fp32) per chosen layer.
    Returns ``[k, n, F]`` float32 where ``F`` is ``n`` (``max_len * layers`` for concat).
    Head selection uses a slice when all heads are kept, so nothing is copied needlessly.
    """
    chosen = [a if heads is None else a[:, list(heads)] for a in per_layer]
    if reducer in ("sum", "mean"):
        out = chosen[0].sum(axis=1, dtype=np.float32)
        for a in chosen[1:]:
            out += a.sum(axis=1, dtype=np.float32)
        if reducer == "mean":
            out /= sum(a.shape[1] for a in chosen)
        return out
    if reducer == "max":
        out = chosen[0].max(axis=1).astype(np.float32)
        for a in chosen[1:]:
            np.maximum(out, a.max(axis=1), out=out)
        return out
    k, _, n, _ = chosen[0].shape
    out = np.zeros((k, n, max_len * len(chosen)), dtype=np.float32)
    for i, a in enumerate(chosen):
        out[:, :, i * max_len : i * max_len + n] = a.mean(axis=1, dtype=np.float32)
    return out
