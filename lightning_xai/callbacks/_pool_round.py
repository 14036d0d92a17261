"""The drift detector's detection pool in a round: chosen at setup (every rank alike, no collective), re-read and
explained with the cheap methods on every rank's shard each round."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from lightning_xai.callbacks._compat import muted_logging, rank_zero_info, rank_zero_warn
from lightning_xai.callbacks._config import MonitorConfig
from lightning_xai.callbacks._cost import CostPlan
from lightning_xai.callbacks._pool import DetectionPool
from lightning_xai.callbacks._probes import ProbeSetup
from lightning_xai.callbacks._results import map_key
from lightning_xai.callbacks._round import DistributedRound, ProbeExplainer
from lightning_xai.callbacks._tracker import DetectionRows

__all__ = ["PoolRound"]


class PoolRound:
    """The pool (:class:`~._pool.DetectionPool`) and its explainer."""

    def __init__(self, config: MonitorConfig) -> None:
        self.pool = DetectionPool(config)
        self.explainer = ProbeExplainer(config)
        self.seconds = 0.0  # this round's pool (read + explain), this rank's clock

    def setup(self, trainer: Any, probes: ProbeSetup, methods: tuple[str, ...], cost: CostPlan | None = None) -> None:
        """Under a budget (``cost``) an "auto" pool is what it pays for after the display probes' pinned pass (issue
        21, :mod:`._pool`)."""
        display = probes.probe_set
        share = None if cost is None else cost.budget.share
        rows = 0.0 if cost is None else cost.display_rows(len(display), tuple(display.images.shape[-2:]))
        self.pool.setup(trainer, display, probes.source, methods, share=share, display_rows=rows)
        self.explainer = ProbeExplainer(self.pool.explainer_config(), probes.layer_name)
        self.explainer.layer_reshape = probes.layer_reshape
        if self.pool.notes:
            rank_zero_warn("ExplanationMonitor: " + "; ".join(self.pool.notes))
        if self.pool.budget_note:  # the budget made an auto pool smaller: say so once, and how to keep it
            rank_zero_info(f"ExplanationMonitor: {self.pool.budget_note}.")

    def explain(self, trainer: Any, model: nn.Module, round: DistributedRound, image_size: tuple[int, ...], *,
                tracked: int | None = None) -> DetectionRows | None:
        """The pool's rows this round (every rank its shard, gathered); NaN maps (left out) if it failed.
        ``tracked``: the display probes + pool rows a restored drift detector tracks (``None``: none restored)."""
        pool = self.pool
        if pool.pending:  # a resumed fit: the pool its checkpoint's detector tracks (never another size)
            pool.fit(tracked)
        if not pool.enabled:
            return None
        began = time.perf_counter()
        ok, read = round.agreed(trainer, pool.samples, what="reading the drift detection pool")
        results = None
        if ok and read[0] is not None:
            with muted_logging(model):
                results = round.explain(trainer, model, read[0], self.explainer)
        self.seconds = time.perf_counter() - began
        methods, n, origin = pool.methods, pool.size, pool.origin
        if results is None:
            h, w = image_size
            missing = torch.full((n,), -1, dtype=torch.long)
            return DetectionRows({m: torch.full((n, 1, h, w), float("nan")) for m in methods}, pred=missing,
                                 target=missing, origin=origin)
        return DetectionRows({m: results[map_key(m)] for m in methods}, pred=results["pred"],
                             target=results["target"], origin=read[1], masks=read[0].masks)
