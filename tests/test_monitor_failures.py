"""Failure paths of the monitor in real Trainer runs (issue 12: paths 4, 5, 6, 9): a second fit, skipped or
non-finite epochs seen by EarlyStopping/ModelCheckpoint, arguments that used to fail every epoch, on_drift errors and
several monitors in one Trainer."""

from __future__ import annotations

import math
import warnings

import pytest
import pytorch_lightning as pl
import torch
from lit_models import TinyCNN, TinyDataModule, make_images, trainer_kwargs
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from tb_events import read_events
from torch.utils.data import DataLoader, TensorDataset

from lightning_xai import ExplanationMonitor

FIXED_IG = {"integrated_gradients": {"n_steps": 4, "tolerance": None}}


def monitor(**kwargs) -> ExplanationMonitor:
    kwargs.setdefault("num_probes", 6)
    kwargs.setdefault("metrics", ())
    if "integrated_gradients" in kwargs.get("methods", ("integrated_gradients",)):
        kwargs.setdefault("method_options", FIXED_IG)
    return ExplanationMonitor(**kwargs)


def fit(tmp_path, callbacks, model=None, datamodule=None, **overrides):
    pl.seed_everything(0)
    trainer = pl.Trainer(callbacks=list(callbacks), **trainer_kwargs(tmp_path, **overrides))
    trainer.fit(model if model is not None else TinyCNN(), datamodule=datamodule or TinyDataModule())
    return trainer


class SeededData(pl.LightningDataModule):
    """TinyDataModule with its own validation data: another fit, other probes."""

    def __init__(self, val_seed: int) -> None:
        super().__init__()
        self.val_seed = val_seed

    def setup(self, stage: str) -> None:
        self.train_set = TensorDataset(*make_images(48, seed=1))
        self.val_set = TensorDataset(*make_images(24, seed=self.val_seed))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=8)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=8)


class Frozen(TinyCNN):
    """lr=0 and BatchNorm momentum 0: weights and statistics never move, so maps stay put within a fit."""

    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed)
        super().__init__(lr=0.0, dropout=0.0)
        self.features[1].momentum = 0.0


# ------------------------------------------------------------------------------------------ path 4: a second fit
def test_a_second_fit_starts_its_own_history_with_new_probes_and_reference(tmp_path):
    m = monitor(methods=("grad_cam", "saliency"), drift={"warmup_epochs": 1})
    fit(tmp_path / "a", [m], model=Frozen(seed=1), datamodule=SeededData(val_seed=2), max_epochs=2)
    first_probes = m.probe_set.fingerprint
    assert [r["epoch"] for r in m.history] == [0, 1]

    # another model on other data: compared with the first fit's maps every probe would look drifted
    fit(tmp_path / "b", [m], model=Frozen(seed=5), datamodule=SeededData(val_seed=9), max_epochs=2)
    assert m.probe_set.fingerprint != first_probes  # probes taken from this fit's data
    assert [r["epoch"] for r in m.history] == [0, 1]  # its own history
    for record in m.history:  # compared with its own reference: the frozen model's maps do not move
        for method in ("grad_cam", "saliency"):
            assert min(record["stability"][method]) > 0.999, (method, record["stability"][method])
            assert not any(record["flags"][method])


# ------------------------------------------------------------------------------------------ path 5: stale metrics
class ExplodingOnEpoch(TinyCNN):
    """Raises inside forward while explained at epoch 1 (eval mode, gradients enabled)."""

    def forward(self, x):
        if not self.training and torch.is_grad_enabled() and self.current_epoch == 1:
            raise RuntimeError("boom in forward")
        return super().forward(x)


class Spy(Callback):
    """Records the monitor's keys in callback_metrics after each validation epoch (after the monitor's hook)."""

    def __init__(self, stop: EarlyStopping | None = None):
        self.seen: list[dict[str, float]] = []
        self.stop, self.waits = stop, []

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.seen.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("xai/")})

    def on_train_epoch_end(self, trainer, pl_module):  # after EarlyStopping's check at on_validation_end
        if self.stop is not None:
            self.waits.append(self.stop.wait_count)


