"""The helper process ``harness study run --workers N`` starts N - 1 of
(``python -m harness.cli.worker``): it runs the same study quietly on the same stores;
the process that started it prints the summary, fits the baselines and writes the report."""

from __future__ import annotations

import argparse
import sys

from harness.core import EXIT_USER_ERROR, HarnessError, setup_logging


def main(argv: list[str] | None = None) -> int:
    """A helper process: run the study quietly; its parent prints the summary."""
    from harness.study import run_study
    from harness.tracking import bound_mlflow_retries

    bound_mlflow_retries()

    parser = argparse.ArgumentParser(prog="python -m harness.cli.worker")
    parser.add_argument("file")
    parser.add_argument("--n-trials", type=int, required=True)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--timeout", type=float)
    args = parser.parse_args(argv)
    setup_logging(quiet=True)
    try:
        run_study(
            args.file,
            n_trials=args.n_trials,
            timeout=args.timeout,
            storage=args.storage,
            tracking_uri=args.tracking_uri,
            progress=False,
            finish=False,  # the process that started the helpers fits baselines and reports
        )
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
