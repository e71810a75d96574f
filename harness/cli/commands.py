"""The bodies of the ``harness`` commands that run, inspect and use studies; each imports
what it needs when it runs, so ``harness --help`` and argument errors stay cheap."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.core import HarnessError


def require_store(url: str, flag: str, what: str) -> None:
    """Reading from a local store that does not exist is a mistake to report, not an empty
    database to create."""
    from harness.studyfile import local_path

    path = local_path(url)
    if path is not None and not path.exists():
        raise HarnessError(
            f"no {what} at {path} ({url}); run a study first or pass {flag} with the right URL"
        )


def cmd_study_run(args: argparse.Namespace) -> int:
    from harness.report import describe_finished, format_table
    from harness.study import run_study
    from harness.studyfile import default_tracking_uri, load_config

    config = load_config(args.file)
    if config.encoder.conditions is not None:
        return cmd_conditions(args)
    summary = run_study(
        args.file,
        n_trials=args.n_trials,
        timeout=args.timeout,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        workers=args.workers,
        progress=not args.quiet,
    )
    print(f"\nstudy {summary.name}: {describe_finished(summary.n_finished, summary.n_pruned)}")
    print(format_table(summary.rows))
    _print_conclusion(summary)
    if summary.best_trial is not None:
        best = summary.rows[0]
        auc = best["test_auc"]
        print(
            f"\nbest trial {best['trial']}: val_auc {best['val_auc']:.4f}, test_auc {auc[0]:.3f} "
            f"(95% CI {auc[1]:.3f}–{auc[2]:.3f}), run {best['run_id']}"
        )
        print(f'predict with: harness predict {best["run_id"]} "Some sentence."')
    if config.evaluation.after_search and summary.best_trial is not None:
        from harness.study import evaluate_study, format_evaluation

        print()
        cv = evaluate_study(summary.name, storage=args.storage, tracking_uri=summary.tracking_uri)
        print(format_evaluation(cv), end="")
    ui = "harness ui" + (
        f" --tracking-uri {summary.tracking_uri}"
        if summary.tracking_uri != default_tracking_uri()
        else ""
    )
    print(f"open the MLflow UI with: {ui}   (then http://127.0.0.1:5000)")
    return 0


def cmd_conditions(args: argparse.Namespace) -> int:
    """A study file with ``encoder.conditions``: one sub-study per condition, compared."""
    from harness.study import run_conditions

    if args.workers > 1:
        raise HarnessError(
            "--workers applies to one study; a file with encoder.conditions runs its "
            "sub-studies one after the other in this process"
        )
    comparison = run_conditions(
        args.file,
        n_trials=args.n_trials,
        timeout=args.timeout,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        progress=not args.quiet,
    )
    print("\n" + comparison.report.split("## Figures")[0].rstrip())
    print(
        f"\nreport logged as report/report.md (+ PNGs) on run {comparison.run_id} of experiment "
        f"{comparison.name!r}; open it with: harness ui"
    )
    return 0


def cmd_heads(args: argparse.Namespace) -> int:
    from harness.study import format_top, run_head_sweep

    scores, parent = run_head_sweep(
        args.file, storage=args.storage, tracking_uri=args.tracking_uri, progress=not args.quiet
    )
    n_layers, n_heads = max(s.layer for s in scores) + 1, max(s.head for s in scores) + 1
    print(
        f"\nhead sweep: {len(scores)} maps ({n_layers} layers × {n_heads} heads), one linear "
        "probe each on the position-free view; ranked by validation AUC"
    )
    print(format_top(scores, args.top))
    print(f"logged as run 'head-sweep' (heads.csv, heads.png) under parent run {parent}")
    return 0


def _print_conclusion(summary) -> None:
    """Baselines and paired differences under the trials table (``harness.study.conclude``)."""
    from harness.report import format_baselines, format_paired, verdict

    ending = summary.conclusion
    if ending is None:
        return
    if ending.baselines:
        print()
        print(format_baselines(ending.baselines))
    if ending.paired and summary.rows:
        paired = {
            name: [r.diff, r.ci_low, r.ci_high, r.p_value] for name, r in ending.paired.items()
        }
        print()
        print(format_paired(paired, summary.rows[0]["trial"]))
        print()
        print(verdict(paired, ending.n_test, ending.n_sentences, summary.name))
    if ending.report:
        print(
            f"\nreport: {len(ending.report)} files under report/ of parent run "
            f"{summary.parent_run_id}"
        )


def _load_study(name: str, storage: str | None):
    """An Optuna study by name, or a one-line error listing the studies there."""
    import optuna

    from harness.studyfile import DEFAULT_STORAGE
    from harness.tracking import make_storage, storage_exists

    url = storage or DEFAULT_STORAGE
    require_store(url, "--storage", "Optuna storage")
    if not storage_exists(url):  # a database without Optuna's tables: none are made
        raise HarnessError(f"no study named {name!r} in {url}; studies there: (none)")
    storage_obj = make_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage_obj)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage_obj)]
        raise HarnessError(
            f"no study named {name!r} in {url}; studies there: {', '.join(names) or '(none)'}"
        ) from None


def _print_baselines(name: str, tracking_uri: str | None) -> None:
    """The study's baselines and paired differences, read from MLflow (no torch)."""
    from harness.report import baseline_rows, format_baselines, format_paired, paired_from_parent
    from harness.tracking import RunReader

    try:
        parent, children = RunReader(tracking_uri).study_runs(name)
    except HarnessError as exc:
        print(f"\nbaselines: not shown ({exc})")
        return
    if parent is None:
        return
    print()
    print(format_baselines(baseline_rows(children)))
    paired = paired_from_parent(parent)
    if paired:
        print()
        print(format_paired(paired, parent.data.tags.get("best_trial_number", "?")))


