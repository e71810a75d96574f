"""The head sweep: every (layer, head) map of the encoder probed on its own.

Each map's position-free features (``harness.attention.views``), pooled over the sentence's
tokens, feed a ``linear`` probe fitted on the train split. Its validation AUC ranks the
maps: that ranking is what ``heads: {top: k}`` draws from, so a study's choice of maps is
made on validation data only. Test AUC and its bootstrap interval are reported beside it,
never used to rank.

The probes are tiny (11 features each) and the pooled view is stored with the attention
cache, so all 72 maps of MiniLM take seconds once the view exists.
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np

from harness.attention import AttentionCache, compact_view_w
from harness.core import HarnessError
from harness.data import Dataset, Split
from harness.models import AttentionInputs, LinearProbe
from harness.stats import bootstrap_ci, bootstrap_indices, compute_metrics
from harness.studyfile import FeatureSpec, Map, ProbeSpec, StudyConfig, Top, map_name

log = logging.getLogger("harness")

#: the view the sweep reads and its probe's inverse L2 strength (fixed, not searched:
#: every map gets the same probe, so their scores compare)
SWEEP_VIEW = "relative"
SWEEP_C = 1.0
RUN_NAME = "head-sweep"


@dataclass(frozen=True)
class HeadScore:
    """One map's probe: validation AUC (what ranks it) and test AUC with its interval."""

    layer: int
    head: int
    val_auc: float
    test_auc: float
    test_auc_ci_low: float
    test_auc_ci_high: float

    @property
    def name(self) -> str:
        return map_name(self.layer, self.head)


@dataclass(frozen=True)
class SweepSettings:
    view: str = SWEEP_VIEW
    c: float = SWEEP_C
    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0


def sweep_heads(
    cache: AttentionCache,
    dataset: Dataset,
    split: Split,
    settings: SweepSettings = SweepSettings(),
    progress: bool = True,
) -> list[HeadScore]:
    """Probe each map of ``cache`` alone; scores in (layer, head) order."""
    view = cache.view(progress=progress)
    labels, y_test = dataset.labels, dataset.labels[split.test]
    indices = bootstrap_indices(len(split.test), settings.n_resamples, settings.seed)
    ones = np.ones(len(dataset), np.int64)
    scores = []
    for layer in range(cache.num_layers):
        for head in range(cache.num_heads):
            pooled = view.sentence_features([(layer, head)], settings.view)
            probe = LinearProbe(
                ProbeSpec(kind="linear", c=settings.c),
                AttentionInputs(
                    FeatureSpec.of_maps(((layer, head),), "stack", settings.view),
                    cache.meta["encoder"],
                    cache.meta["encoder_fingerprint"],
                    cache.max_len,
                    cache.num_heads,
                    pooled=True,
                    view_bits=cache.view_bits,
                ),
            )
            inputs = (pooled[:, None, :], ones)
            fit = probe.fit(inputs, labels, split.train, split.val)
            test = probe.predict_proba(inputs, split.test)
            low, high = bootstrap_ci(y_test, test, confidence=settings.confidence, indices=indices)[
                "auc"
            ]
            auc = compute_metrics(y_test, test)["auc"]
            scores.append(HeadScore(layer, head, fit.best_val_auc, auc, low, high))
    return scores


def ranking(scores: list[HeadScore]) -> list[Map]:
    """Maps by validation AUC, best first (ties: lower layer, then lower head)."""
    ordered = sorted(scores, key=lambda s: (-s.val_auc, s.layer, s.head))
    return [(s.layer, s.head) for s in ordered]


def grid(scores: list[HeadScore], metric: str = "val_auc") -> np.ndarray:
    """Layers × heads array of one score."""
    out = np.full((max(s.layer for s in scores) + 1, max(s.head for s in scores) + 1), np.nan)
    for s in scores:
        out[s.layer, s.head] = getattr(s, metric)
    return out


