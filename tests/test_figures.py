"""Report figures are real PNGs and the Markdown summary carries the numbers it was given."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest

from harness.core.errors import HarnessError
from harness.report.figures import (
    forest_plot,
    head_heatmap,
    heatmap_comparison,
    optimization_history,
    param_importances,
    validation_curves,
)
from harness.report.markdown import Figure, ScoredRun, write_report_md
from harness.stats.metrics import PairedResult

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

RUNS = [
    ScoredRun("trial 12", 0.647, 0.599, 0.689, detail="val 0.671"),
    ScoredRun("trial 7", 0.645, 0.597, 0.687),
    ScoredRun("majority", 0.5, 0.5, 0.5, baseline=True),
    ScoredRun("tfidf", 0.758, 0.717, 0.795, baseline=True),
    ScoredRun("broken", math.nan, math.nan, math.nan, baseline=True),
]


def _assert_png(fig: Figure) -> None:
    assert fig.path is not None, fig.note
    data = fig.path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1024


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    """A real in-memory study: 12 trials, intermediate values, some pruned."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        kind = trial.suggest_categorical("classifier", ["gru", "lstm"])
        hidden = trial.suggest_int("hidden_size", 8, 64)
        for epoch in range(4):
            trial.report(0.55 + 0.01 * epoch + 0.05 * (kind == "gru"), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return 0.6 + 0.05 * (kind == "gru") + 0.02 * math.log10(lr) + 0.0005 * hidden

    s = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=0),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3),
    )
    s.optimize(objective, n_trials=12)
    return s


def test_forest_plot(tmp_path: Path) -> None:
    _assert_png(forest_plot(RUNS, tmp_path / "forest.png"))
    empty = forest_plot([], tmp_path / "none.png")
    assert empty.path is None and not (tmp_path / "none.png").exists()


def test_optuna_history_and_importances(study: optuna.Study, tmp_path: Path) -> None:
    states = {t.state for t in study.trials}
    assert optuna.trial.TrialState.PRUNED in states  # the pruned-trial branch is exercised
    _assert_png(optimization_history(study, tmp_path / "history.png"))
    _assert_png(param_importances(study, tmp_path / "importances.png"))
    again = param_importances(study, tmp_path / "importances2.png")
    assert again.path.read_bytes() == (tmp_path / "importances.png").read_bytes()  # seeded


def test_optuna_figures_skip_studies_with_too_few_trials(tmp_path: Path) -> None:
    empty = optuna.create_study()
    history = optimization_history(empty, tmp_path / "h.png")
    assert history.path is None and "no completed trials" in history.note
    one = optuna.create_study()
    one.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    skipped = param_importances(one, tmp_path / "i.png")
    assert skipped.path is None and "the study has 1" in skipped.note
    assert not (tmp_path / "i.png").exists()
    fixed = optuna.create_study()
    fixed.optimize(lambda t: t.suggest_categorical("x", [1]) + t.number, n_trials=3)
    assert "no parameter varied" in param_importances(fixed, tmp_path / "f.png").note


def test_validation_curves(tmp_path: Path) -> None:
    curves = {"trial 12": [0.6, 0.64, 0.66, 0.65], "trial 7": [0.58, 0.63, 0.62], "empty": []}
    _assert_png(validation_curves(curves, tmp_path / "val.png"))
    assert validation_curves({"empty": []}, tmp_path / "none.png").path is None


def test_head_heatmaps(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grid = rng.uniform(0.5, 0.7, (6, 12))
    grid[2, 3] = np.nan  # a head that was not scored
    _assert_png(head_heatmap(grid, tmp_path / "heads.png"))
    other = grid + rng.normal(0, 0.02, grid.shape)
    _assert_png(heatmap_comparison(grid, other, tmp_path / "cmp.png", names=("base", "tuned")))
    with pytest.raises(HarnessError, match=r"shapes \(6, 12\) and \(12, 12\)"):
        heatmap_comparison(grid, np.full((12, 12), 0.6), tmp_path / "bad.png")
    with pytest.raises(HarnessError, match="at least one score"):
        head_heatmap(np.full((2, 2), np.nan), tmp_path / "bad.png")


def test_report_md_contains_the_numbers_and_links(tmp_path: Path) -> None:
    figs = [forest_plot(RUNS, tmp_path / "report" / "forest.png")]
    figs.append(Figure("Parameter importances", None, "needs at least 2 completed trials"))
    paired = {"tfidf": PairedResult(0.647, 0.758, -0.111, -0.15, -0.07, 0.002, "auc", 0.95, 1000)}
    path = write_report_md(
        tmp_path / "report" / "report.md",
        title="Study babe-quick",
        settings={"encoder": "minilm", "n_trials": 20, "split_seed": 7},
        runs=RUNS,
        paired=paired,
        top_heads=[(5, 6, 0.69), (1, 10, 0.681)],
        figures=figs,
    )
    text = path.read_text()
    assert text.startswith("# Study babe-quick\n")
    for needle in (
        "| trial 12 | 0.647    | [0.599, 0.689] | val 0.671",
        "| tfidf    | 0.758    | [0.717, 0.795]",
        "| broken   | n/a      | [n/a, n/a]",
        "| tfidf    | 0.647 | 0.758          | -0.111     | [-0.150, -0.070] | 0.002 |",
        "| L5H6  | 0.690 |",
        "| L1H10 | 0.681 |",
        "![test AUC with 95 % CIs](forest.png)",
        "*Parameter importances: not drawn (needs at least 2 completed trials).*",
        "| split_seed | 7      |",
    ):
        assert needle in text, needle
    assert text.index("## Best trials") < text.index("## Baselines") < text.index("## Paired")


def test_report_md_without_optional_sections(tmp_path: Path) -> None:
    text = write_report_md(
        tmp_path / "r.md", title="t", settings={"k": "a|b"}, runs=RUNS[:1]
    ).read_text()
    assert "## Baselines" not in text and "## Paired" not in text and "## Top heads" not in text
    assert "| k   | a\\|b  |" in text  # a pipe in a value does not break the table


def test_importances_skip_a_flat_objective(tmp_path: Path) -> None:
    # x varies but the objective does not: nothing to attribute (and fANOVA would raise).
    flat = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    flat.optimize(lambda t: 0.0 * t.suggest_float("x", 0, 1) + 0.5, n_trials=5)
    assert "objective is the same in all 5" in param_importances(flat, tmp_path / "f.png").note
