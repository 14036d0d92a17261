"""ExplanationMonitor in real Trainer runs: interference, logged events, resume, drift, failures, errors."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from lit_models import (
    NUM_CLASSES,
    DictDataset,
    TinyCNN,
    TinyDataModule,
    TrainOnlyDataModule,
    TupleOutputCNN,
    make_images,
    trainer_kwargs,
)
from observer_checks import assert_same_training
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from tb_events import read_events
from torch.utils.data import DataLoader

from lightning_xai import ExplanationMonitor
from lightning_xai.attribution import explain, to_heatmap
from lightning_xai.callbacks import ExplanationMonitor as ExplanationMonitorFromCallbacks

METHODS = ("grad_cam", "saliency", "integrated_gradients")


def fit(tmp_path, callbacks=(), model=None, datamodule=None, seed=7, ckpt_path=None, **overrides):
    pl.seed_everything(seed, workers=True)
    model = model if model is not None else TinyCNN()
    trainer = pl.Trainer(callbacks=list(callbacks), **trainer_kwargs(tmp_path, **overrides))
    trainer.fit(model, datamodule=datamodule if datamodule is not None else TinyDataModule(), ckpt_path=ckpt_path)
    return trainer, model


def small_monitor(n_steps=8, ig_tolerance=None, **kwargs) -> ExplanationMonitor:
    # fixed IG steps by default: fast and predictable; adaptive IG is tested below. No budget: every method at every
    # explained epoch (the default max_overhead="auto" runs IG only when the run has paid for it: tests/test_budget.py)
    kwargs.setdefault("num_probes", 6)
    kwargs.setdefault("max_overhead", None)
    if "integrated_gradients" in kwargs.get("methods", METHODS):
        kwargs.setdefault("method_options", {"integrated_gradients": {"n_steps": n_steps, "tolerance": ig_tolerance}})
    return ExplanationMonitor(**kwargs)


def tb_dir(trainer) -> str:
    return trainer.logger.log_dir


# ---------------------------------------------------------------------------------------------- the observer
@pytest.mark.parametrize(
    "datamodule_cls, overrides",
    [
        (TinyDataModule, {}),  # validation under inference_mode
        (TinyDataModule, {"inference_mode": False}),  # validation under no_grad
        (TrainOnlyDataModule, {}),  # no validation loop: explained at on_train_epoch_end
        (TinyDataModule, {"accumulate_grad_batches": 2}),
    ],
    ids=["inference_mode", "no_grad", "no_val_loop", "accumulate"],
)
def test_training_is_bitwise_identical_with_and_without_monitor(tmp_path, datamodule_cls, overrides):
    trainer_a, model_a = fit(tmp_path / "a", datamodule=datamodule_cls(), **overrides)
    rng_a = torch.get_rng_state()
    monitor = small_monitor()
    trainer_b, model_b = fit(tmp_path / "b", callbacks=[monitor], datamodule=datamodule_cls(), **overrides)
    rng_b = torch.get_rng_state()

    assert len(monitor.history) == 3, "the monitor must actually have run at every epoch"
    assert_same_training(trainer_a, model_a, rng_a, trainer_b, model_b, rng_b)


class SentinelMonitor(ExplanationMonitor):
    """Puts a sentinel in every .grad right before explaining and checks grads, flags and hooks right after."""

    checked = 0

    def on_validation_epoch_end(self, trainer, pl_module):
        sentinels = []
        for p in pl_module.parameters():
            p.grad = torch.full_like(p, 3.25)
            sentinels.append(p.grad)
        pl_module.features[1].train()  # a user-frozen mix of train/eval flags must come back as it was
        flags = [m.training for m in pl_module.modules()]
        super().on_validation_epoch_end(trainer, pl_module)
        for p, s in zip(pl_module.parameters(), sentinels):
            assert p.grad is s and torch.all(p.grad == 3.25)
        assert flags == [m.training for m in pl_module.modules()]
        hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                    for m in pl_module.modules())
        assert hooks == 0
        self.checked += 1
        for p in pl_module.parameters():
            p.grad = None


def test_grad_sentinel_flags_and_hooks_untouched(tmp_path):
    monitor = SentinelMonitor(num_probes=4, method_options={"integrated_gradients": {"n_steps": 4}})
    fit(tmp_path, callbacks=[monitor], max_epochs=2)
    assert monitor.checked == 3  # sanity check + 2 epochs
    assert len(monitor.history) == 2


# ---------------------------------------------------------------------------------------------- what is logged
def test_events_read_back(tmp_path):
    monitor = small_monitor(every_n_epochs=1, ig_tolerance=0.02)  # the default: adaptive IG
    trainer, _ = fit(tmp_path, callbacks=[monitor], max_epochs=3, num_sanity_val_steps=2)
    events = read_events(tb_dir(trainer))
    assert len(events["files"]) == 1
    steps_per_epoch = 4
    expected_steps = [steps_per_epoch * (e + 1) for e in range(3)]
    for m in METHODS:
        images = events["images"][f"xai/{m}/overlay"]
        assert [s for s, *_ in images] == expected_steps  # one per epoch, none from the sanity check
        for _, width, height, pixels in images:
            # 6 probes in rows of 4: 16 px probes enlarged 4x to 64 px tiles with 4 px gaps (TensorBoard's card width)
            assert width == 4 + 4 * (64 + 4)
            assert pixels.shape == (height, width, 3) and height > 2 * 64
        stability = events["scalars"][f"xai/{m}/stability"]
        assert [s for s, _ in stability] == expected_steps
        assert all(-1.0 <= v <= 1.0 for _, v in stability)
        assert [s for s, _ in events["scalars"][f"xai/{m}/drift"]] == expected_steps
    ig_err = events["scalars"]["xai/integrated_gradients/completeness_error"]
    assert len(ig_err) == 3 and all(math.isfinite(v) and 0 <= v <= 0.02 for _, v in ig_err)  # tolerance met
    histogram = events["histograms"]["xai/integrated_gradients/completeness_error"]
    assert [(step, count) for step, count, _, _ in histogram] == [(s, 6) for s in expected_steps]  # one per probe
    assert all(0.0 <= low <= high for _, _, low, high in histogram)
    texts = events["texts"]["xai/drift"]
    assert [s for s, _ in texts] == expected_steps
    assert "stability" in texts[0][1]
    for m in METHODS:
        assert f"xai/{m}/stability" in trainer.callback_metrics


def test_every_n_epochs_and_no_validation_loop(tmp_path):
    monitor = small_monitor(every_n_epochs=2, methods=("grad_cam",))
    trainer, _ = fit(tmp_path, callbacks=[monitor], datamodule=TrainOnlyDataModule(), max_epochs=5)
    events = read_events(tb_dir(trainer))
    assert [s for s, *_ in events["images"]["xai/grad_cam/overlay"]] == [8, 16]
    assert [r["epoch"] for r in monitor.history] == [1, 3]
    assert "xai/saliency/overlay" not in events["images"]


def test_no_arguments_ordinary_module(tmp_path):
    """The headline promise: ExplanationMonitor() with no arguments on an ordinary module and datamodule."""
    monitor = ExplanationMonitor()
    trainer, _ = fit(tmp_path, callbacks=[monitor], max_epochs=1)
    # the last 4-D activation before the head: the features container or its last ReLU (same tensor)
    assert monitor.layer_name in ("features", "features.5")
    assert len(monitor.probe_set) == 16
    labels = monitor.probe_set.labels.tolist()
    assert sorted(labels.count(k) for k in range(NUM_CLASSES)) in ([5, 5, 6], [5, 6, 5], [6, 5, 5])
    assert len(monitor.history) == 1


def test_dict_samples_and_tuple_outputs(tmp_path):
    val = DataLoader(DictDataset(12, seed=3), batch_size=4)
    monitor = small_monitor(probes=val, probe_options={"input_key": "pixels", "label_key": "target"},
                            output_transform=_first)
    pl.seed_everything(0)
    images, labels = make_images(24, seed=1)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=2))
    trainer.fit(TupleOutputCNN(), train_dataloaders=DataLoader(list(zip(images, labels)), batch_size=8))
    assert len(monitor.history) == 2
    assert monitor.probe_set.labels.tolist() == [0, 1, 2, 0, 1, 2]


def _first(output):
    return output[0]


def test_file_writer_without_tensorboard(tmp_path):
    monitor = small_monitor(methods=("saliency",))
    logger = pl.loggers.CSVLogger(str(tmp_path), name="csv")
    fit(tmp_path, callbacks=[monitor], max_epochs=2, logger=logger)
    pngs = sorted(os.path.basename(d) for d, _, files in os.walk(logger.log_dir) for f in files if f.endswith(".png"))
    assert pngs == ["xai_saliency_overlay", "xai_saliency_overlay", "xai_saliency_timeline"]  # 2 epochs + timeline
    csv_metrics = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files if f == "metrics.csv"]
    assert csv_metrics and "xai/saliency/drift" in Path(csv_metrics[0]).read_text()


# ---------------------------------------------------------------------------------------------- monitoring
def test_early_stopping_and_checkpoint_can_monitor_from_first_epoch(tmp_path):
    monitor = small_monitor(methods=("grad_cam",))
    stop = EarlyStopping(monitor="xai/grad_cam/stability", mode="max", patience=10)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="xai/grad_cam/stability", mode="max")
    trainer, _ = fit(tmp_path, callbacks=[monitor, stop, ckpt], max_epochs=2, enable_checkpointing=True)
    assert trainer.current_epoch == 2
    assert ckpt.best_model_score is not None and math.isfinite(float(ckpt.best_model_score))
    ckpt_data = torch.load(ckpt.best_model_path, weights_only=True)
    assert any(k.startswith("ExplanationMonitor") for k in ckpt_data["callbacks"])


def test_monitoring_an_unknown_xai_key_fails_at_setup(tmp_path):
    stop = EarlyStopping(monitor="xai/gradcam/stability")
    with pytest.raises(MisconfigurationException, match="xai/grad_cam/stability"):
        fit(tmp_path, callbacks=[small_monitor(), stop], max_epochs=1)


def test_two_monitors_coexist(tmp_path):
    a = small_monitor(methods=("grad_cam",))
    b = small_monitor(methods=("saliency",), num_probes=3)
    assert a.state_key != b.state_key
    trainer, _ = fit(tmp_path, callbacks=[a, b], max_epochs=1)
    assert len(a.history) == len(b.history) == 1


# ---------------------------------------------------------------------------------------------- resume
def test_resume_gives_the_same_history(tmp_path):
    # Lightning does not checkpoint the global RNG: with no dropout and no shuffling the weights after a resume
    # are those of the straight run, so any difference in the history is the monitor's.
    kwargs = dict(methods=("grad_cam", "saliency"), drift={"warmup_epochs": 1, "probe_sigmas": 0.01, "min_spread": 0.0})

    def run(path, monitor, **overrides):
        pl.seed_everything(3)  # same initial weights in every run
        return fit(path, callbacks=[monitor, *overrides.pop("extra", [])], model=TinyCNN(dropout=0.0),
                   datamodule=TinyDataModule(shuffle=False), enable_checkpointing=True, **overrides)

    straight = small_monitor(**kwargs)
    run(tmp_path / "straight", straight, max_epochs=4)

    first = small_monitor(**kwargs)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    run(tmp_path / "part1", first, max_epochs=2, extra=[ckpt])
    torch.load(ckpt.last_model_path, weights_only=True)  # plain state only
    second = small_monitor(**kwargs)
    run(tmp_path / "part2", second, max_epochs=4, ckpt_path=ckpt.last_model_path)

    assert [r["epoch"] for r in second.history] == [0, 1, 2, 3]
    assert second.history == straight.history
    flags = [r["flags"] for r in straight.history]
    assert any(any(any(v) for v in f.values()) for f in flags), "probe_sigmas=0.01 should flag something to compare"


# ---------------------------------------------------------------------------------------------- drift
class SwapWeights(Callback):
    """Replaces the model's weights with another model's at the start of a given epoch (evidence moved on purpose)."""

    def __init__(self, epoch: int, state: dict) -> None:
        self.epoch, self.state = epoch, state

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            pl_module.load_state_dict(self.state)


class MaskedCNN(TinyCNN):
    """TinyCNN that only sees a fixed vertical band (set by a buffer), so the band is where it looks."""

    def __init__(self, lr: float = 0.0) -> None:
        super().__init__(lr=lr)
        self.features[1].momentum = 0.0  # with lr=0 the weights AND the BatchNorm statistics stay put
        self.register_buffer("band", torch.zeros(1, 1, 16, 16))
        self.band[..., :, 0:5] = 1.0

    def forward(self, x):
        return self.head(self.features(x * self.band))


def test_planted_drift_is_flagged_and_unchanged_weights_are_not(tmp_path):
    # lr=0: weights never change, so every epoch's maps equal the previous ones
    steady = small_monitor(drift={"warmup_epochs": 1})
    fit(tmp_path / "steady", callbacks=[steady], model=MaskedCNN(lr=0.0), max_epochs=4)
    for record in steady.history:
        for m in METHODS:
            assert min(record["stability"][m]) > 0.999, (m, record["stability"][m])
            assert not any(record["flags"][m])

    moved = MaskedCNN(lr=0.0)
    moved.band.zero_()
    moved.band[..., :, 11:16] = 1.0  # the same weights, now looking at the other side of the image
    reports = []
    drifting = small_monitor(drift={"warmup_epochs": 1}, on_drift=reports.append)
    with pytest.warns(UserWarning, match="(?i)explanation drift at epoch 3"):
        fit(tmp_path / "moved", callbacks=[drifting, SwapWeights(3, moved.state_dict())],
            model=MaskedCNN(lr=0.0), max_epochs=4)
    flagged = {m: sum(drifting.history[-1]["flags"][m]) for m in METHODS}
    assert all(n >= 4 for n in flagged.values()), flagged  # most of the 6 probes, every method
    assert [sum(any(r["flags"][m]) for m in METHODS) for r in drifting.history[:-1]] == [0, 0, 0]
    assert len(reports) == 1 and reports[0].any


def test_drift_alarm_scalars_one_line_warning_text_and_accept(tmp_path):
    # the same planted move, read back from the event file: xai/drift/alarm at every explained epoch, 1 only at the
    # move; the episode stays active until on_drift accepts the new behaviour
    torch.manual_seed(0)  # the models are built before fit() seeds: independent of the tests run before
    moved = MaskedCNN(lr=0.0)
    moved.band.zero_()
    moved.band[..., :, 11:16] = 1.0
    seen = []

    def accept(report):
        seen.append(report)
        monitor.drift_detector.accept()

    monitor = small_monitor(methods=("grad_cam", "saliency"), drift={"warmup_epochs": 1}, on_drift=accept)
    with pytest.warns(UserWarning, match="explanation drift at epoch 3") as caught:
        trainer, _ = fit(tmp_path, callbacks=[monitor, SwapWeights(3, moved.state_dict())], model=MaskedCNN(lr=0.0),
                         max_epochs=6)
    drift_warnings = [str(w.message) for w in caught if "explanation drift at" in str(w.message)]
    assert len(drift_warnings) == 1 and "\n" not in drift_warnings[0]
    assert ("gained mass" in drift_warnings[0] or "converged" in drift_warnings[0]) and "right" in drift_warnings[0]  # the band moved to the right side
    events = read_events(tb_dir(trainer))
    alarm = [v for _, v in events["scalars"]["xai/drift/alarm"]]
    assert alarm == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert [v for _, v in events["scalars"]["xai/drift/active"]][3:] == [1.0, 0.0, 0.0]  # accepted in on_drift
    texts = dict(events["texts"]["xai/drift"])
    text = texts[sorted(texts)[3]]
    assert "Where it moved" in text and "Evidence" in text
    assert len(seen) == 1 and seen[0].alarm
    dx = seen[0].movement["saliency"].centroid_shift[:, 0]
    assert float(dx.nanmean()) > 0.2  # the evidence moved right, with the band
    assert [r["alarm"] for r in monitor.history] == [False, False, False, True, False, False]


# ---------------------------------------------------------------------------------------------- failures
class NaNAfter(TinyCNN):
    """Produces NaN logits from epoch 1 on (only outside training steps, so training itself survives)."""

    def forward(self, x):
        out = super().forward(x)
        if not self.training and self.current_epoch >= 1:
            out = out * float("nan")
        return out

    def validation_step(self, batch, batch_idx):
        pass


def test_nan_model_logs_no_nan_and_warns(tmp_path):
    monitor = small_monitor()
    with pytest.warns(UserWarning, match="non-finite"):
        trainer, _ = fit(tmp_path, callbacks=[monitor], model=NaNAfter(), max_epochs=3)
    events = read_events(tb_dir(trainer))
    for tag, values in events["scalars"].items():
        if tag.startswith("xai/"):
            assert all(math.isfinite(v) for _, v in values), tag
    for _, _, _, pixels in events["images"]["xai/grad_cam/overlay"]:
        assert pixels.dtype.name == "uint8"


class ExplodingOnEpoch(TinyCNN):
    """Raises inside forward when explained at epoch 1 (eval mode, gradients enabled)."""

    def forward(self, x):
        if not self.training and torch.is_grad_enabled() and self.current_epoch == 1:
            raise RuntimeError("boom in forward")
        return super().forward(x)


def test_failure_while_explaining_warns_and_training_continues(tmp_path):
    monitor = small_monitor()
    with pytest.warns(UserWarning, match="boom in forward"):
        trainer, _ = fit(tmp_path, callbacks=[monitor], model=ExplodingOnEpoch(), max_epochs=3)
    assert trainer.current_epoch == 3
    assert [r["epoch"] for r in monitor.history] == [0, 2]


def test_failure_with_on_error_raise_stops(tmp_path):
    with pytest.raises(RuntimeError, match="boom in forward"):
        fit(tmp_path, callbacks=[small_monitor(on_error="raise")], model=ExplodingOnEpoch(), max_epochs=3)


def test_flat_memory_and_event_size_over_20_epochs(tmp_path):
    import gc

    sizes, tensors, held = [], [], []

    class Measure(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            monitor._reporter.finish_images()  # the epoch's overlays are written on a background thread: measure after it
            trainer.logger.experiment.flush()
            sizes.append(sum(os.path.getsize(os.path.join(trainer.logger.log_dir, f))
                             for f in os.listdir(trainer.logger.log_dir) if "tfevents" in f))
            gc.collect()
            # the timeline's tiles (NumPy, not tensors) are a bounded buffer by design, checked below
            held.append(monitor._reporter.timeline.nbytes)
            tensors.append(sum(t.numel() for t in gc.get_objects() if isinstance(t, torch.Tensor)))

    monitor = small_monitor(methods=("grad_cam", "saliency"))
    fit(tmp_path, callbacks=[monitor, Measure()], max_epochs=20, limit_train_batches=1, limit_val_batches=1)
    growth = [b - a for a, b in zip(sizes, sizes[1:])]
    # bytes per epoch do not grow: the last five epochs write no more than epochs 5-10 (+15% for PNG size noise)
    early, late = sum(growth[4:9]) / 5, sum(growth[-5:]) / 5
    assert late <= 1.15 * early, growth
    # live tensor elements: no growth after warm-up beyond the small history lists (which hold Python floats)
    assert tensors[-1] <= tensors[5] * 1.01 + 1000, (tensors[5], tensors[-1])
    per_epoch = 2 * 6 * 3 * 64 * 64  # 2 methods x 6 probes of 64 px RGB tiles
    assert held[-1] == min(20, monitor._reporter.timeline.keep_epochs) * per_epoch


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"methods": ("gradcam",)}, "methods"),
        ({"methods": ()}, "methods"),
        ({"num_probes": 0}, "num_probes"),
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"target": "truth"}, "target"),
        ({"method_options": {"integrated_gradients": {"n_steps": 0}}},
         r"method_options\['integrated_gradients'\]\['n_steps'\]=0"),
        ({"method_options": {"integrated_gradients": {"n_stpes": 8}}}, "n_stpes"),
        ({"method_options": {"integrated_gradients": {"tolerance": -1.0}}}, r"\['tolerance'\]=-1.0"),
        ({"methods": ("grad_cam",), "method_options": {"integrated_gradients": {"n_steps": 8}}},
         r"method_options\['integrated_gradients'\]"),
        ({"display": {"alpha": 1.5}}, r"display\['alpha'\]=1.5"),
        ({"on_error": "ignore"}, "on_error"),
        ({"display": {"mean": (0.5, 0.5, 0.5)}}, r"display\['mean'\]/display\['std'\]"),
        ({"display": {"colormap": "rainbow"}}, r"display\['colormap'\]='rainbow'"),
        ({"probes": "images/"}, "probes"),
        ({"drift": {"sigmas": 2.0}}, r"drift\['sigmas'\]"),
        ({"drift": {"windw": 3}}, r"drift\['windw'\]"),
        ({"metrics": ("faithfulnes",)}, "metrics"),
        ({"metric_options": {"faithfulness": {"steps": 0}}}, r"metric_options\['faithfulness'\]\['steps'\]=0"),
        ({"views": ("activation",)}, "views"),
        ({"max_overhead": 1.5}, "max_overhead"),
        ({"probe_options": {"seed": "0"}}, r"probe_options\['seed'\]='0'"),
    ],
)
def test_bad_arguments_raise_in_init(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        ExplanationMonitor(**kwargs)


@pytest.mark.parametrize(
    "monitor_kwargs, model, match",
    [
        ({"layer": "features.9"}, TinyCNN(), "features.4"),  # unknown name: lists candidates
        ({"probes": torch.zeros(4, 16, 16)}, TinyCNN(), "probe"),  # wrong probe shape
        ({"probes": (torch.zeros(4, 3, 16, 16), torch.tensor([0, 1, 2, 7]))}, TinyCNN(), "label 7"),
        ({"target": 5}, TinyCNN(), "target=5"),
        ({}, TupleOutputCNN(), "output_transform"),
    ],
    ids=["layer", "probe_shape", "label_range", "target_range", "tuple_output"],
)
def test_model_dependent_problems_raise_before_training(tmp_path, monitor_kwargs, model, match):
    started = []

    class Spy(Callback):
        def on_train_batch_start(self, *args):
            started.append(1)

    with pytest.raises(MisconfigurationException, match=match):
        fit(tmp_path, callbacks=[small_monitor(**monitor_kwargs), Spy()], model=model, max_epochs=1)
    assert not started


def test_import_paths():
    assert ExplanationMonitor is ExplanationMonitorFromCallbacks


def test_no_warning_noise_in_a_clean_run(tmp_path):
    monitor = small_monitor(methods=("grad_cam",))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path, callbacks=[monitor], max_epochs=1)
    ours = [str(w.message) for w in caught if "ExplanationMonitor" in str(w.message)]
    assert ours == []


def test_bf16_mixed_precision_training(tmp_path):
    """Callback hooks run outside Lightning's autocast; explanations stay fp32 and finite (PITFALLS 13)."""
    monitor = small_monitor(methods=("grad_cam", "integrated_gradients"))
    trainer, _ = fit(tmp_path, callbacks=[monitor], max_epochs=2, precision="bf16-mixed")
    assert len(monitor.history) == 2
    for maps in monitor.latest["maps"].values():
        assert maps.dtype == torch.float32 and torch.isfinite(maps).all() and maps.abs().sum() > 0
    # the same maps as a plain fp32 computation on the final weights: Lightning's autocast did not leak in
    model = trainer.lightning_module
    probes = monitor.probe_set
    expected = explain(model, probes.images, probes.labels, methods=("grad_cam", "integrated_gradients"),
                       layer=monitor.layer_name, n_steps=8)
    for method, maps in monitor.latest["maps"].items():
        assert torch.allclose(maps, to_heatmap(expected[method]), rtol=1e-4, atol=1e-6), method


