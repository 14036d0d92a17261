"""Tests for lightning_xai.report: the custom-scalars layout, reading logs back, the HTML report and its CLI."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from lightning_xai.render import ProbeRenderer
from lightning_xai.report import (
    CATEGORY,
    REPORT_FILE,
    build_report,
    chart_of,
    custom_scalars_layout,
    find_runs,
    line_chart,
    load_run,
    write_report,
)
from lightning_xai.report.__main__ import main as cli_main
from lightning_xai.report.layout import ALARM_CHART, FLAGGED_CHART, describe
from lightning_xai.writers import FileWriter, TensorBoardWriter

METHODS = ("grad_cam", "saliency", "integrated_gradients")
KEYS = [f"xai/{m}/{k}" for m in METHODS for k in ("stability", "topk_overlap", "drift", "relevance_mass",
                                                  "sanity_similarity")] + [
    "xai/agreement/grad_cam_vs_saliency", "xai/integrated_gradients/completeness_error", "xai/drift/alarm"]


def test_layout_groups_keys_into_few_charts():
    layout = custom_scalars_layout([*KEYS, "val_acc", "epoch"])
    charts = layout[CATEGORY]
    assert list(charts)[:3] == [ALARM_CHART, "stability (1 = same map as the previous epoch)", FLAGGED_CHART]
    kind, patterns = charts["stability (1 = same map as the previous epoch)"]
    assert kind == "Multiline" and len(patterns) == 3
    assert charts[ALARM_CHART][1] == ["^xai/drift/alarm$"] and len(charts[FLAGGED_CHART][1]) == 3
    assert all(re.fullmatch(p, k) for p in patterns for k in [p[1:-1].replace("\\", "")])
    every = [p for _, ps in charts.values() for p in ps]
    # each key once, in a few charts; the sanity check (one value per method, at the end of fit) in none
    assert len(every) == len(KEYS) - 3 and len(charts) < len(KEYS) / 2
    assert not any("sanity" in p for p in every)
    assert custom_scalars_layout(["val_acc"]) == {}
    assert chart_of("xai/grad_cam/some_new_metric") == "other: some_new_metric"
    assert describe("xai/grad_cam/drift").startswith("probes whose map moved beyond their own noise floor")
    assert describe("xai/agreement/grad_cam_vs_saliency") == "mean rank correlation between the maps of grad_cam and " \
                                                             "saliency"
    with pytest.raises(TypeError, match="keys"):
        custom_scalars_layout("xai/grad_cam/stability")


def test_layout_written_and_read_back_from_events(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    writer.add_custom_scalars(custom_scalars_layout(KEYS))
    writer.add_scalar("xai/grad_cam/stability", 0.5, 0)
    writer.close()
    data = load_run(tmp_path)
    assert data.layout is not None
    category = data.layout["category"][0]
    assert category["title"] == CATEGORY
    titles = [c["title"] for c in category["chart"]]
    assert titles[:2] == [ALARM_CHART, "stability (1 = same map as the previous epoch)"]
    assert category["chart"][1]["multiline"]["tag"] == [f"^xai/{m}/stability$" for m in sorted(METHODS)]


def test_line_chart_svg():
    svg = line_chart({"a": [(0, 0.1), (1, float("nan")), (2, 0.9)], "b": []}, title="t <1>", markers=[(1, "drift")])
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 2 and "t &lt;1&gt;" in svg
    assert "stroke-dasharray" in svg
    assert "no data" in line_chart({}, title="empty")


def write_run(writer, n_probes: int = 4):
    """A small but complete monitor log: 5 explained epochs, drift at the 4th, overlays, timelines, text."""
    renderer = ProbeRenderer(torch.rand(n_probes, 3, 16, 16), tile=32)
    for epoch in range(5):
        step = 10 * (epoch + 1)
        drift = 3 if epoch == 3 else 0
        scalars = {"epoch": float(epoch), "val_acc": 0.5 + 0.1 * epoch}
        for m in METHODS:
            scalars[f"xai/{m}/stability"] = 0.4 if epoch == 3 else 0.9
            scalars[f"xai/{m}/drift"] = float(drift if m == "grad_cam" else 0)
            scalars[f"xai/{m}/relevance_mass"] = 0.5 if epoch < 3 else 0.1
        scalars["xai/drift/alarm"] = 1.0 if epoch == 3 else 0.0
        writer.add_scalars(scalars, step)
        for m in METHODS:
            writer.add_image(f"xai/{m}/overlay", renderer.panel(torch.rand(n_probes, 1, 4, 4), title=f"ep {epoch}"),
                             step)
        writer.add_text("xai/drift", f"**epoch {epoch}**\n\n| method | flagged |\n|---|---|\n| grad_cam | {drift} |",
                        step)
    writer.add_scalars({"xai/grad_cam/sanity_similarity": 0.1, "xai/integrated_gradients/sanity_similarity": 0.7}, 50)
    for m in METHODS:
        writer.add_image(f"xai/{m}/timeline", renderer.panel(torch.rand(n_probes, 1, 4, 4)), 50)
    writer.flush()


def check_report(html: str):
    assert html.startswith("<!DOCTYPE html>")
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 3 * 4  # per method: the timeline, the overlays before the alarm, at it and the last
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "1 drift alarm" in html and "Alarm at epoch 3 (step 40)" in html and "Drift flagged" not in html
    assert "probes flagged Grad-CAM 3, saliency 0, Integrated Gradients 0" in html
    assert "0.50 before the alarm, 0.10 at it, 0.10 at the end (the evidence moved off the object)" in html
    assert "Integrated Gradients</b>: similarity to a randomised model 0.70 (above 0.50), as expected" in html
    assert "judge what the model learnt with Grad-CAM, which passes" in html
    assert "the maps depend on the trained weights" in html  # Grad-CAM passes
    assert "<table>" in html and "<td>grad_cam</td>" in html  # the drift text's Markdown table, rendered
    assert html.count("<svg") >= 4 and "http://" not in html.replace("http://www.w3.org/2000/svg", "")


def test_report_from_tensorboard_events(tmp_path):
    sw = SummaryWriter(str(tmp_path / "run"))
    write_run(TensorBoardWriter(sw))
    sw.close()
    data = load_run(tmp_path / "run")
    assert data.source == "events" and data.epoch_of(40) == 3
    assert len(data.images["xai/grad_cam/overlay"]) == 5 and "xai/drift" in data.texts
    check_report(build_report(data))


def test_report_from_files(tmp_path):
    write_run(FileWriter(tmp_path / "run"))
    data = load_run(tmp_path / "run")
    assert data.source == "files"
    assert sorted(data.images) == sorted(f"xai/{m}/{k}" for m in METHODS for k in ("overlay", "timeline"))
    check_report(build_report(data))


def test_cli_newest_run_output_and_errors(tmp_path, capsys):
    for name in ("version_0", "version_1"):
        sw = SummaryWriter(str(tmp_path / "logs" / name))
        write_run(TensorBoardWriter(sw), n_probes=2)
        sw.close()
    runs = find_runs(tmp_path / "logs")
    assert [r.name for r in runs] == ["version_1", "version_0"]
    assert cli_main([str(tmp_path / "logs")]) == 0
    assert (tmp_path / "logs" / "version_1" / REPORT_FILE).is_file()
    assert "2 runs" in capsys.readouterr().out
    out = tmp_path / "elsewhere" / "r.html"
    assert cli_main([str(tmp_path / "logs" / "version_0"), "-o", str(out)]) == 2  # no directory made by a typo
    assert "does not exist" in capsys.readouterr().err
    out.parent.mkdir()
    assert cli_main([str(tmp_path / "logs" / "version_0"), "-o", str(out)]) == 0 and out.is_file()
    (tmp_path / "empty").mkdir()
    assert cli_main([str(tmp_path / "empty")]) == 2
    assert "no lightning_xai logs" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "missing")


def test_cli_as_module(tmp_path):
    write_run(FileWriter(tmp_path))
    result = subprocess.run([sys.executable, "-m", "lightning_xai.report", str(tmp_path), "-o", str(tmp_path / "x.html")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "x.html").read_text(encoding="utf-8").count("data:image/png;base64,") == 12


@pytest.mark.parametrize("name", ["lightning_xai.render.panel", "lightning_xai.render.png",
                                  "lightning_xai.render.timeline", "lightning_xai.report.layout",
                                  "lightning_xai.report.markup", "lightning_xai.report.svg"])
def test_doctests(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------------------------------- real Trainer runs
def fit_tiny(tmp_path, monitor, **overrides):
    import pytorch_lightning as pl
    from lit_models import TinyCNN, TinyDataModule, trainer_kwargs

    pl.seed_everything(7, workers=True)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, **overrides))
    trainer.fit(TinyCNN(), datamodule=TinyDataModule())
    return trainer


def tiny_monitor(**kwargs):
    from lightning_xai import ExplanationMonitor

    kwargs.setdefault("max_overhead", None)  # every method every epoch (the default budget spaces IG)
    return ExplanationMonitor(num_probes=4, method_options={"integrated_gradients": {"n_steps": 4, "tolerance": None}},
                              **kwargs)


def test_trainer_run_logs_timelines_layout_and_report(tmp_path):
    from tb_events import read_events

    trainer = fit_tiny(tmp_path, tiny_monitor(), max_epochs=3)
    log_dir = trainer.logger.log_dir
    events = read_events(log_dir)
    last_step = trainer.global_step
    for m in METHODS:
        timeline = events["images"][f"xai/{m}/timeline"]
        assert [s for s, *_ in timeline] == [last_step]  # once, at the end of fit
        _, width, height, pixels = timeline[0]
        assert width == 64 + 3 * (64 + 4) + 4 and height > 4 * 64  # 3 epoch columns after the labels, 4 rows
        assert pixels.std() > 5
        assert len(events["images"][f"xai/{m}/overlay"]) == 3
    data = load_run(log_dir)  # the custom-scalars layout, read back from the run's own event file
    charts = {c["title"]: c["multiline"]["tag"] for c in data.layout["category"][0]["chart"]}
    assert charts["stability (1 = same map as the previous epoch)"] == [f"^xai/{m}/stability$" for m in sorted(METHODS)]
    assert charts[FLAGGED_CHART] == [f"^xai/{m}/drift$" for m in sorted(METHODS)]
    assert charts[ALARM_CHART] == ["^xai/drift/active$", "^xai/drift/alarm$", "^xai/drift/score$"]
    report = Path(log_dir) / REPORT_FILE
    html = report.read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= 2 * 3  # per method: its timeline and its last overlays
    assert "Explained 3 times" in html and "Sanity check" in html
    assert cli_main([log_dir, "-o", str(tmp_path / "again.html")]) == 0  # the CLI rebuilds it from the events
    again = (tmp_path / "again.html").read_text(encoding="utf-8")
    assert again.count("data:image/png;base64,") == html.count("data:image/png;base64,")


def test_trainer_run_without_tensorboard_reports_from_files(tmp_path):
    import pytorch_lightning as pl

    # a CSVLogger: scalars in its metrics.csv, images and text as files next to it
    trainer = fit_tiny(tmp_path, tiny_monitor(metrics=()), max_epochs=2,
                       logger=pl.loggers.CSVLogger(str(tmp_path), name="csv", version=0))
    run = Path(trainer.logger.log_dir)
    assert (run / "xai_images" / "xai_grad_cam_timeline").is_dir()
    html = (run / REPORT_FILE).read_text(encoding="utf-8")
    assert "read from the PNG/CSV/Markdown files" in html and html.count("data:image/png;base64,") >= 6


def test_report_failure_obeys_on_error(tmp_path, monkeypatch):
    import lightning_xai.callbacks._reporter as reporter

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(reporter, "save_report", broken)  # a fault injected where the report is written
    with pytest.warns(UserWarning, match="writing the timelines and the report.*disk full"):
        trainer = fit_tiny(tmp_path / "warn", tiny_monitor(metrics=()), max_epochs=1)
    assert trainer.state.finished
    with pytest.raises(RuntimeError, match="writing the timelines and the report"):
        fit_tiny(tmp_path / "raise", tiny_monitor(metrics=(), on_error="raise"), max_epochs=1)
