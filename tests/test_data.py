"""Tests for harness.data: BABE's real quirks, generic files, splits, errors and fetching."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from harness.core.errors import HarnessError
from harness.data import datasets as data
from harness.data.datasets import (
    BABE_SHA256,
    Dataset,
    fetch_dataset,
    load_dataset,
    resolve_data_path,
)
from harness.data.split import Split, make_split

BOM = "\ufeff"
BABE_HEADER = "text;news_link;outlet;topic;type;label_bias;label_opinion;biased_words"


@pytest.fixture(scope="module")
def babe_path() -> Path:
    """The real BABE file; its absence is a broken checkout, so fail rather than skip."""
    data_dir = os.environ.get("HARNESS_DATA_DIR")
    if not data_dir:
        pytest.fail("HARNESS_DATA_DIR is not set; point it at the folder holding babe/")
    path = Path(data_dir) / "babe" / "final_labels_SG2.csv"
    if not path.is_file():
        pytest.fail(f"{path} is missing; HARNESS_DATA_DIR must hold babe/final_labels_SG2.csv")
    return path


@pytest.fixture(scope="module")
def babe(babe_path: Path) -> Dataset:
    return load_dataset("babe")


def write(path: Path, text: str, *, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((BOM if bom else "").encode() + text.encode("utf-8"))
    return path


def synthetic_dataset(n: int = 400, n_groups: int | None = None, seed: int = 1) -> Dataset:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(np.int64)
    groups = None
    if n_groups is not None:
        groups = np.array([f"g{i}" for i in rng.integers(0, n_groups, n)], dtype=object)
    return Dataset(
        name="synthetic",
        source="memory",
        sha256="0" * 64,
        texts=[f"sentence {i}" for i in range(n)],
        labels=labels,
        groups=groups,
        row_ids=np.arange(n, dtype=np.int64),
        positive_label="1",
    )


def assert_partition(split: Split, n: int) -> None:
    parts = [split.train, split.val, split.test]
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0), "positions must be sorted and unique"
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))


def assert_group_disjoint(dataset: Dataset, split: Split) -> None:
    assert dataset.groups is not None
    train, val, test = (set(dataset.groups[p]) for p in (split.train, split.val, split.test))
    assert not (train & val or train & test or val & test)


# --- real BABE -----------------------------------------------------------------------------


def test_babe_real_counts_and_provenance(babe: Dataset, babe_path: Path) -> None:
    assert len(babe) == 3673
    assert int(babe.labels.sum()) == 1810
    assert babe.labels.dtype == np.int64
    assert babe.name == "babe"
    assert babe.positive_label == "Biased"
    assert babe.sha256 == BABE_SHA256 == hashlib.sha256(babe_path.read_bytes()).hexdigest()
    assert resolve_data_path("babe") == babe_path
    assert babe.source == str(babe_path)


def test_babe_real_drops_no_agreement_and_keeps_row_ids(babe: Dataset) -> None:
    # 3,674 data rows, ids 0..3673; exactly the one "No agreement" row is missing.
    assert babe.row_ids.dtype == np.int64
    missing = sorted(set(range(3674)) - set(babe.row_ids.tolist()))
    assert len(missing) == 1
    assert np.all(np.diff(babe.row_ids) > 0)


def test_babe_real_bom_quotes_and_multiline(babe: Dataset) -> None:
    assert all(not name.startswith(BOM) for name in babe.extra)
    assert set(babe.extra) == {"outlet", "topic", "type", "label_opinion", "biased_words"}
    assert babe.texts[0].startswith('"Orange Is the New Black" star Yael Stone')
    assert not babe.texts[0].startswith(BOM)
    assert sum("\n" in t for t in babe.texts) == 3


def test_babe_real_biased_words_kept_as_text(babe: Dataset) -> None:
    """Nothing reads BABE's word lists, so they stay the file's text: a malformed one
    must not be able to abort a study (issue 8, item 6)."""
    words = babe.extra["biased_words"]
    assert len(words) == len(babe) and all(isinstance(w, str) for w in words)
    assert words[1] == "['bizarre', 'characteristically']"


def test_babe_real_empty_links_are_singleton_groups(babe: Dataset) -> None:
    assert babe.groups is not None and babe.groups.dtype == object
    assert babe.group_column == "news_link"
    singles = [g for g in babe.groups if g.startswith("<no news_link")]
    assert len(singles) == 32
    assert len(set(singles)) == 32
    assert all(g.strip() for g in babe.groups)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_babe_real_group_split(babe: Dataset, seed: int) -> None:
    split = make_split(babe, seed=seed)
    assert split.group_by == "news_link"
    assert_partition(split, len(babe))
    assert_group_disjoint(babe, split)
    n = len(babe)
    for part, target in ((split.train, 0.70), (split.val, 0.15), (split.test, 0.15)):
        assert abs(len(part) / n - target) <= 0.02
        assert abs(babe.labels[part].mean() - babe.labels.mean()) <= 0.02


def test_babe_real_max_rows(babe: Dataset) -> None:
    small = load_dataset("babe", max_rows=200, seed=3)
    assert len(small) == 200
    assert abs(int(small.labels.sum()) - 200 * 1810 / 3673) <= 1
    assert np.all(np.diff(small.row_ids) > 0)
    assert set(small.row_ids) <= set(babe.row_ids)
    pos = {int(r): i for i, r in enumerate(babe.row_ids)}
    for i, rid in enumerate(small.row_ids[:20]):
        assert small.texts[i] == babe.texts[pos[int(rid)]]
        assert small.extra["biased_words"][i] == babe.extra["biased_words"][pos[int(rid)]]
    again = load_dataset("babe", max_rows=200, seed=3)
    other = load_dataset("babe", max_rows=200, seed=4)
    assert np.array_equal(small.row_ids, again.row_ids)
    assert not np.array_equal(small.row_ids, other.row_ids)


# --- synthetic BABE-format files -----------------------------------------------------------


SYNTHETIC_BABE = "\n".join(
    [
        BABE_HEADER,
        '"He said; ""no"" twice.";https://a/1;Fox;t;right;Biased;o;"[\'said\', \'""no""\']"',
        "Plain fact.;https://a/1;Fox;t;right;Non-biased;o;[]",
        "Nobody agrees.;https://a/2;CNN;t;left;No agreement;o;[]",
        '"Two\nlines.";;CNN;t;left;Non-biased;o;[]',
        "Orphan one.;;CNN;t;left;Biased;o;['orphan']",
        "Last one.;https://a/3;AP;t;center;Non-biased;o;",
    ]
)


@pytest.fixture()
def babe_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write(tmp_path / "babe" / "final_labels_SG2.csv", SYNTHETIC_BABE + "\n", bom=True)
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path))
    return tmp_path


def test_synthetic_babe_quirks(babe_dir: Path) -> None:
    ds = load_dataset("babe")
    path = babe_dir / "babe" / "final_labels_SG2.csv"
    assert ds.source == str(path)
    assert ds.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ds.texts == [
        'He said; "no" twice.',
        "Plain fact.",
        "Two\nlines.",
        "Orphan one.",
        "Last one.",
    ]
    assert ds.labels.tolist() == [1, 0, 0, 1, 0]
    assert ds.row_ids.tolist() == [0, 1, 3, 4, 5]  # row 2 ("No agreement") dropped
    assert ds.extra["biased_words"] == ["['said', '\"no\"']", "[]", "[]", "['orphan']", ""]
    assert ds.extra["outlet"] == ["Fox", "Fox", "CNN", "CNN", "AP"]
    assert ds.groups is not None
    assert ds.groups[0] == ds.groups[1] == "https://a/1"
    assert ds.groups[2] != ds.groups[3], "each empty news_link is its own group"


def test_babe_preset_applies_to_path_and_overrides_win(babe_dir: Path) -> None:
    path = babe_dir / "babe" / "final_labels_SG2.csv"
    ds = load_dataset(str(path), positive_label="Non-biased")
    assert ds.name == "babe"
    assert ds.labels.tolist() == [0, 1, 1, 0, 1]


def test_resolve_babe_falls_back_to_local_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "data" / "babe" / "final_labels_SG2.csv", SYNTHETIC_BABE, bom=True)
    assert resolve_data_path("babe") == Path("data") / "babe" / "final_labels_SG2.csv"
    assert len(load_dataset("babe")) == 5


def test_resolve_babe_missing_says_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HarnessError) as info:
        resolve_data_path("babe")
    message = str(info.value)
    assert "harness data fetch babe" in message and "HARNESS_DATA_DIR" in message
    assert str(tmp_path / "nowhere") in message and "\n" not in message


# --- generic files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "content", "positive", "labels"),
    [
        ("s.csv", 'text,label,src\n"a, b",1,x\nc,0,y\nd,1,z\n', "1", [1, 0, 1]),
        ("s.tsv", "text\tlabel\tsrc\na\ttrue\tx\nb\tfalse\ty\nc\tfalse\tz\n", "true", [1, 0, 0]),
        (
            "s.jsonl",
            '{"text": "a", "label": 0, "src": "x"}\n\n{"text": "b", "label": 1, "src": "y"}\n'
            '{"text": "c", "label": 1.0, "src": "z"}\n',
            "1",
            [0, 1, 1],
        ),
        (
            "s.jsonl",
            '{"text": "a", "label": false, "src": "x"}\n{"text": "b", "label": true, "src": "y"}\n'
            '{"text": "c", "label": true, "src": "z"}\n',
            "true",
            [0, 1, 1],
        ),
    ],
)
def test_generic_files(
    tmp_path: Path, filename: str, content: str, positive: str, labels: list[int]
) -> None:
    ds = load_dataset(str(write(tmp_path / filename, content)))
    assert ds.name == "s"
    assert ds.positive_label == positive
    assert ds.labels.tolist() == labels
    assert ds.labels.dtype == np.int64
    assert ds.row_ids.tolist() == [0, 1, 2]
    assert ds.groups is None
    assert ds.extra == {"src": ["x", "y", "z"]}


def test_generic_custom_columns_delimiter_and_groups(tmp_path: Path) -> None:
    path = write(
        tmp_path / "news.csv",
        "body;stance;doc\nx;pro;d1\ny;con;d1\nz;con;\n",
        bom=True,
    )
    ds = load_dataset(
        str(path),
        text_column="body",
        label_column="stance",
        positive_label="pro",
        group_column="doc",
        delimiter=";",
    )
    assert ds.texts == ["x", "y", "z"]
    assert ds.labels.tolist() == [1, 0, 0]
    assert ds.groups is not None and ds.groups[0] == ds.groups[1] != ds.groups[2]
    assert ds.group_column == "doc"


def test_subset_keeps_provenance_and_order(babe_dir: Path) -> None:
    ds = load_dataset("babe")
    sub = ds.subset(np.array([3, 0]))
    assert (sub.name, sub.source, sub.sha256) == (ds.name, ds.source, ds.sha256)
    assert sub.texts == [ds.texts[3], ds.texts[0]]
    assert sub.row_ids.tolist() == [4, 0]
    assert sub.extra["biased_words"] == ["['orphan']", "['said', '\"no\"']"]
    assert len(sub) == 2


# --- splits --------------------------------------------------------------------------------


def test_stratified_split_proportions() -> None:
    ds = synthetic_dataset(1000)
    split = make_split(ds, val_fraction=0.2, test_fraction=0.1, seed=5)
    assert split.group_by is None
    assert_partition(split, len(ds))
    assert (len(split.train), len(split.val), len(split.test)) == pytest.approx(
        (700, 200, 100), abs=2
    )
    for part in (split.train, split.val, split.test):
        assert abs(ds.labels[part].mean() - ds.labels.mean()) <= 0.01


def test_group_split_on_synthetic_groups() -> None:
    ds = synthetic_dataset(1200, n_groups=300)
    split = make_split(ds, seed=2)
    assert split.group_by == "group"
    assert_partition(split, len(ds))
    assert_group_disjoint(ds, split)
    for part, target in ((split.train, 0.70), (split.val, 0.15), (split.test, 0.15)):
        assert abs(len(part) / len(ds) - target) <= 0.02
    ungrouped = make_split(ds, seed=2, group_by=False)
    assert ungrouped.group_by is None


@pytest.mark.parametrize("group_by", [True, False])
def test_split_is_deterministic_per_seed(group_by: bool) -> None:
    ds = synthetic_dataset(600, n_groups=150)
    a = make_split(ds, seed=7, group_by=group_by)
    b = make_split(ds, seed=7, group_by=group_by)
    c = make_split(ds, seed=8, group_by=group_by)
    assert a.to_dict() == b.to_dict()
    assert not np.array_equal(a.test, c.test)


def test_split_dict_round_trip() -> None:
    split = make_split(synthetic_dataset(300, n_groups=80), seed=4)
    record = json.loads(json.dumps(split.to_dict()))
    assert record["sizes"] == {
        "train": len(split.train),
        "val": len(split.val),
        "test": len(split.test),
    }
    back = Split.from_dict(record)
    assert back.seed == 4 and back.group_by == "group"
    for name in ("train", "val", "test"):
        assert np.array_equal(getattr(back, name), getattr(split, name))
        assert getattr(back, name).dtype == np.int64
    with pytest.raises(HarnessError, match="missing test"):
        Split.from_dict({"train": [], "val": [], "seed": 0})


@pytest.mark.parametrize(
    ("kwargs", "n", "phrase"),
    [
        ({"val_fraction": 0.0}, 400, "val_fraction=0.0 must be between 0 and 1"),
        ({"test_fraction": 1.2}, 400, "test_fraction=1.2 must be between 0 and 1"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, 400, "leaves no training rows"),
        ({}, 20, "use more rows or a larger val fraction"),
        ({"test_fraction": 0.01}, 400, "larger test fraction"),
    ],
)
def test_make_split_errors(kwargs: dict, n: int, phrase: str) -> None:
    with pytest.raises(HarnessError) as info:
        make_split(synthetic_dataset(n), **kwargs)
    assert phrase in str(info.value)
    assert "\n" not in str(info.value)


# --- bad inputs ----------------------------------------------------------------------------


def bad_file(name: str, content: str | bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    return make


BAD_INPUTS = [
    ("missing", lambda tmp: tmp / "nope.csv", {}, "does not exist"),
    ("directory", lambda tmp: tmp, {}, "is not a file"),
    ("empty", bad_file("e.csv", ""), {}, "is empty"),
    ("bom-only", bad_file("e.csv", BOM + "\n\n"), {}, "is empty"),
    ("header-only", bad_file("h.csv", "text,label\n"), {}, "no usable data rows"),
    ("not-utf8", bad_file("l.csv", b"text,label\ncaf\xe9,1\n"), {}, "is not UTF-8"),
    ("unknown-ext", bad_file("d.xlsx", "text,label\na,1\n"), {}, "unknown file type '.xlsx'"),
    ("wrong-delimiter", bad_file("w.csv", "text;label\na;1\nb;0\n"), {}, "pass delimiter=';'"),
    (
        "wrong-delimiter-tab",
        bad_file("w.csv", "text\tlabel\na\t1\n"),
        {"delimiter": ";"},
        "only one column found using delimiter ';'",
    ),
    ("missing-text", bad_file("m.csv", "txt,label\na,1\n"), {}, "did you mean 'txt'"),
    (
        "missing-label",
        bad_file("m.csv", "text,lable\na,1\n"),
        {},
        "no label column 'label' (columns found: 'text', 'lable')",
    ),
    (
        "missing-group",
        bad_file("m.csv", "text,label,doc\na,1,x\n"),
        {"group_column": "docs"},
        "did you mean 'doc'",
    ),
    (
        "blank-texts",
        bad_file("b.csv", 'text,label\n"multi\nline",1\n  ,0\nok,1\n,0\n'),
        {},
        "2 row(s) have an empty 'text' text (first at line 4)",
    ),
    ("field-count", bad_file("f.csv", "text,label\na,1,extra\n"), {}, "line 2 has 3 fields"),
    ("single-class", bad_file("s.csv", "text,label\na,1\nb,1\n"), {}, "single class"),
    (
        "positive-not-found",
        bad_file("p.csv", "text,label\na,1\nb,0\n"),
        {"positive_label": "yes"},
        "positive_label 'yes' is not among the labels",
    ),
    (
        "positive-ambiguous",
        bad_file("p.csv", "text,label\na,pro\nb,con\n"),
        {},
        "values found: 'pro', 'con'); set positive_label",
    ),
    (
        "third-label",
        bad_file("t.csv", "text,label\na,pro\nb,con\nc,maybe\n"),
        {"positive_label": "pro"},
        "'maybe', first appears at line 4",
    ),
    (
        "babe-other-label-value",
        bad_file(
            "babe/final_labels_SG2.csv",
            BABE_HEADER + "\na;l;o;t;y;Biased;o;[]\n"
            "b;l;o;t;y;Non-biased;o;[]\nc;l;o;t;y;Unsure;o;[]\n",
        ),
        {},
        "'Unsure', first appears at line 4",
    ),
    ("empty-label", bad_file("n.csv", "text,label\na,1\nb,\n"), {}, "line 3 has a missing label"),
    ("nan-label", bad_file("n.csv", "text,label\na,1\nb,NaN\n"), {}, "line 3 has a missing label"),
    (
        "json-null-label",
        bad_file("n.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": null}\n'),
        {},
        "line 2 has a missing label",
    ),
    (
        "json-nan-label",
        bad_file("n.jsonl", '{"text": "a", "label": NaN}\n{"text": "b", "label": 1}\n'),
        {},
        "line 1 has a missing label",
    ),
    (
        "malformed-json",
        bad_file("j.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": \n'),
        {},
        "line 2 is not valid JSON",
    ),
    ("json-not-object", bad_file("j.jsonl", '["a", 1]\n'), {}, "line 1 is a JSON list"),
    ("max-rows", bad_file("s.csv", "text,label\na,1\nb,0\n"), {"max_rows": 1}, "max_rows=1"),
    (
        "duplicate-column-csv",
        bad_file("d.csv", "text,label,text\na,1,x\nb,0,y\n"),
        {},
        "column 'text' appears twice in the header (columns 1 and 3); rename or remove one",
    ),
    (
        "duplicate-column-tsv-padded",
        bad_file("d.tsv", "label\ttext\t text \n1\ta\tx\n0\tb\ty\n"),
        {},
        "column 'text' appears twice in the header (columns 2 and 3)",
    ),
    (
        "duplicate-key-jsonl",
        bad_file("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0, "text": "c"}\n'),
        {},
        "line 2 has key 'text' twice",
    ),
    (
        "parquet-by-extension",
        bad_file("d.parquet", b"PAR1\x15\x04\x15\xff\xfe"),
        {},
        "unknown file type '.parquet' (a Parquet file); harness reads .csv, .tsv and .jsonl",
    ),
    (
        "json-by-extension",
        bad_file("d.json", '[{"text": "a", "label": 1}]'),
        {},
        "write one JSON object per line and name it .jsonl",
    ),
    (
        "gzip-by-extension",
        bad_file("d.csv.gz", b"\x1f\x8b\x08\x00\xff"),
        {},
        "unknown file type '.gz' (a compressed file); harness reads .csv, .tsv and .jsonl",
    ),
    (
        "parquet-named-csv",
        bad_file("d.csv", b"PAR1\x15\x04\x15\xff\xfe"),
        {},
        "is a Parquet file, not text, despite its name; harness reads .csv, .tsv and .jsonl",
    ),
    (
        "xlsx-named-csv",
        bad_file("d.csv", b"PK\x03\x04\x14\x00\xff\xfe"),
        {},
        "is a zip archive (an .xlsx workbook is one), not text",
    ),
]


@pytest.mark.parametrize(
    ("make", "kwargs", "phrase"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_inputs(
    tmp_path: Path, make: Callable[[Path], Path], kwargs: dict, phrase: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(HarnessError) as info:
        load_dataset(str(path), **kwargs)
    message = str(info.value)
    assert phrase in message
    assert "\n" not in message, "errors must be one line"
    if path.is_file() and "max_rows" not in kwargs:
        assert str(path) in message, "errors name the file"


def test_unsupported_format_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Named by extension alone, even with a delimiter given: the file is never read."""

    def no_read(path: Path) -> bytes:
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(data, "read_bytes", no_read)
    path = write(tmp_path / "d.xlsx", "text,label\n")
    with pytest.raises(HarnessError, match=r"Excel workbook\); harness reads \.csv"):
        load_dataset(str(path), delimiter=",")


