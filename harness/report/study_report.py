"""A study's results with their context, read back from its stores: the baselines and seed
repeats beside the trials, and the ``report/`` folder (report.md and PNG figures) that the
parent run gets at the end of every ``study run`` and from ``harness study report``.

Reads Optuna (the trials, their history) and MLflow (through ``RunReader``), never
torch, so ``study best`` and ``study report`` stay quick.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import statistics
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna
from mlflow.entities import Run

from harness.core import HarnessError
from harness.report.paired import artifact_text, best_vs_baselines_logged, study_bootstrap
from harness.report.tables import trial_rows
from harness.stats import PairedResult
from harness.tracking import ROLE_TAG, RunReader

if TYPE_CHECKING:
    from harness.report.markdown import ScoredRun

log = logging.getLogger("harness")

REPORT_DIR = "report"
#: trials shown in the report's tables and figures
TOP = 5
NAN3 = [math.nan] * 3
HEADS_CSV = "heads.csv"


def _triple(metrics: Mapping[str, float], name: str) -> list[float]:
    stem = f"test_{name}"
    return [
        metrics.get(stem, math.nan),
        *(metrics.get(f"{stem}_ci_{s}", math.nan) for s in ("low", "high")),
    ]


def _by_role(children: list[Run], role: str) -> list[Run]:
    """FINISHED child runs of ``role``, oldest first."""
    runs = [
        r for r in children if r.data.tags.get(ROLE_TAG) == role and r.info.status == "FINISHED"
    ]
    return sorted(runs, key=lambda r: r.info.start_time or 0)


def baseline_rows(children: list[Run]) -> list[dict]:
    """One row per baseline (its first finished run), in the order they were fitted."""
    rows: dict[str, dict] = {}
    for run in _by_role(children, "baseline"):
        name = run.data.tags.get("harness.baseline")
        if not name or name in rows:
            continue
        m = run.data.metrics
        rows[name] = {
            "baseline": name,
            "run_id": run.info.run_id,
            "val_auc": m.get("val_auc", math.nan),
            **{f"test_{k}": _triple(m, k) for k in ("auc", "accuracy", "f1")},
        }
    return list(rows.values())


def repeat_rows(children: list[Run]) -> list[dict]:
    """Per repeated trial: its seeds' test AUCs, their mean and SD (``harness study repeat``)."""
    by_trial: dict[int, dict[int, float]] = {}
    for run in _by_role(children, "repeat"):
        tags = run.data.tags
        auc = run.data.metrics.get("test_auc")
        if auc is not None and "harness.trial_number" in tags and "harness.seed" in tags:
            seeds = by_trial.setdefault(int(tags["harness.trial_number"]), {})
            seeds.setdefault(int(tags["harness.seed"]), auc)
    rows = []
    for trial, seeds in sorted(by_trial.items()):
        aucs = [seeds[s] for s in sorted(seeds)]
        sd = statistics.stdev(aucs) if len(aucs) > 1 else math.nan
        rows.append(
            {"trial": trial, "seeds": sorted(seeds), "mean": statistics.fmean(aucs), "sd": sd}
        )
    return rows


def paired_from_parent(parent: Run, metric: str = "auc") -> dict[str, list[float]]:
    """Baseline -> ``[diff, ci_low, ci_high, p]`` of best trial − baseline, as logged."""
    out = {}
    m = parent.data.metrics
    for key in m:
        if key.startswith("best_vs_") and key.endswith(f"_{metric}_diff"):
            stem = key.removesuffix("_diff")
            name = stem.removeprefix("best_vs_").removesuffix(f"_{metric}")
            out[name] = [
                m[key],
                *(m.get(f"{stem}_{s}", math.nan) for s in ("ci_low", "ci_high", "p_value")),
            ]
    return out


def head_scores(reader: RunReader, children: list[Run]) -> np.ndarray | None:
    """``[layers, heads]`` validation AUC from the latest probe run's ``heads.csv`` (the
    head sweep), nan where a head was not scored; None when no sweep was logged."""
    for run in reversed(_by_role(children, "probe")):
        try:
            text = artifact_text(reader, run, HEADS_CSV, "head sweep")
        except Exception:
            continue
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows:
            continue
        layers = [int(r["layer"]) for r in rows]
        heads = [int(r["head"]) for r in rows]
        grid = np.full((max(layers) + 1, max(heads) + 1), np.nan)
        for layer, head, r in zip(layers, heads, rows, strict=True):
            grid[layer, head] = float(r["val_auc"])
        return grid
    return None


def _scored_runs(trials: list[dict], baselines: list[dict]) -> list[ScoredRun]:
    from harness.report.markdown import ScoredRun

    runs = []
    for r in trials:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        runs.append(
            ScoredRun(
                f"trial {r['trial']}", *r["test_auc"], detail=f"val {r['val_auc']:.3f}; {params}"
            )
        )
    for b in baselines:
        runs.append(
            ScoredRun(
                f"baseline {b['baseline']}",
                *b["test_auc"],
                baseline=True,
                detail=f"val {b['val_auc']:.3f}",
            )
        )
    return runs


def _val_curves(reader: RunReader, trials: list[dict]) -> dict[str, list[float]]:
    """Validation AUC per epoch of each trial: the points logged at a training epoch (the
    extra closing point, a copy of the best epoch's, is left out)."""
    curves = {}
    for r in trials:
        if not r["run_id"]:
            continue
        epochs = {p.step for p in reader.client.get_metric_history(r["run_id"], "train_loss")}
        history = reader.client.get_metric_history(r["run_id"], "val_auc")
        points = sorted((p.step, p.value) for p in history if p.step in epochs)
        curves[f"trial {r['trial']}"] = [v for _, v in points]
    return curves


