"""One explanation round on every rank, from the probes to the logs: explain (the budget's groups) -> the detection
pool -> measure (inside the rank agreement) -> rank 0's values broadcast -> ``callback_metrics`` -> the budget ->
rank 0 writes -> a drift alarm warns and calls ``on_drift``. The monitor decides *when*; this is *what* a round does.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_xai import keys
from lightning_xai.callbacks._compat import muted_logging, rank_zero_warn
from lightning_xai.callbacks._config import MonitorConfig
from lightning_xai.callbacks._cost import CostPlan
from lightning_xai.callbacks._measuring import EpochMeasures
from lightning_xai.callbacks._pool_round import PoolRound
from lightning_xai.callbacks._probes import ProbeSetup
from lightning_xai.callbacks._publish import publish
from lightning_xai.callbacks._reporter import Reporter, drift_text
from lightning_xai.callbacks._results import methods_in
from lightning_xai.callbacks._round import DistributedRound, ProbeExplainer, warn_round_problems
from lightning_xai.callbacks._sanity import SanityCheck
from lightning_xai.callbacks._state import FitState
from lightning_xai.metrics.registry import active_measures

__all__ = ["Rounds"]


class Rounds:
    """The round pipeline of one monitor, over its collaborators (shared with the monitor, which sets them up)."""

    def __init__(self, config: MonitorConfig, probes: ProbeSetup, round: DistributedRound, measures: EpochMeasures,
                 reporter: Reporter, cost: CostPlan, fit: FitState) -> None:
        self.config = config
        self.explainer = ProbeExplainer(config)
        self.pool = PoolRound(config)  # the drift detector's extra samples, explained with the cheap methods
        self._probes, self._round, self._measures = probes, round, measures
        self._reporter, self._cost, self._fit = reporter, cost, fit

    def _image_size(self) -> tuple[int, ...] | None:
        probes = self._probes.probe_set
        return None if probes is None else tuple(probes.images.shape[-2:])

    def publish(self, trainer: Any, scalars: Mapping[str, float], watched: set[str]) -> None:
        publish(trainer, scalars, watched, self._reporter.warn_once)

    def explain(self, trainer: Any, model: torch.nn.Module, *, targets: Tensor | None = None,
                measures: Sequence[Any] = (), adaptive: bool = True,
                groups: Sequence[Sequence[str]] | None = None) -> dict[str, Tensor] | None:
        """Every rank explains its shard; all agree on success before gathering. ``None``: skipped (warned).
        ``groups``: the methods, one ``explain_detailed`` call per group (``None``: every method in one call)."""
        assert self._probes.probe_set is not None, "setup() selects the probes"
        with muted_logging(model):  # the model's own self.log() in forward must not log the monitor's forwards
            results = self._round.explain(trainer, model, self._probes.probe_set, self.explainer, targets=targets,
                                          measures=measures, adaptive=adaptive, groups=groups)
        warn_round_problems(self.explainer, results, self.config.methods, trainer.current_epoch,
                            self._reporter.warn_once)
        return results

    def run(self, trainer: Any, model: torch.nn.Module, *, reference: bool, layout_keys: set[str]) -> None:
        """One round (``reference``: the fit-start one, compared with and never judged); its time is the monitor's."""
        start = time.perf_counter()
        try:
            self._run(trainer, model, reference=reference, start=start, layout_keys=layout_keys)
        finally:
            self._cost.add(time.perf_counter() - start)

    def _run(self, trainer: Any, model: torch.nn.Module, *, reference: bool, start: float,
             layout_keys: set[str]) -> None:
        measures = [] if reference else active_measures(self.config.metrics, stage="epoch")
        epoch_keys = {self._reporter.names.scalar(k) for k in self._measures.epoch_keys()}
        probes = self._probes.probe_set
        # The fit-start reference: fixed IG steps (an untrained model would refine most probes up to the cap), and
        # no sanity check (randomised vs untrained says nothing; it runs at the end of fit): at most one round.
        groups = self._cost.groups(reference=reference, probes=len(probes), image_size=self._image_size())
        results = self.explain(trainer, model, measures=[m for m in measures if m.shard is not None],
                               adaptive=not reference, groups=groups)
        if results is None:
            if not reference:
                self.publish(trainer, {}, epoch_keys)  # skipped: nothing stale stays behind
            return
        tracked = self._measures.tracker.drift.num_samples
        extra = self.pool.explain(trainer, model, self._round, self._image_size(),
                                  tracked=None if tracked is None else tracked - len(probes))
        timings = [(t.methods, t.seconds, t.rows) for t in self.explainer.timings]
        if reference:
            self._measures.take_reference(trainer, results, extra)
            # what one probe costs through the cheap methods: the first estimate of everything optional
            self._cost.record_passes(self._round.broadcast(trainer, timings))
            return
        ok, measured = self._round.agreed(trainer, lambda: self._measures.measure(
            trainer, results, measures, probes=probes, class_names=self._probes.class_names,
            pinned=self._cost.pinned, extra=extra), what="measuring")
        if not ok:
            self.publish(trainer, {}, epoch_keys)
            return
        # this epoch's time in the monitor, plus the last overlay job's (on a background thread: it overlaps
        # training but takes CPU from it); rank 0's clock decides
        background = self._reporter.background_seconds if self.config.log_images else 0.0
        timing = self._cost.timing(start, background, timings, pool=self.pool.seconds if extra is not None else None)
        # Identical decisions and monitored values on every rank, decided by rank 0 (no float drift between ranks).
        (scalars, report, record, histograms), timing = self._round.broadcast(trainer, (measured, timing))
        overhead = self._cost.overhead(timing)
        if overhead is not None:
            scalars[keys.OVERHEAD] = overhead
        scalars = self._reporter.names.scalars(scalars)
        self._measures.tracker.history.append(record)
        self._fit.latest = {"results": results, "step": trainer.global_step, "epoch": trainer.current_epoch}
        self.publish(trainer, scalars, epoch_keys)
        self._cost.account(trainer.current_epoch, timing, probes=len(probes), image_size=self._image_size())
        text = drift_text(trainer.current_epoch, trainer.global_step, methods_in(results, self.config.methods),
                          scalars, report.details())

        def write() -> None:
            if trainer.is_global_zero:
                self._reporter.write_epoch(trainer, probes=probes, results=results, scalars=scalars,
                                           histograms=histograms, text=text, class_names=self._probes.class_names,
                                           flags=record.get("flags"), layout_keys=layout_keys)

        # rank 0 writes; a failure there is still agreed on, so no rank goes on alone to the next collective
        self._round.agreed(trainer, write, what="writing")
        if report.alarm:
            # one line; the details (what moved where, per class and probe) are in the `xai/drift` text
            rank_zero_warn(f"ExplanationMonitor: {report.headline()} (step {trainer.global_step}; details in the "
                           "xai/drift text)")
            if self.config.on_drift is not None:  # user code: a failure obeys on_error like any other
                self._round.agreed(trainer, lambda: self.config.on_drift(report), what="on_drift")

    def check_sanity(self, trainer: Any, model: torch.nn.Module, *, warn: bool, reference: Mapping[str, Tensor] | None,
                     methods: Sequence[str] | None) -> dict[str, float] | None:
        """The sanity check (:class:`~._sanity.SanityCheck`) against ``reference``, else against ``methods``
        explained on the real model now."""
        sanity = SanityCheck(self.config, self._round, self._reporter)
        if reference is None:
            reference = self.explain(trainer, model, groups=None if methods is None else [tuple(methods)])
            if reference is None:
                sanity.skipped(trainer)
                return None
        return sanity.check(trainer, model, reference, lambda m, **kw: self.explain(trainer, m, **kw),
                            masks=self._probes.probe_set.masks, warn=warn)
