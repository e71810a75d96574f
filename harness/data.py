"""Load labelled text data sets (BABE and generic csv/tsv/jsonl) and split them.

Every user mistake in a data file is reported as a one-line ``HarnessError`` naming the file,
the line or column, and the fix, because a study that dies three hours in on a bad row is
far more expensive than a loader that refuses up front.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import http.client
import io
import json
import math
import os
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError

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
_EXT_DELIMITERS = {".csv": ",", ".tsv": "\t"}
SUPPORTED = ".csv, .tsv and .jsonl"
# Formats people reach for that are not delimited text: refused by name, before decoding,
# with the conversion that fixes them (otherwise they surface as "not UTF-8").
_FOREIGN_FORMATS = {
    ".parquet": ("a Parquet file", "pandas.read_parquet(path).to_csv('data.csv', index=False)"),
    ".feather": ("a Feather file", "pandas.read_feather(path).to_csv('data.csv', index=False)"),
    ".arrow": ("an Arrow file", "pandas.read_feather(path).to_csv('data.csv', index=False)"),
    ".xlsx": ("an Excel workbook", "save it from Excel as 'CSV UTF-8'"),
    ".xls": ("an Excel workbook", "save it from Excel as 'CSV UTF-8'"),
    ".ods": ("a spreadsheet", "save it as CSV (UTF-8)"),
    ".json": ("a JSON document", "write one JSON object per line and name it .jsonl"),
    ".gz": ("a compressed file", "decompress it (gunzip) first"),
    ".bz2": ("a compressed file", "decompress it (bunzip2) first"),
    ".xz": ("a compressed file", "decompress it (unxz) first"),
    ".zst": ("a compressed file", "decompress it (unzstd) first"),
    ".zip": ("a zip archive", "extract the csv/tsv/jsonl file from it first"),
    ".pkl": ("a pickle", "load it in Python and write it with DataFrame.to_csv"),
    ".pickle": ("a pickle", "load it in Python and write it with DataFrame.to_csv"),
    ".h5": ("an HDF5 file", "pandas.read_hdf(path).to_csv('data.csv', index=False)"),
    ".hdf5": ("an HDF5 file", "pandas.read_hdf(path).to_csv('data.csv', index=False)"),
    ".npy": ("a NumPy array", "write texts and labels to a csv file"),
    ".npz": ("a NumPy archive", "write texts and labels to a csv file"),
}
# First bytes of binary formats found behind a text extension (a Parquet file renamed .csv).
_MAGIC = {
    b"PAR1": "a Parquet file",
    b"PK\x03\x04": "a zip archive (an .xlsx workbook is one)",
    b"\xd0\xcf\x11\xe0": "an old Excel (.xls) workbook",
    b"\x1f\x8b": "a gzip-compressed file",
}
_SNIFF_DELIMITERS = (";", ",", "\t")
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


def _check_format(path: Path, delimiter: str | None) -> None:
    """Refuse by extension, before reading a byte, what is not delimited text or JSONL."""
    suffix = path.suffix.lower()
    if suffix in _FOREIGN_FORMATS:
        what, fix = _FOREIGN_FORMATS[suffix]
        raise HarnessError(
            f"{path}: unknown file type '{path.suffix}' ({what}); harness reads {SUPPORTED}; "
            f"convert it: {fix}"
        )
    if suffix not in (*_EXT_DELIMITERS, ".jsonl") and delimiter is None:
        raise HarnessError(
            f"{path}: unknown file type '{path.suffix}'; harness reads {SUPPORTED}; "
            "rename the file to one of these or set data.delimiter"
        )


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

    _check_format(path, delimiter)
    raw = _read_bytes(path)
    sha256 = hashlib.sha256(raw).hexdigest()
    content = _decode(raw, path)
    if not content.strip():
        raise HarnessError(f"data file {path} is empty; point at a file with a header and rows")

    if path.suffix.lower() == ".jsonl":
        header, records = _parse_jsonl(content, path)
    else:
        delimiter = delimiter or _EXT_DELIMITERS[path.suffix.lower()]
        header, records = _parse_delimited(content, path, delimiter)

    wanted = {"text": text_column, "label": label_column}
    if group_column:
        wanted["group"] = group_column
    for role, column in wanted.items():
        if column not in header:
            raise HarnessError(_missing_column_message(path, role, column, header))

    if is_babe:
        records = [
            r for r in records if _label_str(r.values.get(label_column)) not in _BABE_DROP_LABELS
        ]
    if not records:
        raise HarnessError(f"{path} has a header but no usable data rows; add rows")

    texts = [_text_str(r.values.get(text_column)) for r in records]
    blank = [r.line for r, t in zip(records, texts, strict=True) if not t.strip()]
    if blank:
        raise HarnessError(
            f"{path}: {len(blank)} row(s) have an empty '{text_column}' text (first at line "
            f"{blank[0]}); remove those rows or pick the right text_column"
        )

    raw_labels = [_label_str(r.values.get(label_column)) for r in records]
    for r, lab in zip(records, raw_labels, strict=True):
        if lab.lower() in _MISSING_LABELS:
            raise HarnessError(
                f"{path}: line {r.line} has a missing label in column '{label_column}'; "
                "fill it in or remove the row"
            )
    positive_label = _check_labels(path, label_column, records, raw_labels, positive_label)
    labels = np.array([lab == positive_label for lab in raw_labels], dtype=np.int64)

    groups = None
    if group_column:
        # An empty group key means "unknown article": its own singleton group, never a shared one.
        keys = [_text_str(r.values.get(group_column)).strip() for r in records]
        groups = np.array(
            [
                k or f"<no {group_column}: row {r.row_id}>"
                for k, r in zip(keys, records, strict=True)
            ],
            dtype=object,
        )

    core = {text_column, label_column, group_column}
    extra = {c: [r.values.get(c) for r in records] for c in header if c not in core}

    dataset = Dataset(
        name="babe" if is_babe else path.stem,
        source=str(path),
        sha256=sha256,
        texts=texts,
        labels=labels,
        groups=groups,
        row_ids=np.array([r.row_id for r in records], dtype=np.int64),
        positive_label=positive_label,
        group_column=group_column or None,
        extra=extra,
    )
    if max_rows is not None and max_rows < len(dataset):
        dataset = dataset.subset(_stratified_sample(dataset.labels, max_rows, seed))
    return dataset


def read_texts(
    path: str | Path, text_column: str = "text", delimiter: str | None = None
) -> tuple[list[str], np.ndarray]:
    """The ``text_column`` of an unlabelled csv/tsv/jsonl file (sentences to score) and
    each row's ``row_id`` (its 0-based data row), with the same checks as ``load_dataset``."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"input file {path} does not exist or is not a file")
    _check_format(path, delimiter)
    content = _decode(_read_bytes(path), path)
    if path.suffix.lower() == ".jsonl":
        header, records = _parse_jsonl(content, path)
    else:
        delimiter = delimiter or _EXT_DELIMITERS[path.suffix.lower()]
        header, records = _parse_delimited(content, path, delimiter, one_column=True)
    if not records:
        raise HarnessError(f"{path} has no data rows; add rows under a header")
    if text_column not in header:
        raise HarnessError(_missing_column_message(path, "text", text_column, header))
    texts = [_text_str(r.values.get(text_column)) for r in records]
    blank = [r.line for r, t in zip(records, texts, strict=True) if not t.strip()]
    if blank:
        raise HarnessError(
            f"{path}: {len(blank)} row(s) have an empty '{text_column}' text (first at line "
            f"{blank[0]}); remove those rows or pass the right --text-column"
        )
    return texts, np.array([r.row_id for r in records], dtype=np.int64)


