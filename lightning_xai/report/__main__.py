"""``python -m lightning_xai.report LOGDIR [-o FILE]``: write the HTML report of a finished run from its logs."""

from __future__ import annotations

import argparse
import sys
import time

from lightning_xai.report.html import REPORT_FILE, load_newest, report_path, save_report
from lightning_xai.report.logs import find_runs

#: The CLI's default output when the run already has a report (the monitor's own is never replaced silently).
REBUILT_FILE = "xai_report.rebuilt.html"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_xai.report",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Write the lightning_xai report (one self-contained HTML file) of a finished run, read from its "
                    "TensorBoard event files or, without them, from the PNG/CSV/Markdown files the monitor wrote.")
    parser.add_argument("logdir", help="the run's log directory, or a parent of several runs (the newest is used)")
    parser.add_argument("-o", "--output", default=None,
                        help=f"output file, or an existing directory to write {REPORT_FILE} into (replaced if it "
                             f"exists). Default: <run directory>/{REPORT_FILE}, or <run directory>/{REBUILT_FILE} "
                             "when the run already has a report (the monitor's own is kept)")
    parser.add_argument("--sanity-threshold", type=float, default=0.5,
                        help="similarity to a randomised model above which the sanity check is read as failed")
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.logdir)
        began = time.perf_counter()
        _say(f"Reading the logs under {args.logdir} ...")
        data = load_newest(args.logdir)
        _say(f"Read {data.path} in {time.perf_counter() - began:.1f} s: {len(data.scalars)} scalar tags, "
             f"{sum(len(v) for v in data.images.values())} images, {sum(len(v) for v in data.texts.values())} texts. "
             "Building the report ...")
        output = args.output
        kept = None
        if output is None and (data.path / REPORT_FILE).is_file():
            kept, output = data.path / REPORT_FILE, data.path / REBUILT_FILE
        target = report_path(data, output)
        replaced = target.exists() and args.output is not None
        path = save_report(data, target, sanity_threshold=args.sanity_threshold)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if len(runs) > 1:
        print(f"{len(runs)} runs under {args.logdir}; reported the newest with lightning_xai logs: {path.parent}")
    if kept is not None:
        print(f"The run's own report is kept: {kept}")
    print(f"Report: {path}" + (" (replaced the existing file)" if replaced else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
