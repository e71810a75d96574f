"""Encoder conditions side by side: pretrained, fine-tuned and random-init, one study file.

A study file whose ``encoder.conditions`` lists several encoders runs one sub-study per
condition (``<name>.<label>``: its own Optuna study, MLflow experiment and parent run,
attention cache entry and head sweep; the same data, split and search), then compares
them on the same validation and test rows:

* the head sweeps' validation AUC per (layer, head), two conditions and their difference
  per figure (``figures.heatmap_comparison``), and each condition's top heads;
* the best attention probe of each condition (chosen on validation) with its test AUC
  and CI, and the paired bootstrap of the test AUC between conditions (same resampled
  rows, so the shared row-sampling noise cancels);
* ``baseline-finetuned``, the fine-tuned model's own head, with its CI, and the probe on
  its attention against it.

The comparison is logged as ``report/`` (report.md and PNGs) on the run named after the
study in the experiment of the same name, and printed.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness.core import HarnessError
from harness.report import Figure, ScoredRun, forest_plot, heatmap_comparison, md_table
from harness.stats import PairedResult, RunPredictions, compare_runs
from harness.study.inputs import load_data
from harness.study.intermediary import BASELINE_RUN, check_leaks
from harness.study.study import open_stores, prepare, run_trials, summarize
from harness.study.sweep import HeadScore, ensure_sweep, grid, ranking
from harness.studyfile import StudyConfig, load_study_file
from harness.tracking import ROLE_TAG, Tracker

log = logging.getLogger("harness")

COMPARISON_ROLE = "comparison"
TOP_HEADS = 5


@dataclass
class Scored:
    """A run's test AUC with its interval, and its test predictions for pairing."""

    run_id: str
    test_auc: tuple[float, float, float]
    predictions: RunPredictions
    detail: str = ""


@dataclass
class ConditionResult:
    label: str
    study: str
    parent_run_id: str
    scores: list[HeadScore]
    best: Scored | None
    baseline: Scored | None = None


@dataclass
class Comparison:
    name: str
    results: list[ConditionResult]
    #: ``"B − A"`` -> paired test-AUC difference of the conditions' best probes
    paired: dict[str, PairedResult] = field(default_factory=dict)
    run_id: str = ""
    tracking_uri: str = ""
    report: str = ""


def _scored(tracker: Tracker, run_id: str, name: str, detail: str = "") -> Scored:
    run = tracker.client.get_run(run_id)
    text = tracker.read_text(run_id, "predictions/test.csv")
    if text is None:
        raise HarnessError(f"run {run_id} ({name}) has no predictions/test.csv to compare")
    m = run.data.metrics
    auc = (m["test_auc"], m["test_auc_ci_low"], m["test_auc_ci_high"])
    return Scored(run_id, auc, RunPredictions(name, text, run.data.params), detail)


def run_condition(label: str, config: StudyConfig, **options) -> ConditionResult:
    """One condition's sub-study: its trials, then its head sweep (found or run)."""
    log.info("condition %s: study %r", label, config.name)
    p = prepare(config, **options)
    with open_stores(p) as session:
        run_trials(p, session)
        scores = ensure_sweep(session.ctx, p.progress)
    summary = summarize(session.study, p, session.ctx.parent_run_id)
    tracker = session.ctx.tracker
    best = None
    if summary.rows:
        row = summary.rows[0]
        detail = f"trial {row['trial']}, val AUC {row['val_auc']:.3f}"
        best = _scored(tracker, row["run_id"], f"{label} best probe", detail)
    baseline = None
    for run_id in tracker.find_children(summary.parent_run_id, "baseline", BASELINE_RUN):
        baseline = _scored(tracker, run_id, f"{label} {BASELINE_RUN}")
    return ConditionResult(label, config.name, summary.parent_run_id, scores, best, baseline)


def run_conditions(
    study_file: str | Path,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    progress: bool = True,
) -> Comparison:
    """Run every condition's sub-study (continuing those that exist), then compare them.
    Each intermediary file is leak-checked before the first sub-study is created."""
    config, _ = load_study_file(study_file)
    if config.encoder.conditions is None:
        raise HarnessError(f"{study_file} lists no encoder.conditions to compare")
    subs = [(c.label, config.for_condition(c)) for c in config.encoder.conditions]
    dataset, split = load_data(config)
    for _, sub in subs:
        check_leaks(sub, dataset, split)
    options = {
        "n_trials": n_trials,
        "timeout": timeout,
        "storage": storage,
        "tracking_uri": tracking_uri,
        "progress": progress,
    }
    results = [run_condition(label, sub, **options) for label, sub in subs]
    return compare_conditions(config, results, tracking_uri)


def paired_differences(config: StudyConfig, results: list[ConditionResult]) -> dict:
    """Later − earlier condition for every pair with a best probe, and each fine-tuned
    condition's probe − its ``baseline-finetuned``, on the same bootstrap resamples."""
    boot = config.bootstrap
    kw = {"n_resamples": boot.n_resamples, "confidence": boot.confidence, "seed": boot.seed}
    out = {}
    for a, b in itertools.combinations([r for r in results if r.best], 2):
        out[f"{b.label} − {a.label}"] = compare_runs(b.best.predictions, a.best.predictions, **kw)
    for r in results:
        if r.best and r.baseline:
            key = f"{r.label} probe − {BASELINE_RUN}"
            out[key] = compare_runs(r.best.predictions, r.baseline.predictions, **kw)
    return out


