"""What a study has done, from its Optuna storage: counts and the table of best trials.

Reads only Optuna (no torch, no MLflow), so ``harness study best`` answers quickly.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from harness.stats import METRICS

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def n_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def n_pruned(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))


def n_covered(study: optuna.Study) -> int:
    """Finished trials plus running ones (which will most likely finish): what a worker
    counts before it starts another trial, so that parallel workers stop at the target."""
    return len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))


def describe_finished(n_finished: int, n_pruned: int) -> str:
    """``12 finished trials (4 complete, 8 pruned)``: the table below it lists the complete."""
    return f"{n_finished} finished trials ({n_finished - n_pruned} complete, {n_pruned} pruned)"


def trial_rows(study: optuna.Study, top: int | None = None) -> list[dict]:
    """Complete trials, best validation AUC first, with test metrics and CIs."""
    trials = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
        key=lambda t: -(t.value if t.value is not None else -1),
    )
    rows = []
    for t in trials[:top]:
        test = t.user_attrs.get("test_metrics", {})
        rows.append(
            {
                "trial": t.number,
                "val_auc": t.value,
                **{f"test_{m}": test.get(m, [float("nan")] * 3) for m in METRICS},
                "params": t.params,
                "run_id": t.user_attrs.get("mlflow_run_id", ""),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of trials: number, val AUC, test AUC/accuracy/F1 with CIs."""
    if not rows:
        return "(no complete trials yet)"
    head = (
        f"{'trial':>5}  {'val_auc':>7}  {'test_auc [95% CI]':<24}  {'test_acc [CI]':<24}  "
        f"{'test_f1 [CI]':<24}  params"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = [
            f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"
            for v in (r["test_auc"], r["test_accuracy"], r["test_f1"])
        ]
        params = " ".join(f"{k}={v}" for k, v in r["params"].items())
        lines.append(
            f"{r['trial']:>5}  {r['val_auc']:>7.4f}  {cells[0]:<24}  {cells[1]:<24}  "
            f"{cells[2]:<24}  {params}"
        )
    return "\n".join(lines)


def _ci(v: list[float]) -> str:
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def format_baselines(rows: list[dict]) -> str:
    """The baselines block under the trials: same columns, named instead of numbered."""
    if not rows:
        return "(no baselines logged; the study file's baselines: key lists them)"
    width = max(8, *(len(r["baseline"]) for r in rows))
    head = (
        f"{'baseline':<{width}}  {'val_auc':>7}  {'test_auc [95% CI]':<24}  {'test_acc [CI]':<24}  "
        f"{'test_f1 [CI]':<24}  run"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = [_ci(r[k]) for k in ("test_auc", "test_accuracy", "test_f1")]
        lines.append(
            f"{r['baseline']:<{width}}  {r['val_auc']:>7.4f}  {cells[0]:<24}  {cells[1]:<24}  "
            f"{cells[2]:<24}  {r['run_id']}"
        )
    return "\n".join(lines)


def verdict(paired: dict[str, list[float]], n_test: int, n_sentences: int, study: str) -> str:
    """One plain sentence on what the split can tell: the best trial against the text
    baselines (``embedding``, ``tfidf``; else all), and where to look when it cannot."""
    text = {k: v for k, v in paired.items() if k in ("embedding", "tfidf")} or paired
    parts = [f"vs {k}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for k, (d, lo, hi, _) in text.items()]
    above = [k for k, (_, lo, _, _) in text.items() if lo > 0]
    below = [k for k, (_, _, hi, _) in text.items() if hi < 0]
    if above and len(above) == len(text):
        finding = "the best trial beats them"
    elif below and len(below) == len(text):
        finding = "the best trial trails them"
    elif above or below:
        finding = (
            f"better than {', '.join(above) or 'none'}, worse than {', '.join(below) or 'none'}"
        )
    else:
        finding = "no detectable difference"
    return (
        f"best trial {', '.join(parts)}: {finding} on {n_test:,} test sentences; run "
        f"`harness study evaluate {study}` for an estimate over all {n_sentences:,}"
    )


def format_paired(paired: dict[str, list[float]], best_trial: int | str) -> str:
    """Best trial − each baseline: ``{baseline: [diff, ci_low, ci_high, p]}``."""
    if not paired:
        return ""
    width = max(8, *(len(name) for name in paired))
    head = f"{'baseline':<{width}}  {'diff':>7}  {'95% CI':<18}  p (two-sided)"
    lines = [f"test AUC, best trial {best_trial} − baseline (paired bootstrap)", head]
    lines.append("-" * len(head))
    for name, (diff, low, high, p) in paired.items():
        lines.append(f"{name:<{width}}  {diff:>+7.3f}  [{low:+.3f}, {high:+.3f}]  {p:.3g}")
    return "\n".join(lines)