def test_a_skipped_epoch_leaves_no_stale_value_for_early_stopping_or_checkpoint(tmp_path):
    stop = EarlyStopping(monitor="xai/grad_cam/stability", mode="max", patience=10, strict=False)
    spy = Spy(stop)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="xai/saliency/stability", mode="max", save_top_k=2,
                           filename="{epoch}")
    with pytest.warns(UserWarning, match="boom in forward"):
        trainer = fit(tmp_path, [monitor(methods=("grad_cam", "saliency")), spy, stop, ckpt],
                      model=ExplodingOnEpoch(), max_epochs=3, enable_checkpointing=True)
    assert trainer.current_epoch == 3 and len(spy.seen) == 3  # training went on
    before, skipped, after = spy.seen
    assert "xai/grad_cam/stability" in before and "xai/grad_cam/stability" in after
    assert "xai/grad_cam/stability" not in skipped  # EarlyStopping(strict=False) skips the epoch
    assert "xai/grad_cam/drift" not in skipped  # nobody watches it: simply gone
    assert math.isnan(skipped["xai/saliency/stability"])  # ModelCheckpoint ranks NaN last
    assert spy.waits[0] == spy.waits[1] == 0  # the skipped epoch is not counted as one without improvement
    assert sorted(p.rsplit("/", 1)[-1] for p in ckpt.best_k_models) == ["epoch=0.ckpt", "epoch=2.ckpt"]


def test_a_skipped_epoch_under_strict_early_stopping_keeps_training_and_says_so(tmp_path):
    stop = EarlyStopping(monitor="xai/grad_cam/stability", mode="max", patience=10)  # strict, check_finite
    with pytest.warns(UserWarning, match="sees its last measured value"):
        trainer = fit(tmp_path, [monitor(methods=("grad_cam",)), stop], model=ExplodingOnEpoch(), max_epochs=3)
    assert trainer.current_epoch == 3


class NaNAt(Frozen):
    """NaN logits at epoch 1 only, outside training steps: that epoch every map is non-finite."""

    def forward(self, x):
        out = super().forward(x)
        return out * float("nan") if not self.training and self.current_epoch == 1 else out

    def validation_step(self, batch, batch_idx):
        pass


def test_non_finite_epochs_leave_no_stale_values_and_never_become_the_reference(tmp_path):
    spy = Spy()
    m = monitor(methods=("grad_cam",))
    with pytest.warns(UserWarning, match="non-finite"):
        fit(tmp_path, [m, spy], model=NaNAt(seed=0), max_epochs=3)
    assert "xai/grad_cam/stability" in spy.seen[0]
    assert "xai/grad_cam/stability" not in spy.seen[1]  # nothing measurable, nothing stale
    # epoch 2 is compared with epoch 0's maps (the last finite ones): the frozen model's maps did not move
    assert spy.seen[2]["xai/grad_cam/stability"] > 0.999
    assert all(math.isfinite(v) for seen in spy.seen for v in seen.values())


# ------------------------------------------------------------------------------------------ path 6: bad arguments
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method_options": {"integrated_gradients": {"n_steps": 1}}},
         r"method_options\['integrated_gradients'\]\['n_steps'\]=1"),
        ({"display": {"mean": [float("nan")] * 3, "std": [0.2] * 3}}, r"display\['mean'\]"),
        ({"display": {"mean": [0.5] * 3, "std": [float("inf")] * 3}}, r"display\['std'\]"),
        ({"probes": (torch.full((2, 3, 8, 8), float("nan")), torch.tensor([0, 1]))}, r"probes\[0\].*NaN/inf"),
        ({"probes": torch.full((2, 3, 8, 8), float("inf"))}, r"probes=.*NaN/inf"),
        ({"methods": None}, "methods=None"),
        ({"metrics": None}, "metrics=None"),
        ({"display": {"class_names": 5}}, r"display\['class_names'\]=5"),
        ({"probes": (torch.zeros(2, 3, 8, 8), torch.tensor([0.5, 1.0]))}, r"probes\[1\].*0.5"),
        ({"probes": (torch.zeros(2, 3, 8, 8), torch.tensor([-5, 1]))}, r"probes\[1\].*-5"),
        ({"log_images": "no"}, "log_images='no'"),
        ({"drift": {"window": 0}}, r"drift\['window'\]"),
        ({"drift": {"warmup_epochs": -1}}, r"drift\['warmup_epochs'\]"),
    ],
)
def test_bad_arguments_fail_at_init_naming_them(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ExplanationMonitor(**kwargs)


def test_probes_as_a_list_work(tmp_path):
    images, labels = make_images(6, seed=3)
    m = monitor(probes=[images, labels], methods=("grad_cam",))
    fit(tmp_path, [m], max_epochs=1)
    assert m.probe_set.labels.tolist() == [0, 1, 2, 0, 1, 2] and len(m.history) == 1


class NaNImages(torch.utils.data.Dataset):
    def __init__(self):
        self.images, self.labels = make_images(6, seed=3)
        self.images[2] = float("nan")

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"metrics": ("sanity",), "metric_options": {"sanity": {"layers": 50}}, "on_error": "warn"},
         r"metric_options\['sanity'\]\['layers'\]=50.*4 layers"),
        ({"probes": NaNImages()}, r"NaN/inf \(probe ids \[2\]\)"),
    ],
    ids=["sanity_layers", "nan_dataset_images"],
)
def test_model_dependent_arguments_fail_at_setup(tmp_path, kwargs, match):
    started = []

    class Started(Callback):
        def on_train_batch_start(self, *args):
            started.append(1)

    with pytest.raises(MisconfigurationException, match=match):
        fit(tmp_path, [monitor(**kwargs), Started()], max_epochs=1)
    assert not started