def test_unknown_extension_with_delimiter_still_reads(tmp_path: Path) -> None:
    path = write(tmp_path / "d.txt", "text|label\na|1\nb|0\n")
    assert load_dataset(str(path), delimiter="|").labels.tolist() == [1, 0]


@pytest.mark.parametrize("filename", ["long.csv", "long.tsv"])
def test_long_cell_reads(tmp_path: Path, filename: str) -> None:
    """Python's csv limit is 131,072 characters per cell; a long valid sentence is data."""
    sep = "," if filename.endswith(".csv") else "\t"
    long_text = "word " * 40_000 + "x"  # 200,001 characters
    assert len(long_text) == 200_001
    path = write(tmp_path / filename, f"text{sep}label\n{long_text}{sep}1\nshort{sep}0\n")
    ds = load_dataset(str(path))
    assert ds.texts == [long_text, "short"]


def test_unnamed_columns_may_repeat(tmp_path: Path) -> None:
    """Spreadsheet exports end rows with empty columns; nothing can select them."""
    ds = load_dataset(str(write(tmp_path / "x.csv", "text,label,,\na,1,,\nb,0,,\n")))
    assert ds.labels.tolist() == [1, 0]


def test_malformed_biased_words_does_not_abort(babe_dir: Path) -> None:
    path = babe_dir / "babe" / "final_labels_SG2.csv"
    write(
        path,
        BABE_HEADER + "\nb;l;o;t;y;Non-biased;o;[]\na;l;o;t;y;Biased;o;[oops\n"
        "c;l;o;t;y;Biased;o;__import__('os').getcwd()\n",
    )
    ds = load_dataset("babe")
    assert ds.extra["biased_words"] == ["[]", "[oops", "__import__('os').getcwd()"]


