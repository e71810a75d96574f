"""Train/validation/test splits and cross-validation folds: stratified by label and, with
groups, no group (article) across two parts, so sentences of one article cannot leak from
train into test.

A single split scores a few hundred sentences; ``make_folds`` gives repeated, grouped,
stratified K-fold splits whose test folds together score every sentence once per repeat.
Each fold's training part is cut again (``inner``) for early stopping and, in nested
selection, for a search of its own, so the outer test fold never reaches either.
"""

from __future__ import annotations

import hashlib
import json
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


@dataclass(frozen=True)
class Fold:
    """Outer fold ``index`` of repeat ``repeat``: ``split.test`` is the fold, ``split.train``
    and ``split.val`` cut the rest (the model trains on one and stops early on the other)."""

    repeat: int
    index: int
    split: Split

    @property
    def name(self) -> str:
        return f"r{self.repeat}f{self.index}"

    def inner(self, dataset: Dataset, seed: int) -> Split:
        """A train/val/test split of this fold's training rows only (train and val
        together), for a search that must not see the outer test fold."""
        rows = np.sort(np.concatenate([self.split.train, self.split.val]))
        n_parts = max(3, round(len(rows) / max(len(self.split.val), 1)))
        parts = _grouped_parts(dataset, rows, n_parts, seed, self.split.group_by is not None)
        return Split(
            np.sort(np.concatenate(parts[2:])), parts[0], parts[1], seed, self.split.group_by
        )


def make_folds(
    dataset: Dataset,
    *,
    folds: int = 5,
    repeats: int = 2,
    seed: int = 0,
    val_fraction: float = 0.15,
    group_by: bool = True,
) -> list[Fold]:
    """``repeats`` × ``folds`` outer folds over every row: grouped (no group in two
    folds) and stratified (``StratifiedGroupKFold``), reshuffled per repeat (seed
    ``seed + repeat``). Each fold's training part is cut the same way into train and a
    validation part of about ``val_fraction`` of the data, grouped too."""
    if folds < 2 or repeats < 1:
        raise HarnessError(f"evaluation needs folds >= 2 and repeats >= 1, got {folds}, {repeats}")
    group_name = (
        (dataset.group_column or "group") if group_by and dataset.groups is not None else None
    )
    rows = np.arange(len(dataset))
    out = []
    for r in range(repeats):
        parts = _grouped_parts(dataset, rows, folds, seed + r, group_by)
        n_inner = max(2, round((1 - 1 / folds) / val_fraction))
        for k, test in enumerate(parts):
            rest = np.setdiff1d(rows, test)
            inner = _grouped_parts(dataset, rest, n_inner, seed + r, group_by)
            train = np.sort(np.concatenate(inner[1:]))
            split = Split(train, inner[0], test, seed + r, group_name)
            for part, name in ((train, "train"), (inner[0], "val"), (test, "test")):
                _check_part(dataset, part, f"the {name} part of fold {k} (repeat {r})")
            out.append(Fold(r, k, split))
    return out


def folds_sha256(folds: list[Fold]) -> str:
    """One hash of every fold's rows: a study records it like its split's."""
    record = [[f.repeat, f.index, f.split.to_dict()] for f in folds]
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _grouped_parts(
    dataset: Dataset, rows: np.ndarray, n_parts: int, seed: int, group_by: bool = True
) -> list[np.ndarray]:
    """``rows`` cut into ``n_parts`` sorted parts, stratified by label, no group in two."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels = dataset.labels[rows]
    if group_by and dataset.groups is not None:
        groups = dataset.groups[rows].astype(str)
    else:
        groups = rows  # one row per group: plain stratified folds
    n_groups = len(np.unique(groups))
    if n_groups < n_parts or min(np.bincount(labels, minlength=2)) < n_parts:
        raise HarnessError(
            f"{dataset.source}: {len(rows)} rows in {n_groups} groups cannot be cut into "
            f"{n_parts} stratified parts; use fewer evaluation.folds or more rows"
        )
    cv = StratifiedGroupKFold(n_splits=n_parts, shuffle=True, random_state=seed)
    return [np.sort(rows[test]) for _, test in cv.split(rows, labels, groups)]


def _check_part(dataset: Dataset, rows: np.ndarray, what: str) -> None:
    counts = np.bincount(dataset.labels[rows], minlength=2)
    if counts.min() < 2:
        raise HarnessError(
            f"{what} of {dataset.source} got {counts[0]} negative and {counts[1]} positive "
            "rows (each part needs >= 2 of each class); use more rows or fewer evaluation.folds"
        )
