"""The report tells the alarm story: alarms (``xai/drift/alarm`` = 1) lead the summary and mark the curves; probes
flagged beyond their noise floor are evidence, never called drift.

A run written with a real ``SummaryWriter`` (one alarm at epoch 5, flagged-only epochs 2, 3 and 6) is read back and
its report parsed; ``check_alarm_story`` is also applied to a real Trainer run in ``test_report_safety.py``.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import torch
from torch.utils.tensorboard import SummaryWriter

from lightning_xai.render import ProbeRenderer
from lightning_xai.report import build_report, load_run

METHODS = ("grad_cam", "saliency")
ALARM, FLAGGED_ONLY, EPOCHS = 5, {2: 2, 3: 1, 6: 3}, 8


class Sections(HTMLParser):
    """The page's text per ``<h2>`` section, the alarm boxes' text, the charts' marker labels, the figure captions."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, str] = {}
        self.alarm_boxes: list[str] = []
        self.markers: list[list[str]] = []  # per chart, the <title> of each dashed line
        self.captions: list[str] = []
        self._h2 = self._section = None
        self._stack: list[tuple[str, dict]] = []
        self._alarm_depth = None
        self._caption: str | None = None
        self._marker_title = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("br", "img", "meta"):  # void elements: no end tag
            return
        self._stack.append((tag, attrs))
        if tag == "h2":
            self._h2 = ""
        if tag == "div" and attrs.get("class") == "alarm":
            self._alarm_depth = len(self._stack)
            self.alarm_boxes.append("")
        if tag == "svg":
            self.markers.append([])
        if tag == "title" and len(self._stack) > 1 and self._stack[-2][0] == "line" \
                and "stroke-dasharray" in self._stack[-2][1]:
            self._marker_title = True
            self.markers[-1].append("")
        if tag == "figcaption":
            self._caption = ""

    def handle_endtag(self, tag):
        if tag == "h2":
            self._section = self._h2
            self.sections[self._section] = ""
            self._h2 = None
        if tag == "div" and self._alarm_depth == len(self._stack):
            self._alarm_depth = None
        if tag == "title":
            self._marker_title = False
        if tag == "figcaption" and self._caption is not None:
            self.captions.append(self._caption)
            self._caption = None
        if self._stack:
            self._stack.pop()

    def handle_data(self, data):
        if self._h2 is not None:
            self._h2 += data
        elif self._section is not None:
            self.sections[self._section] += data
        if self._alarm_depth is not None:
            self.alarm_boxes[-1] += data
        if self._marker_title:
            self.markers[-1][-1] += data
        if self._caption is not None:
            self._caption += data


def write_run(path) -> None:
    """8 explained epochs: one alarm (epoch 5), probes flagged without an alarm at epochs 2, 3 and 6."""
    writer = SummaryWriter(str(path))
    renderer = ProbeRenderer(torch.rand(4, 3, 16, 16), tile=32)
    for epoch in range(EPOCHS):
        step = 10 * (epoch + 1)
        flagged = 6 if epoch == ALARM else FLAGGED_ONLY.get(epoch, 0)
        writer.add_scalar("epoch", float(epoch), step)
        writer.add_scalar("xai/drift/alarm", float(epoch == ALARM), step)
        writer.add_scalar("xai/drift/active", float(epoch >= ALARM), step)
        writer.add_scalar("xai/drift/score", 1.8 if epoch == ALARM else 0.3, step)
        for m in METHODS:
            writer.add_scalar(f"xai/{m}/stability", 0.5 if epoch == ALARM else 0.9, step)
            writer.add_scalar(f"xai/{m}/drift", float(flagged), step)
            writer.add_scalar(f"xai/{m}/drift_score", 2.0 if epoch == ALARM else 0.2, step)
            writer.add_scalar(f"xai/{m}/relevance_mass", 0.5 if epoch < ALARM else 0.2, step)
            writer.add_image(f"xai/{m}/overlay", renderer.panel(torch.rand(4, 1, 4, 4), title=f"ep {epoch}"), step)
        text = f"**epoch {epoch}, step {step}**\n\n| method | probes flagged |\n|---|---|\n| grad_cam | {flagged} |"
        if epoch == ALARM:
            text += ("\n\n**explanation drift at epoch 5 (lag evidence; strongest in grad_cam): 6/8 probes beyond "
                     "their own noise floor**\n\nWhere it moved (grad_cam, against epoch 4): grad_cam: 5/6 probes "
                     "gained mass at the bottom-left (converged).\nPer class: cat: bottom-left 3/3.\n\n"
                     "| probe | shift | stability |\n|---|---|---|\n| 12 | 0.9 | 0.4 |\n| 3 | 0.8 | 0.5 |")
        writer.add_text("xai/drift", text, step)
    writer.close()


