"""Reading a run back for the report: the event records are read without TensorBoard's pure-Python CRC check (most
of the end-of-fit time) and go through TensorBoard's own EventAccumulator, so what comes out is what TensorBoard
reads."""

from __future__ import annotations

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from lightning_xai.report import load_run
from lightning_xai.writers import TensorBoardSink


def _write_run(log_dir) -> None:
    writer = SummaryWriter(str(log_dir))
    sink = TensorBoardSink(writer)
    g = torch.Generator().manual_seed(0)
    for step in (4, 8, 12):
        sink.add_scalars({"xai/grad_cam/stability": step / 16, "xai/saliency/stability": 0.5, "epoch": step // 4},
                         step)
        sink.add_image("xai/grad_cam/overlay", torch.randint(0, 256, (3, 40, 56), generator=g, dtype=torch.uint8),
                       step)
        sink.add_text("xai/drift", f"**epoch {step // 4 - 1}, step {step}**", step)
    sink.add_custom_scalars_layout({"xai": {"stability": ["Multiline", ["^xai/grad_cam/stability$"]]}})
    writer.close()


def _tensorboard_reading(log_dir) -> dict:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0}).Reload()
    tags = acc.Tags()
    return {"scalars": {t: [(e.step, float(e.value)) for e in acc.Scalars(t)] for t in tags["scalars"]},
            "images": {t: [(e.step, e.encoded_image_string) for e in acc.Images(t)] for t in tags["images"]}}


def test_run_read_back_equals_tensorboards_reading(tmp_path):
    _write_run(tmp_path)
    data, expected = load_run(tmp_path), _tensorboard_reading(tmp_path)
    assert data.scalars == expected["scalars"] and len(data.scalars["xai/grad_cam/stability"]) == 3
    assert data.images == expected["images"] and len(data.images["xai/grad_cam/overlay"]) == 3
    assert [s for s, _ in data.texts["xai/drift"]] == [4, 8, 12] and "step 8" in data.texts["xai/drift"][1][1]
    assert data.layout is not None


def test_a_truncated_last_record_ends_the_file(tmp_path):
    _write_run(tmp_path)
    (events,) = tmp_path.glob("events.out.tfevents.*")
    events.write_bytes(events.read_bytes()[:-7])  # a run killed while writing its last record
    data = load_run(tmp_path)
    assert len(data.scalars["xai/grad_cam/stability"]) == 3 and len(data.images["xai/grad_cam/overlay"]) == 3
