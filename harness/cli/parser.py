"""``harness`` command line: the argument parser and ``main`` (study run / best / report /
repeat / evaluate, heads, compare, predict, ui, dashboard, data fetch); the bodies live in
``harness.cli.commands`` and ``harness.cli.serve``.

User mistakes (``HarnessError`` and argparse errors alike) print one line,
``harness: error: …``, and exit with status 2, no traceback; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import NoReturn

from harness.cli.commands import (
    cmd_compare,
    cmd_data_fetch,
    cmd_heads,
    cmd_predict,
    cmd_study_best,
    cmd_study_evaluate,
    cmd_study_repeat,
    cmd_study_report,
    cmd_study_run,
)
from harness.cli.serve import cmd_dashboard, cmd_ui
from harness.core import EXIT_USER_ERROR, HarnessError, setup_logging


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes read like every other user error: one line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(
            EXIT_USER_ERROR, f"harness: error: {message}; run '{self.prog} --help' for usage\n"
        )


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type for whole numbers >= ``minimum``, with a message that says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(
            f"must be a positive number of seconds, got {text}; omit it for no time limit"
        )
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (1-65535), got {value}")
    return value


def _url(store: str) -> Callable[[str], str]:
    """An argparse type from the store's own validator (``harness.tracking.storage`` or
    ``harness.tracking.runs``), so the CLI and study files accept the same URLs and say the
    same thing about bad ones. Imported when a flag is given: ``--help`` stays quick."""

    def parse(text: str) -> str:
        if store == "storage":
            from harness.studyfile import validate_storage_url as check
        else:
            from harness.studyfile import validate_tracking_uri as check
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _add_study_run(study: argparse._SubParsersAction) -> None:
    """``harness study run FILE`` and its overrides of the study file."""
    run = study.add_parser("run", help="run or continue a study file")
    run.add_argument("file", help="study file (YAML), e.g. studies/babe-quick.yaml")
    run.add_argument(
        "--n-trials", type=_positive_int, help="total finished trials wanted (overrides the file)"
    )
    run.add_argument(
        "--timeout", type=_positive_seconds, help="stop starting trials after S seconds"
    )
    run.add_argument(
        "--storage",
        type=_url("storage"),
        help="Optuna storage URL (sqlite:///…, journal:///…, postgresql://…)",
    )
    run.add_argument(
        "--tracking-uri",
        type=_url("tracking"),
        help="MLflow tracking URI (sqlite:///… or http://host:port)",
    )
    run.add_argument(
        "--workers", type=_positive_int, default=1, help="worker processes on this machine"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    run.set_defaults(func=cmd_study_run)


def _add_study_commands(sub: argparse._SubParsersAction) -> None:
    """``harness study run``, ``best``, ``report`` and ``repeat``."""
    study = sub.add_parser("study", help="run and inspect studies").add_subparsers(
        dest="study_command", metavar="COMMAND", required=True
    )
    _add_study_run(study)

    best = study.add_parser("best", help="table of a study's best trials with CIs")
    best.add_argument("name")
    best.add_argument(
        "--storage",
        type=_url("storage"),
        help="Optuna storage URL (default: sqlite:///mlruns/optuna.db)",
    )
    best.add_argument("--top", type=_positive_int, default=10)
    best.add_argument("--tracking-uri", type=_url("tracking"), help="MLflow tracking URI")
    best.set_defaults(func=cmd_study_best, quiet=True)

    report = study.add_parser(
        "report", help="write the study's report (report.md + figures) to its parent run"
    )
    report.add_argument("name")
    report.add_argument(
        "--storage",
        type=_url("storage"),
        help="Optuna storage URL (default: sqlite:///mlruns/optuna.db)",
    )
    report.add_argument("--tracking-uri", type=_url("tracking"), help="MLflow tracking URI")
    report.set_defaults(func=cmd_study_report, quiet=True)

    repeat = study.add_parser(
        "repeat", help="retrain the best trials with other training seeds (seed SD)"
    )
    repeat.add_argument("name")
    repeat.add_argument("--top", type=_positive_int, default=3, help="best trials to repeat")
    repeat.add_argument("--seeds", type=_positive_int, default=5, help="training seeds each")
    repeat.add_argument(
        "--storage",
        type=_url("storage"),
        help="Optuna storage URL (default: the study file's storage)",
    )
    repeat.add_argument("--tracking-uri", type=_url("tracking"), help="MLflow tracking URI")
    repeat.add_argument("--quiet", action="store_true", help="no info logs")
    repeat.set_defaults(func=cmd_study_repeat)

    evaluate = study.add_parser(
        "evaluate",
        help="cross-validate the best trials and the baselines over every sentence",
    )
    evaluate.add_argument("name")
    evaluate.add_argument(
        "--top", type=_positive_int, help="best trials to evaluate (default: evaluation.top)"
    )
    evaluate.add_argument(
        "--nested",
        action="store_true",
        help="run the study's own search inside each outer fold (unbiased estimate)",
    )
    evaluate.add_argument(
        "--storage",
        type=_url("storage"),
        help="Optuna storage URL (default: the study file's storage)",
    )
    evaluate.add_argument("--tracking-uri", type=_url("tracking"), help="MLflow tracking URI")
    evaluate.add_argument("--quiet", action="store_true", help="no info logs")
    evaluate.set_defaults(func=cmd_study_evaluate)


def build_parser() -> argparse.ArgumentParser:
    from harness.core import __version__

    parser = _Parser(
        prog="harness", description="Probe what the attention maps of an encoder know."
    )
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _add_study_commands(sub)

    heads = sub.add_parser("heads", help="probe every (layer, head) map of a study's encoder")
    heads.add_argument("file", help="study file (YAML), e.g. studies/babe-quick.yaml")
    heads.add_argument("--storage", type=_url("storage"), help="Optuna storage URL")
    heads.add_argument("--tracking-uri", type=_url("tracking"), help="MLflow tracking URI")
    heads.add_argument("--top", type=_positive_int, default=10, help="maps to print")
    heads.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    heads.set_defaults(func=cmd_heads)

    predict = sub.add_parser("predict", help="predict with a logged trial")
    predict.add_argument("run_id", help="MLflow run id of a trial (or runs:/ID)")
    predict.add_argument("texts", nargs="*", help="sentences to score")
    predict.add_argument("--input", help="a .csv, .tsv or .jsonl file of sentences to score")
    predict.add_argument("--text-column", default="text", help="column of --input (text)")
    predict.add_argument("--output", help="CSV written with --input: row_id,probability,text")
    predict.add_argument("--tracking-uri", type=_url("tracking"))
    predict.set_defaults(func=cmd_predict, quiet=True)

    compare = sub.add_parser(
        "compare", help="paired bootstrap of two logged runs on the same test rows (A − B)"
    )
    compare.add_argument("run_a", help="run id of A (a trial, baseline or repeat)")
    compare.add_argument("run_b", help="run id of B")
    compare.add_argument("--metric", choices=("auc", "accuracy", "f1"), default="auc")
    compare.add_argument("--tracking-uri", type=_url("tracking"))
    compare.set_defaults(func=cmd_compare, quiet=True)

    ui = sub.add_parser("ui", help="MLflow UI over the project's store (127.0.0.1)")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=_port, default=5000)
    ui.add_argument("--tracking-uri", type=_url("tracking"))
    ui.set_defaults(func=cmd_ui, quiet=True)

    dash = sub.add_parser("dashboard", help="optuna-dashboard over the study storage (127.0.0.1)")
    dash.add_argument("name", nargs="?", help="study to link to (default: all)")
    dash.add_argument("--storage", type=_url("storage"), default="sqlite:///mlruns/optuna.db")
    dash.add_argument("--host", default="127.0.0.1")
    dash.add_argument("--port", type=_port, default=8080)
    dash.set_defaults(func=cmd_dashboard, quiet=True)

    data = sub.add_parser("data", help="data sets").add_subparsers(
        dest="data_command", metavar="COMMAND", required=True
    )
    fetch = data.add_parser("fetch", help="download a named data set into ./data")
    fetch.add_argument("name", help="data set name (babe)")
    fetch.add_argument("--dest", default="data")
    fetch.set_defaults(func=cmd_data_fetch, quiet=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    from harness.tracking import bound_mlflow_retries

    bound_mlflow_retries()  # before any MLflow client: a lost server fails in seconds
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "quiet", False))
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
