"""One plug-in shape for every extension point: a method, a measure, a view and a sink written outside the package
(a base class and a registration decorator each, a few lines) run in a real Trainer next to the built-in ones."""

from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as pl
import torch
from lit_models import TinyCNN, TinyDataModule, trainer_kwargs
from tb_events import read_events

from lightning_xai import ExplanationMonitor, keys
from lightning_xai.attribution import Method, register
from lightning_xai.attribution import _registry as method_registry
from lightning_xai.attribution._registry import Request
from lightning_xai.metrics import registry as measure_registry
from lightning_xai.metrics.registry import Measure, MeasureResult, register_measure
from lightning_xai.views import VIEWS, View, ViewOutput, register_view
from lightning_xai.writers import BaseSink, Sink, register_sink, sinks_for_loggers
from lightning_xai.writers import resolve as sink_registry


class GradientSign(Method):
    """``sign(dS/dx)``. Cost: one forward + backward per probe, shared with saliency."""

    name = "test_gradient_sign"
    kind = "gradient"
    cost = "1"

    def request(self) -> Request:
        return Request(input_grad=True)

    def compute(self, ctx, shared) -> torch.Tensor:
        return shared.input_grad.sign()


class Peak(Measure):
    name = "test_peak"
    cost = "negligible"

    def keys(self, methods):
        return {keys.of(m, "peak") for m in methods}

    def compute(self, ctx) -> MeasureResult:
        return MeasureResult(scalars={keys.of(m, "peak"): float(ctx.maps[m].amax()) for m in ctx.methods})


class MeanActivation(View):
    """The layer's mean activation on the probes. Cost: the shared forward of the probes."""

    name = "test_mean_activation"

    def __call__(self, ctx) -> ViewOutput:
        return ViewOutput(scalars={keys.of(self.name, "mean"): float(ctx.outputs("probes")[1].float().mean())})


class Recorder(BaseSink):
    supports_text = True

    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = {}
        self.texts: list[str] = []

    def add_scalars(self, values, step):
        for key, value in values.items():
            self.scalars.setdefault(key, []).append((step, value))
        return []

    def add_text(self, tag, text, step):
        self.texts.append(tag)


@pytest.fixture
def registered():
    register(GradientSign)
    register_measure(Peak)
    register_view(MeanActivation)
    try:
        yield
    finally:  # the registries are global: leave them as the other tests expect them
        method_registry._REGISTRY.pop(GradientSign.name, None)
        measure_registry._REGISTRY.pop(Peak.name, None)
        VIEWS.pop(MeanActivation.name, None)


def test_a_method_a_measure_a_view_and_a_sink_from_outside_run_in_a_trainer(tmp_path, registered):
    recorder = Recorder()
    monitor = ExplanationMonitor(num_probes=4, methods=("grad_cam", GradientSign.name), metrics=(Peak.name,),
                                 views=(MeanActivation.name,), sinks=[recorder], max_overhead=None)
    pl.seed_everything(0)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(TinyCNN(), datamodule=TinyDataModule())
    steps = [4, 8]
    events = read_events(trainer.logger.log_dir)["scalars"]
    for key in (keys.stability(GradientSign.name), keys.of(GradientSign.name, "peak"), keys.of("grad_cam", "peak"),
                keys.of(MeanActivation.name, "mean")):
        # the TensorBoard logger's sink and the user's sink got each key once per explained epoch
        assert [s for s, _ in events[key]] == steps, key
        assert [s for s, _ in recorder.scalars[key]] == steps, key
    assert keys.of(GradientSign.name, "peak") in monitor.logged_keys()
    assert recorder.texts == [keys.DRIFT_TEXT] * 2
    assert monitor.latest["maps"][GradientSign.name].shape == (4, 1, 16, 16)


def test_extension_points_refuse_what_does_not_fit():
    with pytest.raises(TypeError, match="subclass of lightning_xai.views.View"):
        register_view(object)
    with pytest.raises(TypeError, match="Measure"):
        register_measure(object())
    with pytest.raises(TypeError, match=r"sinks\[0\]"):
        ExplanationMonitor(sinks=[object()])
    with pytest.raises(ValueError, match="unknown|views"):
        ExplanationMonitor(views=("not_registered",))
    assert isinstance(Recorder(), Sink)


def test_a_registered_sink_factory_serves_its_kind_of_logger(tmp_path):
    class PrintingLogger:
        def print_scalars(self, values):
            pass

    @register_sink("printing")
    def printing(logger):
        return [Recorder()] if callable(getattr(logger, "print_scalars", None)) else None

    try:
        resolved = sinks_for_loggers([PrintingLogger()], tmp_path)
        assert resolved.kinds == ["printing"] and isinstance(resolved.sink.sinks[0], Recorder)
    finally:
        sink_registry._FACTORIES.remove(("printing", printing))
