"""The built-in measures of the registry (:mod:`lightning_xai.metrics.registry`), one function each.

Every function computes from a :class:`~lightning_xai.metrics.registry.MeasureContext` and logs nothing non-finite:
probes whose map or value is not finite are left out, and a measure with no usable probe logs no key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_xai._validation import choice, integer, number
from lightning_xai.metrics.agreement import pairwise_agreement
from lightning_xai.metrics.completeness import summarize
from lightning_xai.metrics.faithfulness import PERTURBATIONS, deletion_auc, insertion_auc
from lightning_xai.metrics.localisation import pointing_game, relevance_mass
from lightning_xai.metrics.registry import Measure, MeasureContext, MeasureResult, finite_mean, register_measure
from lightning_xai.metrics.sanity import sanity_scores

__all__: list[str] = []

_IG = "integrated_gradients"


def _finite_rows(maps: Tensor) -> Tensor:
    return torch.isfinite(maps.flatten(1)).all(dim=1)


# --------------------------------------------------------------------------------- completeness (always on with IG)
def _completeness_keys(methods: Sequence[str]) -> set[str]:
    return {f"xai/{_IG}/completeness_error{s}" for s in ("", "_p90", "_max")} if _IG in methods else set()


def _completeness(ctx: MeasureContext) -> MeasureResult:
    out = MeasureResult()
    errors = ctx.extras.get("ig_error")
    if errors is None:
        return out
    finite = errors[torch.isfinite(errors)]
    if finite.numel():
        summary = summarize(finite)
        out.scalars = {f"xai/{_IG}/completeness_error": float(summary["median"]),
                       f"xai/{_IG}/completeness_error_p90": float(summary["p90"]),
                       f"xai/{_IG}/completeness_error_max": float(summary["max"])}
        out.per_probe["completeness_error"] = finite.tolist()
    out.histograms[f"xai/{_IG}/completeness_error"] = errors  # the whole distribution, not only its median
    return out


register_measure(Measure(
    "completeness", _completeness_keys, _completeness, always=True,
    cost="free: Integrated Gradients reports its own completeness error",
))


# --------------------------------------------------------------------------------- agreement between methods
def _pairs(methods: Sequence[str]) -> list[str]:
    return [f"{a}_vs_{b}" for i, a in enumerate(methods) for b in methods[i + 1:]]


def _agreement(ctx: MeasureContext) -> MeasureResult:
    out = MeasureResult()
    if len(ctx.methods) < 2:
        return out
    for pair, values in pairwise_agreement({m: ctx.maps[m] for m in ctx.methods}, size=ctx.size).items():
        value = finite_mean(values)
        if value is not None:
            out.scalars[f"xai/agreement/{pair}"] = value
    return out


register_measure(Measure(
    "agreement", lambda methods: {f"xai/agreement/{p}" for p in _pairs(methods)}, _agreement,
    cost="negligible: rank correlation of pooled maps",
))


# --------------------------------------------------------------------------------- localisation against masks
def _localisation(ctx: MeasureContext) -> MeasureResult:
    out = MeasureResult()
    if ctx.masks is None:
        return out
    # a probe without ground truth (an empty mask: a segmentation probe showing no class) says nothing here
    has_truth = ctx.masks.flatten(1).gt(0.5).any(dim=1).cpu()
    for m in ctx.methods:
        maps = ctx.maps[m]
        ok = _finite_rows(maps) & has_truth.to(maps.device)
        if bool(ok.any()):
            out.scalars[f"xai/{m}/pointing_game"] = float(pointing_game(maps[ok], ctx.masks[ok]).float().mean())
            out.scalars[f"xai/{m}/relevance_mass"] = float(relevance_mass(maps[ok], ctx.masks[ok]).mean())
    return out


register_measure(Measure(
    "localisation", lambda methods: {f"xai/{m}/{k}" for m in methods for k in ("pointing_game", "relevance_mass")},
    _localisation, cost="negligible; needs probes with masks",
))


# --------------------------------------------------------------------------------- faithfulness (deletion/insertion)
def _faithfulness_shard(model: nn.Module, images: Tensor, targets: Tensor, maps: Mapping[str, Tensor],
                        options: Mapping[str, Any], output_transform: Any) -> dict[str, Tensor]:
    kwargs = {"steps": options["steps"], "perturbation": options["perturbation"], "output_transform": output_transform}
    out = {}
    for m, heat in maps.items():
        out[f"deletion/{m}"] = deletion_auc(model, images, targets, heat, **kwargs).float().cpu()
        out[f"insertion/{m}"] = insertion_auc(model, images, targets, heat, **kwargs).float().cpu()
    return out


def _faithfulness(ctx: MeasureContext) -> MeasureResult:
    out = MeasureResult()
    for curve in ("deletion", "insertion"):
        for m in ctx.methods:
            values = ctx.extras.get(f"{curve}/{m}")
            value = None if values is None else finite_mean(values)
            if value is not None:
                out.scalars[f"xai/{m}/{curve}_auc"] = value
    return out


register_measure(Measure(
    "faithfulness", lambda methods: {f"xai/{m}/{c}_auc" for m in methods for c in ("deletion", "insertion")},
    _faithfulness,
    options={"steps": integer(8, 1, 256, "points on each curve; 2 * (steps + 1) forwards per probe and method"),
             "perturbation": choice("blur", PERTURBATIONS)},
    shard=_faithfulness_shard,
    shard_keys=lambda methods: [f"{c}/{m}" for m in methods for c in ("deletion", "insertion")],
    cost="2 * (steps + 1) forward passes per probe and method, about as much as Integrated Gradients",
))


# --------------------------------------------------------------------------------- model-randomisation sanity check
def _sanity(ctx: MeasureContext) -> MeasureResult:
    out = MeasureResult()
    for m in ctx.methods:
        random_maps = ctx.extras.get(f"random/{m}")
        if random_maps is None:
            continue
        # degenerate pairs (all-zero maps on both sides) are left out, never "similar" (metrics.sanity)
        value = finite_mean(sanity_scores(ctx.maps[m], random_maps, size=ctx.size))
        if value is not None:
            out.scalars[f"xai/{m}/sanity_similarity"] = value
    return out


register_measure(Measure(
    "sanity", lambda methods: {f"xai/{m}/sanity_similarity" for m in methods}, _sanity, stage="sanity",
    options={"layers": integer(None, 1, 100_000, "layers re-initialised from the output side; checked against "
                               "the model at setup", none="all layers"),
             "threshold": number(0.5, -1.0, 1.0, "warn when a method's mean similarity exceeds it")},
    cost="one explanation round on a weight-randomised copy of the model, at the end of fit",
))
