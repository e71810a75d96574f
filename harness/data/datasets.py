"""Load labelled text data sets (BABE and generic csv/tsv/jsonl) and fetch BABE.

Every user mistake in a data file is reported as a one-line ``HarnessError`` naming the file,
the line or column, and the fix, because a study that dies three hours in on a bad row is
far more expensive than a loader that refuses up front.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.core import HarnessError
from harness.data.readers import (
    Record,
    check_format,
    decode,
    label_str,
    missing_column_message,
    parse,
    read_bytes,
    text_str,
)

BABE_URL = (
    "https://raw.githubusercontent.com/Media-Bias-Group/"
    "Neural-Media-Bias-Detection-Using-Distant-Supervision-With-BABE/main/data/final_labels_SG2.csv"
)
BABE_SHA256 = "c02ebe82a8411f15e9dc63afed27826d61b84df56b5e1511f0f40bf8a688aeaf"
BABE_FILENAME = "final_labels_SG2.csv"
KNOWN_DATASETS = ("babe",)
DOWNLOAD_TIMEOUT_S = 30.0

# BABE's real layout; the "No agreement" row is the one label value we drop instead of refusing.
_BABE_PRESET = {
    "text_column": "text",
    "label_column": "label_bias",
    "positive_label": "Biased",
    "group_column": "news_link",
    "delimiter": ";",
}
_BABE_DROP_LABELS = frozenset({"No agreement"})
_MISSING_LABELS = frozenset({"", "nan", "none", "null", "na", "n/a"})


@dataclass(frozen=True)
class Dataset:
    """Texts with binary labels, optional group keys and a stable row id per example."""

    name: str
    source: str
    sha256: str
    texts: list[str]
    labels: np.ndarray
    groups: np.ndarray | None
    row_ids: np.ndarray
    positive_label: str
    group_column: str | None = None
    extra: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: np.ndarray) -> Dataset:
        """Rows ``idx`` in that order; provenance (name, source, sha256) is kept so results
        computed on a subset still point at the file they came from."""
        idx = np.asarray(idx, dtype=np.int64)
        return Dataset(
            name=self.name,
            source=self.source,
            sha256=self.sha256,
            texts=[self.texts[i] for i in idx],
            labels=self.labels[idx],
            groups=None if self.groups is None else self.groups[idx],
            row_ids=self.row_ids[idx],
            positive_label=self.positive_label,
            group_column=self.group_column,
            extra={k: [v[i] for i in idx] for k, v in self.extra.items()},
        )


def resolve_data_path(name_or_path: str) -> Path:
    """Map ``"babe"`` to where the file is expected (HARNESS_DATA_DIR, then ./data); treat
    anything else as a path. ``~`` is expanded in both, as a shell would."""
    if name_or_path == "babe":
        candidates = []
        data_dir = os.environ.get("HARNESS_DATA_DIR")
        if data_dir:
            candidates.append(Path(data_dir).expanduser() / "babe" / BABE_FILENAME)
        candidates.append(Path("data") / "babe" / BABE_FILENAME)
        for path in candidates:
            if path.is_file():
                return path
        looked = ", ".join(str(p) for p in candidates)
        raise HarnessError(
            f"BABE data not found (looked in {looked}); run `harness data fetch babe` "
            "or set HARNESS_DATA_DIR to the folder holding babe/final_labels_SG2.csv"
        )
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise HarnessError(
            f"data file {path} does not exist; check the path "
            "(or use the name 'babe' for the built-in data set)"
        )
    if not path.is_file():
        raise HarnessError(f"data path {path} is not a file; pass the path of a csv/tsv/jsonl file")
    return path


def load_dataset(
    name_or_path: str = "babe",
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    positive_label: str | None = None,
    group_column: str | None = None,
    delimiter: str | None = None,
    max_rows: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Read a labelled text file into a ``Dataset``, refusing anything ambiguous.

    ``"babe"`` (or any file named final_labels_SG2.csv) gets BABE's column names, delimiter
    and positive label as defaults; explicit arguments still win.
    """
    path = resolve_data_path(name_or_path)
    is_babe = name_or_path == "babe" or path.name == BABE_FILENAME
    if is_babe:
        text_column = text_column or _BABE_PRESET["text_column"]
        label_column = label_column or _BABE_PRESET["label_column"]
        positive_label = positive_label or _BABE_PRESET["positive_label"]
        group_column = group_column or _BABE_PRESET["group_column"]
        delimiter = delimiter or _BABE_PRESET["delimiter"]
    text_column = text_column or "text"
    label_column = label_column or "label"
    if max_rows is not None and max_rows < 2:
        raise HarnessError(f"max_rows={max_rows} is too small; use at least 2 (one row per class)")

    sha256, header, records = _read_file(path, delimiter)
    _check_columns(path, header, text_column, label_column, group_column)
    if is_babe:
        records = [
            r for r in records if label_str(r.values.get(label_column)) not in _BABE_DROP_LABELS
        ]
    if not records:
        raise HarnessError(f"{path} has a header but no usable data rows; add rows")
    texts = _texts(path, records, text_column)
    labels, positive_label = _labels(path, records, label_column, positive_label)
    core = {text_column, label_column, group_column}
    dataset = Dataset(
        name="babe" if is_babe else path.stem,
        source=str(path),
        sha256=sha256,
        texts=texts,
        labels=labels,
        groups=_groups(records, group_column),
        row_ids=np.array([r.row_id for r in records], dtype=np.int64),
        positive_label=positive_label,
        group_column=group_column or None,
        extra={c: [r.values.get(c) for r in records] for c in header if c not in core},
    )
    if max_rows is not None and max_rows < len(dataset):
        dataset = dataset.subset(_stratified_sample(dataset.labels, max_rows, seed))
    return dataset


