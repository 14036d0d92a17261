"""Integrated Gradients' completeness error (always on with IG): the path integral's error, free with the maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_xai import keys
from lightning_xai.metrics.completeness import summarize
from lightning_xai.metrics.registry import Measure, MeasureContext, MeasureResult, register_measure

_IG = "integrated_gradients"


@register_measure
class Completeness(Measure):
    name = "completeness"
    always = True
    cost = "free: Integrated Gradients reports its own completeness error"

    def keys(self, methods: Sequence[str]) -> set[str]:
        return {keys.of(_IG, keys.COMPLETENESS_ERROR + s) for s in ("", "_p90", "_max")} if _IG in methods else set()

    def compute(self, ctx: MeasureContext) -> MeasureResult:
        out = MeasureResult()
        errors = ctx.extras.get("ig_error")
        if errors is None:
            return out
        error = keys.of(_IG, keys.COMPLETENESS_ERROR)
        finite = errors[torch.isfinite(errors)]
        if finite.numel():
            summary = summarize(finite)
            out.scalars = {error: float(summary["median"]), f"{error}_p90": float(summary["p90"]),
                           f"{error}_max": float(summary["max"])}
            out.per_probe["completeness_error"] = finite.tolist()
        out.histograms[error] = errors  # the whole distribution, not only its median
        return out
