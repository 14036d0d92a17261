"""Reviewing a run: the TensorBoard dashboard layout and the end-of-fit HTML report (no Lightning import).

``python -m lightning_xai.report LOGDIR [-o FILE]`` rebuilds the report of a finished run from its logs. Everything
that reaches the page is escaped by construction (:mod:`lightning_xai.report.markup`).
"""

from lightning_xai.report.html import (
    REPORT_FILE,
    build_report,
    load_newest,
    report_path,
    save_report,
    write_report,
)
from lightning_xai.report.layout import CATEGORY, KEYS, chart_of, custom_scalars_layout, describe
from lightning_xai.report.logs import RunData, find_runs, load_run
from lightning_xai.report.svg import line_chart

__all__ = [
    "CATEGORY",
    "KEYS",
    "REPORT_FILE",
    "RunData",
    "build_report",
    "chart_of",
    "custom_scalars_layout",
    "describe",
    "find_runs",
    "line_chart",
    "load_newest",
    "load_run",
    "report_path",
    "save_report",
    "write_report",
]
