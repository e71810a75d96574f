"""The ``rows`` view's arithmetic: combine the chosen attention maps of a sentence.

One function, ``reduce_maps``, serves both the on-disk cache (many sentences of one length
at a time) and prediction on new sentences, so a reloaded run sees exactly the features it
was trained on.
"""

from __future__ import annotations

import numpy as np
import torch

from harness.studyfile import Heads, Map


def _positions(per_layer: list, heads: Heads | list[Map]) -> list[Map]:
    """(position in ``per_layer``, head) of every chosen map: ``heads`` is ``None`` (all),
    head indices shared by every layer, or (position, head) pairs."""
    if heads is not None and heads and isinstance(heads[0], tuple):
        return list(heads)
    chosen = range(per_layer[0].shape[1]) if heads is None else heads
    return [(i, h) for i in range(len(per_layer)) for h in chosen]


def reduce_maps(
    per_layer: list[np.ndarray], heads: Heads | list[Map], reducer: str, max_len: int
) -> np.ndarray:
    """Combine maps of ``k`` sentences of one length ``n`` (the ``rows`` view).

    ``per_layer`` holds one ``[k, H, n, n]`` array (fp16 or fp32) per chosen layer;
    ``heads`` is ``None`` (all), head indices shared by every layer, or explicit
    (position in ``per_layer``, head) pairs. Returns ``[k, n, F]`` float32 where ``F`` is
    ``n`` (``max_len * layers`` for concat, ``max_len * maps`` for stack).

    The arithmetic runs in torch, one map at a time, accumulating in float32: numpy
    reduces float16 through a slow scalar path (its head-max is ~20× slower), and adding
    heads into one float32 buffer needs no float32 copy of the whole block. Only the chosen
    maps are touched, so a 1-head trial costs 1/H of an all-heads one.
    """
    maps = [torch.from_numpy(a) for a in per_layer]
    pairs = _positions(per_layer, heads)
    k, _, n, _ = maps[0].shape
    if reducer == "stack":
        out = torch.zeros((k, n, max_len * len(pairs)), dtype=torch.float32)
        for j, (i, h) in enumerate(pairs):
            out[:, :, j * max_len : j * max_len + n] = maps[i][:, h]
        return out.numpy()
    if reducer == "max":
        out = maps[pairs[0][0]][:, pairs[0][1]].clone()
        for i, h in pairs[1:]:
            torch.maximum(out, maps[i][:, h], out=out)
        return out.float().numpy()
    sums = {}
    for i, h in pairs:
        sums.setdefault(i, torch.zeros((k, n, n), dtype=torch.float32)).add_(maps[i][:, h])
    if reducer == "concat":
        counts = {i: sum(1 for j, _ in pairs if j == i) for i in sums}
        out = torch.zeros((k, n, max_len * len(sums)), dtype=torch.float32)
        for slot, (i, total) in enumerate(sums.items()):
            out[:, :, slot * max_len : slot * max_len + n] = total / counts[i]
        return out.numpy()
    totals = list(sums.values())
    out = totals[0]
    for total in totals[1:]:
        out += total
    if reducer == "mean":
        out /= len(pairs)
    return out.numpy()
