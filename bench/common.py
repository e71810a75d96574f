"""What every benchmark row shares: the result record, interleaved timing, the BABE data
and its warm attention cache, and running a study file in a child process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import yaml

from harness.attention import AttentionCache, extract_attention
from harness.data import Dataset, Split, load_dataset, make_split
from harness.encoder import Encoder, load_encoder

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
            self.encoder, self.dataset.texts, max_len=MAX_LEN, cache_dir=self.cache_dir
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
    peak_rss_bytes: int
    output: str


def run_child(
    args: list[str], env: dict[str, str | None] | None = None, timeout: float = 900
) -> ChildRun:
    """Run a command; return its wall time, output and peak RSS. ``wait4`` reports the
    peak of this child (and of any children it waited for) alone, whereas
    ``RUSAGE_CHILDREN`` keeps the largest child this process ever had. ``env`` adds to
    this process's environment; a value of None removes the variable."""
    child_env = {**os.environ, **(env or {})}
    child_env = {k: v for k, v in child_env.items() if v is not None}
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(args, cwd=ROOT, env=child_env, stdout=out, stderr=out, text=True)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        seconds = time.perf_counter() - start
        out.seek(0)
        output = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{output[-3000:]}")
    return ChildRun(seconds, usage.ru_maxrss * 1024, output)  # ru_maxrss is in KiB


def harness_cli(*args: str, env: dict[str, str | None] | None = None) -> ChildRun:
    """``harness ARGS`` in a child process."""
    return run_child([sys.executable, "-m", "harness", *args], env)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def rng_subset(n_total: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct indices in increasing order: a length mix like the whole data set's."""
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))