def to_csv(scores: list[HeadScore]) -> str:
    """``heads.csv``: layer, head, val_auc, test_auc, test_auc_ci_low, test_auc_ci_high."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([f.name for f in fields(HeadScore)])
    for s in scores:
        writer.writerow([s.layer, s.head, *(f"{v:.6f}" for v in astuple(s)[2:])])
    return out.getvalue()


def from_csv(text: str) -> list[HeadScore]:
    rows = csv.DictReader(io.StringIO(text))
    return [
        HeadScore(
            int(r["layer"]), int(r["head"]), *(float(r[f.name]) for f in fields(HeadScore)[2:])
        )
        for r in rows
    ]


def format_top(scores: list[HeadScore], k: int = 10, confidence: float = 0.95) -> str:
    """The k best maps by validation AUC, one aligned line each."""
    by_name = {(s.layer, s.head): s for s in scores}
    pct = f"{confidence:.0%}"
    lines = [f"{'rank':>4}  {'map':<6} {'val_auc':>7}  test_auc ({pct} CI)"]
    for rank, key in enumerate(ranking(scores)[:k], start=1):
        s = by_name[key]
        lines.append(
            f"{rank:>4}  {s.name:<6} {s.val_auc:>7.4f}  {s.test_auc:.3f} "
            f"({s.test_auc_ci_low:.3f}–{s.test_auc_ci_high:.3f})"
        )
    return "\n".join(lines)


def log_sweep(
    tracker,
    parent_id: str,
    scores: list[HeadScore],
    settings: SweepSettings,
    params: dict[str, str],
) -> str:
    """The sweep as a child run of the study's parent (tag ``harness.role=probe``):
    ``heads.csv``, ``heads.png`` (validation AUC heatmap), the best map's scores."""
    from harness.report import head_heatmap

    run_id = tracker.start_child(
        parent_id,
        RUN_NAME,
        "probe",
        {**params, "view": settings.view, "c": repr(settings.c), "probe": "linear"},
    )
    best = next(s for s in scores if (s.layer, s.head) == ranking(scores)[0])
    tracker.log_metrics(
        run_id,
        {
            "best_val_auc": best.val_auc,
            "best_test_auc": best.test_auc,
            "best_test_auc_ci_low": best.test_auc_ci_low,
            "best_test_auc_ci_high": best.test_auc_ci_high,
        },
    )
    tracker.set_tags(run_id, {"harness.best_map": best.name})
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "heads.csv").write_text(to_csv(scores))
        head_heatmap(grid(scores), Path(tmp, "heads.png"), title="validation AUC per head")
        tracker.log_dir(run_id, Path(tmp))
    tracker.finish(run_id)
    return run_id


def needs_ranking(config: StudyConfig) -> bool:
    """Whether the search draws ``{top: k}`` maps, which rank by the head sweep."""
    return any(isinstance(h, Top) for h in config.search.heads)


def check_sweepable(config: StudyConfig) -> None:
    """Refuse, before anything is extracted or opened, a sweep of a study whose compact
    cache stores ``stats`` alone (``compact_view_w`` 1: no relative view, no ranking)."""
    if (
        config.cache.keep == "views"
        and compact_view_w(config.search.view, needs_ranking(config)) == 1
    ):
        raise HarnessError(
            f"the head sweep reads the {SWEEP_VIEW} view, which this study's compact cache does "
            f"not keep (its search has no {SWEEP_VIEW} view and no {{top: k}} heads); add "
            f"{SWEEP_VIEW} to search.view or use cache: {{keep: maps}}"
        )


def ensure_sweep(ctx, progress: bool = True) -> list[HeadScore]:
    """The study's head sweep: read from its logged run when one exists under the parent,
    else computed and logged once, by the worker holding the study's sweep lease while the
    others wait for it and then read it."""
    boot = ctx.config.bootstrap
    settings = SweepSettings(
        n_resamples=boot.n_resamples, confidence=boot.confidence, seed=boot.seed
    )
    with ctx.lease("sweep", "the head sweep (run once per study)"):
        for run_id in ctx.tracker.find_children(ctx.parent_run_id, "probe", RUN_NAME):
            text = ctx.tracker.read_text(run_id, "heads.csv")
            if text is not None:
                log.info("head sweep: reusing run %s (heads.csv)", run_id)
                return from_csv(text)
        scores = sweep_heads(ctx.cache, ctx.dataset, ctx.split, settings, progress)
        log_sweep(ctx.tracker, ctx.parent_run_id, scores, settings, ctx.base_params())
        return scores
