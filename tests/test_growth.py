"""The growth bench (issue #19) on small corpora: it measures what BENCHMARKS.md's growth
curve reports, on a corpus that is real text. Its speed is not asserted here (bench/
measures it); what it builds and what it records are."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import growth
from harness.data.datasets import load_dataset

ROOT = Path(__file__).resolve().parent.parent


def read(path: Path) -> list[tuple[str, str, str]]:
    with open(path, newline="") as fh:
        return [(r["text"], r["label"], r["group"]) for r in csv.DictReader(fh)]


def test_the_corpus_is_babe_then_seeded_edits_of_babe_grouped_with_their_source(tmp_path):
    babe = load_dataset("babe")
    n = len(babe) + 400
    rows = read(growth.build_corpus(n, tmp_path / "a.csv"))
    assert len(rows) == n
    own = list(zip(babe.texts, map(str, babe.labels), map(str, babe.groups), strict=True))
    assert rows[: len(babe)] == own  # BABE's own sentences first, as they are
    assert read(growth.build_corpus(n, tmp_path / "b.csv")) == rows  # seeded
    by_group = {}
    for text, label, group in own:
        by_group.setdefault(group, []).append((text.split(), label))
    edited = rows[len(babe) :]
    changed = 0
    for text, label, group in edited:
        # each copy keeps the label and the article of a BABE sentence it is near to
        sources = [words for words, y in by_group[group] if y == label]
        assert sources, (text, group)
        words = set(text.split())
        assert max(len(words & set(s)) / len(set(s)) for s in sources) > 0.5
        changed += text not in {" ".join(s) for s in sources}
    assert changed > 0.8 * len(edited)


def test_the_growth_bench_records_each_size_and_draws_its_curve(tmp_path):
    out, plot = tmp_path / "growth.json", tmp_path / "growth.png"
    command = [sys.executable, "-m", "bench.growth", "--sizes", "300,600"]
    command += ["--workdir", str(tmp_path / "work"), "--out", str(out), "--plot", str(plot)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    points = figures["points"]
    assert [p["n"] for p in points] == [300, 600]
    for p in points:
        extraction = p["extraction"]
        assert extraction["sentences"] == p["n"] and extraction["tokens"] > 10 * p["n"]
        per = extraction["bytes_per_sentence"]
        assert per["compact, stats only"] < per["compact"] < per["maps"] < per["maps + view"]
        # the stats view is 7 of the relative view's 11 features (no maps kept)
        assert per["compact, stats only"] * 11 == pytest.approx(per["compact"] * 7)
        for part in growth.PARTS:
            assert p[part]["seconds"] > 0 and p[part]["peak_rss_bytes"] > 50e6
        for part in ("reader", "linear"):
            assert 0.0 <= p[part]["val_auc"] <= 1.0
    summary = figures["summary"]
    assert set(summary["seconds_per_sentence_largest_over_smallest"]) == set(growth.PARTS)
    assert summary["compact_within_50KB"] == (summary["compact_bytes_per_sentence"] <= 50e3)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 300 |" in done.stdout and "| 600 |" in done.stdout

    # again for the linear probe only: the other parts' figures are kept as they were
    again = subprocess.run(
        [*command, "--parts", "linear"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    remeasured = json.loads(out.read_text())["points"]
    for before, after in zip(points, remeasured, strict=True):
        assert {k: after[k] for k in after if k != "linear"} == {
            k: before[k] for k in before if k != "linear"
        }
        # measured again (a float timing never repeats to the last bit), and dated
        assert after["linear"]["seconds"] != before["linear"]["seconds"]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", after["linear"]["date"])
    wrong = subprocess.run(
        [*command, "--parts", "linear,probe"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert wrong.returncode == 2 and "--parts: unknown ['probe']" in wrong.stderr
