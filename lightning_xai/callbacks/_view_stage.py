"""The views (:mod:`lightning_xai.views`) in a fit: their layer and pool at setup, one run after an explained epoch's
write, the attention graphs at the end of fit.

Setup runs on every rank (no collective, so a bad source fails everywhere alike); the runs are rank 0's, inside the
rank agreement: a failing view warns or raises per ``on_error`` without taking the heatmaps or the other views along.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from lightning_xai.attribution import find_gradcam_layer, resolve_layer
from lightning_xai.callbacks._compat import MisconfigurationException, muted_logging
from lightning_xai.callbacks._config import MonitorConfig
from lightning_xai.callbacks._probes import ProbeSetup
from lightning_xai.callbacks._reporter import Reporter
from lightning_xai.callbacks._round import DistributedRound, module_device
from lightning_xai.views import ViewRunner

__all__ = ["ViewStage"]


class ViewStage:
    """One monitor's views.

    Args:
        config: the monitor's checked arguments (``views``, ``view_options``, ``display``, ``on_error``).
        warn: how a failing view warns (once per cause).
    """

    def __init__(self, config: MonitorConfig, warn: Callable[[str], None]) -> None:
        self.config = config
        self.runner = ViewRunner(config.views, config.view_options)
        self.layer: str | None = None
        self.ran = False  # this fit: after the first run, the views run within the budget
        self._warn = warn

    @property
    def views(self) -> dict[str, Any]:
        return self.runner.views

    def __bool__(self) -> bool:
        return bool(self.runner)

    def setup(self, model: nn.Module, probes: ProbeSetup) -> None:
        """The views' layer (the Grad-CAM layer) and pool, and their options checked against the model."""
        self.ran = False
        if not self.runner:
            return
        config, options, probe_set = self.config, self.config.probe_options, probes.probe_set
        try:
            layer = probes.layer_name
            if layer is None:
                example = probe_set.images[:1].to(module_device(model))
                layer = (resolve_layer(model, config.layer)[0] if config.layer is not None
                         else find_gradcam_layer(model, example, output_transform=config.output_transform))
            self.layer = layer
            self.runner.build_pool(probes.source if probes.source is not None else probe_set,
                                   class_names=probes.class_names, input_key=options["input_key"],
                                   label_key=options["label_key"], mask_key=options["mask_key"], seed=options["seed"])
            with muted_logging(model):  # a forward: the model's self.log() must not run in setup
                self.runner.check_model(model, layer, probe_set.images[:1].to(module_device(model)),
                                        output_transform=config.output_transform, owner="ExplanationMonitor",
                                        budget_bytes=probes.budget_bytes(model))
        except (ValueError, TypeError, RuntimeError) as err:
            message = str(err) if str(err).startswith("ExplanationMonitor") else \
                f"ExplanationMonitor (views={config.views}): {err}"
            raise MisconfigurationException(message) from err

    def _display(self, model: nn.Module, probes: ProbeSetup) -> dict[str, Any]:
        d = self.config.display
        return dict(mean=d["mean"], std=d["std"], class_names=probes.class_names,
                    output_transform=self.config.output_transform, device=module_device(model))

    def run(self, trainer: Any, model: nn.Module, probes: ProbeSetup, reporter: Reporter,
            round: DistributedRound) -> None:
        """Rank 0 computes and writes the views (no collectives inside); every rank learns whether that failed."""
        self.ran = True

        def run() -> None:
            if not trainer.is_global_zero:
                return
            sink = reporter.names.sink(reporter.sink(trainer))  # the views' tags get this monitor's suffix
            with muted_logging(model):  # the views' forwards are the monitor's too: no self.log() from them
                failures = self.runner.run(model, self.layer, probes.probe_set, sink, epoch=trainer.current_epoch,
                                           step=trainer.global_step, write_scalars=False,
                                           **self._display(model, probes))
            if self.runner.history and self.runner.history[-1]["scalars"]:
                reporter.write_scalars(trainer, {reporter.names.tag(k): v
                                                 for k, v in self.runner.history[-1]["scalars"].items()})
            if failures:
                name, error = next(iter(failures.items()))
                message = (f"ExplanationMonitor: view(s) {', '.join(failures)} failed at epoch "
                           f"{trainer.current_epoch}; {name}: {type(error).__name__}: {error}. The other views and "
                           "the heatmaps were written")
                if self.config.on_error == "raise":  # raised inside the agreement: every rank stops
                    raise RuntimeError(message) from error
                self._warn(f"{message}; training continues (set on_error='raise' to stop instead).")

        round.agreed(trainer, run, what="views")

    def attention_graphs(self, trainer: Any, model: nn.Module, probes: ProbeSetup, reporter: Reporter,
                         round: DistributedRound) -> None:
        """The structured attention graphs, once at the end of fit (when chosen)."""
        if self.runner.graph_options is None:
            return

        def run() -> None:
            if trainer.is_global_zero:
                with muted_logging(model):
                    self.runner.attention_graphs(model, probes.probe_set, reporter.names.sink(reporter.sink(trainer)),
                                                 step=trainer.global_step, **self._display(model, probes))
                reporter.sink(trainer).flush()

        round.agreed(trainer, run, what="structured attention graphs")
