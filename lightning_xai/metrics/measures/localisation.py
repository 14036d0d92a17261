"""Localisation against the probes' masks: pointing game and relevance mass."""

from __future__ import annotations

from collections.abc import Sequence

from lightning_xai import keys
from lightning_xai.metrics.localisation import pointing_game, relevance_mass
from lightning_xai.metrics.measures._common import finite_rows
from lightning_xai.metrics.registry import Measure, MeasureContext, MeasureResult, register_measure


@register_measure
class Localisation(Measure):
    name = "localisation"
    cost = "negligible; needs probes with masks"

    def keys(self, methods: Sequence[str]) -> set[str]:
        return {keys.of(m, k) for m in methods for k in (keys.POINTING_GAME, keys.RELEVANCE_MASS)}

    def compute(self, ctx: MeasureContext) -> MeasureResult:
        out = MeasureResult()
        if ctx.masks is None:
            return out
        # a probe without ground truth (an empty mask: a segmentation probe showing no class) says nothing here
        has_truth = ctx.masks.flatten(1).gt(0.5).any(dim=1).cpu()
        for m in ctx.methods:
            maps = ctx.maps[m]
            ok = finite_rows(maps) & has_truth.to(maps.device)
            if bool(ok.any()):
                out.scalars[keys.of(m, keys.POINTING_GAME)] = float(
                    pointing_game(maps[ok], ctx.masks[ok]).float().mean())
                out.scalars[keys.relevance_mass(m)] = float(relevance_mass(maps[ok], ctx.masks[ok]).mean())
        return out
