"""Tests for lightning_xai.writers, read back from real files (TensorBoard events via tests/tb_events.py)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image
from tb_events import read_events
from torch.utils.tensorboard import SummaryWriter

from lightning_xai.render import make_overlay_grid
from lightning_xai.writers import FileWriter, TensorBoardWriter, Writer


def red_image(h: int = 10, w: int = 20) -> torch.Tensor:
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    img[0] = 255
    return img


def test_writers_implement_protocol(tmp_path):
    sw = SummaryWriter(str(tmp_path / "tb"))
    try:
        assert isinstance(TensorBoardWriter(sw), Writer)
    finally:
        sw.close()
    assert isinstance(FileWriter(tmp_path), Writer)


# ------------------------------------------------------------------------------------------------ TensorBoard
def test_tensorboard_round_trip(tmp_path):
    sw = SummaryWriter(str(tmp_path))
    writer = TensorBoardWriter(sw)
    for step in (0, 4, 8):
        writer.add_image("xai/grad_cam/overlay", red_image(), step)
        skipped = writer.add_scalars(
            {
                "xai/grad_cam/stability": 0.25 * step,
                "xai/saliency/stability": float("nan"),
                "xai/grad_cam/drift": torch.tensor(step // 4),
                "xai/ig/err": float("inf"),
            },
            step,
        )
        assert skipped == ["xai/saliency/stability", "xai/ig/err"]
    writer.add_text("xai/drift", "probe 3: **grad_cam** drifted\nline two", 8)
    writer.flush()
    sw.close()

    events = read_events(tmp_path)
    assert len(events["files"]) == 1
    images = events["images"]["xai/grad_cam/overlay"]
    assert [s for s, *_ in images] == [0, 4, 8]
    for _, width, height, pixels in images:
        assert (width, height) == (20, 10)
        assert pixels.shape == (10, 20, 3) and pixels.dtype == np.uint8
        assert (pixels[..., 0] == 255).all() and (pixels[..., 1:] == 0).all()  # red stays red: no x255, RGB
    assert events["scalars"]["xai/grad_cam/stability"] == [(0, 0.0), (4, 1.0), (8, 2.0)]
    assert events["scalars"]["xai/grad_cam/drift"] == [(0, 0.0), (4, 1.0), (8, 2.0)]
    assert "xai/saliency/stability" not in events["scalars"]  # NaN never written
    assert "xai/ig/err" not in events["scalars"]
    assert all(math.isfinite(v) for series in events["scalars"].values() for _, v in series)
    assert events["texts"] == {"xai/drift": [(8, "probe 3: **grad_cam** drifted\nline two")]}
    assert writer.skipped_counts == {"xai/saliency/stability": 3, "xai/ig/err": 3}


def test_tensorboard_overlay_grid_red_probe(tmp_path):
    """A pure-red probe with a flat map is red in the logged grid (PITFALLS 15)."""
    probe = torch.zeros(1, 3, 32, 32)
    probe[:, 0] = 1.0
    grid = make_overlay_grid(probe, torch.zeros(1, 1, 8, 8), ["y=red  p=red 0.99"])
    sw = SummaryWriter(str(tmp_path))
    TensorBoardWriter(sw).add_image("xai/grad_cam/overlay", grid, 1)
    sw.close()
    ((step, width, height, pixels),) = read_events(tmp_path)["images"]["xai/grad_cam/overlay"]
    assert (step, height, width) == (1, *grid.shape[1:])
    np.testing.assert_array_equal(pixels, grid.permute(1, 2, 0).numpy())
    tile = pixels[2:98, 2:98]
    assert (tile[..., 0] == 255).all() and (tile[..., 1:] == 0).all()


def test_read_events_several_runs(tmp_path):
    for version in (0, 1):
        sw = SummaryWriter(str(tmp_path / f"version_{version}"))
        TensorBoardWriter(sw).add_scalars({"a": float(version)}, version)
        sw.close()
    events = read_events(tmp_path)
    assert len(events["files"]) == 2
    assert events["scalars"]["a"] == [(0, 0.0), (1, 1.0)]
    assert read_events(events["files"][1])["scalars"]["a"] == [(1, 1.0)]
    assert read_events(tmp_path / "missing") == {"images": {}, "scalars": {}, "texts": {}, "histograms": {}, "files": []}


def test_tensorboard_writer_bad_args(tmp_path):
    with pytest.raises(TypeError, match="summary_writer.*add_image"):
        TensorBoardWriter(object())
    sw = SummaryWriter(str(tmp_path))
    writer = TensorBoardWriter(sw)
    try:
        with pytest.raises(ValueError, match="uint8"):
            writer.add_image("t", red_image().float() / 255, 0)  # float would be x255 by TensorBoard
        with pytest.raises(ValueError, match=r"\(3, H, W\)"):
            writer.add_image("t", red_image().permute(1, 2, 0), 0)  # HWC
        with pytest.raises(ValueError, match="step"):
            writer.add_image("t", red_image(), -1)
        with pytest.raises(TypeError, match="values"):
            writer.add_scalars({"a": "high"}, 0)
        with pytest.raises(TypeError, match="text"):
            writer.add_text("t", 3, 0)
    finally:
        sw.close()


# ------------------------------------------------------------------------------------------------------ files
def test_file_writer_round_trip(tmp_path):
    log_dir = tmp_path / "run"  # does not exist yet: created lazily
    writer = FileWriter(log_dir)
    assert not log_dir.exists()
    writer.add_image("xai/grad_cam/overlay", red_image(), 12)
    writer.add_image("xai/grad_cam/overlay", red_image(6, 7), 24)
    assert writer.add_scalars({"xai/grad_cam/stability": 0.5, "xai/saliency/stability": float("nan")}, 12) == [
        "xai/saliency/stability"
    ]
    writer.add_scalars({"xai/grad_cam/stability": 1 / 3}, 24)
    writer.add_scalars({"only_nan": float("nan")}, 30)
    writer.add_text("xai/drift", "probe 3 drifted", 24)
    writer.add_text("xai/drift", "probe 5 drifted", 36)
    writer.flush()

    png = log_dir / "xai_images" / "xai_grad_cam_overlay" / "step_0000012.png"
    assert png == writer.image_path("xai/grad_cam/overlay", 12)
    assert sorted(p.name for p in png.parent.iterdir()) == ["step_0000012.png", "step_0000024.png"]
    with Image.open(png) as im:
        assert im.mode == "RGB" and im.size == (20, 10)
        pixels = np.array(im)
    assert (pixels[..., 0] == 255).all() and (pixels[..., 1:] == 0).all()

    with (log_dir / "xai_scalars.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "tag", "value"]
    assert [(int(s), t, float(v)) for s, t, v in rows[1:]] == [
        (12, "xai/grad_cam/stability", 0.5),
        (24, "xai/grad_cam/stability", 1 / 3),
    ]
    assert writer.skipped_counts == {"xai/saliency/stability": 1, "only_nan": 1}

    text = (log_dir / "xai_text.md").read_text(encoding="utf-8")
    assert "## xai/drift (step 24)" in text and "probe 3 drifted" in text
    assert text.index("probe 3") < text.index("## xai/drift (step 36)") < text.index("probe 5")

    again = FileWriter(log_dir)  # a resumed run appends without a second header
    again.add_scalars({"x": 1.0}, 40)
    with (log_dir / "xai_scalars.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows.count(["step", "tag", "value"]) == 1 and rows[-1] == ["40", "x", "1.0"]


def test_file_writer_unsafe_tags(tmp_path):
    writer = FileWriter(tmp_path)
    writer.add_image("..", red_image(), 0)
    writer.add_image("a\\b:c d", red_image(), 0)
    names = sorted(p.name for p in (tmp_path / "xai_images").iterdir())
    assert names == ["__", "a_b_c_d"]
    assert all(p.resolve().is_relative_to(tmp_path.resolve()) for p in tmp_path.rglob("*.png"))


def test_file_writer_bad_args(tmp_path):
    file = tmp_path / "a_file"
    file.write_text("x")
    with pytest.raises(ValueError, match="log_dir"):
        FileWriter(file)
    with pytest.raises(TypeError, match="log_dir"):
        FileWriter(None)
    writer = FileWriter(tmp_path)
    with pytest.raises(ValueError, match="img"):
        writer.add_image("t", torch.zeros(1, 4, 4, dtype=torch.uint8), 0)
    with pytest.raises(ValueError, match="tag"):
        writer.add_image("", red_image(), 0)
    with pytest.raises(ValueError, match="step"):
        writer.add_scalars({"a": 1.0}, 1.5)
    assert not (tmp_path / "xai_images").exists()


def test_histograms_skip_non_finite_values(tmp_path):
    values = torch.tensor([0.01, 0.02, float("nan"), 0.5, float("inf")])
    summary_writer = SummaryWriter(str(tmp_path / "tb"))
    TensorBoardWriter(summary_writer).add_histogram("xai/h", values, step=3)
    TensorBoardWriter(summary_writer).add_histogram("xai/empty", torch.tensor([float("nan")]), step=3)
    summary_writer.close()
    histograms = read_events(tmp_path / "tb")["histograms"]
    assert list(histograms) == ["xai/h"]  # an all-NaN tensor writes nothing
    ((step, count, low, high),) = histograms["xai/h"]
    assert (step, count) == (3, 3) and low == pytest.approx(0.01) and high == pytest.approx(0.5)
    writer = FileWriter(tmp_path / "files")
    writer.add_histogram("xai/h", values, step=3)
    lines = (tmp_path / "files" / "xai_histograms.csv").read_text().splitlines()
    assert lines[0] == "step,tag,values" and lines[1].startswith("3,xai/h,") and "nan" not in lines[1]
