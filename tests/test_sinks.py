"""Sinks on real loggers, read back from what they wrote: TensorBoard (both Lightning packages), CSV, no logger,
an unknown logger, Weights & Biases offline, MLflow with a local file store, several at once, and failures."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tb_events import read_events
from tensorboard.backend.event_processing import event_accumulator as ea

from lightning_xai.writers import (
    BackgroundWrites,
    FileSink,
    MetricsSink,
    MultiSink,
    Sink,
    SinkError,
    TensorBoardSink,
    sinks_for_loggers,
)

PACKAGES = ("lightning.pytorch", "pytorch_lightning")


def loggers_of(package: str):
    return importlib.import_module(f"{package}.loggers")


def red(h: int = 6, w: int = 10) -> torch.Tensor:
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    img[0] = 255
    return img


def write_all(sink, step: int) -> None:
    sink.add_image("xai/grad_cam/overlay", red(), step, caption=f"epoch {step}")
    sink.add_scalars({"xai/grad_cam/stability": 0.5 + step, "xai/saliency/stability": float("nan")}, step)
    sink.add_text("xai/drift", f"**step {step}**", step)
    sink.add_histogram("xai/integrated_gradients/completeness_error", torch.tensor([0.1, 0.2, float("nan")]), step)
    sink.flush()


class UnknownLogger:
    """A logger the monitor does not know: it takes metrics and has a save_dir, nothing else."""

    def __init__(self, save_dir: Path) -> None:
        self.save_dir = str(save_dir)
        self.logged: list[tuple[dict, int]] = []

    def log_metrics(self, metrics, step):
        self.logged.append((dict(metrics), step))


# ------------------------------------------------------------------------------------------------ TensorBoard
@pytest.mark.parametrize("package", PACKAGES)
def test_tensorboard_logger_of_either_package(tmp_path, package):
    logger = loggers_of(package).TensorBoardLogger(str(tmp_path), name="run")
    resolved = sinks_for_loggers([logger], tmp_path)
    assert resolved.kinds == ["tensorboard"] and not resolved.notes and not resolved.errors
    sink = resolved.sink
    assert isinstance(sink, Sink) and sink.supports_embedding and sink.supports_custom_scalars
    assert Path(sink.log_dir) == Path(logger.log_dir)
    for step in (0, 5):
        write_all(sink, step)
    sink.add_custom_scalars_layout({"xai": {"stability": ["Multiline", ["xai/grad_cam/stability"]]}})
    thumbs = torch.zeros(3, 3, 4, 4, dtype=torch.uint8)
    sink.add_embedding(torch.randn(3, 5), ["a", "b", "c"], thumbs, step=5, tag="xai/penultimate")
    sink.close()
    logger.finalize("success")

    events = read_events(logger.log_dir)
    assert [s for s, *_ in events["images"]["xai/grad_cam/overlay"]] == [0, 5]
    _, width, height, pixels = events["images"]["xai/grad_cam/overlay"][0]
    assert (width, height) == (10, 6) and (pixels[..., 0] == 255).all() and (pixels[..., 1:] == 0).all()
    assert events["scalars"]["xai/grad_cam/stability"] == [(0, 0.5), (5, 5.5)]
    assert "xai/saliency/stability" not in events["scalars"]  # NaN never written
    assert [s for s, _ in events["texts"]["xai/drift"]] == [0, 5]
    assert [(s, n) for s, n, *_ in events["histograms"]["xai/integrated_gradients/completeness_error"]] == [(0, 2),
                                                                                                          (5, 2)]
    acc = ea.EventAccumulator(logger.log_dir)
    acc.Reload()
    assert "custom_scalars__config__" in acc.Tags()["tensors"]
    projector = (Path(logger.log_dir) / "projector_config.pbtxt").read_text()
    assert "xai/penultimate:00005" in projector and "sprite" in projector
    tensors = next(Path(logger.log_dir).rglob("tensors.tsv")).read_text().strip().splitlines()
    assert len(tensors) == 3 and len(tensors[0].split("\t")) == 5


def test_tensorboard_sink_closes_only_what_it_owns(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    TensorBoardSink(writer).close()
    writer.add_scalar("after", 1.0, 0)  # still open: the logger's writer belongs to the logger
    writer.close()
    assert read_events(tmp_path)["scalars"]["after"] == [(0, 1.0)]


# ------------------------------------------------------------------------------------------------ files
@pytest.mark.parametrize("package", PACKAGES)
def test_csv_logger_gets_scalars_and_files_in_its_version_dir(tmp_path, package):
    logger = loggers_of(package).CSVLogger(str(tmp_path), name="csv")
    resolved = sinks_for_loggers([logger], tmp_path)
    assert resolved.kinds == ["csv"] and not resolved.notes
    write_all(resolved.sink, 3)
    logger.save()
    version_dir = Path(logger.log_dir)
    with (version_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["xai/grad_cam/stability"]) for r in rows] == [("3", "3.5")]
    png = version_dir / "xai_images" / "xai_grad_cam_overlay" / "step_0000003.png"
    assert Image.open(png).size == (10, 6) and Image.open(png).info["Description"] == "epoch 3"
    assert "**step 3**" in (version_dir / "xai_text.md").read_text()
    assert not (version_dir / "xai_scalars.csv").exists()  # scalars once, in the logger's own metrics.csv
    # a second run gets the next version directory: nothing is appended to the first run's files
    second = loggers_of(package).CSVLogger(str(tmp_path), name="csv")
    assert Path(second.log_dir) != version_dir
    write_all(sinks_for_loggers([second], tmp_path).sink, 3)
    assert len((version_dir / "xai_text.md").read_text().split("## ")) == 2


def test_no_logger_writes_a_new_version_dir_per_run(tmp_path):
    first = sinks_for_loggers([], tmp_path)
    second = sinks_for_loggers([], tmp_path)
    assert first.kinds == ["files"] and str(tmp_path / "lightning_xai" / "version_0") in first.notes[0]
    assert Path(second.sink.log_dir) == tmp_path / "lightning_xai" / "version_1"
    write_all(first.sink, 1)
    write_all(second.sink, 1)
    for run in ("version_0", "version_1"):
        with (tmp_path / "lightning_xai" / run / "xai_scalars.csv").open(newline="") as f:
            assert [r["tag"] for r in csv.DictReader(f)] == ["xai/grad_cam/stability"]


def test_unknown_logger_gets_scalars_and_one_note_naming_the_files(tmp_path):
    logger = UnknownLogger(tmp_path / "custom")
    resolved = sinks_for_loggers([logger], tmp_path)
    assert resolved.kinds == ["unknown"] and len(resolved.notes) == 1
    folder = tmp_path / "custom" / "lightning_xai" / "version_0"
    assert str(folder) in resolved.notes[0] and "UnknownLogger" in resolved.notes[0]
    write_all(resolved.sink, 2)
    assert logger.logged == [({"xai/grad_cam/stability": 2.5}, 2)]
    assert (folder / "xai_images" / "xai_grad_cam_overlay" / "step_0000002.png").exists()
    assert "**step 2**" in (folder / "xai_text.md").read_text()


def test_file_sink_embedding(tmp_path):
    sink = FileSink(tmp_path)
    thumbs = torch.zeros(2, 3, 4, 5, dtype=torch.uint8)
    thumbs[1, 1] = 255
    sink.add_embedding(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), [["a", "b"], ["c", "d"]], thumbs,
                       step=7, tag="xai/emb", metadata_header=["label", "pred"])
    folder = tmp_path / "xai_embeddings" / "xai_emb" / "step_0000007"
    assert (folder / "features.tsv").read_text() == "1.0\t2.0\n3.0\t4.0\n"
    assert (folder / "metadata.tsv").read_text() == "label\tpred\na\tb\nc\td\n"
    strip = np.array(Image.open(folder / "thumbnails.png"))
    assert strip.shape == (4, 10, 3) and (strip[:, 5:, 1] == 255).all() and (strip[:, :5] == 0).all()
    with pytest.raises(ValueError, match="features"):
        sink.add_embedding(torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match="metadata"):
        sink.add_embedding(torch.zeros(2, 2), ["only one"])
    with pytest.raises(ValueError, match="metadata_header"):
        sink.add_embedding(torch.zeros(1, 2), ["a"], metadata_header=["x", "y"])


# ------------------------------------------------------------------------------------------------ several, failures
def test_several_loggers_each_get_each_item_once(tmp_path):
    import lightning.pytorch.loggers as L_loggers
    import pytorch_lightning.loggers as pl_loggers

    tb = L_loggers.TensorBoardLogger(str(tmp_path), name="tb")
    tb_pl = pl_loggers.TensorBoardLogger(str(tmp_path), name="tb_pl")
    csv_logger = pl_loggers.CSVLogger(str(tmp_path), name="csv")
    unknown = UnknownLogger(tmp_path / "custom")
    resolved = sinks_for_loggers([tb, tb_pl, csv_logger, unknown, tb, unknown], tmp_path)  # repeats: no new sink
    assert resolved.kinds == ["tensorboard", "tensorboard", "csv", "unknown", "tensorboard", "unknown"]
    assert len(resolved.sink) == 6  # tb, tb_pl, csv (metrics, files), unknown (metrics, files)
    write_all(resolved.sink, 4)
    csv_logger.save()
    for logger in (tb, tb_pl):
        events = read_events(logger.log_dir)
        assert len(events["images"]["xai/grad_cam/overlay"]) == 1
        assert events["scalars"]["xai/grad_cam/stability"] == [(4, 4.5)]
        assert len(events["texts"]["xai/drift"]) == 1
    with (Path(csv_logger.log_dir) / "metrics.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == 1
    assert len(unknown.logged) == 1


def test_one_failing_sink_does_not_cost_the_others(tmp_path):
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the sink wants a directory")
    tb_dir = tmp_path / "tb"
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tb_dir))
    sink = MultiSink([FileSink(blocker / "run"), TensorBoardSink(writer)])
    with pytest.raises(SinkError, match="FileSink") as info:
        sink.add_image("xai/grad_cam/overlay", red(), 1)
    assert len(info.value.failures) == 1
    with pytest.raises(SinkError):
        sink.add_scalars({"xai/a": 1.0}, 1)
    writer.close()
    events = read_events(tb_dir)
    assert len(events["images"]["xai/grad_cam/overlay"]) == 1 and events["scalars"]["xai/a"] == [(1, 1.0)]


def test_a_logger_whose_sink_cannot_be_made_is_reported_and_the_others_work(tmp_path):
    blocker = tmp_path / "blocked"
    blocker.write_text("x")
    unknown = UnknownLogger(blocker)  # its fallback folder cannot be created
    import pytorch_lightning.loggers as pl_loggers

    tb = pl_loggers.TensorBoardLogger(str(tmp_path), name="tb")
    resolved = sinks_for_loggers([unknown, tb], tmp_path)
    assert resolved.kinds == ["error", "tensorboard"] and resolved.errors[0][0] == "UnknownLogger"
    write_all(resolved.sink, 0)
    tb.finalize("success")
    assert len(read_events(tb.log_dir)["images"]["xai/grad_cam/overlay"]) == 1


def test_metrics_sink_requires_log_metrics():
    with pytest.raises(TypeError, match="log_metrics"):
        MetricsSink(object())


def test_background_writes_report_each_failure_under_its_label():
    jobs = BackgroundWrites()
    done = []
    jobs.submit(("epoch", 3), lambda: (_ for _ in ()).throw(OSError("disk full")))
    jobs.submit(("epoch", 4), done.append, 4)
    failures = jobs.collect()
    assert [(label, str(err)) for label, err in failures] == [(("epoch", 3), "disk full")]
    assert done == [4] and jobs.pending == 0
    assert jobs.close() == []


# ------------------------------------------------------------------------------------------------ W&B, MLflow
def test_wandb_offline_round_trip(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from wandb_records import history, run_dirs

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="lightning_xai_test")
    resolved = sinks_for_loggers([logger], tmp_path)
    assert resolved.kinds == ["wandb"] and not resolved.notes
    write_all(resolved.sink, 6)
    logger.experiment.finish()
    wandb.teardown()  # the service writes the run's records when it stops (see wandb_records)

    (run,) = run_dirs(tmp_path)
    rows = history(run)
    by_key = {k: (row["trainer/global_step"], v) for row in rows for k, v in row.items()}
    assert by_key["xai/grad_cam/stability"] == (6, 6.5) and "xai/saliency/stability" not in by_key
    assert by_key["xai/grad_cam/overlay/captions"] == (6, ["epoch 6"])
    (image_file,) = by_key["xai/grad_cam/overlay/filenames"][1]
    pixels = np.array(Image.open(run / "files" / image_file))
    assert pixels.shape == (6, 10, 3) and (pixels[..., 0] == 255).all()
    table = json.loads((run / "files" / by_key["xai/drift/path"][1]).read_text())
    assert table == {"columns": ["step", "text"], "data": [[6, "**step 6**"]]}
    assert by_key["xai/integrated_gradients/completeness_error/_type"] == (6, "histogram")
    assert sum(len([k for k in row if k.startswith("xai/grad_cam/overlay/")]) > 0 for row in rows) == 1


def test_mlflow_file_store_round_trip(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    logger = MLFlowLogger(experiment_name="xai", tracking_uri=uri)
    resolved = sinks_for_loggers([logger], tmp_path)
    assert resolved.kinds == ["mlflow"] and not resolved.notes
    for step in (1, 2):
        write_all(resolved.sink, step)
    logger.finalize("success")

    client = MlflowClient(tracking_uri=uri)
    run_id = logger.run_id
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "xai/grad_cam/stability")] == [(1, 1.5),
                                                                                                         (2, 2.5)]
    assert client.get_metric_history(run_id, "xai/saliency/stability") == []

    def walk(path=None):
        for item in client.list_artifacts(run_id, path):
            yield from walk(item.path) if item.is_dir else [item.path]

    artifacts = sorted(walk())
    pngs = [a for a in artifacts if a.startswith("images/xai~grad_cam~overlay+step+") and a.endswith(".png")]
    assert sorted(int(a.split("+step+")[1].split("+")[0]) for a in pngs) == [1, 2]
    local = client.download_artifacts(run_id, pngs[0], str(tmp_path / "dl"))
    assert np.array(Image.open(local)).shape == (6, 10, 3)
    assert "xai/drift/step_0000002.md" in artifacts
    text = Path(client.download_artifacts(run_id, "xai/drift/step_0000002.md", str(tmp_path / "dl"))).read_text()
    assert text == "**step 2**"
    hist = json.loads(Path(client.download_artifacts(
        run_id, "xai/integrated_gradients/completeness_error/step_0000001.json", str(tmp_path / "dl"))).read_text())
    assert hist["values"] == pytest.approx([0.1, 0.2])


@pytest.mark.parametrize("name", ["background", "file", "tensorboard"])
def test_docstring_examples(name):
    import doctest

    module = importlib.import_module(f"lightning_xai.writers.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
