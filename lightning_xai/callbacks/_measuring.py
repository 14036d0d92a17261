"""One round's numbers: stability and drift (the tracker), the quality measures, the keys they log.

Runs inside the monitor's rank agreement; no collective, no Lightning import.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_xai import keys
from lightning_xai.callbacks._config import MonitorConfig
from lightning_xai.callbacks._events import LearningRates
from lightning_xai.callbacks._results import maps_of, measure_context, methods_in
from lightning_xai.callbacks._tracker import DetectionRows, DriftTracker
from lightning_xai.drift import DriftDetector, DriftReport
from lightning_xai.metrics.registry import Measure, active_measures, measure_keys, run_measures
from lightning_xai.probes import ProbeSet

__all__ = ["EpochMeasures", "undefined_similarity"]


def undefined_similarity(scalars: dict[str, float], maps: Mapping[str, Tensor]) -> list[str]:
    """Methods whose maps are all finite but no probe had a defined similarity this round (every map, or the one it
    is compared with, is flat: all zero or constant, e.g. a head initialised to zero): their ``stability`` and
    ``topk_overlap`` are set to 0.0 in ``scalars`` (no similarity shown, never "stable", never NaN), so a key others
    monitor exists from the first epoch. A round with non-finite maps measured nothing and logs nothing for them.
    Returns those methods."""
    out = []
    for m, values in maps.items():
        if keys.stability(m) not in scalars and bool(torch.isfinite(values).all()):
            scalars[keys.stability(m)] = 0.0
            scalars.setdefault(keys.topk_overlap(m), 0.0)
            out.append(m)
    return out


class EpochMeasures:
    """The tracker (history, drift state) and the measures of one monitor.

    Args:
        config: the monitor's checked arguments.
        warn_once: ``warn_once(key, message)``.
    """

    def __init__(self, config: MonitorConfig, warn_once: Callable[[str, str], None]) -> None:
        self.config = config
        self.tracker = DriftTracker(config.methods, config.size, config.detector_options, config.drift["topk"])
        self.learning_rates = LearningRates()  # schedule steps are known events, not drift
        self._warn_once = warn_once

    # ------------------------------------------------------------------ keys
    def logged_keys(self, methods: Sequence[str] | None = None) -> set[str]:
        """Every scalar key of ``methods`` (``None``: the configured ones): stability and drift, the chosen
        measures', ``xai/overhead``."""
        if methods is None:
            return self.tracker.keys() | measure_keys(self.config.metrics, self.config.methods) | {keys.OVERHEAD}
        return DriftDetector.keys(methods) | measure_keys(self.config.metrics, methods)

    def epoch_keys(self) -> set[str]:
        """The keys a regular round logs (the epoch-stage measures')."""
        methods = self.config.methods
        epoch = self.tracker.keys().union(*(m.keys(methods) for m in active_measures(self.config.metrics)))
        return epoch | {keys.OVERHEAD}

    # ------------------------------------------------------------------ rounds
    def take_reference(self, trainer: Any, results: Mapping[str, Tensor], extra: DetectionRows | None) -> None:
        """The fit-start round: compared with, never judged."""
        self.tracker.take_reference(trainer.current_epoch, results, extra)
        self.learning_rates.remember(trainer)

    def compared(self, pinned: Sequence[str]) -> set[str]:
        """The methods with an earlier map of this fit to compare with: the reference round's (the pinned ones) and
        every earlier round's."""
        earlier = self.tracker.history.fields("stability")  # from the stored columns: no record rebuilt
        return earlier | (set(pinned) if self.tracker.has_reference else set())

    def measure(self, trainer: Any, results: Mapping[str, Tensor], measures: Sequence[Measure], *, probes: ProbeSet,
                class_names: list[str] | None, pinned: Sequence[str], extra: DetectionRows | None = None
                ) -> tuple[dict[str, float], DriftReport, dict[str, Any], dict[str, Tensor]]:
        """Stability, drift and the measures of this round: scalars, the drift report, the history record, the
        histograms."""
        event = self.learning_rates.event(trainer)
        compared = self.compared(pinned)  # before the update: which methods have an earlier map
        scalars, report, record = self.tracker.update(trainer.current_epoch, trainer.global_step, results,
                                                      masks=probes.masks, labels=probes.labels,
                                                      probe_ids=probes.ids.tolist(), class_names=class_names,
                                                      event=event, extra=extra)
        # a method's first map (an optional method's first run under the budget) has nothing to be compared with:
        # no stability key, rather than a 0.0 that reads as a change
        ran = [m for m in methods_in(results, self.config.methods) if m in compared]
        for method in undefined_similarity(scalars, maps_of(results, ran)):
            self._warn_once(
                f"undefined/{method}", f"ExplanationMonitor: at epoch {trainer.current_epoch} no probe's {method} map "
                "could be compared with the one before (degenerate maps, all zero or constant: e.g. a head "
                f"initialised to zero, or such maps before training); xai/{method}/stability and topk_overlap are "
                f"logged as 0.0 (no similarity shown, never 'stable') and xai/{method}/degenerate counts those "
                "probes. Warned once.")
        context = measure_context(results, self.config.methods, masks=probes.masks, size=self.config.size)
        measured = run_measures(measures, context, self.config.metric_options)
        scalars.update(measured.scalars)
        record.update(measured.per_probe)
        record["pred"] = results["pred"].tolist()
        return scalars, report, record, measured.histograms
