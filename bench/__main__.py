"""``python -m bench``: run the benchmark rows, print the table, write the figures as JSON.

Every figure compares two ways of doing the same work measured in this run (interleaved
or back to back), because this machine is shared and absolute timings drift with load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from bench.baselines import row_baselines
from bench.bootstrap import row_bootstrap
from bench.common import ROOT, Context, Row, load_average, log
from bench.crossval import row_crossval
from bench.extraction import row_cache_size, row_extraction
from bench.features import row_features
from bench.finetune import row_finetune
from bench.memory import row_memory
from bench.prediction import row_prediction
from bench.scale import row_streaming
from bench.studies import row_parallel, row_pruning
from bench.sweep import row_sweep
from bench.training import row_training
from bench.views import row_views
from harness.core.runtime import extraction_threads, train_threads

ROWS: dict[int, Callable[[Context], list[Row]]] = {
    1: row_extraction,
    2: row_cache_size,
    3: row_features,
    4: row_memory,
    5: row_training,
    6: row_bootstrap,
    7: row_pruning,
    8: row_parallel,
    9: row_views,
    10: row_finetune,
    11: row_sweep,
    12: row_prediction,
    13: row_baselines,
    14: row_crossval,
    15: row_streaming,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats, trials and epochs (about half)"
    )
    parser.add_argument(
        "--only", help="comma-separated row numbers, e.g. --only 1,3 (default: all rows)"
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="row 4: measure the BERT-base-shaped study on all of BABE, not a subset; "
        "row 10: also time one fine-tuning epoch over BABE's train split",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "harness-bench",
        help="keeps the warm MiniLM cache and the random BERT-base between runs",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results.json", help="JSON results file"
    )
    args = parser.parse_args(argv)
    try:
        args.rows = sorted({int(r) for r in args.only.split(",")}) if args.only else list(ROWS)
    except ValueError:
        parser.error(f"--only takes row numbers like 1,3; got {args.only!r}")
    if unknown := [r for r in args.rows if r not in ROWS]:
        parser.error(f"no row {unknown}; rows are {', '.join(map(str, ROWS))}")
    return args


def markdown_table(rows: list[Row]) -> str:
    lines = ["| # | what | figure | target | met? |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r.number} | {r.what} | {r.figure} | {r.target} | {r.verdict} |" for r in rows]
    return "\n".join(lines)


def write_results(path: Path, rows: list[Row], meta: dict) -> None:
    """Merge into an existing results file, so ``--only`` updates just its rows."""
    previous = json.loads(path.read_text()) if path.exists() else {}
    kept = [r for r in previous.get("rows", []) if r["number"] not in {x.number for x in rows}]
    ran = [{**vars(r), "met": r.met} for r in rows]
    out = {**meta, "rows": sorted(kept + ran, key=lambda r: int(r["number"]))}
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.environ.get("HARNESS_DATA_DIR"):
        print("set HARNESS_DATA_DIR to the folder holding babe/ (BABE is required)")
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(args.workdir, args.quick, args.full)
    started, load_before = time.time(), load_average()
    rows: list[Row] = []
    for number in args.rows:
        start = time.perf_counter()
        rows += ROWS[number](ctx)
        log(f"row {number} done in {time.perf_counter() - start:.0f} s")
    seconds = time.time() - started
    meta = {
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": seconds,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": version("torch"),
            "extraction_threads": extraction_threads(),
            "train_threads": train_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_average": [load_before, load_average()],
        },
    }
    write_results(args.out, rows, meta)
    print(markdown_table(rows))
    met = [r.met for r in rows if r.met is not None]
    print(
        f"\n{sum(met)} of {len(met)} targets met in {seconds / 60:.1f} min "
        f"(load average {load_before:.1f} → {load_average():.1f}); figures in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
