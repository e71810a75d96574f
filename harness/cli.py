"""``harness`` command line: study run / best, predict, ui, data fetch.

User mistakes (``HarnessError``) print one line and exit with status 2, no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from harness.errors import HarnessError

EXIT_USER_ERROR = 2


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def cmd_study_run(args: argparse.Namespace) -> int:
    from harness.study import format_table, run_study

    summary = run_study(
        args.file,
        n_trials=args.n_trials,
        timeout=args.timeout,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        workers=args.workers,
        worker_index=args.worker_index,
        progress=not args.quiet,
    )
    if args.worker_index:
        return 0
    print(f"\nstudy {summary.name}: {summary.n_finished} finished trials")
    print(format_table(summary.rows))
    if summary.best_trial is not None:
        best = summary.rows[0]
        auc = best["test_auc"]
        print(
            f"\nbest trial {best['trial']}: val_auc {best['val_auc']:.4f}, test_auc {auc[0]:.3f} "
            f"(95% CI {auc[1]:.3f}–{auc[2]:.3f}), run {best['run_id']}"
        )
        print(f'predict with: harness predict {best["run_id"]} "Some sentence."')
    ui = "harness ui" + (
        f" --tracking-uri {summary.tracking_uri}"
        if summary.tracking_uri != "sqlite:///mlruns/mlflow.db"
        else ""
    )
    print(f"open the MLflow UI with: {ui}   (then http://127.0.0.1:5000)")
    return 0


def cmd_study_best(args: argparse.Namespace) -> int:
    import optuna

    from harness.storage import make_storage
    from harness.study import format_table, n_finished, trial_rows

    if (
        args.storage.startswith("sqlite:///")
        and not Path(args.storage.removeprefix("sqlite:///")).exists()
    ):
        raise HarnessError(
            f"no Optuna storage at {args.storage}; run a study first or pass --storage"
        )
    storage = make_storage(args.storage)
    try:
        study = optuna.load_study(study_name=args.name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise HarnessError(
            f"no study named {args.name!r} in {args.storage}; studies there: "
            f"{', '.join(names) or '(none)'}"
        ) from None
    print(f"study {args.name}: {n_finished(study)} finished trials")
    print(format_table(trial_rows(study, top=args.top)))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from harness.predict import load_run

    run = load_run(args.run_id, tracking_uri=args.tracking_uri)
    probs = run.predict_proba(args.texts)
    for text, p in zip(args.texts, probs, strict=True):
        print(f"{p:.4f}\t{text}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from harness.predict import check_tracking_uri, default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    check_tracking_uri(uri)
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow, "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    print(f"MLflow UI on http://{args.host}:{args.port}  (Ctrl-C to stop)")
    return subprocess.call(cmd)


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from harness.data import fetch_dataset

    path = fetch_dataset(args.name, Path(args.dest))
    print(f"{args.name}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from harness import __version__

    parser = argparse.ArgumentParser(
        prog="harness", description="Probe what the attention maps of an encoder know."
    )
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    study = sub.add_parser("study", help="run and inspect studies").add_subparsers(
        dest="study_command", required=True
    )
    run = study.add_parser("run", help="run or continue a study file")
    run.add_argument("file", help="study file (YAML), e.g. studies/babe-quick.yaml")
    run.add_argument(
        "--n-trials", type=int, help="total finished trials wanted (overrides the file)"
    )
    run.add_argument("--timeout", type=float, help="stop starting trials after S seconds")
    run.add_argument(
        "--storage", help="Optuna storage URL (sqlite:///…, journal:///…, postgresql://…)"
    )
    run.add_argument("--tracking-uri", help="MLflow tracking URI (sqlite:///… or http://host:port)")
    run.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    run.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    run.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    run.set_defaults(func=cmd_study_run)

    best = study.add_parser("best", help="table of a study's best trials with CIs")
    best.add_argument("name")
    best.add_argument("--storage", default="sqlite:///mlruns/optuna.db")
    best.add_argument("--top", type=int, default=10)
    best.set_defaults(func=cmd_study_best, quiet=True)

    predict = sub.add_parser("predict", help="predict with a logged trial")
    predict.add_argument("run_id", help="MLflow run id of a trial (or runs:/ID)")
    predict.add_argument("texts", nargs="+", help="sentences to score")
    predict.add_argument("--tracking-uri")
    predict.set_defaults(func=cmd_predict, quiet=True)

    ui = sub.add_parser("ui", help="MLflow UI over the project's store (127.0.0.1)")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--tracking-uri")
    ui.set_defaults(func=cmd_ui, quiet=True)

    data = sub.add_parser("data", help="data sets").add_subparsers(
        dest="data_command", required=True
    )
    fetch = data.add_parser("fetch", help="download a named data set into ./data")
    fetch.add_argument("name", help="data set name (babe)")
    fetch.add_argument("--dest", default="data")
    fetch.set_defaults(func=cmd_data_fetch, quiet=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "quiet", False))
    try:
        return args.func(args)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
