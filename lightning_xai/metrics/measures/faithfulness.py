"""Faithfulness: deletion and insertion AUC (extra forwards per probe, on every rank's shard)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from lightning_xai import keys
from lightning_xai._validation import choice, integer
from lightning_xai.metrics.faithfulness import PERTURBATIONS, deletion_auc, insertion_auc
from lightning_xai.metrics.registry import Measure, MeasureContext, MeasureResult, finite_mean, register_measure

_CURVES = ("deletion", "insertion")


@register_measure
class Faithfulness(Measure):
    name = "faithfulness"
    options = {"steps": integer(8, 1, 256, "points on each curve; 2 * (steps + 1) forwards per probe and method"),
               "perturbation": choice("blur", PERTURBATIONS)}
    cost = "2 * (steps + 1) forward passes per probe and method, about as much as Integrated Gradients"

    def keys(self, methods: Sequence[str]) -> set[str]:
        return {keys.of(m, f"{c}_auc") for m in methods for c in _CURVES}

    def shard(self, model: nn.Module, images: Tensor, targets: Tensor, maps: Mapping[str, Tensor],
              options: Mapping[str, Any], output_transform: Any) -> dict[str, Tensor]:
        kwargs = {"steps": options["steps"], "perturbation": options["perturbation"],
                  "output_transform": output_transform}
        out = {}
        for m, heat in maps.items():
            out[f"deletion/{m}"] = deletion_auc(model, images, targets, heat, **kwargs).float().cpu()
            out[f"insertion/{m}"] = insertion_auc(model, images, targets, heat, **kwargs).float().cpu()
        return out

    def shard_keys(self, methods: Sequence[str]) -> list[str]:
        return [f"{c}/{m}" for m in methods for c in _CURVES]

    def compute(self, ctx: MeasureContext) -> MeasureResult:
        out = MeasureResult()
        for curve in _CURVES:
            for m in ctx.methods:
                values = ctx.extras.get(f"{curve}/{m}")
                value = None if values is None else finite_mean(values)
                if value is not None:
                    out.scalars[keys.of(m, f"{curve}_auc")] = value
        return out
