"""ExplanationMonitor(views=...) in real Trainer runs: logged events read back, no interference, failures isolated."""

from __future__ import annotations

import io
import warnings

import pytest
import pytorch_lightning as pl
import torch
from lit_models import TinyCNN, make_images, trainer_kwargs
from tb_events import read_events
from torch.utils.data import DataLoader, TensorDataset

from lightning_xai import ExplanationMonitor
from lightning_xai.datasets import ShapesDataset
from lightning_xai.views import MaxMinView

ALL = ("activations", "max_min", "projector", "activation_max", "dissection", "attention_graphs")
FAST = {"activation_max": {"steps": 4}, "attention_graphs": {"num_probes": 2, "grid": 2}}
IMAGES = ("xai/activations/top_channels", "xai/max_min/grid", "xai/activation_max/classes")


class ShapesModule(pl.LightningDataModule):
    """Shapes with masks; validation images carry the class marker, so dissection has a 'marker' concept."""

    def setup(self, stage: str) -> None:
        self.train_set = ShapesDataset(48, image_size=16, num_classes=3, seed=1)
        self.val_set = ShapesDataset(24, image_size=16, num_classes=3, seed=2, shortcut_strength=1.0)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=8, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=8)


def fit(tmp_path, callbacks=(), **overrides):
    pl.seed_everything(3, workers=True)
    model = TinyCNN()
    trainer = pl.Trainer(callbacks=list(callbacks), **trainer_kwargs(tmp_path, **overrides))
    trainer.fit(model, datamodule=ShapesModule())
    return trainer, model


def monitor(**kwargs) -> ExplanationMonitor:
    kwargs.setdefault("views", ALL)
    kwargs.setdefault("view_options", FAST)
    kwargs.setdefault("max_overhead", None)  # views every explained epoch (the default budget spaces them)
    return ExplanationMonitor(num_probes=4, methods=("grad_cam",), metrics=(), **kwargs)


