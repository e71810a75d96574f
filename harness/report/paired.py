"""Paired comparisons of logged runs: read both runs from MLflow, use their study's
bootstrap settings, and hand plain data to ``harness.stats.compare``.

Used by ``harness compare`` and by the end of a study (best trial vs each baseline).
Reads MLflow through ``RunReader`` only, so it loads no torch.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from mlflow.entities import Run

from harness.core import HarnessError
from harness.stats import PairedResult, RunPredictions, compare_runs
from harness.tracking import RunReader


@dataclass(frozen=True)
class BootstrapSettings:
    """The study's ``bootstrap:`` section (defaults as in ``config.BootstrapConfig``)."""

    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0


def run_label(run: Run) -> str:
    """``trial-3 (1a2b3c4d)``: the run's name and the start of its id."""
    return f"{run.info.run_name or 'run'} ({run.info.run_id[:8]})"


def artifact_text(reader: RunReader, run: Run, path: str, what: str) -> str:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = reader.client.download_artifacts(run.info.run_id, path, tmp)
        except Exception:
            raise HarnessError(f"run {run.info.run_id} has no {what} ({path})") from None
        return Path(local).read_text(encoding="utf-8")


def run_predictions(reader: RunReader, run: Run) -> RunPredictions:
    """The run's test predictions and params, as ``compare`` takes them."""
    text = artifact_text(
        reader, run, "predictions/test.csv", "test predictions (a pruned or failed trial?)"
    )
    return RunPredictions(run_label(run), text, run.data.params)


def study_bootstrap(reader: RunReader, run: Run) -> BootstrapSettings:
    """The bootstrap settings of the study ``run`` belongs to: its parent's ``study.yaml``
    (the run itself when it is a parent); the defaults when it has no study file."""
    parent_id = run.data.tags.get("mlflow.parentRunId")
    parent = reader.run(parent_id) if parent_id else run
    try:
        raw = yaml.safe_load(artifact_text(reader, parent, "study.yaml", "study file")) or {}
    except HarnessError:
        return BootstrapSettings()
    boot = raw.get("bootstrap") or {}
    defaults = BootstrapSettings()
    return BootstrapSettings(
        int(boot.get("n_resamples", defaults.n_resamples)),
        float(boot.get("confidence", defaults.confidence)),
        int(boot.get("seed", defaults.seed)),
    )


def compare_logged(
    reader: RunReader, ref_a: str, ref_b: str, metric: str = "auc"
) -> tuple[PairedResult, str, str]:
    """A − B on the runs' shared test rows with the bootstrap settings of A's study;
    returns the result and both runs' labels. Refuses runs on other data or splits."""
    run_a, run_b = reader.run(ref_a), reader.run(ref_b)
    a, b = run_predictions(reader, run_a), run_predictions(reader, run_b)
    boot = study_bootstrap(reader, run_a)
    result = compare_runs(
        a,
        b,
        metric,
        n_resamples=boot.n_resamples,
        confidence=boot.confidence,
        seed=boot.seed,
    )
    return result, a.name, b.name


def best_vs_baselines_logged(
    reader: RunReader, best_run_id: str, baselines: Mapping[str, str], metric: str = "auc"
) -> dict[str, PairedResult]:
    """The best trial − each baseline (name -> run id), on the same resamples."""
    return {
        name: compare_logged(reader, best_run_id, run_id, metric)[0]
        for name, run_id in baselines.items()
    }
