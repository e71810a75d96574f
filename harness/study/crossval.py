"""Cross-validated answers: ``harness study evaluate NAME [--top K] [--nested]``.

One split scores a few hundred test sentences, so differences that matter sit inside its
noise. Here every contender (the study's K best configurations by validation AUC, and
every baseline) is retrained on each outer fold's training part of repeated, grouped,
stratified K-fold cross-validation (``evaluation:`` in the study file); early stopping
uses the inner validation part, never the outer test fold. Each sentence so gets one
out-of-fold prediction per repeat, and every contender is scored on all of them:

* pooled AUC, accuracy and F1 with bootstrap CIs over sentences, plus the mean and SD
  across folds;
* every pairwise difference (each configuration against each baseline, and among the
  configurations) by two methods side by side: the paired bootstrap over the same
  out-of-fold rows, and Nadeau & Bengio's corrected t-test across folds × repeats.

``--nested`` answers "what does this study file find": inside each outer fold the study's
own search (sampler, pruner, budget; a head sweep of its own for ``{top: k}`` heads) runs
on a train/val/test split of that fold's training part only, and the fold's winner is
scored on the outer test fold. Inner trials are not logged; each fold's winner is.

Each contender × fold is a child run (``harness.role=evaluate``, ``harness.contender``,
``harness.fold``) with weights and predictions, like a trial. A re-run finds those
already logged and reuses their predictions, so nothing is retrained twice. The parent
gets ``cv_*`` metrics, ``evaluation/evaluation.md`` and a forest plot.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna

from harness.core import HarnessError
from harness.data import Fold, folds_sha256, make_folds
from harness.report import ScoredRun, forest_plot, log_report, md_table
from harness.stats import (
    CorrectedT,
    PairedResult,
    compute_metrics,
    corrected_t_test,
    pooled_ci,
    pooled_paired,
)
from harness.study.baselines import make_baseline
from harness.study.repeat import existing_study, study_file_of, top_trials
from harness.study.search import make_pruner, make_sampler, suggest
from harness.study.study import StudySession, open_stores, prepare
from harness.study.sweep import SweepSettings, needs_ranking, ranking, sweep_heads
from harness.study.trial import StudyContext, annotate, fit_and_log, model_for
from harness.studyfile import Map
from harness.tracking import RunReader, Tracker

log = logging.getLogger("harness")

ROLE = "evaluate"
CONTENDER_TAG = "harness.contender"
FOLD_TAG = "harness.fold"
#: the contender of ``--nested``: each fold's winner of the study's own search
NESTED = "nested"


@dataclass
class Contender:
    """One configuration or baseline, scored out of fold."""

    name: str
    baseline: bool
    #: out-of-fold probabilities [repeats, n]: one per sentence per repeat
    probs: np.ndarray
    #: fold name -> test AUC of that fold
    fold_auc: dict[str, float] = field(default_factory=dict)
    #: metric -> [value, ci_low, ci_high] over all sentences
    pooled: dict[str, list[float]] = field(default_factory=dict)
    detail: str = ""


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    bootstrap: PairedResult
    corrected: CorrectedT


@dataclass
class CrossValidation:
    study: str
    n_sentences: int
    folds: list[Fold]
    contenders: list[Contender]
    pairs: list[Pair]
    seconds: float
    nested: bool
    #: fold name -> the winning parameters of its inner search (``--nested``)
    winners: dict[str, dict] = field(default_factory=dict)


def logged_folds(tracker: Tracker, parent_id: str) -> dict[tuple[str, str], str]:
    """(contender, fold) -> run id of the study's FINISHED evaluation runs."""
    runs = tracker.finished_children(parent_id, ROLE)
    return {
        (r.data.tags[CONTENDER_TAG], r.data.tags[FOLD_TAG]): r.info.run_id
        for r in runs
        if CONTENDER_TAG in r.data.tags and FOLD_TAG in r.data.tags
    }


def fold_context(ctx: StudyContext, fold: Fold) -> StudyContext:
    """The study's context with the fold as its split: training, early stopping and the
    reported test metrics all follow it."""
    return dataclasses.replace(ctx, split=fold.split)