def test_tilde_is_expanded_in_data_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    write(tmp_path / "d.csv", "text,label\na,1\nb,0\n")
    assert resolve_data_path("~/d.csv") == tmp_path / "d.csv"
    assert load_dataset("~/d.csv").source == str(tmp_path / "d.csv")
    write(tmp_path / "store" / "babe" / "final_labels_SG2.csv", SYNTHETIC_BABE)
    monkeypatch.setenv("HARNESS_DATA_DIR", "~/store")
    assert resolve_data_path("babe") == tmp_path / "store" / "babe" / "final_labels_SG2.csv"
    with pytest.raises(HarnessError, match=f"data file {tmp_path}/nope.csv does not exist"):
        load_dataset("~/nope.csv")


# --- fetch ---------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fetch_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{closed_port()}/final_labels_SG2.csv"
    monkeypatch.setattr(data, "BABE_URL", url)
    with pytest.raises(HarnessError) as info:
        fetch_dataset("babe", tmp_path)
    message = str(info.value)
    assert message.startswith(f"could not download BABE from {url}: ")
    assert "copy final_labels_SG2.csv into data/babe/ or set HARNESS_DATA_DIR" in message
    assert not (tmp_path / "babe" / "final_labels_SG2.csv").exists()


def test_fetch_sha_mismatch_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = write(tmp_path / "upstream.csv", "text;label_bias\nchanged;Biased\n")
    monkeypatch.setattr(data, "BABE_URL", fake.as_uri())
    dest = tmp_path / "data"
    with pytest.raises(HarnessError, match="sha256"):
        fetch_dataset("babe", dest)
    assert not (dest / "babe").exists() or not any((dest / "babe").iterdir())


