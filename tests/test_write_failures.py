"""A write failure is isolated per item (one refused scalar key, image or text never costs the others) and reported
once per cause, with a summary at the end of fit (issue 20, items 3 and 6). Real sinks and loggers; only the fault
is injected (a writer that refuses one tag, a disk that is full)."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from flaky_loggers import FlakyPLTensorBoardLogger, FlakyWriter
from lit_models import TinyCNN, TinyDataModule, trainer_kwargs
from tb_events import read_events
from torch.utils.tensorboard import SummaryWriter

from lightning_xai import ExplanationMonitor
from lightning_xai.callbacks._failures import FailureLog, cause_of
from lightning_xai.views import ViewOutput
from lightning_xai.views._write import write_view_output
from lightning_xai.writers import FileSink, ItemsError, MetricsSink, MultiSink, SinkError, TensorBoardSink

IMAGE = torch.zeros(3, 8, 8, dtype=torch.uint8)


def test_tensorboard_sink_writes_every_other_scalar_when_one_key_fails(tmp_path):
    sink = TensorBoardSink(FlakyWriter(SummaryWriter(str(tmp_path)), fail_tags={"xai/b"}), owned=True)
    with pytest.raises(ItemsError, match=r"1 of 3 scalars failed \(xai/b: ValueError: tag 'xai/b' refused") as info:
        sink.add_scalars({"xai/a": 1.0, "xai/b": 2.0, "xai/c": 3.0}, step=0)
    assert set(info.value.failures) == {"xai/b"}
    sink.close()
    scalars = read_events(tmp_path)["scalars"]
    assert scalars["xai/a"] == [(0, 1.0)] and scalars["xai/c"] == [(0, 3.0)] and "xai/b" not in scalars


class RefusingCSVLogger(pl.loggers.CSVLogger):
    """A real CSV logger whose log_metrics refuses any call holding one key (as a service refuses a key name)."""

    def log_metrics(self, metrics, step=None):
        if "xai/b" in metrics:
            raise ValueError("key 'xai/b' refused")
        super().log_metrics(metrics, step)


def test_a_logger_refusing_one_key_still_gets_the_others(tmp_path):
    logger = RefusingCSVLogger(str(tmp_path), name="csv", version=0)
    sink = MetricsSink(logger)
    with pytest.raises(ItemsError, match="xai/b"):
        sink.add_scalars({"xai/a": 1.0, "xai/b": 2.0, "xai/c": 3.0}, step=5)
    logger.save()
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {k for row in rows for k, v in row.items() if v not in ("", None) and k != "step"}
    assert logged == {"xai/a", "xai/c"}


def test_multisink_one_sinks_key_failure_is_not_the_other_sinks(tmp_path):
    failing = TensorBoardSink(FlakyWriter(SummaryWriter(str(tmp_path / "tb")), fail_tags={"xai/b"}), owned=True)
    files = FileSink(tmp_path / "files")
    with pytest.raises(SinkError, match=r"TensorBoardSink.*1 of 2 scalars failed"):
        MultiSink([failing, files]).add_scalars({"xai/a": 1.0, "xai/b": 2.0}, step=0)
    failing.close()
    rows = (tmp_path / "files" / FileSink.SCALARS_FILE).read_text().splitlines()
    assert rows[1:] == ["0,xai/a,1.0", "0,xai/b,2.0"]
    assert set(read_events(tmp_path / "tb")["scalars"]) == {"xai/a"}


def test_a_view_output_item_failing_does_not_cost_the_others(tmp_path):
    sink = FileSink(tmp_path)
    output = ViewOutput(images={"xai/v/bad": torch.zeros(3, 8, 8), "xai/v/good": IMAGE},  # float: refused
                        scalars={"xai/v/s": 0.5}, texts={"xai/v/t": "text"})
    with pytest.raises(ItemsError, match=r"1 of 4 view items failed \(xai/v/bad: ValueError"):
        write_view_output(sink, output, step=3)
    assert sink.image_path("xai/v/good", 3).is_file() and not sink.image_path("xai/v/bad", 3).exists()
    assert "xai/v/s" in (tmp_path / FileSink.SCALARS_FILE).read_text()
    assert "xai/v/t" in (tmp_path / FileSink.TEXT_FILE).read_text()


# ------------------------------------------------------------------------------------------ once per cause
def test_failure_log_warns_once_per_cause_and_sums_up():
    seen = []
    log = FailureLog(seen.append)
    for epoch in range(4):
        log.warn(f"ExplanationMonitor failed at epoch {epoch} (writing) on rank 0: OSError: disk full (step {epoch * 8})")
    log.warn("ExplanationMonitor failed at epoch 2 (explaining) on rank 0: RuntimeError: boom")
    assert len(seen) == 2 and "Warned once" in seen[0]
    summary = log.summary()
    assert "4 times (epochs 0, 1, 2, 3)" in summary and "boom" not in summary  # said once: nothing to sum up
    assert cause_of("epoch 3 at 0x7f3a, version_12") == cause_of("epoch 4 at 0x7f4b, version_13")


def _fit(tmp_path, logger, epochs=3):
    pl.seed_everything(7, workers=True)
    monitor = ExplanationMonitor(num_probes=4, methods=("grad_cam", "saliency"), metrics=("agreement",))
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=epochs, logger=logger))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyCNN(), datamodule=TinyDataModule())
    return monitor, trainer, [str(w.message) for w in caught if "ExplanationMonitor" in str(w.message)]


def test_one_scalar_key_refused_in_a_real_fit_costs_no_other_scalar_and_warns_once(tmp_path):
    failing = "xai/grad_cam/topk_overlap"
    logger = FlakyPLTensorBoardLogger(str(tmp_path), name="tb", version=0, fail_tags={failing})
    monitor, trainer, messages = _fit(tmp_path, logger)
    scalars = read_events(trainer.logger.log_dir)["scalars"]
    steps = [record["step"] for record in monitor.history]
    assert len(steps) == 3
    expected = {"xai/grad_cam/stability", "xai/saliency/stability", "xai/saliency/topk_overlap",
                "xai/agreement/grad_cam_vs_saliency", "xai/drift/alarm", "xai/overhead"}
    for key in expected:  # every epoch, every other key
        assert [s for s, _ in scalars.get(key, [])] == steps, key
    assert failing not in scalars
    failures = [m for m in messages if failing in m]
    assert len(failures) == 2, failures  # the first occurrence, then the end-of-fit summary
    assert "refused by the logger" in failures[0] and "Warned once" in failures[0]
    assert "repeated during this fit" in failures[1] and "3 times (epochs 0, 1, 2)" in failures[1]
    assert trainer.current_epoch == 3  # trained to the end


def test_a_persistent_sink_failure_warns_once_not_every_epoch(tmp_path):
    logger = FlakyPLTensorBoardLogger(str(tmp_path), name="tb", version=0, broken=True)  # every xai/ write fails
    monitor, trainer, messages = _fit(tmp_path, logger, epochs=4)
    failures = [m for m in messages if "No space left on device" in m]
    first = [m for m in failures if "Warned once" in m]
    summary = [m for m in failures if "repeated during this fit" in m]
    # one warning for the cause (a full disk: every epoch's scalars, overlays, the timelines), not one per epoch
    assert len(first) == 1 and len(summary) == 1, failures
    assert len(failures) == 2 and "6 times" in summary[0], summary  # 4 epochs, the last overlays, the timelines
    assert len(monitor.history) == 4 and trainer.current_epoch == 4