def score_fold(
    ctx: StudyContext,
    fold: Fold,
    name: str,
    build: Callable[[StudyContext], object],
    params: dict[str, str],
    done: dict[tuple[str, str], str],
) -> np.ndarray:
    """The contender's probabilities on the fold's test rows: read from its logged run,
    or trained on the fold (one child run, weights and predictions logged)."""
    if (name, fold.name) in done:
        rows = RunReader(ctx.tracker.tracking_uri).predictions(done[name, fold.name])
        by_index = {int(r["index"]): float(r["probability"]) for r in rows}
        return np.array([by_index[int(i)] for i in fold.split.test])
    fctx = fold_context(ctx, fold)
    model = build(fctx)
    tags = {CONTENDER_TAG: name, FOLD_TAG: fold.name}
    run_id = ctx.tracker.start_child(
        ctx.parent_run_id,
        f"evaluate-{name}-{fold.name}",
        ROLE,
        {**params, **fctx.base_params(), "fold": fold.name},
        tags,
    )
    try:
        annotate(fctx, run_id)
        _, ev = fit_and_log(fctx, model, fctx.inputs_for(model), run_id)
    except BaseException as exc:
        ctx.tracker.finish(run_id, "FAILED" if isinstance(exc, Exception) else "KILLED")
        raise
    ctx.tracker.finish(run_id)
    done[name, fold.name] = run_id
    return ev.test_probs


