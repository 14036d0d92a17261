"""Network dissection, light (Bau et al. 2017): which units of a layer detect which concept masks on the pool."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_xai import keys
from lightning_xai._validation import integer, number
from lightning_xai.views._common import View, ViewContext, ViewOutput, checked, display, tile_grid

__all__ = ["Dissection", "DissectionView", "dissect"]


@dataclass
class Dissection:
    """The result of :func:`dissect`.

    Attributes:
        concepts: concept names, in the column order of ``iou``.
        iou: ``(C_units, K)`` dataset-wide IoU of each unit's thresholded map with each concept.
        thresholds: ``(C_units,)`` each unit's activation threshold ``T_u``.
        label: ``(C_units,)`` long, index of each unit's best concept (highest IoU).
        detector: ``(C_units,)`` bool, the best IoU exceeds the IoU threshold.
    """

    concepts: list[str]
    iou: Tensor
    thresholds: Tensor
    label: Tensor
    detector: Tensor

    def units_per_concept(self) -> dict[str, int]:
        """Number of detector units whose best concept is each concept (every concept listed, zeros included)."""
        return {name: int((self.detector & (self.label == k)).sum()) for k, name in enumerate(self.concepts)}

    def top_units(self, n: int = 10) -> list[tuple[int, str, float]]:
        """``(unit, concept, iou)`` of the ``n`` units with the highest best IoU, best first."""
        best = self.iou.max(dim=1).values if self.iou.numel() else torch.zeros(self.iou.shape[0])
        order = torch.sort(best, descending=True, stable=True).indices[:n]
        return [(int(u), self.concepts[int(self.label[u])], float(best[u])) for u in order]


_OPTIONS = {
    "top_quantile": number(0.005, 0.0, 1.0, "share of each unit's pixels above its threshold", open_low=True,
                           open_high=True),
    "iou_threshold": number(0.04, 0.0, 1.0, "IoU above which a unit detects its best concept", open_low=True,
                            open_high=True),
    "top": integer(10, 1, 1000, "units listed in the text table"),
    "num_units": integer(6, 1, 256, "units drawn, one row each"),
    "num_images": integer(5, 1, 64, "pool images drawn per unit"),
}


def dissect(
    activations: Tensor,
    concepts: Mapping[str, Tensor],
    *,
    top_quantile: float = 0.005,
    iou_threshold: float = 0.04,
    chunk_units: int | None = None,
) -> Dissection:
    """Dissect a layer: IoU of each unit's top-quantile activation region with each concept mask.

    Following Bau et al. (Network Dissection, 2017): each unit's activation map is upsampled (bilinear) to the
    mask resolution; its threshold ``T_u`` is the top ``top_quantile`` quantile of all upsampled pixels of the
    pool (``P(a > T_u) = 0.005``); the unit's region on image ``n`` is ``a_n >= T_u`` (ties at the top stay
    together) where ``a_n`` exceeds the unit's minimum over the pool (so a dead or constant unit, or the tied zeros of
    a sparse one, select nothing; such a region is smaller than the quantile). The IoU of unit
    ``u`` with concept ``c`` is ``sum_n |region_n & mask_n| / sum_n |region_n | mask_n|`` over the whole pool, and a
    unit *detects* its best concept when that IoU exceeds ``iou_threshold`` (0.04). A unit that never exceeds its
    threshold has an empty region and IoU 0. Note the bound ``IoU <= top_quantile / coverage``:
    a concept covering 25 % of all pixels cannot reach 0.04; use concepts that are present in part of the pool
    (e.g. one shape class) rather than "any object".

    Cost: ``O(N * units * H * W)`` time, one unit chunk of ``(N, chunk_units, H, W)`` floats in memory.

    Args:
        activations: ``(N, U, h, w)`` layer activations of the pool.
        concepts: ``{name: (N, 1, H, W)}`` binary masks (nonzero = concept present).
        top_quantile: fraction of pixels above each unit's threshold, in (0, 1).
        iou_threshold: IoU above which a unit detects its best concept.
        chunk_units: units upsampled at once (default: as many as fit in about 16 M floats).

    Returns:
        A :class:`Dissection`.

    Example::

        >>> acts = torch.zeros(4, 2, 4, 4); acts[:, 0, :2, :2] = 1.0  # unit 0 fires on the top-left quarter
        >>> mask = torch.zeros(4, 1, 8, 8); mask[:, :, :4, :4] = 1.0
        >>> d = dissect(acts, {"corner": mask}, top_quantile=0.2)
        >>> d.units_per_concept(), d.detector.tolist()
        ({'corner': 1}, [True, False])
    """
    checked("dissect", {k: _OPTIONS[k] for k in ("top_quantile", "iou_threshold")}, top_quantile=top_quantile,
            iou_threshold=iou_threshold)
    if activations.ndim != 4:
        raise ValueError(f"`activations` must have shape (N, U, h, w), got {tuple(activations.shape)}")
    names = list(concepts)
    n, units = activations.shape[:2]
    if names:
        size = tuple(concepts[names[0]].shape[-2:])
        for name in names:
            m = concepts[name]
            if m.ndim != 4 or m.shape[0] != n or m.shape[1] != 1 or tuple(m.shape[-2:]) != size:
                raise ValueError(f"concept {name!r} mask must have shape ({n}, 1, {size[0]}, {size[1]}), "
                                 f"got {tuple(m.shape)}")
        masks = torch.cat([concepts[k].detach().cpu().float() != 0 for k in names], dim=1).float()  # (N, K, H, W)
    else:
        size = tuple(activations.shape[-2:])
        masks = torch.zeros(n, 0, *size)
    acts = activations.detach().cpu().float()
    flat_masks = masks.flatten(2)  # (N, K, P)
    mask_area = flat_masks.sum(dim=(0, 2))  # (K,)
    total = n * size[0] * size[1]
    k_top = max(1, math.ceil(top_quantile * total))
    if chunk_units is None:
        chunk_units = max(1, 2**24 // max(1, total))
    iou = torch.zeros(units, len(names))
    thresholds = torch.zeros(units)
    for start in range(0, units, chunk_units):
        chunk = acts[:, start : start + chunk_units]
        up = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False) if chunk.shape[-2:] != size \
            else chunk
        per_unit = up.transpose(0, 1).reshape(up.shape[1], -1)  # (u, N*P)
        t = per_unit.topk(k_top, dim=1).values[:, -1]
        low = per_unit.min(dim=1).values
        # >= T keeps a plateau of tied top values whole (a ReLU unit saturating on its concept); > min keeps a dead
        # or constant unit, or the tied zeros of a sparse one, out of its region
        t4, low4 = t.view(1, -1, 1, 1), low.view(1, -1, 1, 1)
        region = ((up >= t4) & (up > low4)).float().flatten(2)  # (N, u, P)
        inter = torch.einsum("nup,nkp->uk", region, flat_masks)
        area = region.sum(dim=(0, 2))  # (u,)
        union = area[:, None] + mask_area[None, :] - inter
        iou[start : start + chunk.shape[1]] = torch.where(union > 0, inter / union.clamp_min(1.0),
                                                          torch.zeros_like(inter))
        thresholds[start : start + chunk.shape[1]] = t
    if names:
        best, label = iou.max(dim=1)
    else:
        best, label = torch.zeros(units), torch.zeros(units, dtype=torch.long)
    return Dissection(names, iou, thresholds, label, best > iou_threshold)


class DissectionView(View):
    """Units of the layer that detect each concept of the pool, per epoch (:func:`dissect`).

    Concepts come from the context (``{name: (N, 1, H, W)}`` masks on the pool; e.g. for the shapes dataset one
    concept per shape class and one for the shortcut marker). Scalars per concept: ``xai/dissection/units/<concept>``
    (detector units whose best concept it is) and ``xai/dissection/max_iou/<concept>`` (the best IoU any unit
    reaches with it, a continuous signal below the detection rule). Text ``xai/dissection/top_units``: a Markdown
    table of the ``top`` units (unit, concept, IoU, detector or not). Image ``xai/dissection/units``: a row per
    unit for the ``num_units`` best units, showing its region (activation above ``T_u``, upsampled, in yellow) on
    the ``num_images`` pool images where it fires most. Nothing is logged without concepts.

    Cost: one forward over the pool (shared with the other views), then :func:`dissect` and
    ``num_units * num_images`` tiles.

    Logged: the scalars above, the text table and the image.
    """

    name = "dissection"
    options = _OPTIONS

    def __init__(self, top_quantile: float = 0.005, iou_threshold: float = 0.04, top: int = 10, num_units: int = 6,
                 num_images: int = 5) -> None:
        opts = checked(type(self).__name__, self.options, top_quantile=top_quantile, iou_threshold=iou_threshold,
                       top=top, num_units=num_units, num_images=num_images)
        self.num_units = opts["num_units"]
        self.num_images = opts["num_images"]
        self.top_quantile = opts["top_quantile"]
        self.iou_threshold = opts["iou_threshold"]
        self.top = opts["top"]
        self.last: Dissection | None = None

    def __call__(self, ctx: ViewContext) -> ViewOutput:
        if not ctx.concepts:
            return ViewOutput()
        acts = ctx.outputs("pool")[1]
        result = dissect(acts, ctx.concepts, top_quantile=self.top_quantile, iou_threshold=self.iou_threshold)
        self.last = result
        out = ViewOutput()
        for name, count in result.units_per_concept().items():
            out.scalars[keys.of("dissection", f"units/{name}")] = float(count)
            out.scalars[keys.of("dissection", f"max_iou/{name}")] = float(result.iou[:, result.concepts.index(name)].max())
        rows = ["| unit | concept | IoU | detector |", "|---:|---|---:|---|"]
        for unit, concept, value in result.top_units(self.top):
            rows.append(f"| {unit} | {concept} | {value:.3f} | {'yes' if value > self.iou_threshold else 'no'} |")
        out.texts[keys.of("dissection", "top_units")] = (
            f"Layer `{ctx.layer}`, {acts.shape[1]} units, {acts.shape[0]} pool images, top quantile "
            f"{self.top_quantile}, IoU > {self.iou_threshold}:\n\n" + "\n".join(rows)
        )
        out.images[keys.of("dissection", "units")] = self._picture(ctx, acts, result)
        return out

    def _picture(self, ctx: ViewContext, acts: Tensor, result: Dissection) -> Tensor:
        images = display(ctx.pool_images, ctx.mean, ctx.std)
        size = tuple(images.shape[-2:])
        k = min(self.num_images, images.shape[0])
        tiles, captions = [], []
        for unit, concept, value in result.top_units(self.num_units):
            strength = acts[:, unit].amax(dim=(1, 2)).cpu()
            best = torch.sort(strength, descending=True, stable=True).indices[:k]
            up = F.interpolate(acts[best, unit : unit + 1].cpu().float(), size=size, mode="bilinear",
                               align_corners=False)
            low = float(acts[:, unit].min())
            region = ((up >= result.thresholds[unit]) & (up > low)).float()  # the same rule as dissect()
            for j, i in enumerate(best.tolist()):
                dim = images[i] * (0.45 + 0.55 * region[j])
                tiles.append(torch.where(region[j].bool() & ~_inner(region[j]), _YELLOW, dim))
                captions.append([f"u{unit} {concept}"[:14] if j == 0 else f"#{int(ctx.pool_ids[i])}",
                                 f"IoU={value:.3f}" if j == 0 else ""])
        return tile_grid(torch.stack(tiles), captions, nrow=k, upscale_to=64)


_YELLOW = torch.tensor([1.0, 0.9, 0.0]).view(3, 1, 1)


def _inner(region: Tensor) -> Tensor:
    """Pixels of ``region`` (1, H, W) whose 4 neighbours are all in it (the rest is its outline)."""
    r = F.pad(region, (1, 1, 1, 1))
    inner = r[:, 1:-1, 1:-1] * r[:, :-2, 1:-1] * r[:, 2:, 1:-1] * r[:, 1:-1, :-2] * r[:, 1:-1, 2:]
    return inner.bool()