def _read_file(path: Path, delimiter: str | None) -> tuple[str, list[str], list[Record]]:
    """The file's sha256 (of its bytes, for provenance), header and records."""
    check_format(path, delimiter)
    raw = read_bytes(path)
    sha256 = hashlib.sha256(raw).hexdigest()
    content = decode(raw, path)
    if not content.strip():
        raise HarnessError(f"data file {path} is empty; point at a file with a header and rows")
    header, records = parse(content, path, delimiter)
    return sha256, header, records


def _check_columns(
    path: Path, header: list[str], text_column: str, label_column: str, group_column: str | None
) -> None:
    """Every column the data set names is in the header (the text column reported first)."""
    wanted = {"text": text_column, "label": label_column}
    if group_column:
        wanted["group"] = group_column
    for role, column in wanted.items():
        if column not in header:
            raise HarnessError(missing_column_message(path, role, column, header))


def _texts(path: Path, records: list[Record], text_column: str) -> list[str]:
    """The texts, refusing empty ones (a probe cannot learn from nothing)."""
    texts = [text_str(r.values.get(text_column)) for r in records]
    blank = [r.line for r, t in zip(records, texts, strict=True) if not t.strip()]
    if blank:
        raise HarnessError(
            f"{path}: {len(blank)} row(s) have an empty '{text_column}' text (first at line "
            f"{blank[0]}); remove those rows or pick the right text_column"
        )
    return texts


def _labels(
    path: Path, records: list[Record], label_column: str, positive_label: str | None
) -> tuple[np.ndarray, str]:
    """0/1 labels and the positive label, refusing missing labels and other than two classes."""
    raw_labels = [label_str(r.values.get(label_column)) for r in records]
    for r, lab in zip(records, raw_labels, strict=True):
        if lab.lower() in _MISSING_LABELS:
            raise HarnessError(
                f"{path}: line {r.line} has a missing label in column '{label_column}'; "
                "fill it in or remove the row"
            )
    positive_label = _check_labels(path, label_column, records, raw_labels, positive_label)
    return np.array([lab == positive_label for lab in raw_labels], dtype=np.int64), positive_label


