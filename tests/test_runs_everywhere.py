"""Real Trainer runs of the monitor with either Lightning package, every common logger, and the failure paths that
used to leak: an overlay failure losing the next epoch's scalars (2), start-of-fit writes bypassing on_error (3), extra
forwards changing the model's state or its logged values (7), a model that only runs at its training batch size (8).
Rank-split probes under DDP (1) are in tests/test_distributed_paths.py."""

from __future__ import annotations

import csv
import importlib
import warnings
from pathlib import Path

import pytest
import torch
from flaky_loggers import FlakyTensorBoardLogger
from lit_models import NUM_CLASSES, make_images
from tb_events import read_events
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_xai import ExplanationMonitor

PACKAGES = ("lightning.pytorch", "pytorch_lightning")
METHODS = ("grad_cam", "saliency")


def make_net(package: str, *, counting: bool = False, fixed_batch: int | None = None):
    """A tiny classifier built on ``package``'s LightningModule. ``counting``: forward increments a buffer that
    scales the output and calls ``self.log()``; ``fixed_batch``: forward only runs at that batch size."""
    pkg = importlib.import_module(package)

    class Net(pkg.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.bn = nn.BatchNorm2d(6)
            self.drop = nn.Dropout(0.2)
            self.head = nn.Linear(6, NUM_CLASSES)
            self.register_buffer("calls", torch.zeros((), dtype=torch.long))

        def forward(self, x):
            h = self.drop(torch.relu(self.bn(self.conv(x)))).mean(dim=(2, 3))
            if fixed_batch is not None:
                h = h.view(fixed_batch, 6)  # the batch size is baked in
            out = self.head(h)
            if counting:
                self.calls += 1
                out = out * (1.0 + 1e-3 * self.calls.float())
                self.log("forward_abs_mean", x.abs().mean(), on_step=False, on_epoch=True)
            return out

        def training_step(self, batch, batch_idx):
            loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    return Net


def loaders(batch_size: int = 8, drop_last: bool = False):
    train = TensorDataset(*make_images(32, seed=1))
    val = TensorDataset(*make_images(16, seed=2))
    return (DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=drop_last),
            DataLoader(val, batch_size=batch_size, drop_last=drop_last))


def fit(package: str, tmp_path: Path, callbacks=(), net=None, logger=None, max_epochs: int = 2, **kwargs):
    """Seeded fit; ``net`` is a LightningModule class (built after seeding) or None for the plain one."""
    pkg = importlib.import_module(package)
    pkg.seed_everything(7, workers=True)
    net = (net or make_net(package))()
    options = dict(default_root_dir=str(tmp_path), max_epochs=max_epochs, limit_train_batches=3, limit_val_batches=2,
                   accelerator="cpu", devices=1, deterministic=True, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False,
                   logger=logger if logger is not None else False, callbacks=list(callbacks))
    trainer = pkg.Trainer(**{**options, **kwargs})
    train, val = loaders()
    trainer.fit(net, train_dataloaders=train, val_dataloaders=val)
    return trainer, net


def monitor(**kwargs) -> ExplanationMonitor:
    kwargs.setdefault("num_probes", 4)
    kwargs.setdefault("methods", METHODS)
    kwargs.setdefault("metrics", ())
    return ExplanationMonitor(**kwargs)


# ------------------------------------------------------------------------------------------ either package
@pytest.mark.parametrize("package", PACKAGES)
def test_a_trainer_of_either_package_gets_everything(tmp_path, package):
    pkg = importlib.import_module(package)
    mon = monitor(metrics=("sanity",))
    assert isinstance(mon, pkg.callbacks.Callback)
    logger = pkg.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    early = pkg.callbacks.EarlyStopping(monitor="xai/grad_cam/stability", mode="max", patience=10)
    ckpt = pkg.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="xai/grad_cam/stability", mode="max")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, _ = fit(package, tmp_path, callbacks=[mon, early, ckpt], logger=logger, enable_checkpointing=True)
    assert not [w for w in caught if "ExplanationMonitor" in str(w.message)], [str(w.message) for w in caught]
    events = read_events(logger.log_dir)
    steps = [h["step"] for h in mon.history]
    assert len(steps) == 2
    for m in METHODS:  # overlays, scalars and the drift text reach TensorBoard, once per explained epoch
        assert [s for s, *_ in events["images"][f"xai/{m}/overlay"]] == steps
        assert [s for s, _ in events["scalars"][f"xai/{m}/stability"]] == steps
        assert [s for s, _ in events["scalars"][f"xai/{m}/sanity_similarity"]] == [trainer.global_step]  # end of fit
    assert [s for s, _ in events["texts"]["xai/drift"]] == steps
    assert ckpt.best_model_score is not None and torch.isfinite(ckpt.best_model_score)
    assert early.wait_count >= 0 and "xai/grad_cam/stability" in trainer.callback_metrics


