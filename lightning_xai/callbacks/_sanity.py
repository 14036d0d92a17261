"""The model-randomisation sanity check (Adebayo et al. 2018) of a fit: the ``stage="sanity"`` measures on a copy of
the model with re-initialised weights, logged and judged in words.

Every rank runs it (the explanation rounds are collective); rank 0 writes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from lightning_xai.callbacks._compat import rank_zero_info, rank_zero_warn
from lightning_xai.callbacks._config import MonitorConfig
from lightning_xai.callbacks._publish import publish
from lightning_xai.callbacks._reporter import Reporter
from lightning_xai.callbacks._results import map_key, measure_context, methods_in
from lightning_xai.callbacks._round import DistributedRound
from lightning_xai.metrics.registry import active_measures, get_measure, run_measures
from lightning_xai.metrics.sanity import INPUT_WEIGHTED, randomized_copy

__all__ = ["SanityCheck"]

#: ``explain(model, *, targets, adaptive, groups) -> results | None``: one round on every rank.
Explain = Callable[..., "dict[str, Tensor] | None"]


class SanityCheck:
    """Runs the sanity measures for one monitor.

    Args:
        config: the monitor's checked arguments (``metric_options['sanity']``, ``probe_options['seed']``).
        round: the rank agreement.
        reporter: rank 0's writer (its ``names`` give the keys this monitor's suffix).
    """

    def __init__(self, config: MonitorConfig, round: DistributedRound, reporter: Reporter) -> None:
        self.config, self._round, self._reporter = config, round, reporter

    def _measures(self) -> list[Any]:
        return active_measures(self.config.metrics, stage="sanity") or [get_measure("sanity")]

    def keys(self) -> set[str]:
        return {self._reporter.names.scalar(k) for m in self._measures() for k in m.keys(self.config.methods)}

    def skipped(self, trainer: Any) -> None:
        publish(trainer, {}, self.keys(), self._reporter.warn_once)

    def check(self, trainer: Any, model: nn.Module, reference: Mapping[str, Tensor], explain: Explain, *,
              masks: Tensor | None, warn: bool = True) -> dict[str, float] | None:
        """Explains a re-initialised copy of ``model`` with the methods of ``reference`` (the real model's results of
        this step; Integrated Gradients at exactly ``n_steps``), publishes and writes the sanity keys, warns about
        methods whose maps barely change. ``None``: skipped (already warned on every rank)."""
        options = self.config.metric_options["sanity"]
        ok, randomized = self._round.agreed(
            trainer, lambda: randomized_copy(model, num_layers=options["layers"],
                                             seed=self.config.probe_options["seed"]), what="sanity check")
        if not ok:
            self.skipped(trainer)
            return None
        checked = methods_in(reference, self.config.methods)
        random_maps = explain(randomized, targets=reference["target"], adaptive=False, groups=[checked])
        del randomized
        if random_maps is None:
            self.skipped(trainer)
            return None
        extras = {f"random/{m}": random_maps[map_key(m)] for m in checked}
        context = measure_context(reference, self.config.methods, masks=masks, size=self.config.size, extras=extras)
        scalars = run_measures(self._measures(), context, self.config.metric_options).scalars
        scalars = self._reporter.names.scalars(self._round.broadcast(trainer, scalars))
        publish(trainer, scalars, self.keys(), self._reporter.warn_once)
        self._round.agreed(trainer, lambda: self._reporter.write_scalars(trainer, scalars)
                           if trainer.is_global_zero else None, what="writing the sanity check")
        if warn:
            self._judge(scalars, options["threshold"])
        return scalars

    @staticmethod
    def _judge(scalars: Mapping[str, float], threshold: float) -> None:
        failing = {k.split("/")[1]: v for k, v in scalars.items() if v > threshold}
        unexpected = {m: v for m, v in failing.items() if m not in INPUT_WEIGHTED}
        passing = [k.split("/")[1] for k, v in scalars.items() if v <= threshold]
        judge = (f"Judge what the model learnt with {' and '.join(passing)}, which "
                 f"{'pass' if len(passing) > 1 else 'passes'}" if passing else
                 "No method passed: read every map with care")
        if unexpected:  # a method that should depend on the weights and does not: worth a warning
            rank_zero_warn(
                "ExplanationMonitor sanity check: the maps of "
                + ", ".join(f"{m} (similarity {v:.2f})" for m, v in unexpected.items())
                + " barely change when the model's weights are randomised, so they say little about what this model "
                f"learnt (Adebayo et al. 2018). {judge}."
            )
        expected = {m: v for m, v in failing.items() if m in INPUT_WEIGHTED}
        if expected:  # how the method works, every run: say what it means, once, without alarm
            rank_zero_info(
                "ExplanationMonitor sanity check: "
                + ", ".join(f"{m} maps stay {v:.2f} similar" for m, v in expected.items())
                + " with randomised weights, as expected for a method weighted by the input (x - baseline): they show "
                f"where the image's evidence is. {judge}."
            )