@dataclass(frozen=True)
class _Record:
    line: int  # 1-based physical line where the record starts (header is line 1 for csv)
    row_id: int  # 0-based data row number in the file
    values: dict[str, Any]


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise HarnessError(
            f"cannot read data file {path}: {exc.strerror or exc}; check permissions"
        ) from exc


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        what = next((w for magic, w in _MAGIC.items() if raw.startswith(magic)), None)
        if what:
            raise HarnessError(
                f"{path} is {what}, not text, despite its name; harness reads {SUPPORTED}; "
                "convert it to one of these"
            ) from exc
        raise HarnessError(
            f"{path} is not UTF-8 text (bad byte at offset {exc.start}); re-save it as UTF-8"
        ) from exc


def _parse_delimited(
    content: str, path: Path, delimiter: str, one_column: bool = False
) -> tuple[list[str], list[_Record]]:
    """Header and records; ``one_column`` allows a lone text column (files to score),
    which in labelled data means a wrong delimiter."""
    # Python's csv module refuses cells over 131,072 characters ("field larger than field
    # limit"); a long sentence is valid data (the tokenizer truncates it to max_len anyway).
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter)
    records: list[_Record] = []
    header: list[str] | None = None
    try:
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if header is None:
                header = [c.strip() for c in row]
                if len(header) == 1 and not one_column:
                    raise HarnessError(_one_column_message(path, delimiter, content))
                _check_unique_columns(path, header)
                continue
            if len(row) != len(header):
                raise HarnessError(
                    f"{path}: line {start} has {len(row)} fields but the header has "
                    f"{len(header)}; check quoting and the delimiter {delimiter!r}"
                )
            records.append(_Record(start, len(records), dict(zip(header, row, strict=True))))
    except csv.Error as exc:
        raise HarnessError(
            f"{path}: malformed csv near line {reader.line_num} ({exc}); fix the quoting"
        ) from exc
    return header or [], records