def draw_figures(results: list[ConditionResult], out: Path, confidence: float) -> list[Figure]:
    """One heatmap comparison per pair of conditions, and a forest plot of the test AUCs."""
    figures = []
    for a, b in itertools.combinations(results, 2):
        figures.append(
            heatmap_comparison(
                grid(b.scores), grid(a.scores), out / f"heads-{b.label}-vs-{a.label}.png",
                names=(b.label, a.label),
            )
        )  # fmt: skip
    rows = [
        ScoredRun(f"{r.label}: best probe", *r.best.test_auc, detail=r.best.detail)
        for r in results
        if r.best
    ]
    rows += [
        ScoredRun(f"{r.label}: {BASELINE_RUN}", *r.baseline.test_auc, baseline=True)
        for r in results
        if r.baseline
    ]
    figures.append(forest_plot(rows, out / "test-auc.png", confidence=confidence))
    return figures


def _auc(s: Scored) -> list[str]:
    v, lo, hi = s.test_auc
    return [f"{v:.3f}", f"[{lo:.3f}, {hi:.3f}]"]


def report_markdown(
    config: StudyConfig, results: list[ConditionResult], paired: dict, figures: list[Figure]
) -> str:
    """report.md: probes, baselines, paired differences, top heads, figures, settings."""
    pct = f"{100 * config.bootstrap.confidence:g} %"
    out = [f"# Encoder conditions: {config.name}", ""]
    out += ["## Best attention probe per condition (chosen on validation)", ""]
    out += md_table(
        ["condition", "test AUC", f"{pct} CI", "detail", "study", "run"],
        [
            [r.label, *_auc(r.best), r.best.detail, r.study, r.best.run_id]
            for r in results
            if r.best
        ],
    )
    baselines = [r for r in results if r.baseline]
    if baselines:
        out += ["## The fine-tuned model's own head", ""]
        out += md_table(
            ["condition", "run", "test AUC", f"{pct} CI", "run id"],
            [[r.label, BASELINE_RUN, *_auc(r.baseline), r.baseline.run_id] for r in baselines],
        )
    if paired:
        out += [
            "## Paired differences (test AUC)",
            "",
            "Paired bootstrap over the same resampled test rows; p is two-sided for H0: no "
            "difference.",
            "",
        ]
        out += md_table(
            ["difference", "A", "B", "A − B", f"{pct} CI", "p"],
            [
                [k, f"{r.a:.3f}", f"{r.b:.3f}", f"{r.diff:+.3f}",
                 f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]", f"{r.p_value:.3g}"]
                for k, r in paired.items()
            ],
        )  # fmt: skip
    out += [f"## Top {TOP_HEADS} heads per condition (head sweep, validation AUC)", ""]
    columns = []
    for r in results:
        by_map = {(s.layer, s.head): s for s in r.scores}
        columns.append(
            [f"{by_map[m].name} {by_map[m].val_auc:.3f}" for m in ranking(r.scores)[:TOP_HEADS]]
        )
    out += md_table(
        ["rank", *(r.label for r in results)],
        [[str(i + 1), *(c[i] for c in columns)] for i in range(TOP_HEADS)],
    )
    out += ["## Figures", ""]
    out += [f"![{f.title}]({f.path.name})\n" for f in figures if f.path is not None]
    out += ["## Settings", ""]
    out += md_table(
        ["condition", "study", "parent run"], [[r.label, r.study, r.parent_run_id] for r in results]
    )
    return "\n".join(out).rstrip() + "\n"


def compare_conditions(
    config: StudyConfig, results: list[ConditionResult], tracking_uri: str | None
) -> Comparison:
    """Write the report and log it as ``report/`` on the comparison run of ``config.name``."""
    from harness.studyfile import default_tracking_uri

    uri = default_tracking_uri(tracking_uri, config.tracking_uri)
    paired = paired_differences(config, results)
    tracker = Tracker(uri, config.name, config.artifact_location)
    run_id = _comparison_run(tracker, config.name)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "report")
        out.mkdir()
        figures = draw_figures(results, out, config.bootstrap.confidence)
        text = report_markdown(config, results, paired, figures)
        (out / "report.md").write_text(text, encoding="utf-8")
        tracker.client.log_artifacts(run_id, str(out), "report")
    tracker.log_params(
        run_id, {f"study_{r.label}": r.study for r in results} | {"conditions": len(results)}
    )
    metrics = {f"best_test_auc_{r.label}": r.best.test_auc[0] for r in results if r.best}
    tracker.log_metrics(run_id, metrics)
    tracker.finish(run_id)
    return Comparison(config.name, results, paired, run_id, uri, text)


def _comparison_run(tracker: Tracker, name: str) -> str:
    """The experiment's one comparison run (made once; a re-run rewrites its report)."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = '{COMPARISON_ROLE}'"
    )
    if runs:
        tracker.client.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id
    run = tracker.client.create_run(
        tracker.experiment_id, run_name=name, tags={ROLE_TAG: COMPARISON_ROLE}
    )
    return run.info.run_id