def test_resume_with_a_different_probe_set_warns_and_resets(tmp_path):
    images, labels = make_images(6, seed=5)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    first = small_monitor(probes=(images, labels), methods=("grad_cam",))
    fit(tmp_path / "a", callbacks=[first, ckpt], max_epochs=2, enable_checkpointing=True)
    other_images, other_labels = make_images(6, seed=6)
    second = small_monitor(probes=(other_images, other_labels), methods=("grad_cam",))
    assert second.state_key == first.state_key  # same configuration: the checkpoint's state is offered to it
    with pytest.warns(UserWarning, match="probe set differs"):
        fit(tmp_path / "b", callbacks=[second], max_epochs=3, ckpt_path=ckpt.last_model_path,
            enable_checkpointing=True)
    assert [r["epoch"] for r in second.history] == [2]  # history restarted with the new probes


def test_a_second_fit_writes_to_its_own_logger(tmp_path):
    monitor = small_monitor(methods=("grad_cam",))
    model = TinyCNN()
    trainer_a = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path / "a", max_epochs=1))
    trainer_a.fit(model, datamodule=TinyDataModule())
    trainer_b = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path / "b", max_epochs=2))
    trainer_b.fit(model, datamodule=TinyDataModule())
    assert len(read_events(trainer_a.logger.log_dir)["images"]["xai/grad_cam/overlay"]) == 1
    assert len(read_events(trainer_b.logger.log_dir)["images"]["xai/grad_cam/overlay"]) == 2