def _check_unique_columns(path: Path, header: list[str]) -> None:
    """Two columns of one name would silently read as the last one (a study trained on the
    wrong texts): refuse, naming both positions. Unnamed columns (trailing delimiters of a
    spreadsheet export) are never selected, so they may repeat."""
    first: dict[str, int] = {}
    for position, name in enumerate(header, start=1):
        if name and name in first:
            raise HarnessError(
                f"{path}: column {name!r} appears twice in the header (columns {first[name]} "
                f"and {position}); rename or remove one of them"
            )
        first.setdefault(name, position)


class _DuplicateKey(Exception):
    """A JSON object with one key twice (``json.loads`` would keep the last silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _parse_jsonl(content: str, path: Path) -> tuple[list[str], list[_Record]]:
    records: list[_Record] = []
    header: dict[str, None] = {}  # insertion-ordered union of keys
    for lineno, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_unique_keys)
        except _DuplicateKey as exc:
            raise HarnessError(
                f"{path}: line {lineno} has key {exc.args[0]!r} twice; "
                "keep one (JSON would silently use the last)"
            ) from None
        except json.JSONDecodeError as exc:
            raise HarnessError(
                f"{path}: line {lineno} is not valid JSON ({exc.msg}); "
                "each line must be one JSON object"
            ) from exc
        if not isinstance(obj, dict):
            raise HarnessError(
                f"{path}: line {lineno} is a JSON {type(obj).__name__}, not an object; "
                'write one {"text": ..., "label": ...} object per line'
            )
        header.update(dict.fromkeys(obj))
        records.append(_Record(lineno, len(records), obj))
    return list(header), records


def _one_column_message(path: Path, delimiter: str, content: str) -> str:
    first_line = next(line for line in content.splitlines() if line.strip())
    widths = {d: len(next(csv.reader([first_line], delimiter=d))) for d in _SNIFF_DELIMITERS}
    best = max(widths, key=lambda d: widths[d])
    if widths[best] > 1:
        hint = f"the header splits into {widths[best]} columns on {best!r}; pass delimiter={best!r}"
    else:
        hint = "the file needs at least a text and a label column"
    return f"{path}: only one column found using delimiter {delimiter!r}; {hint}"


def _missing_column_message(path: Path, role: str, column: str, header: list[str]) -> str:
    found = ", ".join(repr(c) for c in header)
    close = difflib.get_close_matches(column, header, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"{path}: no {role} column {column!r} (columns found: {found}); "
        f"{hint}set {role}_column to one of the columns found"
    )


def _text_str(value: Any) -> str:
    return "" if value is None else str(value)


def _label_str(value: Any) -> str:
    """Canonical string for a label so csv "1", JSON 1, 1.0 and true/false compare equal."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
    return str(value).strip()


def _check_labels(
    path: Path,
    label_column: str,
    records: list[_Record],
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
