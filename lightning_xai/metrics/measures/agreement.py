"""Agreement between methods: the rank correlation of their pooled maps, per pair."""

from __future__ import annotations

from collections.abc import Sequence

from lightning_xai import keys
from lightning_xai.metrics.agreement import pairwise_agreement
from lightning_xai.metrics.registry import Measure, MeasureContext, MeasureResult, finite_mean, register_measure


def _pairs(methods: Sequence[str]) -> list[str]:
    return [f"{a}_vs_{b}" for i, a in enumerate(methods) for b in methods[i + 1:]]


@register_measure
class Agreement(Measure):
    name = "agreement"
    cost = "negligible: rank correlation of pooled maps"

    def keys(self, methods: Sequence[str]) -> set[str]:
        return {keys.agreement(p) for p in _pairs(methods)}

    def compute(self, ctx: MeasureContext) -> MeasureResult:
        out = MeasureResult()
        if len(ctx.methods) < 2:
            return out
        for pair, values in pairwise_agreement({m: ctx.maps[m] for m in ctx.methods}, size=ctx.size).items():
            value = finite_mean(values)
            if value is not None:
                out.scalars[keys.agreement(pair)] = value
        return out
