"""What every benchmark row shares: the result record, interleaved timing, the BABE data
and its warm attention cache, and running a study file in a child process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import yaml

from harness.attention.cache import AttentionCache
from harness.attention.extract import extract_attention
from harness.data.datasets import Dataset, load_dataset
from harness.data.split import Split, make_split
from harness.encoders.load import Encoder, load_encoder

ROOT = Path(__file__).resolve().parent.parent
MAX_LEN = 80
#: the feature spec of rows 3, 4 and 5: the seed notebook's three layers, summed
LAYERS = (3, 4, 5)


@dataclass
class Row:
    """One line of the table: a figure against its target, plus the raw measurements."""

    number: str
    what: str
    figure: str
    target: str
    met: bool | None  # None: reported for information, no target
    values: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return {True: "yes", False: "**no**", None: "–"}[self.met]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each function, run in turn ``repeats`` times (A B C A B C …), so a
    burst of load from another process lands on all of them rather than on one."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def load_average() -> float:
    return os.getloadavg()[0]


@dataclass
class Context:
    """Options and lazily prepared shared inputs (each built at most once per run)."""

    workdir: Path
    quick: bool
    full: bool

    @cached_property
    def dataset(self) -> Dataset:
        return load_dataset("babe")

    @cached_property
    def split(self) -> Split:
        return make_split(self.dataset, val_fraction=0.15, test_fraction=0.15, seed=0)

    @cached_property
    def encoder(self) -> Encoder:
        return load_encoder("minilm")

    @property
    def cache_dir(self) -> Path:
        return self.workdir / "cache"

    @cached_property
    def cache(self) -> AttentionCache:
        """MiniLM maps of all of BABE, kept in the work dir between runs (a warm cache
        is what every trial sees; extraction itself is measured in row 1)."""
        log("opening (or extracting once) the MiniLM cache of all BABE")
        return extract_attention(
            self.encoder,
            self.dataset.texts,
            max_len=MAX_LEN,
            cache_dir=self.cache_dir,
            progress=False,
        )

    def tmp(self, name: str) -> Path:
        """A fresh, empty folder in the work dir."""
        path = self.workdir / "tmp" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path


def write_study(source: Path | dict, folder: Path, **overrides) -> Path:
    """A copy of a study (file or dict) whose stores all live in ``folder``; nested keys
    are given as ``train={"epochs": 2}``, replacing only what they name."""
    study = yaml.safe_load(source.read_text()) if isinstance(source, Path) else dict(source)
    study.update(
        storage=f"sqlite:///{folder}/optuna.db",
        tracking_uri=f"sqlite:///{folder}/mlflow.db",
        artifact_location=str(folder / "artifacts"),
    )
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(study.get(key), dict):
            study[key] = {**study[key], **value}
        else:
            study[key] = value
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@dataclass
class ChildRun:
    seconds: float
    output: str


def run_child(
    args: list[str], env: dict[str, str | None] | None = None, timeout: float = 900
) -> ChildRun:
    """Run a command to completion; its wall time and output. ``env`` adds to this
    process's environment; a value of None removes the variable."""
    child_env = {**os.environ, **(env or {})}
    start = time.perf_counter()
    done = subprocess.run(
        args,
        cwd=ROOT,
        env={k: v for k, v in child_env.items() if v is not None},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}")
    return ChildRun(time.perf_counter() - start, done.stdout)


#: ``harness ARGS`` that prints its own peak RSS (VmHWM) on exit. Not ru_maxrss from
#: wait4: Linux carries the forking parent's high-water mark over exec into the child's,
#: so a child of this (large) bench process reported the bench's own peak.
HARNESS_WITH_PEAK = """
import atexit, runpy
def report():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            print("PEAK_RSS_KB", line.split()[1], flush=True)
atexit.register(report)
runpy.run_module("harness", run_name="__main__")
"""


def harness_cli(*args: str, env: dict[str, str | None] | None = None) -> ChildRun:
    """``harness ARGS`` in a child process."""
    return run_child([sys.executable, "-c", HARNESS_WITH_PEAK, *args], env)


def peak_rss_bytes(run: ChildRun) -> int:
    """The peak RSS a ``harness_cli`` child reported: its main process only (``--workers``
    helpers are separate processes)."""
    lines = [line for line in run.output.splitlines() if line.startswith("PEAK_RSS_KB ")]
    return int(lines[-1].split()[1]) * 1024


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def rng_subset(n_total: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct indices in increasing order: a length mix like the whole data set's."""
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))
