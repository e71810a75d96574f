"""Rows 7 and 8: whole studies: pruning on/off, and how to use 2 cores for parallel trials."""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from bench.common import LAYERS, ROOT, Context, Row, harness_cli, log, ratio, run_child, write_study
from harness.core.runtime import num_threads, train_threads
from harness.study.study import run_study
from harness.tracking.storage import make_storage

QUICK_STUDY = ROOT / "studies" / "babe-quick.yaml"


@dataclass
class StudyRun:
    """What a study did, read back from its Optuna storage."""

    #: the study's trials end to end (row 8), or the sum of their durations (row 7)
    trial_seconds: float
    n_complete: int
    n_pruned: int
    best_value: float
    #: epochs trained over all trials: the work, free of timing noise
    epochs: int
    #: the whole ``harness study run`` command, start-up included (row 8)
    command_seconds: float = float("nan")

    @property
    def trials_per_hour(self) -> float:
        return 3600 * (self.n_complete + self.n_pruned) / self.trial_seconds


def read_study(study_file: Path, span: bool, storage: str | None = None) -> StudyRun:
    """Finished trials of the study (in the file's storage unless ``storage``); ``span``:
    time from the first start to the last end (parallel workers), else the sum of the
    trials' own durations."""
    config = yaml.safe_load(study_file.read_text())
    study = optuna.load_study(
        study_name=config["name"], storage=make_storage(storage or config["storage"])
    )
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    if span:
        seconds = (
            max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
        ).total_seconds()
    else:
        seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
    return StudyRun(
        seconds,
        sum(t.state == TrialState.COMPLETE for t in trials),
        sum(t.state == TrialState.PRUNED for t in trials),
        study.best_value,
        sum(len(t.intermediate_values) for t in trials),
    )


def study_copy(ctx: Context, name: str, overrides: dict) -> Path:
    """babe-quick.yaml with ``overrides``, its stores in a fresh folder and its cache the
    bench's warm one (extracted before anything is timed)."""
    ctx.cache  # noqa: B018
    return write_study(QUICK_STUDY, ctx.tmp(name), cache_dir=str(ctx.cache_dir), **overrides)


def row_pruning(ctx: Context) -> list[Row]:
    """babe-quick as written (its pruner vs ``none``), then the same with the sampler seed
    moved by 1 and 2: with 12 trials, which trials the sampler draws (and so which can be
    pruned) moves the saving more than anything else, so one seed alone says little.

    All studies take turns, one trial each (continuing each study in this process), so
    load from other processes falls on all alike. Run one after the other, the saving
    read 34 % where the epochs saved implied about 17 %; run side by side, the study that
    finished first left the other a quieter machine and the saving read 7 %."""
    quick = yaml.safe_load(QUICK_STUDY.read_text())
    n_trials, epochs = quick["n_trials"], quick["train"]["epochs"]
    pruner, seed = quick["pruner"]["name"], quick["sampler"]["seed"]
    seeds = [seed] if ctx.quick else [seed, seed + 1, seed + 2]
    files = {
        (s, mode): study_copy(
            ctx,
            f"pruning-{mode}-seed{s}",
            {"sampler": {"seed": s}, **({"pruner": {"name": "none"}} if mode == "off" else {})},
        )
        for s in seeds
        for mode in ("on", "off")
    }
    log(f"row 7: babe-quick, pruning on and off, sampler seeds {seeds}, {n_trials} trials each")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    with num_threads(train_threads()), contextlib.redirect_stdout(io.StringIO()):
        # a trial nobody times pays the process's one-off costs (imports on first use),
        # which would otherwise land on the first study's first trial (1.6 s of 2 here)
        run_study(study_copy(ctx, "pruning-warm-up", {}), n_trials=1, progress=False)
        for k in range(1, n_trials + 1):
            for path in files.values():
                run_study(path, n_trials=k, progress=False)  # its trial lines go nowhere
    runs = {key: read_study(path, span=False) for key, path in files.items()}
    on, off = runs[seed, "on"], runs[seed, "off"]
    saved = {s: 1 - ratio(runs[s, "on"].trial_seconds, runs[s, "off"].trial_seconds) for s in seeds}
    values = {
        "n_trials": n_trials,
        "epochs": epochs,
        "pruner": quick["pruner"],
        "seeds": seeds,
        "runs": {f"seed{s}-{mode}": vars(run) for (s, mode), run in runs.items()},
        "wall_time_saved": {f"seed{s}": saved[s] for s in seeds},
        "epochs_saved": {
            f"seed{s}": 1 - ratio(runs[s, "on"].epochs, runs[s, "off"].epochs) for s in seeds
        },
    }
    rows = [
        Row(
            "7",
            f"babe-quick as written ({n_trials} trials × ≤ {epochs} epochs, sampler seed "
            f"{seed}): {pruner} pruner vs none",
            f"{on.trials_per_hour:.0f} vs {off.trials_per_hour:.0f} trials/h, "
            f"{100 * saved[seed]:.0f} % less time ({on.n_pruned} pruned; {on.epochs} vs "
            f"{off.epochs} epochs trained)",
            "≥ 30 % saved",
            saved[seed] >= 0.30,
            values,
        ),
        Row(
            "7",
            "best validation AUC, pruning on vs off",
            f"{on.best_value:.4f} vs {off.best_value:.4f}",
            "not worse",
            on.best_value >= off.best_value,
        ),
    ]
    if len(seeds) > 1:
        total = {m: sum(runs[s, m].trial_seconds for s in seeds) for m in ("on", "off")}
        pooled = 1 - ratio(total["on"], total["off"])
        values["wall_time_saved"]["pooled"] = pooled
        per_seed = ", ".join(f"{100 * saved[s]:.0f} %" for s in seeds)
        bests = ", ".join(
            f"{runs[s, 'on'].best_value:.4f} vs {runs[s, 'off'].best_value:.4f}" for s in seeds
        )
        rows.append(
            Row(
                "7",
                f"the same over sampler seeds {seeds[0]}–{seeds[-1]} (robustness, no target)",
                f"{100 * pooled:.0f} % less time pooled (per seed {per_seed}); best val AUC "
                f"on vs off {bests}",
                "–",
                None,
            )
        )
    return rows


