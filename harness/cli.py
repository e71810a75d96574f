"""``harness`` command line: study run / best / report / repeat, heads, compare, predict, ui,
dashboard, data fetch.

User mistakes (``HarnessError`` and argparse errors alike) print one line,
``harness: error: …``, and exit with status 2, no traceback; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from harness.errors import HarnessError

EXIT_USER_ERROR = 2


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
    """An argparse type from the store's own validator (``harness.storage`` or
    ``harness.tracking``), so the CLI and study files accept the same URLs and say the
    same thing about bad ones. Imported when a flag is given: ``--help`` stays quick."""

    def parse(text: str) -> str:
        if store == "storage":
            from harness.storage import validate_storage_url as check
        else:
            from harness.tracking import validate_tracking_uri as check
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _require_store(url: str, flag: str, what: str) -> None:
    """Reading from a local store that does not exist is a mistake to report, not an empty
    database to create."""
    from harness.storage import local_path

    path = local_path(url)
    if path is not None and not path.exists():
        raise HarnessError(
            f"no {what} at {path} ({url}); run a study first or pass {flag} with the right URL"
        )


def setup_logging(quiet: bool) -> None:
    """Info logs unless quiet; the libraries' chatter stays at warnings."""
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
    from harness.config import load_config
    from harness.report import describe_finished, format_table
    from harness.study import run_study
    from harness.tracking import default_tracking_uri

    if load_config(args.file).encoder.conditions is not None:
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
    ui = "harness ui" + (
        f" --tracking-uri {summary.tracking_uri}"
        if summary.tracking_uri != default_tracking_uri()
        else ""
    )
    print(f"open the MLflow UI with: {ui}   (then http://127.0.0.1:5000)")
    return 0


def cmd_conditions(args: argparse.Namespace) -> int:
    """A study file with ``encoder.conditions``: one sub-study per condition, compared."""
    from harness.conditions import run_conditions

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
    from harness.study import run_head_sweep
    from harness.sweep import format_top

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
    """Baselines and paired differences under the trials table (``harness.conclude``)."""
    from harness.report import format_baselines, format_paired

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
    if ending.report:
        print(
            f"\nreport: {len(ending.report)} files under report/ of parent run "
            f"{summary.parent_run_id}"
        )


def _load_study(name: str, storage: str | None):
    """An Optuna study by name, or a one-line error listing the studies there."""
    import optuna

    from harness.preflight import storage_exists
    from harness.storage import DEFAULT_STORAGE, make_storage

    url = storage or DEFAULT_STORAGE
    _require_store(url, "--storage", "Optuna storage")
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
    from harness.report import format_baselines, format_paired
    from harness.study_report import baseline_rows, paired_from_parent
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
    from harness.study_report import log_report
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
    from harness.repeat import repeat_study

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


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.compare import format_comparison
    from harness.paired import compare_logged
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
    from harness.predict import load_run

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
    from harness.batch import check_output, predict_texts, write_scores
    from harness.data import read_texts
    from harness.predict import load_run

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


class _Stop(Exception):
    """SIGINT or SIGTERM arrived while a server ran."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signum)


def _stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the whole process group of ``proc`` and wait until none of it is left.

    Whatever is still there after ``grace`` seconds gets SIGKILL. A zombie still counts
    as a member for ``killpg``, hence the deadline rather than an endless wait."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, or it stays a zombie in the group
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.wait()
                return
            time.sleep(0.1)
    proc.wait()


def _serve(cmd: list[str], what: str) -> int:
    """Run a server in its own process group until it exits or SIGINT/SIGTERM arrives.

    ``mlflow ui`` and optuna-dashboard start worker processes (uvicorn, gunicorn):
    signalling only the first would leave the others answering on the port. In its own
    session the server does not get the terminal's Ctrl-C either, so this process stops
    the whole group on either signal and returns only when it is gone."""
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _raise_stop) for sig in stops}
    proc = None
    try:
        proc = subprocess.Popen(cmd, start_new_session=True)
        return proc.wait()
    except _Stop as stop:
        print(f"harness: stopping {what}", file=sys.stderr)
        return 128 + stop.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc is not None:
            _stop_group(proc)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _base_url(host: str, port: int) -> str:
    """The address a browser on this machine opens (``0.0.0.0`` cannot be browsed)."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _runs_table_links(uri: str, base: str) -> list[tuple[str, str]]:
    """(study, link) for each experiment: the runs table in MLflow's model-training view.

    Without ``workflowType=machine_learning`` MLflow 3 opens an experiment on the GenAI
    traces overview, which is empty for the harness."""
    from mlflow import MlflowClient

    experiments = MlflowClient(tracking_uri=uri).search_experiments()
    return [
        (e.name, f"{base}/#/experiments/{e.experiment_id}/runs?workflowType=machine_learning")
        for e in experiments
        if e.name != "Default"
    ]