def test_fetch_from_local_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, babe_path: Path
) -> None:
    monkeypatch.setattr(data, "BABE_URL", babe_path.as_uri())
    target = fetch_dataset("babe", tmp_path)
    assert target == tmp_path / "babe" / "final_labels_SG2.csv"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == BABE_SHA256
    assert sorted(p.name for p in target.parent.iterdir()) == ["final_labels_SG2.csv"]
    # Already present and intact: no download needed even when offline.
    monkeypatch.setattr(data, "BABE_URL", f"http://127.0.0.1:{closed_port()}/x.csv")
    assert fetch_dataset("babe", tmp_path) == target


def test_fetch_into_a_folder_under_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, babe_path: Path
) -> None:
    monkeypatch.setattr(data, "BABE_URL", babe_path.as_uri())
    blocker = write(tmp_path / "file.txt", "x")
    with pytest.raises(HarnessError, match="pass a writable folder as --dest") as info:
        fetch_dataset("babe", blocker / "data")
    assert str(blocker) in str(info.value) and "\n" not in str(info.value)


def test_fetch_expands_tilde(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, babe_path: Path
) -> None:
    monkeypatch.setattr(data, "BABE_URL", babe_path.as_uri())
    monkeypatch.setenv("HOME", str(tmp_path))
    assert fetch_dataset("babe", Path("~/d")) == tmp_path / "d" / "babe" / "final_labels_SG2.csv"


def test_fetch_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="unknown data set 'imdb'; known data sets: babe"):
        fetch_dataset("imdb", tmp_path)
