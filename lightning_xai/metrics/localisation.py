"""Localisation of heatmaps against ground-truth masks or boxes: pointing game and relevance mass."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_xai.metrics._utils import _as_heatmap, _check_tensor, _flat_rows

__all__ = ["boxes_to_masks", "pointing_game", "relevance_mass"]


def boxes_to_masks(boxes: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Rasterise ``xyxy`` boxes into boolean masks.

    Boxes are in pixel coordinates of the target grid with the ``(x1, y1)`` corner exclusive in the usual
    continuous-coordinate sense: pixel ``(row, col)`` is inside when its centre ``(col + 0.5, row + 0.5)`` lies in
    ``[x0, x1] x [y0, y1]``. So ``(0, 0, 2, 2)`` covers the four top-left pixels and a zero-area box covers nothing.

    Args:
        boxes: ``(N, 4)`` boxes ``(x0, y0, x1, y1)``.
        size: mask side, or ``(H, W)``.

    Returns:
        Bool masks on the boxes' device.

    Shape:
        - boxes: ``(N, 4)``
        - output: ``(N, 1, H, W)``

    Example::

        >>> boxes_to_masks(torch.tensor([[1.0, 0.0, 3.0, 1.0]]), (2, 4)).int()
        tensor([[[[0, 1, 1, 0],
                  [0, 0, 0, 0]]]], dtype=torch.int32)
    """
    boxes = _check_tensor(boxes, "boxes")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"`boxes` must have shape (N, 4) in xyxy format, got {tuple(boxes.shape)}")
    if isinstance(size, int) and not isinstance(size, bool):
        height = width = size
    elif (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in size)
    ):
        height, width = size
    else:
        raise ValueError(f"`size` must be an int or a pair (H, W) of ints, got {size!r}")
    if height < 1 or width < 1:
        raise ValueError(f"`size` must be positive, got {size!r}")
    b = boxes.detach().to(torch.float64)
    cols = torch.arange(width, dtype=torch.float64, device=b.device) + 0.5
    rows = torch.arange(height, dtype=torch.float64, device=b.device) + 0.5
    in_x = (cols[None, :] >= b[:, 0:1]) & (cols[None, :] <= b[:, 2:3])  # (N, W)
    in_y = (rows[None, :] >= b[:, 1:2]) & (rows[None, :] <= b[:, 3:4])  # (N, H)
    return (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)


def _masks_like(masks: Tensor, heat: Tensor) -> Tensor:
    """Bool masks ``(N, 1, H, W)`` at the heatmaps' resolution (nearest resize; float masks are cut at 0.5)."""
    masks = _check_tensor(masks, "masks")
    n, _, height, width = heat.shape
    if masks.ndim == 2 and masks.shape[1] == 4:
        masks = boxes_to_masks(masks, (height, width))
    elif masks.ndim == 3:
        masks = masks.unsqueeze(1)
    if masks.ndim != 4 or masks.shape[1] != 1:
        raise ValueError(
            f"`masks` must be masks of shape (N, 1, H, W) or (N, H, W), or boxes of shape (N, 4); got "
            f"{tuple(masks.shape)}"
        )
    if masks.shape[0] != n:
        raise ValueError(f"`masks` must hold one mask per heatmap ({n}), got {masks.shape[0]}")
    masks = masks.detach().to(device=heat.device)
    masks = masks > 0.5 if masks.is_floating_point() else masks != 0
    if masks.shape[-2:] != (height, width):
        masks = F.interpolate(masks.float(), size=(height, width), mode="nearest") > 0.5
    return masks


def pointing_game(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """Per-sample hit (1.0) or miss (0.0): does the heatmap's maximum fall inside the mask?

    Ties: when several pixels share the maximum value, the sample is a hit if *any* of them is inside the mask. A
    flat map (all values equal, e.g. all zero), a map containing NaN and an empty mask are misses: such a map points
    nowhere.

    Args:
        heatmaps: ``(N, 1, H, W)`` maps or ``(N, C, H, W)`` attributions, reduced with the ``to_heatmap`` rule (sum
            of absolute values over channels), so the largest attribution magnitude counts.
        masks: ``(N, 1, H, W)`` or ``(N, H, W)`` bool/float masks (float masks: inside when ``> 0.5``), resized with
            nearest neighbour when their resolution differs from the maps'; or ``(N, 4)`` ``xyxy`` boxes in the
            heatmaps' pixel coordinates (see :func:`boxes_to_masks`).

    Returns:
        Detached ``(N,)`` float tensor of 0.0/1.0 on the heatmaps' device.

    Shape:
        - heatmaps: ``(N, C, H, W)``
        - masks: ``(N, 1, H', W')`` or ``(N, 4)``
        - output: ``(N,)``

    Cost: elementwise over the maps, negligible.

    Example::

        >>> maps = torch.tensor([[[[0.0, 1.0], [0.5, 0.0]]]])
        >>> pointing_game(maps, torch.tensor([[[[False, True], [False, False]]]]))
        tensor([1.])
    """
    heat = _as_heatmap(heatmaps, "heatmaps")
    inside = _masks_like(masks, heat).flatten(1)
    flat = heat.flatten(1)
    peak = flat.amax(dim=1, keepdim=True)
    at_peak = flat == peak  # NaN peaks compare False everywhere
    hit = (at_peak & inside).any(dim=1) & ~_flat_rows(flat)
    return hit.to(heat.dtype)


def relevance_mass(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """Per-sample share of the attribution mass that lies inside the mask (Arras et al., 2022).

    ``sum(heat * mask) / sum(heat)`` with ``heat`` the ``to_heatmap`` reduction (absolute values summed over
    channels), which for non-negative Grad-CAM maps is exactly the share of positive relevance; 0.0 when the map has
    no mass (all zero). NaN/inf values in a map count as zero mass.

    Args:
        heatmaps: ``(N, 1, H, W)`` maps or ``(N, C, H, W)`` attributions (see :func:`pointing_game`).
        masks: as for :func:`pointing_game`: masks ``(N, 1, H, W)`` (resized nearest) or ``(N, 4)`` boxes.

    Returns:
        Detached ``(N,)`` float tensor in ``[0, 1]`` on the heatmaps' device.

    Shape:
        - heatmaps: ``(N, C, H, W)``
        - masks: ``(N, 1, H', W')`` or ``(N, 4)``
        - output: ``(N,)``

    Cost: elementwise over the maps, negligible.

    Example::

        >>> maps = torch.tensor([[[[3.0, 1.0], [0.0, 0.0]]]])
        >>> relevance_mass(maps, torch.tensor([[[[True, False], [True, True]]]]))
        tensor([0.7500])
    """
    heat = _as_heatmap(heatmaps, "heatmaps")
    inside = _masks_like(masks, heat).flatten(1)
    flat = heat.flatten(1)
    pos = torch.where(torch.isfinite(flat), flat, torch.zeros_like(flat))
    total = pos.sum(dim=1)
    share = (pos * inside).sum(dim=1) / torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, share.clamp(0.0, 1.0), torch.zeros_like(share))
