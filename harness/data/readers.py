"""Reading delimited text and JSONL files into a header and records: format detection by
extension and magic bytes, decoding, parsing, and messages that name the file, line and fix.

Every mistake is a one-line ``HarnessError``, because a study that dies three hours in on a
bad row is far more expensive than a reader that refuses up front."""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.core import HarnessError

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


def check_format(path: Path, delimiter: str | None) -> None:
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


def read_texts(
    path: str | Path, text_column: str = "text", delimiter: str | None = None
) -> tuple[list[str], np.ndarray]:
    """The ``text_column`` of an unlabelled csv/tsv/jsonl file (sentences to score) and
    each row's ``row_id`` (its 0-based data row), with the same checks as ``load_dataset``."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"input file {path} does not exist or is not a file")
    check_format(path, delimiter)
    content = decode(read_bytes(path), path)
    header, records = parse(content, path, delimiter, one_column=True)
    if not records:
        raise HarnessError(f"{path} has no data rows; add rows under a header")
    if text_column not in header:
        raise HarnessError(missing_column_message(path, "text", text_column, header))
    texts = [text_str(r.values.get(text_column)) for r in records]
    blank = [r.line for r, t in zip(records, texts, strict=True) if not t.strip()]
    if blank:
        raise HarnessError(
            f"{path}: {len(blank)} row(s) have an empty '{text_column}' text (first at line "
            f"{blank[0]}); remove those rows or pass the right --text-column"
        )
    return texts, np.array([r.row_id for r in records], dtype=np.int64)


@dataclass(frozen=True)
class Record:
    line: int  # 1-based physical line where the record starts (header is line 1 for csv)
    row_id: int  # 0-based data row number in the file
    values: dict[str, Any]


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise HarnessError(
            f"cannot read data file {path}: {exc.strerror or exc}; check permissions"
        ) from exc


def decode(raw: bytes, path: Path) -> str:
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


def parse(
    content: str, path: Path, delimiter: str | None, one_column: bool = False
) -> tuple[list[str], list[Record]]:
    """Header and records of a decoded file: JSONL by extension, else delimited text with
    ``delimiter`` or the extension's own (``check_format`` made sure there is one)."""
    if path.suffix.lower() == ".jsonl":
        return _parse_jsonl(content, path)
    delimiter = delimiter or _EXT_DELIMITERS[path.suffix.lower()]
    return _parse_delimited(content, path, delimiter, one_column)


def _parse_delimited(
    content: str, path: Path, delimiter: str, one_column: bool = False
) -> tuple[list[str], list[Record]]:
    """Header and records; ``one_column`` allows a lone text column (files to score),
    which in labelled data means a wrong delimiter."""
    # Python's csv module refuses cells over 131,072 characters ("field larger than field
    # limit"); a long sentence is valid data (the tokenizer truncates it to max_len anyway).
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter)
    records: list[Record] = []
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
            records.append(Record(start, len(records), dict(zip(header, row, strict=True))))
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


def _parse_jsonl(content: str, path: Path) -> tuple[list[str], list[Record]]:
    records: list[Record] = []
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
        records.append(Record(lineno, len(records), obj))
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


def missing_column_message(path: Path, role: str, column: str, header: list[str]) -> str:
    found = ", ".join(repr(c) for c in header)
    close = difflib.get_close_matches(column, header, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"{path}: no {role} column {column!r} (columns found: {found}); "
        f"{hint}set {role}_column to one of the columns found"
    )


def text_str(value: Any) -> str:
    return "" if value is None else str(value)


def label_str(value: Any) -> str:
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