@pytest.mark.parametrize("package", PACKAGES)
def test_setup_errors_are_that_packages_exception(tmp_path, package):
    pkg = importlib.import_module(package)
    error = pkg.utilities.exceptions.MisconfigurationException
    with pytest.raises(error, match="does not log"):
        fit(package, tmp_path, callbacks=[monitor(), pkg.callbacks.EarlyStopping(monitor="xai/grad_cam/nope")])
    # EarlyStopping of this package is recognised: strict checking every epoch vs a monitor explaining every 2nd
    strict = pkg.callbacks.EarlyStopping(monitor="xai/grad_cam/stability", mode="max")
    with pytest.raises(error, match="strict=False"):
        fit(package, tmp_path, callbacks=[monitor(every_n_epochs=2), strict])
    with pytest.raises(error, match="layer"):
        fit(package, tmp_path, callbacks=[monitor(layer="no_such_layer")])


def test_several_loggers_each_get_each_item_once(tmp_path):
    import lightning.pytorch as L

    class ScalarOnlyLogger(L.loggers.Logger):
        """A logger of a kind the monitor does not know: scalars only."""

        def __init__(self, save_dir):
            super().__init__()
            self._save_dir, self.rows = str(save_dir), []

        name = "scalar_only"
        version = 0

        @property
        def save_dir(self):
            return self._save_dir

        def log_metrics(self, metrics, step=None):
            self.rows.append((dict(metrics), step))

        def log_hyperparams(self, *args, **kwargs):
            pass

    tb = L.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    csv_logger = L.loggers.CSVLogger(str(tmp_path), name="csv")
    other = ScalarOnlyLogger(tmp_path / "other")
    mon = monitor(methods=("saliency",))
    with pytest.warns(UserWarning, match=r"does not know how to send images and text to ScalarOnlyLogger") as rec:
        trainer, _ = fit("lightning.pytorch", tmp_path, callbacks=[mon], logger=[tb, csv_logger, other])
    notes = [w for w in rec if "does not know" in str(w.message)]
    assert len(notes) == 1 and str(tmp_path / "other" / "lightning_xai" / "version_0") in str(notes[0].message)
    steps = [h["step"] for h in mon.history]
    events = read_events(tb.log_dir)
    assert [s for s, *_ in events["images"]["xai/saliency/overlay"]] == steps
    assert [s for s, _ in events["scalars"]["xai/saliency/stability"]] == steps
    with (Path(csv_logger.log_dir) / "metrics.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("xai/saliency/stability")]
    assert [int(r["step"]) for r in rows] == steps
    pngs = sorted(p.name for p in Path(csv_logger.log_dir).rglob("*.png") if "overlay" in p.parent.name)
    assert pngs == [f"step_{s:07d}.png" for s in steps]  # the overlays; the timeline is one more, at the end
    assert [step for metrics, step in other.rows if "xai/saliency/stability" in metrics] == steps
    fallback = tmp_path / "other" / "lightning_xai" / "version_0"
    assert sorted(p.name for p in fallback.rglob("*.png") if "overlay" in p.parent.name) == pngs


# ------------------------------------------------------------------------------------------ failure paths 2 and 3
def flaky_logger(tmp_path, **flaky):
    return FlakyTensorBoardLogger(str(tmp_path), name="tb", **flaky)


def test_an_overlay_failure_is_reported_for_its_epoch_and_costs_the_next_epoch_nothing(tmp_path):
    # 3 train batches per epoch: epoch e ends at step 3 * (e + 1); the overlays of epoch 1 (step 6) fail
    logger = flaky_logger(tmp_path, fail_image_steps={6})
    mon = monitor()
    with pytest.warns(UserWarning, match=r"failed at epoch 1 \(writing\).*overlays of epoch 1 \(step 6\)") as rec:
        fit("lightning.pytorch", tmp_path, callbacks=[mon], logger=logger, max_epochs=4)
    assert len([w for w in rec if "ExplanationMonitor failed" in str(w.message)]) == 1
    events = read_events(logger.log_dir)
    assert [s for s, _ in events["scalars"]["xai/grad_cam/stability"]] == [3, 6, 9, 12]  # epoch 2 (step 9) kept
    assert [s for s, _ in events["texts"]["xai/drift"]] == [3, 6, 9, 12]
    for m in METHODS:
        assert [s for s, *_ in events["images"][f"xai/{m}/overlay"]] == [3, 9, 12]


@pytest.mark.parametrize("on_error", ["warn", "raise"])
def test_start_of_fit_writes_obey_on_error(tmp_path, on_error):
    blocked = tmp_path / "not_a_dir"
    blocked.write_text("the run's default_root_dir is a file: no fallback directory can be made")
    mon = monitor(metrics=("sanity",), on_error=on_error)  # the first write: epoch 0's round (no sanity check at start)
    if on_error == "raise":
        with pytest.raises(RuntimeError, match=r"failed at epoch 0 \(writing\)"):
            fit("pytorch_lightning", blocked, callbacks=[mon])
        return
    with pytest.warns(UserWarning, match=r"failed at epoch 0 \(writing\).*NotADirectoryError"):
        trainer, _ = fit("pytorch_lightning", blocked, callbacks=[mon])
    assert trainer.global_step == 6 and len(mon.history) == 2  # trained and explained on


def test_a_writer_that_always_fails_never_stops_training(tmp_path):
    logger = flaky_logger(tmp_path, broken=True)
    mon = monitor(metrics=("sanity",))
    with pytest.warns(UserWarning, match="No space left on device"):
        trainer, _ = fit("lightning.pytorch", tmp_path, callbacks=[mon], logger=logger, max_epochs=2)
    assert trainer.global_step == 6 and len(mon.history) == 2
    assert "xai/grad_cam/stability" in trainer.callback_metrics  # monitored values still reach EarlyStopping & co


# ------------------------------------------------------------------------------------------ failure path 7
@pytest.mark.parametrize(("package", "views"), [*((p, ()) for p in PACKAGES),
                                                  ("lightning.pytorch", ("activations", "max_min"))])
def test_extra_forwards_leave_state_and_logged_values_bitwise_unchanged(tmp_path, package, views):
    Net = make_net(package, counting=True)
    runs = {}
    for name, callbacks in (("plain", []), ("monitored", [monitor(metrics=("sanity",), views=views)])):
        trainer, net = fit(package, tmp_path / name, callbacks=callbacks, net=Net, max_epochs=2)
        runs[name] = (net.state_dict(), {k: v.clone() for k, v in trainer.callback_metrics.items()
                                         if not k.startswith("xai/")},
                      {k: float(v) for k, v in trainer.logged_metrics.items() if not k.startswith("xai/")})
    (sd_a, cb_a, log_a), (sd_b, cb_b, log_b) = runs["plain"], runs["monitored"]
    assert sd_a.keys() == sd_b.keys()
    for key in sd_a:  # weights, BatchNorm statistics and the user's own counter
        assert torch.equal(sd_a[key], sd_b[key]), key
    assert int(sd_b["calls"]) > 0
    assert cb_a.keys() == cb_b.keys() and all(torch.equal(cb_a[k], cb_b[k]) for k in cb_a), (cb_a, cb_b)
    assert log_a == log_b and "forward_abs_mean" in log_a


# ------------------------------------------------------------------------------------------ failure path 8
def test_a_model_that_only_runs_at_its_training_batch_size_gets_a_clear_setup_error(tmp_path):
    import lightning.pytorch as L

    Net = make_net("lightning.pytorch", fixed_batch=8)
    with pytest.raises(L.utilities.exceptions.MisconfigurationException,
                       match=r"runs on a batch of 8 images \(the training batch size\) but fails on 1 image") as info:
        fit("lightning.pytorch", tmp_path, callbacks=[monitor()], net=Net)
    assert "internal_batch_size" in str(info.value) and "x.view(x.shape[0], -1)" in str(info.value)


@pytest.mark.slow  # W&B's service and MLflow's import take ~20 s; tests/test_sinks.py reads both back by default
def test_wandb_and_mlflow_next_to_tensorboard_in_a_real_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    import lightning.pytorch as L
    from mlflow.tracking import MlflowClient
    from wandb_records import history, run_dirs

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    tb = L.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    wb = L.loggers.WandbLogger(save_dir=str(tmp_path), offline=True, project="lightning_xai_test")
    ml = L.loggers.MLFlowLogger(experiment_name="xai", tracking_uri=uri)
    mon = monitor(methods=("saliency",))
    fit("lightning.pytorch", tmp_path, callbacks=[mon], logger=[tb, wb, ml])
    wandb.teardown()
    steps = [h["step"] for h in mon.history]
    assert [s for s, *_ in read_events(tb.log_dir)["images"]["xai/saliency/overlay"]] == steps
    rows = history(run_dirs(tmp_path)[0])
    assert [r["trainer/global_step"] for r in rows if "xai/saliency/overlay/filenames" in r] == steps
    assert [r["trainer/global_step"] for r in rows if "xai/saliency/stability" in r] == steps
    assert [r["trainer/global_step"] for r in rows if "xai/drift/path" in r] == steps
    client = MlflowClient(tracking_uri=uri)
    assert [m.step for m in client.get_metric_history(ml.run_id, "xai/saliency/stability")] == steps
    images = [a.path for a in client.list_artifacts(ml.run_id, "images")  # overlays; the timeline comes at fit end
              if a.path.endswith(".png") and "overlay" in a.path]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in images) == steps
