"""A study report's report.md: results with CIs, paired differences, top heads, figures and
settings as Markdown tables that also read well as plain text; and the records (``ScoredRun``,
``Figure``) the figures and the report share. No matplotlib here:
only ``figures`` draws.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.stats import PairedResult


@dataclass(frozen=True)
class ScoredRun:
    """One row of the forest plot and of the report's tables: a value with its CI."""

    label: str
    value: float
    ci_low: float
    ci_high: float
    baseline: bool = False
    #: free text for the report table, e.g. the trial's validation AUC and parameters
    detail: str = ""


@dataclass(frozen=True)
class Figure:
    """A figure the report shows, or (``path`` None) one it skipped, with the reason."""

    title: str
    path: Path | None
    note: str = ""


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table padded to aligned columns, so it also reads well as plain text."""
    cells = [[str(c).replace("|", "\\|") for c in row] for row in (header, *rows)]
    widths = [max(len(c) for c in col) for col in zip(*cells, strict=True)]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=True)) + " |"

    return [line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:]), ""]


def md_num(x: float, spec: str = ".3f") -> str:
    return "n/a" if not math.isfinite(x) else format(x, spec)


def write_report_md(
    path: Path | str,
    *,
    title: str,
    settings: Mapping[str, object],
    runs: Sequence[ScoredRun],
    paired: Mapping[str, PairedResult] | None = None,
    top_heads: Sequence[tuple[int, int, float]] | None = None,
    figures: Sequence[Figure] = (),
    confidence: float = 0.95,
) -> Path:
    """A short human summary: results with CIs, paired differences, top heads, figures, settings.

    ``paired`` maps a baseline name to best trial − that baseline; ``top_heads`` holds
    (layer, head, score) from a head sweep. Figures are linked by paths relative to the
    report, so the folder can be moved or logged as an MLflow artifact directory as a whole.
    """
    path = Path(path)
    pct = f"{100 * confidence:g} %"
    out = [f"# {title}", ""]
    out += _runs_section(runs, pct)
    if paired:
        out += _paired_section(paired, pct)
    if top_heads:
        out += ["## Top heads (head sweep)", ""]
        out += md_table(
            ["head", "score"], [[f"L{layer}H{head}", md_num(s)] for layer, head, s in top_heads]
        )
    if figures:
        out += _figures_section(figures, path.parent)
    out += ["## Settings", ""]
    out += md_table(["key", "value"], [[k, str(v)] for k, v in settings.items()])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out).rstrip() + "\n", encoding="utf-8")
    return path


def _runs_section(runs: Sequence[ScoredRun], pct: str) -> list[str]:
    """The best trials, then the baselines: each a table when there are any."""
    out: list[str] = []
    for baseline, heading in ((False, "Best trials"), (True, "Baselines")):
        block = [r for r in runs if r.baseline == baseline]
        if block:
            rows = [
                [
                    r.label,
                    md_num(r.value),
                    f"[{md_num(r.ci_low)}, {md_num(r.ci_high)}]",
                    r.detail,
                ]
                for r in block
            ]
            out += [f"## {heading}", ""]
            out += md_table(["run", "test AUC", f"{pct} CI", "detail"], rows)
    return out


def _paired_section(paired: Mapping[str, PairedResult], pct: str) -> list[str]:
    """Best trial − each baseline on the same bootstrap resamples."""
    rows = [
        [
            name,
            md_num(r.a),
            md_num(r.b),
            md_num(r.diff, "+.3f"),
            f"[{md_num(r.ci_low, '+.3f')}, {md_num(r.ci_high, '+.3f')}]",
            md_num(r.p_value, ".3g"),
        ]
        for name, r in paired.items()
    ]
    metric = next(iter(paired.values())).metric
    out = [
        "## Paired differences: best trial − baseline",
        "",
        f"Test {metric.upper() if metric == 'auc' else metric} on the same bootstrap resamples "
        "of the test rows; "
        "p is two-sided for H0: no difference.",
        "",
    ]
    out += md_table(["baseline", "best", "baseline value", "difference", f"{pct} CI", "p"], rows)
    return out


def _figures_section(figures: Sequence[Figure], folder: Path) -> list[str]:
    """Each figure linked relative to the report's folder, or why it was not drawn."""
    out = ["## Figures", ""]
    for f in figures:
        if f.path is None:
            out += [f"*{f.title}: not drawn ({f.note}).*", ""]
        else:
            rel = Path(os.path.relpath(f.path, folder)).as_posix()
            out += [f"![{f.title}]({rel})", ""]
    return out
