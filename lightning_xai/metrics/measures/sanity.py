"""The model-randomisation sanity check (Adebayo et al. 2018): similarity to a weight-randomised copy's maps, in the
``"sanity"`` stage (the monitor runs it at the end of fit, :mod:`lightning_xai.callbacks._sanity`)."""

from __future__ import annotations

from collections.abc import Sequence

from lightning_xai import keys
from lightning_xai._validation import integer, number
from lightning_xai.metrics.registry import Measure, MeasureContext, MeasureResult, finite_mean, register_measure
from lightning_xai.metrics.sanity import sanity_scores


@register_measure
class Sanity(Measure):
    name = "sanity"
    stage = "sanity"
    options = {"layers": integer(None, 1, 100_000, "layers re-initialised from the output side; checked against the "
                                 "model at setup", none="all layers"),
               "threshold": number(0.5, -1.0, 1.0, "warn when a method's mean similarity exceeds it")}
    cost = "one explanation round on a weight-randomised copy of the model, at the end of fit"

    def keys(self, methods: Sequence[str]) -> set[str]:
        return {keys.sanity_similarity(m) for m in methods}

    def compute(self, ctx: MeasureContext) -> MeasureResult:
        out = MeasureResult()
        for m in ctx.methods:
            random_maps = ctx.extras.get(f"random/{m}")
            if random_maps is None:
                continue
            # degenerate pairs (all-zero maps on both sides) are left out, never "similar" (metrics.sanity)
            value = finite_mean(sanity_scores(ctx.maps[m], random_maps, size=ctx.size))
            if value is not None:
                out.scalars[keys.sanity_similarity(m)] = value
        return out