#: every trial of row 8 does the same work, so throughput compares only how it is run
FIXED_SEARCH = {
    "layers": list(LAYERS),
    "heads": "all",
    "view": "rows",
    "reducer": "sum",
    "lr": 1.0e-3,
    "classifier": {"gru": {"hidden_size": 64, "bidirectional": True}},
}

#: one small GRU training step timed with 1 or 2 torch threads, plain torch (no harness)
GRU_STEP = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
gru = torch.nn.GRU(80, 64, batch_first=True, bidirectional=True)
x = torch.rand(64, 42, 80)
def step():
    out, _ = gru(x)
    out.sum().backward()
step()
times = []
for _ in range(5):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
print("STEP", min(times))
"""


def gru_step_seconds(threads: int, wait_policy: str | None) -> float:
    run = run_child(
        [sys.executable, "-c", GRU_STEP, str(threads)], env={"OMP_WAIT_POLICY": wait_policy}
    )
    return float(run.output.split("STEP")[-1])


def run_parallel(
    ctx: Context, name: str, n_trials: int, overrides: dict, workers: int, threads: int
) -> StudyRun:
    """``harness study run --workers W`` with HARNESS_NUM_THREADS=T in a child process, on
    a journal storage that the workers share."""
    path = study_copy(ctx, name, overrides)
    storage = f"journal:///{path.parent}/optuna.log"
    log(f"row 8: {n_trials} trials, {workers} process(es) × {threads} thread(s)")
    child = harness_cli(
        "study", "run", str(path), "--n-trials", str(n_trials), "--storage", storage,
        "--workers", str(workers), "--quiet", env={"HARNESS_NUM_THREADS": str(threads)},
    )  # fmt: skip
    run = read_study(path, span=True, storage=storage)
    run.command_seconds = child.seconds
    return run


def row_parallel(ctx: Context) -> list[Row]:
    n_trials = 4 if ctx.quick else 6
    overrides = {
        "train": {"epochs": 3, "patience": 3},
        "pruner": {"name": "none"},
        "sampler": {"name": "random", "seed": 0},
        "search": FIXED_SEARCH,
    }
    threads = run_parallel(ctx, "parallel-1x2", n_trials, overrides, workers=1, threads=2)
    procs = run_parallel(ctx, "parallel-2x1", n_trials, overrides, workers=2, threads=1)
    log("row 8: one GRU step with 1 or 2 threads while another process keeps a core busy")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        step = {
            "1 thread": gru_step_seconds(1, None),
            "2 threads, spinning waits (libgomp default)": gru_step_seconds(2, None),
            "2 threads, OMP_WAIT_POLICY=PASSIVE": gru_step_seconds(2, "PASSIVE"),
        }
    finally:
        hog.kill()
        hog.wait()
    speedup = ratio(procs.trials_per_hour, threads.trials_per_hour)
    spin = step["2 threads, spinning waits (libgomp default)"]
    passive = step["2 threads, OMP_WAIT_POLICY=PASSIVE"]
    return [
        Row(
            "8",
            f"{n_trials} identical trials: 2 processes × 1 thread vs 1 process × 2 threads",
            f"{procs.trials_per_hour:.0f} vs {threads.trials_per_hour:.0f} trials/h "
            f"({speedup:.2f}×; whole command {procs.command_seconds:.0f} vs "
            f"{threads.command_seconds:.0f} s)",
            "the faster is the default (2 × 1)",
            speedup >= 1.0,
            {"2x1": vars(procs), "1x2": vars(threads), "speedup": speedup},
        ),
        Row(
            "8",
            "GRU step on 2 threads with a core busy: spinning vs sleeping waits",
            f"{spin * 1000:.0f} vs {passive * 1000:.0f} ms ({ratio(spin, passive):.0f}×; "
            f"1 thread {step['1 thread'] * 1000:.0f} ms)",
            "(why threads.py sets PASSIVE)",
            None,
            {"step_seconds": step},
        ),
    ]