def test_views_logged_from_a_real_fit_without_changing_training(tmp_path):
    trainer_a, model_a = fit(tmp_path / "a")
    rng_a = torch.get_rng_state()
    mon = monitor()
    trainer_b, model_b = fit(tmp_path / "b", callbacks=[mon])
    assert torch.equal(rng_a, torch.get_rng_state())
    for key, value in model_a.state_dict().items():
        assert torch.equal(value, model_b.state_dict()[key]), key
    opt_a, opt_b = trainer_a.optimizers[0].state_dict()["state"], trainer_b.optimizers[0].state_dict()["state"]
    assert all(torch.equal(opt_a[i]["momentum_buffer"], opt_b[i]["momentum_buffer"]) for i in opt_a)

    log_dir = trainer_b.logger.log_dir
    events = read_events(log_dir)
    steps = [r["step"] for r in mon.views_history]
    assert len(steps) == 3
    for tag in IMAGES:
        assert [e[0] for e in events["images"][tag]] == steps, tag
    for tag in ("xai/projector/centroid_accuracy", "xai/projector/silhouette", "xai/activation_max/gain",
                "xai/dissection/units/marker", "xai/dissection/units/circle", "xai/activations/dead_fraction"):
        assert [s for s, _ in events["scalars"][tag]] == steps, tag
    assert [s for s, _ in events["scalars"]["xai/max_min/change"]] == steps[1:]
    assert [s for s, _ in events["texts"]["xai/dissection/top_units"]] == steps
    assert [e[0] for e in events["images"]["xai/attention_graphs/probes"]] == [steps[-1]]
    assert "minimal sufficient" in events["texts"]["xai/attention_graphs/summary"][0][1] or \
        "no region" in events["texts"]["xai/attention_graphs/summary"][0][1]
    # the projector's files in the run's log directory, one embedding per epoch
    config = (trainer_b.logger.log_dir + "/projector_config.pbtxt")
    with open(config) as f:
        assert f.read().count("embeddings {") == 3
    assert [r["epoch"] for r in mon.views_history] == [0, 1, 2]
    # the checkpoint state stays plain (weights_only loading)
    buffer = io.BytesIO()
    torch.save(mon.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["views"]["max_min"]["previous"]


def _explode(self, ctx):
    raise RuntimeError("max_min exploded on this model")


class ExplodingMaxMin(MaxMinView):
    """A view that fails at every round (option problems are caught at setup, so a failure is injected)."""

    __call__ = _explode


def test_a_failing_view_warns_once_and_the_rest_is_written(tmp_path, monkeypatch):
    # a view that fails at every epoch (injected: every option problem is caught at setup now): one warning, not one
    # per epoch, the other views and the heatmaps written, and a summary with the count at the end of fit
    monkeypatch.setattr(MaxMinView, "__call__", _explode)
    mon = monitor(views=("max_min", "dissection"), view_options={})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, _ = fit(tmp_path, callbacks=[mon])
    messages = [str(w.message) for w in caught if "view(s) max_min failed" in str(w.message)]
    assert len(messages) == 2, messages  # the first occurrence, then the end-of-fit summary
    assert "exploded" in messages[0] and "Warned once" in messages[0]
    assert "3 times (epochs 0, 1, 2)" in messages[1]
    events = read_events(trainer.logger.log_dir)
    assert "xai/max_min/grid" not in events["images"]
    assert len(events["scalars"]["xai/dissection/units/marker"]) == 3
    assert len(events["images"]["xai/grad_cam/overlay"]) == 3
    assert trainer.current_epoch == 3  # trained to the end


def test_a_failing_view_raises_with_on_error_raise(tmp_path, monkeypatch):
    monkeypatch.setattr(MaxMinView, "__call__", _explode)
    mon = monitor(views=("max_min",), view_options={}, on_error="raise")
    with pytest.raises(RuntimeError, match="view\\(s\\) max_min failed"):
        fit(tmp_path, callbacks=[mon])


@pytest.mark.parametrize("kwargs, match", [
    ({"views": ("max_min",), "view_options": {"max_min": {"units": (99,)}}},
     r"`view_options\['max_min'\]\['units'\]=\[99\]`: must be channel indices of the views' layer 'features', which "
     r"has 8 channels"),
    ({"views": ("dissection",), "view_options": {}, "datamodule": "plain"}, "needs concept masks"),
])
def test_view_options_that_depend_on_the_model_fail_at_setup(tmp_path, kwargs, match):
    kwargs = dict(kwargs)
    plain = kwargs.pop("datamodule", None) == "plain"
    mon = monitor(**kwargs)
    started = []

    class Started(pl.Callback):
        def on_train_batch_start(self, *args):
            started.append(1)

    with pytest.raises(Exception, match=match) as info:
        if plain:  # images and labels only: no masks, no concept_masks()
            pl.seed_everything(3, workers=True)
            images, labels = make_images(24, seed=1)
            loader = DataLoader(TensorDataset(images, labels), batch_size=8)
            pl.Trainer(callbacks=[mon, Started()], **trainer_kwargs(tmp_path)).fit(TinyCNN(), loader, loader)
        else:
            fit(tmp_path, callbacks=[mon, Started()])
    assert type(info.value).__name__ == "MisconfigurationException" and not started


@pytest.mark.parametrize("kwargs, match", [
    ({"views": ("activation",)}, "views"),
    ({"views": ("activation_max",), "view_options": {"activation_max": {"steps": 0}}},
     "view_options\\['activation_max'\\].*steps"),
    ({"views": ("max_min",), "view_options": {"dissection": {}}}, "a view named in `views`"),
    ({"views": ("dissection",), "view_options": {"pool": {"size": 0}}}, "view_options\\['pool'\\]\\['size'\\]"),
])
def test_bad_view_arguments_fail_at_init(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExplanationMonitor(**kwargs)


class Done(pl.Callback):
    """Every rank writes a file when it gets to the end of training (a rank left waiting never does)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module) -> None:
        with open(f"{self.out_dir}/rank{trainer.global_rank}_done.txt", "w") as f:
            f.write(str(trainer.global_step))


@pytest.mark.timeout(300)  # spawns two processes; generous on a busy machine
def test_ddp_views_on_rank_zero_and_a_rank_zero_failure_never_leaves_a_rank_waiting(tmp_path):
    # max_min fails on rank 0 (the only rank computing views); the ranks agree, warn, and train on together
    mon = monitor(views=("max_min", "dissection", "projector"), view_options={})
    mon._views.views["max_min"] = ExplodingMaxMin()  # module level: the spawned workers unpickle it
    kwargs = trainer_kwargs(str(tmp_path), devices=2, strategy="ddp_spawn", max_epochs=2, limit_train_batches=2,
                            limit_val_batches=1, num_sanity_val_steps=0, deterministic=False)
    trainer = pl.Trainer(callbacks=[mon, Done(str(tmp_path))], **kwargs)
    trainer.fit(TinyCNN(), datamodule=ShapesModule())
    assert [(tmp_path / f"rank{r}_done.txt").read_text() for r in range(2)] == ["4", "4"]  # 2 epochs x 2 batches
    events = read_events(tmp_path / "tb")
    assert len(events["files"]) == 1  # rank 0 wrote everything
    assert len(events["scalars"]["xai/dissection/units/marker"]) == 2
    assert len(events["scalars"]["xai/projector/centroid_accuracy"]) == 2
    assert "xai/max_min/grid" not in events["images"]
    assert len(events["images"]["xai/grad_cam/overlay"]) == 2