def check_alarm_story(html: str, alarms: list[int], flagged_only: list[int]) -> Sections:
    """Only the alarm epochs are called drift: in the summary, the alarm boxes, the curves and the pictures."""
    page = Sections(html)
    summary = page.sections["Summary"]
    assert "Drift flagged" not in html and "drift at epoch" not in summary.replace("explanation drift at epoch", "")
    assert [re.match(r"Alarm at epoch (\d+)", box)[1] for box in page.alarm_boxes] == [str(e) for e in alarms]
    lead = summary.split("Alarm at", 1)[0]  # the sentence that opens the summary
    if alarms:
        assert f"{len(alarms)} drift alarm" in lead
        assert re.findall(r"epoch (\d+)", lead) == [str(e) for e in alarms]
    for box, epoch in zip(page.alarm_boxes, alarms):
        assert "Evidence:" in box and "What to do:" in box and "accept()" in box
        assert not {int(e) for e in re.findall(r"epoch (\d+)", box)} & set(flagged_only) - {epoch - 1}
    if flagged_only:
        evidence = summary[summary.index("Probes flagged without an alarm"):]
        assert "(evidence, not drift)" in evidence
        for epoch in flagged_only:
            assert f"epoch {epoch}:" in evidence
    # the curves: every chart marks exactly the alarm epochs
    charts = [m for m in page.markers if m is not None]
    assert charts and all(m == [f"alarm, epoch {e}" for e in alarms] for m in charts), charts
    # the pictures: before the first alarm, the alarm, the last; never a flagged-only epoch as "the alarm"
    alarm_captions = [c for c in page.captions if c.endswith(": the alarm")]
    if alarms:
        assert alarm_captions and all(c.startswith(f"epoch {alarms[0]} ") for c in alarm_captions)
    return page


def test_report_names_only_the_alarm_epoch_as_drift(tmp_path):
    write_run(tmp_path / "run")
    data = load_run(tmp_path / "run")
    html = build_report(data)
    page = check_alarm_story(html, [ALARM], sorted(FLAGGED_ONLY))
    box = page.alarm_boxes[0]
    assert "Alarm at epoch 5 (step 60)" in box
    assert "epoch evidence 1.80" in box and "probes flagged Grad-CAM 6, saliency 6" in box
    assert "grad_cam: 5/6 probes gained mass at the bottom-left (converged) (against epoch 4)." in box
    assert "Per class: cat: bottom-left 3/3." in box
    assert "share of the map on the object 0.50 before the alarm, 0.20 at it, 0.20 at the end" in box
    assert "look at probes #12, #3" in box and "Still different at the last explained epoch (epoch 7)" in box
    assert "epoch 2: Grad-CAM 2, saliency 2; epoch 3: Grad-CAM 1, saliency 1; epoch 6: Grad-CAM 3" in html
    captions = [c for c in page.captions if c.startswith("epoch")]
    assert captions == [f"epoch {e} (step {10 * (e + 1)}): {what}" for e, what in (
        (4, "before the alarm"), (5, "the alarm"), (7, "the last explained epoch"))] * len(METHODS)
    logged = page.sections["The alarms as logged (xai/drift text)"]
    assert "epoch 5, step 60" in logged and "epoch 2, step 30" not in logged
    metrics = page.sections["All metrics"]
    assert metrics.index("xai/drift/alarm") < metrics.index("xai/grad_cam/stability") < metrics.index(
        "xai/grad_cam/drift") < metrics.index("xai/grad_cam/relevance_mass")
    assert "(evidence for the alarm, not an alarm)" in metrics


def test_report_without_alarm_calls_flags_evidence(tmp_path):
    writer = SummaryWriter(str(tmp_path / "run"))
    for epoch in range(4):
        step = epoch + 1
        writer.add_scalar("epoch", float(epoch), step)
        writer.add_scalar("xai/drift/alarm", 0.0, step)
        writer.add_scalar("xai/grad_cam/stability", 0.9, step)
        writer.add_scalar("xai/grad_cam/drift", float(epoch == 2), step)
    writer.close()
    html = build_report(load_run(tmp_path / "run"))
    page = check_alarm_story(html, [], [2])
    assert page.sections["Summary"].startswith("No drift alarm in 4 explained epochs")
    assert "stroke-dasharray" not in html  # no marker on any curve
