"""Worker processes of one study: leases, dead-trial cleanup, and helper processes.

Each process holds a lease (``harness.storage.WorkerLease``) for its whole life; the
storage's heartbeat and those leases tell a dead worker's trials from slow ones, which
``fail_dead_trials`` ends as FAIL (their MLflow runs KILLED). ``--workers N`` starts
N - 1 helpers through this module's own entry point (``python -m harness.workers``),
which runs the same study on the same stores.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import optuna

from harness.attention import default_cache_dir
from harness.config import StudyConfig
from harness.errors import HarnessError
from harness.storage import StaleCallback
from harness.tracking import Tracker

log = logging.getLogger("harness")

#: study user attribute naming the MLflow parent run
PARENT_ATTR = "mlflow_parent_run_id"


def lease_dir(config: StudyConfig) -> Path:
    """Where the workers of a study on this machine keep their leases: beside the cache."""
    root = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    return root / "workers" / config.name.replace("/", "_")


def fail_dead_trials(study: optuna.Study) -> None:
    """Mark FAIL the RUNNING trials whose worker is dead (see ``harness.storage``), and
    their MLflow runs KILLED. Optuna does this before each trial it starts; a study also
    needs it when it starts and ends, which may be when no trial is left to start."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def stale_handler(tracker: Tracker) -> StaleCallback:
    """Optuna calls this for each trial found dead (killed worker, lost machine): its
    MLflow run must not stay RUNNING."""

    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        parent_id = study.user_attrs.get(PARENT_ATTR)
        for run_id in tracker.running_trial_runs(parent_id, trial.number) if parent_id else []:
            tracker.kill(run_id, "its worker process stopped (killed, or its machine was lost)")
        log.warning(
            "trial %d: its worker process stopped; marked FAIL, a new trial replaces it",
            trial.number,
        )

    return on_stale


def start_workers(
    study_file: str | Path,
    workers: int,
    target: int,
    timeout: float | None,
    storage: str,
    tracking: str,
) -> list[subprocess.Popen]:
    """Start ``workers - 1`` more processes of this study on the same storage."""
    env = {**os.environ, "HARNESS_EXTRACT_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
    cmd = [sys.executable, "-m", "harness.workers", str(study_file), "--n-trials", str(target)]
    cmd += ["--storage", storage, "--tracking-uri", tracking]
    if timeout:
        cmd += ["--timeout", str(timeout)]
    return [subprocess.Popen(cmd, env=env) for _ in range(1, workers)]


def main(argv: list[str] | None = None) -> int:
    """A helper process: run the study quietly; its parent prints the summary."""
    from harness.cli import EXIT_USER_ERROR, setup_logging
    from harness.study import run_study

    parser = argparse.ArgumentParser(prog="python -m harness.workers")
    parser.add_argument("file")
    parser.add_argument("--n-trials", type=int, required=True)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--timeout", type=float)
    args = parser.parse_args(argv)
    setup_logging(quiet=True)
    try:
        run_study(
            args.file,
            n_trials=args.n_trials,
            timeout=args.timeout,
            storage=args.storage,
            tracking_uri=args.tracking_uri,
            progress=False,
        )
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