def cmd_ui(args: argparse.Namespace) -> int:
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlruns/mlflow.db")
    _require_store(uri, "--tracking-uri", "MLflow store")
    if not _is_loopback(args.host):
        print(
            f"harness: warning: --host {args.host} lets other machines reach the MLflow UI, "
            "which has no login: anyone who reaches the port can read and delete runs. Keep "
            "it inside a trusted network, or serve it with MLflow's basic auth instead: "
            f"MLFLOW_AUTH_ADMIN_PASSWORD=… mlflow ui --app-name basic-auth --backend-store-uri "
            f"{uri} --host {args.host} --port {args.port}",
            file=sys.stderr,
        )
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    # one worker: a personal UI needs no more, and it starts in seconds instead of a minute
    cmd = [mlflow, "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    cmd += ["--workers", "1"]
    base = _base_url(args.host, args.port)
    print(f"MLflow UI on {base}  (Ctrl-C to stop)")
    if not uri.startswith(("http://", "https://")):
        for name, link in _runs_table_links(uri, base):
            print(f"  runs of {name}: {link}")
    sys.stdout.flush()
    return _serve(cmd, "the MLflow UI")


def cmd_dashboard(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("optuna_dashboard") is None:
        raise HarnessError(
            "optuna-dashboard is not installed; install the extra with: "
            'pip install -e ".[dashboard]"'
        )
    from harness.storage import local_path, make_storage, sqlalchemy_url

    _require_store(args.storage, "--storage", "Optuna storage")
    storage = make_storage(args.storage)
    names = [s.study_name for s in storage.get_all_studies()]
    if args.name is not None and args.name not in names:
        raise HarnessError(
            f"no study named {args.name!r} in {args.storage}; studies there: "
            f"{', '.join(names) or '(none)'}"
        )
    if not _is_loopback(args.host):
        print(
            f"harness: warning: --host {args.host} lets other machines reach optuna-dashboard, "
            "which has no login: anyone who reaches the port can change the study. Keep it "
            f"on 127.0.0.1 and browse through a tunnel: ssh -L {args.port}:127.0.0.1:"
            f"{args.port} THIS-HOST",
            file=sys.stderr,
        )
    dashboard = shutil.which("optuna-dashboard") or str(
        Path(sys.executable).with_name("optuna-dashboard")
    )
    if args.storage.startswith("journal:"):
        target = [str(local_path(args.storage)), "--storage-class", "JournalFileStorage"]
    else:
        target = [sqlalchemy_url(args.storage)]
    cmd = [dashboard, *target, "--host", args.host, "--port", str(args.port), "--quiet"]
    base = _base_url(args.host, args.port)
    print(f"optuna-dashboard on {base}/dashboard  (Ctrl-C to stop)")
    for name in names if args.name is None else [args.name]:
        study_id = storage.get_study_id_from_name(name)
        print(f"  study {name}: {base}/dashboard/studies/{study_id}")
    sys.stdout.flush()
    return _serve(cmd, "optuna-dashboard")


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from harness.data import fetch_dataset

    path = fetch_dataset(args.name, Path(args.dest))
    print(f"{args.name}: {path}")
    return 0


def _add_study_commands(sub: argparse._SubParsersAction) -> None:
    """``harness study run`` and ``harness study best``."""
    study = sub.add_parser("study", help="run and inspect studies").add_subparsers(
        dest="study_command", metavar="COMMAND", required=True
    )
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


def build_parser() -> argparse.ArgumentParser:
    from harness import __version__

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
    from harness.preflight import bound_mlflow_retries

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
