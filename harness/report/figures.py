"""PNG figures for a study report, drawn with matplotlib from plain data (report.md itself
is ``harness.report.markdown``).

Every function takes numbers (or, for the Optuna figures, an ``optuna.Study``) and a path,
writes one PNG and returns a ``Figure`` record, so the report can list figures and say why
one was skipped instead of failing the study. The Agg backend is forced: reports are made on
headless machines and must never open a window. Optuna's own matplotlib module is not used:
it is experimental, labels axes "Objective Value", clips its legend, and hides pruned trials.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from harness.core import HarnessError  # noqa: E402
from harness.report.markdown import Figure, ScoredRun  # noqa: E402

DPI = 120
TRIAL_COLOR = "#1f5fa8"
BASELINE_COLOR = "#d2691e"
PRUNED_COLOR = "#9a9a9a"


def _save(fig: plt.Figure, path: Path | str, title: str) -> Figure:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return Figure(title=title, path=path)


def _fmt_ci(row: ScoredRun) -> str:
    if not math.isfinite(row.value):
        return "n/a"
    if not (math.isfinite(row.ci_low) and math.isfinite(row.ci_high)):
        return f"{row.value:.3f}"
    return f"{row.value:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]"


def forest_plot(
    rows: Sequence[ScoredRun],
    path: Path | str,
    *,
    metric: str = "test AUC",
    confidence: float = 0.95,
    chance: float | None = 0.5,
) -> Figure:
    """Point and CI per run, trials above baselines. Trials keep the order given (the
    study's, best validation AUC first: test is reported, not ranked on); baselines are
    sorted by value.

    The numbers are printed beside each row: a reader of a paper's table wants them, and
    overlapping bars are easy to misread (only the paired differences say which is better).
    """
    title = f"{metric} with {100 * confidence:g} % CIs"
    if not rows:
        return Figure(title=title, path=None, note="no runs to plot")
    trials = [r for r in rows if not r.baseline]
    baselines = sorted((r for r in rows if r.baseline), key=lambda r: -np.nan_to_num(r.value))
    ordered = trials + baselines
    fig, ax = plt.subplots(figsize=(7.5, 1.0 + 0.38 * len(ordered)))
    ys = np.arange(len(ordered))[::-1]
    for y, r in zip(ys, ordered, strict=True):
        color, marker = (BASELINE_COLOR, "s") if r.baseline else (TRIAL_COLOR, "o")
        if math.isfinite(r.ci_low) and math.isfinite(r.ci_high):
            ax.hlines(y, r.ci_low, r.ci_high, color=color, linewidth=2)
        if math.isfinite(r.value):
            ax.plot(r.value, y, marker=marker, color=color, markersize=7, linestyle="none")
        ax.annotate(
            _fmt_ci(r), (1.02, y), xycoords=("axes fraction", "data"), va="center", fontsize=9
        )
    if trials and baselines:
        ax.axhline(ys[len(trials) - 1] - 0.5, color="#cccccc", linewidth=0.8)
    if chance is not None:
        ax.axvline(chance, color="#555555", linestyle="--", linewidth=1)
        ax.annotate(
            "chance",
            (chance, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -10),
            textcoords="offset points",
            fontsize=8,
            color="#555555",
        )
    ax.set_yticks(ys, [r.label for r in ordered])
    for tick, r in zip(ax.get_yticklabels(), ordered, strict=True):
        tick.set_color(BASELINE_COLOR if r.baseline else "black")
    ax.set_ylim(-0.7, len(ordered) - 0.3)
    ax.set_xlabel(metric)
    ax.set_title(title + ("  (■ baselines, ● trials)" if baselines and trials else ""))
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path, title)


def optimization_history(
    study: optuna.Study, path: Path | str, *, objective: str = "validation AUC"
) -> Figure:
    """Objective per trial and the best so far; pruned trials at their last reported value."""
    title = "Optimization history"
    if study._is_multi_objective():
        return Figure(title, None, "multi-objective studies have no single history")
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
    if not done:
        return Figure(title, None, "no completed trials yet")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    numbers = [t.number for t in done]
    values = [t.value for t in done]
    ax.plot(numbers, values, "o", color=TRIAL_COLOR, label="completed trial")
    last = [
        (t.number, t.intermediate_values[max(t.intermediate_values)])
        for t in pruned
        if t.intermediate_values
    ]
    if last:
        ax.plot(
            *zip(*last, strict=True),
            "x",
            color=PRUNED_COLOR,
            label="pruned trial (last reported value)",
        )
    best = np.maximum.accumulate if study.direction.name == "MAXIMIZE" else np.minimum.accumulate
    ax.step(
        numbers, best(np.asarray(values)), where="post", color=BASELINE_COLOR, label="best so far"
    )
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"{objective} ({study.direction.name.lower()}d)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{title}: {len(done)} completed, {len(pruned)} pruned")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path, title)


def param_importances(study: optuna.Study, path: Path | str, *, seed: int = 0) -> Figure:
    """fANOVA importances (seeded, so the report is reproducible) as horizontal bars.

    Skipped with a note when there is nothing to attribute: fewer than two completed trials, a
    constant objective, or no parameter that varied (all zeros would read as a finding).
    """
    title = "Parameter importances"
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    n_done = len(done)
    if n_done < 2:
        return Figure(title, None, f"needs at least 2 completed trials, the study has {n_done}")
    if len({t.value for t in done}) == 1:  # fANOVA raises on a constant target
        return Figure(title, None, f"the objective is the same in all {n_done} completed trials")
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    # Unnormalized, because Optuna's normalization turns "all zero" into equal shares. The
    # argument is flagged experimental, a warning that says nothing about this use.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        raw = optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=False)
    total = sum(raw.values())
    if total == 0:
        return Figure(title, None, "no parameter varied over the completed trials")
    importances = {name: value / total for name, value in raw.items()}
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7.0, 1.0 + 0.4 * len(names)))
    ax.barh(names, [importances[n] for n in names], color=TRIAL_COLOR)
    for y, n in enumerate(names):
        ax.annotate(
            f"{importances[n]:.2f}",
            (importances[n], y),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.set_xlabel("importance (fANOVA, share of objective variance)")
    ax.set_title(f"{title} over {n_done} completed trials")
    ax.set_xlim(0, max(importances.values()) * 1.15)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path, title)


def validation_curves(
    curves: Mapping[str, Sequence[float]], path: Path | str, *, metric: str = "validation AUC"
) -> Figure:
    """One line per run over epochs (1-based), its best epoch marked with a star."""
    title = f"{metric} per epoch"
    curves = {k: v for k, v in curves.items() if len(v)}
    if not curves:
        return Figure(title, None, "no per-epoch values were logged")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, values in curves.items():
        epochs = np.arange(1, len(values) + 1)
        (line,) = ax.plot(epochs, values, marker="o", markersize=3, label=label)
        best = int(np.nanargmax(values))
        ax.plot(epochs[best], values[best], "*", color=line.get_color(), markersize=12)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.set_title(f"{title} (★ best epoch)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path, title)


def _heatmap(
    ax: Axes,
    values: np.ndarray,
    cmap: str,
    *,
    fmt: str = ".2f",
    cell_inches: float = 0.62,
    norm=None,
    vmin=None,
    vmax=None,
):
    """Draw an annotated layers × heads grid; nan cells are grey and unlabelled."""
    masked = np.ma.masked_invalid(values)
    cm = plt.get_cmap(cmap).with_extremes(bad="#dddddd")
    image = ax.imshow(masked, cmap=cm, norm=norm, vmin=vmin, vmax=vmax, aspect="auto")
    n_layers, n_heads = values.shape
    # a label of n characters is about 0.65 * n font sizes wide; keep it inside 80 % of a cell
    fontsize = min(9.0, 0.8 * 72 * cell_inches / (0.65 * len(format(0.5, fmt))))
    for (i, j), v in np.ndenumerate(values):
        if math.isfinite(v):
            r, g, b, _ = image.cmap(image.norm(v))
            color = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
            text = format(v, fmt)
            if float(text) == 0:  # "-0.00" reads as a finding; a rounded zero is just 0
                text = format(0.0, fmt.lstrip("+"))
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=color)
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    return image


def _check_grid(values: object, what: str) -> np.ndarray:
    grid = np.asarray(values, dtype=np.float64)
    if grid.ndim != 2 or not np.isfinite(grid).any():
        raise HarnessError(
            f"{what} must be a [layers, heads] grid with at least one score, "
            f"got shape {grid.shape} with {int(np.isfinite(grid).sum())} finite values"
        )
    return grid


def head_heatmap(
    values: object, path: Path | str, *, metric: str = "validation AUC", title: str = ""
) -> Figure:
    """Layers × heads grid of a per-head score (nan where a head was not scored)."""
    grid = _check_grid(values, "head scores")
    title = title or f"{metric} per head"
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * grid.shape[1], 0.8 + 0.5 * grid.shape[0]))
    image = _heatmap(ax, grid, "viridis")
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_title(title)
    return _save(fig, path, title)


def heatmap_comparison(
    values_a: object,
    values_b: object,
    path: Path | str,
    *,
    names: tuple[str, str] = ("A", "B"),
    metric: str = "validation AUC",
) -> Figure:
    """A and B on one colour scale, and A − B on a diverging scale centred at 0."""
    a = _check_grid(values_a, f"head scores of {names[0]}")
    b = _check_grid(values_b, f"head scores of {names[1]}")
    if a.shape != b.shape:
        raise HarnessError(
            f"cannot compare head grids of shapes {a.shape} and {b.shape}; "
            "compare encoders with the same layers and heads"
        )
    title = f"{metric} per head: {names[0]} vs {names[1]}"
    both = np.concatenate([a.ravel(), b.ravel()])
    lo, hi = np.nanmin(both), np.nanmax(both)
    diff = a - b
    span = max(float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 0.0, 1e-6)
    n_layers, n_heads = a.shape
    fig, axes = plt.subplots(
        1, 3, figsize=(3 * (0.5 * n_heads + 1.0), 1.4 + 0.45 * n_layers), layout="constrained"
    )
    for ax, grid, name in ((axes[0], a, names[0]), (axes[1], b, names[1])):
        image = _heatmap(ax, grid, "viridis", cell_inches=0.45, vmin=lo, vmax=hi)
        ax.set_title(name)
    fig.colorbar(image, ax=axes[1], label=metric, fraction=0.05)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-span, vmax=span)
    diff_image = _heatmap(axes[2], diff, "RdBu_r", fmt="+.2f", cell_inches=0.45, norm=norm)
    axes[2].set_title(f"{names[0]} − {names[1]}")
    fig.colorbar(diff_image, ax=axes[2], label="difference", fraction=0.05)
    fig.suptitle(title)
    return _save(fig, path, title)
