"""Row 10: what the end of a study costs beside its trials: the four baselines on all of
BABE, the paired differences and the report, against the rest of the main job
(babe-quick as written, from a cold cache, as the README runs it).

One ``harness study run`` of babe-quick in a child process, on fresh stores and a fresh
cache. Attention extraction pools MiniLM's embeddings in the same forward pass, so the
embedding baseline only fits its logistic regressions. The study logs how long each part
of its end took; the main job is the rest of the command.
"""

from __future__ import annotations

import re

from bench.common import Context, Row, harness_cli, log, write_study
from bench.studies import QUICK_STUDY

END_LINE = re.compile(
    r"study end: baselines ([\d.]+) s, paired differences ([\d.]+) s, report ([\d.]+) s"
)


def row_baselines(ctx: Context) -> list[Row]:
    folder = ctx.tmp("baselines")
    path = write_study(QUICK_STUDY, folder, cache_dir=str(folder / "cache"))
    log("row 13: babe-quick with its four baselines, paired differences and report")
    child = harness_cli("study", "run", str(path))
    match = END_LINE.search(child.output)
    if match is None:
        raise RuntimeError(f"no 'study end' line in the study's output:\n{child.output[-2000:]}")
    baselines, paired, report = map(float, match.groups())
    main_job = child.seconds - baselines - paired - report
    share = baselines / main_job
    values = {
        "command_seconds": child.seconds,
        "baselines_seconds": baselines,
        "paired_seconds": paired,
        "report_seconds": report,
        "main_job_seconds": main_job,
        "per_baseline": {
            name: float(s)
            for name, s in re.findall(
                r"baseline (\w+): fitted and logged in ([\d.]+) s", child.output
            )
        },
    }
    return [
        Row(
            "13",
            "babe-quick from a cold cache: the four baselines vs the rest of the command",
            f"{baselines:.1f} s vs {main_job:.1f} s: {100 * share:.0f} % "
            f"(+ paired differences {paired:.1f} s, report {report:.1f} s)",
            "≤ 20 %",
            share <= 0.20,
            values,
        )
    ]
