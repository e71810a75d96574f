"""Train/validation/test splits: stratified by label and, with groups, no group (article)
across two splits, so sentences of one article cannot leak from train into test."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.core import HarnessError
from harness.data.datasets import Dataset


@dataclass(frozen=True)
class Split:
    """Sorted row positions of a train/val/test split, plus how it was made."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int
    group_by: str | None

    def to_dict(self) -> dict:
        """JSON-able record so a study can store and reuse the exact split."""
        return {
            "train": [int(i) for i in self.train],
            "val": [int(i) for i in self.val],
            "test": [int(i) for i in self.test],
            "seed": int(self.seed),
            "group_by": self.group_by,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Split:
        missing = [k for k in ("train", "val", "test", "seed") if k not in d]
        if missing:
            raise HarnessError(
                f"split record is missing {', '.join(missing)}; regenerate it with make_split"
            )
        parts = [np.sort(np.asarray(d[k], dtype=np.int64)) for k in ("train", "val", "test")]
        return cls(*parts, seed=int(d["seed"]), group_by=d.get("group_by"))


def make_split(
    dataset: Dataset,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    group_by: bool = True,
) -> Split:
    """Stratified train/val/test split; with groups, no group (article) crosses splits so
    sentences of one article cannot leak from train into test."""
    for label, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < frac < 1:
            raise HarnessError(f"{label}={frac} must be between 0 and 1 (exclusive); e.g. 0.15")
    if val_fraction + test_fraction >= 1:
        raise HarnessError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves no training "
            "rows; keep their sum below 1 (e.g. 0.15 each)"
        )
    fractions = np.array([1 - val_fraction - test_fraction, val_fraction, test_fraction])
    labels = dataset.labels
    _check_class_counts(dataset, fractions)
    rng = np.random.default_rng(seed)
    if group_by and dataset.groups is not None:
        assignment = _assign_groups(labels, dataset.groups, fractions, rng)
        group_name = dataset.group_column or "group"
    else:
        assignment = _assign_rows(labels, fractions, rng)
        group_name = None
    parts = [np.flatnonzero(assignment == s).astype(np.int64) for s in range(3)]
    for s, name in enumerate(("train", "val", "test")):
        counts = [int((labels[parts[s]] == c).sum()) for c in (0, 1)]
        if min(counts) < 2:
            raise HarnessError(
                f"the {name} split of {dataset.source} got {counts[0]} negative and {counts[1]} "
                "positive rows (each split needs >= 2 of each class); use more rows, fewer or "
                "larger groups, or other fractions"
            )
    return Split(*parts, seed=seed, group_by=group_name)


def _check_class_counts(dataset: Dataset, fractions: np.ndarray) -> None:
    """Refuse up front when the smallest split cannot get two rows of each class."""
    smallest = int(np.argmin(fractions))
    split_name = ("train", "val", "test")[smallest]
    frac = float(fractions[smallest])
    for c, cname in ((1, "positive"), (0, "negative")):
        n = int((dataset.labels == c).sum())
        if n * frac < 2:
            raise HarnessError(
                f"{dataset.source} has {n} {cname} rows, too few for a {split_name} fraction of "
                f"{frac:g} (each split needs >= 2 of each class, i.e. >= {math.ceil(2 / frac)} "
                f"{cname} rows); use more rows or a larger {split_name} fraction"
            )


def _assign_rows(labels: np.ndarray, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per class: shuffle and cut at the target fractions."""
    assignment = np.empty(len(labels), dtype=np.int64)
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = round(len(idx) * fractions[1])
        n_test = round(len(idx) * fractions[2])
        assignment[idx] = 0
        assignment[idx[:n_val]] = 1
        assignment[idx[n_val : n_val + n_test]] = 2
    return assignment


def _assign_groups(
    labels: np.ndarray, groups: np.ndarray, fractions: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Greedy: visit groups in a seeded random order (largest first, so small groups fill the
    gaps) and give each to the split whose per-class quota is least filled."""
    keys, inverse = np.unique(groups.astype(str), return_inverse=True)
    per_group = np.zeros((len(keys), 2), dtype=np.int64)
    np.add.at(per_group, (inverse, labels), 1)
    quota = fractions[:, None] * np.bincount(labels, minlength=2)[None, :]  # split x class
    filled = np.zeros_like(quota)
    order = rng.permutation(len(keys))
    order = order[np.argsort(-per_group[order].sum(axis=1), kind="stable")]
    group_split = np.empty(len(keys), dtype=np.int64)
    for g in order:
        present = per_group[g] > 0
        after = (filled[:, present] + per_group[g, present]) / quota[:, present]
        s = int(np.argmin(after.max(axis=1)))
        group_split[g] = s
        filled[s] += per_group[g]
    return group_split[inverse]