def cmd_study_best(args: argparse.Namespace) -> int:
    from harness.report import describe_finished, format_table, n_finished, n_pruned, trial_rows

    study = _load_study(args.name, args.storage)
    print(f"study {args.name}: {describe_finished(n_finished(study), n_pruned(study))}")
    print(format_table(trial_rows(study, top=args.top)))
    _print_baselines(args.name, args.tracking_uri)
    return 0


def cmd_study_report(args: argparse.Namespace) -> int:
    from harness.report import log_report
    from harness.tracking import RunReader

    study = _load_study(args.name, args.storage)
    reader = RunReader(args.tracking_uri)
    paths = log_report(study, reader)
    parent, _ = reader.study_runs(args.name)
    print(f"report of study {args.name}, logged to parent run {parent.info.run_id}:")
    for path in paths:
        print(f"  {path}")
    return 0


def cmd_study_repeat(args: argparse.Namespace) -> int:
    from harness.study import repeat_study

    rows = repeat_study(
        args.name,
        top=args.top,
        n_seeds=args.seeds,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
    )
    head = f"{'trial':>5}  {'seeds':>5}  {'test_auc mean':>13}  {'SD over seeds':>13}  bootstrap CI"
    print(f"study {args.name}: best {len(rows)} trials retrained with {args.seeds} seeds")
    print(head)
    print("-" * len(head))
    for r in rows:
        auc = r["test_auc"]
        print(
            f"{r['trial']:>5}  {len(r['seeds']):>5}  {r['mean']:>13.4f}  {r['sd']:>13.4f}  "
            f"{auc[0]:.3f} [{auc[1]:.3f}, {auc[2]:.3f}]"
        )
    return 0


def cmd_study_evaluate(args: argparse.Namespace) -> int:
    from harness.study import evaluate_study, format_evaluation

    result = evaluate_study(
        args.name,
        top=args.top,
        nested=args.nested,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
    )
    print(format_evaluation(result), end="")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.report import compare_logged
    from harness.stats import format_comparison
    from harness.tracking import RunReader

    result, name_a, name_b = compare_logged(
        RunReader(args.tracking_uri), args.run_a, args.run_b, args.metric
    )
    print(format_comparison(result, name_a, name_b))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    if args.input:
        return _predict_file(args)
    if not args.texts:
        raise HarnessError("give sentences to score, or --input FILE.csv --output OUT.csv")
    from harness.tracking import load_run

    blank = [i for i, text in enumerate(args.texts, start=1) if not text.strip()]
    if blank:
        raise HarnessError(
            f"sentence {blank[0]} of {len(args.texts)} is empty; pass non-empty sentences, "
            "each in quotes"
        )
    run = load_run(args.run_id, tracking_uri=args.tracking_uri)
    probs = run.predict_proba(args.texts)
    for text, p in zip(args.texts, probs, strict=True):
        print(f"{p:.4f}\t{text}")
    return 0


def _predict_file(args: argparse.Namespace) -> int:
    """``--input FILE``: every sentence of a csv/tsv/jsonl column, scores to ``--output``."""
    from harness.data import read_texts
    from harness.tracking import check_output, load_run, predict_texts, write_scores

    if args.texts:
        raise HarnessError("give either sentences or --input FILE, not both")
    if not args.output:
        raise HarnessError("--input needs --output OUT.csv (where the scores are written)")
    output = Path(args.output)
    check_output(output)
    texts, row_ids = read_texts(args.input, args.text_column)
    run = load_run(args.run_id, tracking_uri=args.tracking_uri)
    probs = predict_texts(run, texts, progress=sys.stderr.isatty())
    write_scores(output, row_ids, probs, texts)
    print(f"scored {len(texts)} sentences from {args.input} -> {output}")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from harness.data import fetch_dataset

    path = fetch_dataset(args.name, Path(args.dest))
    print(f"{args.name}: {path}")
    return 0