def _settings(study: optuna.Study, parent: Run, boot) -> dict[str, object]:
    p = parent.data.params
    keys = (
        "encoder",
        "max_len",
        "data",
        "n_rows",
        "split_sizes",
        "split_seed",
        "sampler",
        "pruner",
    )
    out: dict[str, object] = {k: p[k] for k in keys if k in p}
    finished = [t for t in study.trials if t.state.is_finished()]
    out["trials"] = f"{len(finished)} finished"
    out["bootstrap"] = (
        f"{boot.n_resamples} resamples, {100 * boot.confidence:g} %, seed {boot.seed}"
    )
    out["parent run"] = parent.info.run_id
    return out


def _repeats_md(rows: list[dict], trials: list[dict]) -> str:
    ci = {r["trial"]: r["test_auc"] for r in trials}
    lines = [
        "## Seed repeats",
        "",
        "Bootstrap CI: uncertainty of one trained model's score from the finite test set. "
        "Seed SD: how much retraining the same configuration with another seed moves it.",
        "",
        "| trial | seeds | mean test AUC | SD over seeds | bootstrap CI of the trial |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        c = ci.get(r["trial"], NAN3)
        lines.append(
            f"| {r['trial']} | {len(r['seeds'])} | {r['mean']:.3f} | {r['sd']:.4f} | "
            f"[{c[1]:.3f}, {c[2]:.3f}] |"
        )
    return "\n".join(lines) + "\n"


def build_report(
    study: optuna.Study,
    reader: RunReader,
    out: Path,
    *,
    top: int = TOP,
    paired: Mapping[str, PairedResult] | None = None,
) -> list[Path]:
    """Write report.md and the figures into ``out``; the files written. ``paired`` (best
    trial − each baseline) is recomputed from the logged predictions when not given.
    matplotlib is imported here, not with the module: reading a study's runs
    (``study best``) and a study that fails early never load it."""
    from harness.report.figures import (
        forest_plot,
        head_heatmap,
        optimization_history,
        param_importances,
        validation_curves,
    )
    from harness.report.markdown import write_report_md

    parent, children = reader.study_runs(study.study_name)
    if parent is None:
        raise ValueError(f"study {study.study_name!r} has no parent run")
    trials = trial_rows(study, top=top)
    baselines = baseline_rows(children)
    if paired is None and trials and trials[0]["run_id"] and baselines:
        ids = {b["baseline"]: b["run_id"] for b in baselines}
        paired = best_vs_baselines_logged(reader, trials[0]["run_id"], ids)
    boot = study_bootstrap(reader, parent)
    runs = _scored_runs(trials, baselines)
    out.mkdir(parents=True, exist_ok=True)
    figures = [
        forest_plot(runs, out / "forest.png", confidence=boot.confidence),
        optimization_history(study, out / "history.png"),
        param_importances(study, out / "importances.png"),
        validation_curves(_val_curves(reader, trials), out / "val_curves.png"),
    ]
    grid = head_scores(reader, children)
    if grid is not None:
        figures.append(
            head_heatmap(grid, out / "heads.png", title="validation AUC per head (head sweep)")
        )
    md = write_report_md(
        out / "report.md",
        title=f"Study {study.study_name}",
        settings=_settings(study, parent, boot),
        runs=runs,
        paired=paired,
        top_heads=_top_heads(grid, top),
        figures=figures,
        confidence=boot.confidence,
    )
    repeats = repeat_rows(children)
    if repeats:
        with md.open("a", encoding="utf-8") as fh:
            fh.write("\n" + _repeats_md(repeats, trial_rows(study)))
    plots = _append_evaluations(md, reader, parent, out)
    return [md, *(f.path for f in figures if f.path is not None), *plots]


def _append_evaluations(md: Path, reader: RunReader, parent: Run, out: Path) -> list[Path]:
    """``study evaluate``'s tables (plain and nested) and their forest plots, when the
    parent has them (``evaluation/``); the plots copied beside report.md."""
    plots = []
    for stem in ("evaluation", "nested"):
        try:
            text = artifact_text(reader, parent, f"evaluation/{stem}.md", "evaluation")
        except HarnessError:
            continue
        section = [f"## {'Nested cross-validation' if stem == 'nested' else 'Cross-validation'}"]
        section += ["", text.strip(), ""]
        try:
            local = reader.client.download_artifacts(
                parent.info.run_id, f"evaluation/{stem}_forest.png", str(out)
            )
        except Exception:  # noqa: BLE001 - a table without its plot still reads
            local = None
        if local is not None:
            plot = out / f"cv_{stem}_forest.png"
            Path(local).replace(plot)
            plots.append(plot)
            section += [f"![pooled out-of-fold AUC]({plot.name})", ""]
        with md.open("a", encoding="utf-8") as fh:
            fh.write("\n" + "\n".join(section))
    return plots


def _top_heads(grid: np.ndarray | None, top: int) -> list[tuple[int, int, float]] | None:
    """The ``top`` best (layer, head, score) of the head sweep's grid, best first."""
    if grid is None:
        return None
    order = np.argsort(-np.nan_to_num(grid, nan=-1.0), axis=None)[:top]
    return [(int(i // grid.shape[1]), int(i % grid.shape[1]), float(grid.flat[i])) for i in order]


def log_report(study: optuna.Study, reader: RunReader, **kwargs) -> list[str]:
    """Build the report and log it to the parent run under ``report/``; the artifact paths."""
    parent, _ = reader.study_runs(study.study_name)
    with tempfile.TemporaryDirectory() as tmp:
        files = build_report(study, reader, Path(tmp), **kwargs)
        reader.client.log_artifacts(parent.info.run_id, tmp, REPORT_DIR)
        return [f"{REPORT_DIR}/{f.relative_to(tmp).as_posix()}" for f in files]
