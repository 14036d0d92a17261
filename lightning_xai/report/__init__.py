"""Reviewing a run: the TensorBoard dashboard layout and the end-of-fit HTML report (no Lightning import).

``python -m lightning_xai.report LOGDIR [-o FILE]`` rebuilds the report of a finished run from its logs.
"""

from lightning_xai.report.html import REPORT_FILE, build_report, save_report, write_report
from lightning_xai.report.layout import CATEGORY, chart_of, custom_scalars_layout
from lightning_xai.report.logs import RunData, find_runs, load_run
from lightning_xai.report.svg import line_chart

__all__ = [
    "CATEGORY",
    "REPORT_FILE",
    "RunData",
    "build_report",
    "chart_of",
    "custom_scalars_layout",
    "find_runs",
    "line_chart",
    "load_run",
    "save_report",
    "write_report",
]