# ------------------------------------------------------------------------------------------ path 9
class MaskedCNN(Frozen):
    """A frozen model that only sees a vertical band of the image (set by a buffer): the band is where it looks."""

    def __init__(self, left: bool = True) -> None:
        super().__init__(seed=3)
        self.register_buffer("band", torch.zeros(1, 1, 16, 16))
        self.band[..., :, 0:5] = 1.0 if left else 0.0
        if not left:
            self.band[..., :, 11:16] = 1.0

    def forward(self, x):
        return self.head(self.features(x * self.band))


class SwapAt(Callback):
    """Loads other weights/buffers at the start of an epoch: the evidence moves on purpose."""

    def __init__(self, epoch: int, state: dict) -> None:
        self.epoch, self.state = epoch, state

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            pl_module.load_state_dict(self.state)


def _raise(report):
    raise ValueError("on_drift exploded")


def test_on_drift_raising_obeys_on_error(tmp_path):
    kwargs = dict(methods=("grad_cam", "saliency"), drift={"warmup_epochs": 1}, on_drift=_raise)
    moved = MaskedCNN(left=False).state_dict()
    with pytest.warns(UserWarning, match="on_drift.*on_drift exploded"):
        trainer = fit(tmp_path / "warn", [monitor(**kwargs), SwapAt(4, moved)], model=MaskedCNN(), max_epochs=5)
    assert trainer.current_epoch == 5  # training went on
    with pytest.raises(RuntimeError, match="on_drift exploded"):
        fit(tmp_path / "raise", [monitor(on_error="raise", **kwargs), SwapAt(4, moved)], model=MaskedCNN(),
            max_epochs=5)


def test_two_monitors_write_distinct_tags(tmp_path):
    a = monitor(methods=("grad_cam",), views=("activations",))
    b = monitor(methods=("grad_cam", "saliency"), num_probes=3, views=("activations",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = fit(tmp_path, [a, b], max_epochs=2)
    events = read_events(trainer.logger.log_dir)
    steps = [4, 8]
    for suffix in ("monitor_0", "monitor_1"):
        assert [s for s, _ in events["texts"][f"xai/drift/{suffix}"]] == steps
        assert [s for s, *_ in events["images"][f"xai/grad_cam/overlay/{suffix}"]] == steps
        # both log grad_cam's scalars: each under its own name, once per step
        assert [s for s, _ in events["scalars"][f"xai/grad_cam/stability/{suffix}"]] == steps
    assert "xai/drift" not in events["texts"] and "xai/grad_cam/stability" not in events["scalars"]
    assert "xai/saliency/overlay/monitor_1" in events["images"]
    # timelines and the views' items carry the suffix too (one place names every tag: callbacks/_tags.py)
    for suffix in ("monitor_0", "monitor_1"):
        assert f"xai/grad_cam/timeline/{suffix}" in events["images"]
        assert f"xai/activations/top_channels/{suffix}" in events["images"]
        assert f"xai/activations/dead_fraction/{suffix}" in events["scalars"]
    assert not [t for t in events["images"] if t.endswith(("/timeline", "/top_channels"))]
    assert "xai/grad_cam/stability/monitor_1" in b.logged_keys()