def search_fold(ctx: StudyContext, fold: Fold) -> tuple[dict, list[Map] | None]:
    """The study's own search, run on a train/val/test split of the fold's training part
    only (``Fold.inner``): its sampler, pruner and trial budget, and for ``{top: k}``
    heads a head sweep of its own on that split. The winner's params and the ranking."""
    config = ctx.config
    inner = fold.inner(ctx.dataset, config.evaluation.seed + fold.repeat)
    ranked = None
    if needs_ranking(config):
        boot = config.bootstrap
        settings = SweepSettings(
            n_resamples=boot.n_resamples, confidence=boot.confidence, seed=boot.seed
        )
        ranked = ranking(sweep_heads(ctx.cache, ctx.dataset, inner, settings, progress=False))
    ictx = dataclasses.replace(ctx, split=inner, ranking=ranked)
    labels = ctx.dataset.labels

    def objective(trial: optuna.Trial) -> float:
        trial.study.sampler = make_sampler(config, trial.number)
        spec = suggest(trial, config.search, ranked)
        model = model_for(ictx, spec)

        def report(epoch: int, train_loss: float, val_auc: float) -> None:
            trial.report(val_auc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        result = model.fit(ictx.inputs_for(model), labels, inner.train, inner.val, report)
        return result.best_val_auc

    study = optuna.create_study(
        direction="maximize", sampler=make_sampler(config, 0), pruner=make_pruner(config)
    )
    study.optimize(objective, n_trials=config.n_trials, catch=(Exception,))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise HarnessError(f"fold {fold.name}: no inner trial completed; see the log above")
    return study.best_trial.params, ranked


def _check_supported(ctx: StudyContext) -> None:
    encoder = ctx.config.encoder
    if encoder.finetune is not None:
        raise HarnessError(
            f"study {ctx.config.name!r} fine-tunes its encoder: `study evaluate` does not "
            "fine-tune per outer fold yet, so its folds would leak; evaluate a study on a "
            "pretrained or random-init encoder"
        )


def run_evaluation(session: StudySession, top: int, nested: bool) -> CrossValidation:
    """Score the contenders on every fold (reusing logged folds), then pool and pair."""
    ctx, study = session.ctx, session.study
    config, dataset = ctx.config, ctx.dataset
    _check_supported(ctx)
    started = time.perf_counter()
    e = config.evaluation
    folds = make_folds(
        dataset,
        folds=e.folds,
        repeats=e.repeats,
        seed=e.seed,
        val_fraction=config.split.val,
        group_by=config.split.group_by,
    )
    sha = folds_sha256(folds)
    recorded = study.user_attrs.get("folds_sha256")
    if recorded not in (None, sha):
        raise HarnessError(
            f"study {config.name!r} was evaluated on other folds (sha256 {recorded[:12]}…): "
            "its data or evaluation settings changed; evaluate it under a new study name"
        )
    study.set_user_attr("folds_sha256", sha)
    ctx.tracker.set_tags(ctx.parent_run_id, {"harness.folds_sha256": sha})
    ctx.tracker.log_files(
        ctx.parent_run_id,
        {"evaluation/folds.json": json.dumps([[f.name, f.split.to_dict()] for f in folds])},
    )
    done = logged_folds(ctx.tracker, ctx.parent_run_id)
    plan: list[tuple[str, bool, str, Callable[[Fold], tuple[Callable, dict]]]] = []
    winners: dict[str, dict] = {}
    if nested:

        def nested_build(fold: Fold) -> tuple[Callable, dict]:
            if (NESTED, fold.name) in done:
                return (lambda fctx: None), {}
            params, ranked = search_fold(ctx, fold)
            winners[fold.name] = params
            spec = suggest(optuna.trial.FixedTrial(params), config.search, ranked)
            return (lambda fctx: model_for(fctx, spec)), spec.params()

        plan.append((NESTED, False, f"{config.n_trials} trials per fold", nested_build))
    else:
        for trial in top_trials(study, top):
            spec = suggest(optuna.trial.FixedTrial(trial.params), config.search, ctx.ranking)
            detail = f"val AUC {trial.value:.4f}"
            plan.append(
                (
                    f"trial-{trial.number}",
                    False,
                    detail,
                    lambda fold, spec=spec: ((lambda fctx: model_for(fctx, spec)), spec.params()),
                )
            )
    for name in config.baselines:
        build = lambda fctx, name=name: make_baseline(name, fctx)  # noqa: E731
        plan.append((f"baseline-{name}", True, "", lambda fold, b=build, n=name: (b, {"model": n})))
    n = len(dataset)
    contenders = []
    for name, baseline, detail, builder in plan:
        probs = np.full((e.repeats, n), np.nan)
        c = Contender(name, baseline, probs, detail=detail)
        for fold in folds:
            build, params = builder(fold)
            p = score_fold(ctx, fold, name, build, params, done)
            probs[fold.repeat, fold.split.test] = p
            y = dataset.labels[fold.split.test]
            c.fold_auc[fold.name] = float(compute_metrics(y, p)["auc"])
            log.info("%s, fold %s: test AUC %.4f", name, fold.name, c.fold_auc[fold.name])
        boot = config.bootstrap
        c.pooled = pooled_ci(
            dataset.labels, probs, n_resamples=boot.n_resamples,
            confidence=boot.confidence, seed=boot.seed,
        )  # fmt: skip
        contenders.append(c)
    result = CrossValidation(
        config.name, n, folds, contenders, _pairs(ctx, folds, contenders),
        time.perf_counter() - started, nested, winners,
    )  # fmt: skip
    log_evaluation(ctx, result)
    log_report(study, RunReader(ctx.tracker.tracking_uri))
    return result


def _pairs(ctx: StudyContext, folds: list[Fold], contenders: list[Contender]) -> list[Pair]:
    """Each configuration against each baseline, and among the configurations."""
    boot = ctx.config.bootstrap
    n_train = float(np.mean([len(f.split.train) + len(f.split.val) for f in folds]))
    n_test = float(np.mean([len(f.split.test) for f in folds]))
    configs = [c for c in contenders if not c.baseline]
    baselines = [c for c in contenders if c.baseline]
    wanted = [(a, b) for a in configs for b in baselines]
    wanted += [(a, b) for i, a in enumerate(configs) for b in configs[i + 1 :]]
    out = []
    for a, b in wanted:
        paired = pooled_paired(
            ctx.dataset.labels, a.probs, b.probs, "auc", n_resamples=boot.n_resamples,
            confidence=boot.confidence, seed=boot.seed,
        )  # fmt: skip
        diffs = np.array([a.fold_auc[f.name] - b.fold_auc[f.name] for f in folds])
        out.append(Pair(a.name, b.name, paired, corrected_t_test(diffs, n_train, n_test)))
    return out


def _ci(v: list[float]) -> str:
    return f"{v[0]:.4f} [{v[1]:.4f}, {v[2]:.4f}]"


def _diff(value: float, lo: float, hi: float) -> str:
    return f"{value:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def format_evaluation(cv: CrossValidation) -> str:
    """The terminal's and the report's tables, plain Markdown."""
    f0 = cv.folds[0]
    repeats = 1 + max(f.repeat for f in cv.folds)
    head = (
        f"{'Nested cross-validation' if cv.nested else 'Cross-validation'} of study "
        f"{cv.study!r}: {len(cv.folds) // repeats} folds × {repeats} repeats over all "
        f"{cv.n_sentences} sentences (grouped: {f0.split.group_by or 'no'}), {cv.seconds:.0f} s"
    )
    rows = []
    for c in cv.contenders:
        aucs = np.array(list(c.fold_auc.values()))
        rows.append(
            [
                c.name,
                _ci(c.pooled["auc"]),
                _ci(c.pooled["accuracy"]),
                _ci(c.pooled["f1"]),
                f"{aucs.mean():.4f} ± {aucs.std(ddof=1):.4f}",
                c.detail,
            ]
        )
    table = "\n".join(
        md_table(["contender", "pooled AUC", "accuracy", "F1", "fold AUC mean ± SD", ""], rows)
    )
    pair_rows = [
        [
            f"{p.a} − {p.b}",
            _diff(p.bootstrap.diff, p.bootstrap.ci_low, p.bootstrap.ci_high),
            f"{p.bootstrap.p_value:.3f}",
            _diff(p.corrected.diff, p.corrected.ci_low, p.corrected.ci_high),
            f"{p.corrected.p_value:.3f}",
        ]
        for p in cv.pairs
    ]
    pairs = "\n".join(
        md_table(
            ["AUC difference", "paired bootstrap", "p", "corrected t (Nadeau–Bengio)", "p"],
            pair_rows,
        )
    )
    return f"{head}\n\n{table}\n\n{pairs}\n"


def log_evaluation(ctx: StudyContext, cv: CrossValidation) -> None:
    """``cv_*`` metrics, the tables, the folds' winners and a forest plot on the parent."""
    prefix = "cv_nested" if cv.nested else "cv"
    metrics = {f"{prefix}_seconds": cv.seconds}
    for c in cv.contenders:
        for m in ("auc", "accuracy", "f1"):
            v = c.pooled[m]
            stem = f"{prefix}_{c.name}_{m}"
            metrics |= {stem: v[0], f"{stem}_ci_low": v[1], f"{stem}_ci_high": v[2]}
        aucs = np.array(list(c.fold_auc.values()))
        metrics[f"{prefix}_{c.name}_fold_auc_mean"] = float(aucs.mean())
        metrics[f"{prefix}_{c.name}_fold_auc_sd"] = float(aucs.std(ddof=1))
    for p in cv.pairs:
        stem = f"{prefix}_{p.a}_vs_{p.b}_auc"
        metrics |= {
            f"{stem}_diff": p.bootstrap.diff,
            f"{stem}_boot_p": p.bootstrap.p_value,
            f"{stem}_t_p": p.corrected.p_value,
        }
    ctx.tracker.log_metrics(ctx.parent_run_id, metrics)
    stem = "evaluation/nested" if cv.nested else "evaluation/evaluation"
    files: dict[str, str | bytes] = {f"{stem}.md": format_evaluation(cv)}
    if cv.winners:
        files["evaluation/nested_winners.json"] = json.dumps(cv.winners, indent=1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [ScoredRun(c.name, *c.pooled["auc"], baseline=c.baseline) for c in cv.contenders]
        fig = forest_plot(
            rows,
            Path(tmp) / "forest.png",
            metric="pooled out-of-fold AUC",
            confidence=ctx.config.bootstrap.confidence,
        )
        if fig.path is not None:
            files[f"{stem}_forest.png"] = Path(fig.path).read_bytes()
        ctx.tracker.log_files(ctx.parent_run_id, files)


def evaluate_study(
    name: str,
    *,
    top: int | None = None,
    nested: bool = False,
    storage: str | None = None,
    tracking_uri: str | None = None,
) -> CrossValidation:
    """``harness study evaluate NAME``: the study's own settings and cache, read from the
    study file its parent run logged; ``top`` defaults to ``evaluation.top``."""
    config = study_file_of(RunReader(tracking_uri), name)
    top = config.evaluation.top if top is None else top
    if top < 1:
        raise HarnessError(f"--top must be >= 1, got {top}")
    prepared = prepare(config, storage=storage, tracking_uri=tracking_uri, progress=False)
    existing = existing_study(name, prepared.storage_url)
    if not nested:
        top_trials(existing, top)  # refuse before opening
    with open_stores(prepared) as session:
        return run_evaluation(session, top, nested)
