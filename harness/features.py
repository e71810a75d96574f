"""Turn attention maps into classifier inputs: choose layers and heads, then reduce.

One function, ``reduce_maps``, does the arithmetic for both the on-disk cache (many
sentences of one length at a time) and prediction on new sentences, so a reloaded run
sees exactly the features it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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

    The arithmetic runs in torch, one head at a time, accumulating in float32: numpy
    reduces float16 through a slow scalar path (its head-max is ~20× slower), and adding
    heads into one float32 buffer needs no float32 copy of the whole block. Only the chosen
    heads are touched, so a 1-head trial costs 1/H of an all-heads one.
    """
    maps = [torch.from_numpy(a) for a in per_layer]
    chosen = range(maps[0].shape[1]) if heads is None else heads
    k, _, n, _ = maps[0].shape
    if reducer == "max":
        out = maps[0][:, chosen[0]].clone()
        for m in maps:
            for h in chosen:
                torch.maximum(out, m[:, h], out=out)
        return out.float().numpy()
    sums = []
    for m in maps:
        total = torch.zeros((k, n, n), dtype=torch.float32)
        for h in chosen:
            total.add_(m[:, h])
        sums.append(total)
    if reducer == "concat":
        out = torch.zeros((k, n, max_len * len(sums)), dtype=torch.float32)
        for i, total in enumerate(sums):
            out[:, :, i * max_len : i * max_len + n] = total / len(chosen)
        return out.numpy()
    out = sums[0]
    for total in sums[1:]:
        out += total
    if reducer == "mean":
        out /= len(sums) * len(chosen)
    return out.numpy()
