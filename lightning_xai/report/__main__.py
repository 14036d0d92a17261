"""``python -m lightning_xai.report LOGDIR [-o FILE]``: write the HTML report of a finished run from its logs."""

from __future__ import annotations

import argparse
import sys

from lightning_xai.report.html import REPORT_FILE, write_report
from lightning_xai.report.logs import find_runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_xai.report",
        description="Write the lightning_xai report (one self-contained HTML file) of a finished run, read from its "
                    "TensorBoard event files or, without them, from the PNG/CSV/Markdown files the monitor wrote.")
    parser.add_argument("logdir", help="the run's log directory, or a parent of several runs (the newest is used)")
    parser.add_argument("-o", "--output", default=None, help=f"output file (default: <run directory>/{REPORT_FILE})")
    parser.add_argument("--sanity-threshold", type=float, default=0.5,
                        help="similarity to a randomised model above which the sanity check is read as failed")
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.logdir)
        path = write_report(args.logdir, args.output, sanity_threshold=args.sanity_threshold)
    except (FileNotFoundError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if len(runs) > 1:
        print(f"{len(runs)} runs under {args.logdir}; reported the newest with lightning_xai logs: {path.parent}")
    print(f"Report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