def _groups(records: list[Record], group_column: str | None) -> np.ndarray | None:
    """Group keys, or None without a group column."""
    if not group_column:
        return None
    # An empty group key means "unknown article": its own singleton group, never a shared one.
    keys = [text_str(r.values.get(group_column)).strip() for r in records]
    return np.array(
        [k or f"<no {group_column}: row {r.row_id}>" for k, r in zip(keys, records, strict=True)],
        dtype=object,
    )


def _check_labels(
    path: Path,
    label_column: str,
    records: list[Record],
    raw_labels: list[str],
    positive_label: str | None,
) -> str:
    """Return the positive label after making sure the column holds exactly two classes."""
    first_line: dict[str, int] = {}
    for r, lab in zip(records, raw_labels, strict=True):
        first_line.setdefault(lab, r.line)
    values = list(first_line)
    shown = ", ".join(repr(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
    if len(values) > 2:
        third = values[2]
        raise HarnessError(
            f"{path}: column '{label_column}' has {len(values)} label values ({shown}); the "
            f"third, {third!r}, first appears at line {first_line[third]}; drop or relabel rows "
            "so only two remain"
        )
    if len(values) < 2:
        raise HarnessError(
            f"{path}: column '{label_column}' has a single class ({shown}); "
            "a probe needs rows of two classes"
        )
    if positive_label is None:
        if set(values) == {"0", "1"}:
            positive_label = "1"
        elif {v.lower() for v in values} == {"true", "false"}:
            positive_label = next(v for v in values if v.lower() == "true")
        else:
            raise HarnessError(
                f"{path}: cannot tell which label is positive in column '{label_column}' "
                f"(values found: {shown}); set positive_label to one of them"
            )
    positive_label = str(positive_label).strip()
    if positive_label not in values:
        raise HarnessError(
            f"{path}: positive_label {positive_label!r} is not among the labels in column "
            f"'{label_column}' (values found: {shown}); set positive_label to one of them"
        )
    return positive_label


def _stratified_sample(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` positions keeping the class ratio (largest-remainder rounding, at least one
    per class), sorted so the subset keeps file order."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / counts.sum()
    take = np.maximum(np.floor(exact).astype(np.int64), 1)
    for i in np.argsort(-(exact - np.floor(exact)), kind="stable"):
        if take.sum() >= size:
            break
        take[i] += 1
    while take.sum() > size:  # only when the one-per-class floor overshot
        take[np.argmax(take)] -= 1
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
        for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def fetch_dataset(name: str, dest: Path = Path("data")) -> Path:
    """Download a known data set into ``dest/<name>/`` and verify its sha256, so a study
    never runs on a truncated or silently changed file."""
    if name not in KNOWN_DATASETS:
        raise HarnessError(
            f"unknown data set {name!r}; known data sets: {', '.join(KNOWN_DATASETS)}"
        )
    target = Path(dest).expanduser() / name / BABE_FILENAME
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == BABE_SHA256:
        return target
    url = BABE_URL
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            payload = response.read()
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise HarnessError(
            f"could not download BABE from {url}: {reason}; copy final_labels_SG2.csv into "
            "data/babe/ or set HARNESS_DATA_DIR"
        ) from exc
    digest = hashlib.sha256(payload).hexdigest()
    if digest != BABE_SHA256:
        raise HarnessError(
            f"downloaded BABE from {url} has sha256 {digest}, expected {BABE_SHA256}; nothing "
            "was saved; copy the original final_labels_SG2.csv into data/babe/ instead"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{BABE_FILENAME}.", suffix=".tmp"
        )
    except OSError as exc:
        raise HarnessError(
            f"cannot write {target}: {exc.strerror or exc}; pass a writable folder as --dest"
        ) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target
