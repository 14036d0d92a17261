"""The one rule for degenerate heatmaps: maps on which no similarity or localisation metric means anything.

A map is degenerate when it holds a non-finite value (NaN/inf), or when it is flat: all values equal up to ``1e-6``
times its largest magnitude, which includes the all-zero map (no gradient reached the input, a ReLU'd all-negative
CAM, a zero-initialised head). Rank correlations call two flat maps "identical", so a degenerate map would look
perfectly stable; every consumer (drift detector, monitor, adaptive IG) asks this module instead.

Maps are first reduced with the ``to_heatmap`` rule (sum of absolute values over channels), like every metric here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_xai.metrics._utils import _as_heatmap, _flat_rows

__all__ = ["DEGENERATE_KINDS", "degenerate_kinds", "degenerate_rows"]

#: Codes returned by :func:`degenerate_kinds`, by index: 0 fine, 1 non-finite, 2 all zero, 3 constant (non-zero).
DEGENERATE_KINDS: tuple[str, ...] = ("ok", "non-finite", "all zero", "constant")


def _rows(maps: Tensor) -> Tensor:
    if isinstance(maps, Tensor) and maps.ndim == 2:  # already one flattened heatmap per row
        if maps.shape[0] == 0 or maps.shape[1] == 0:
            raise ValueError(f"`maps` must be non-empty, got shape {tuple(maps.shape)}")
        return maps.detach().abs() if maps.dtype == torch.float64 else maps.detach().float().abs()
    return _as_heatmap(maps, "maps").flatten(1)


def degenerate_kinds(maps: Tensor) -> Tensor:
    """Per-map degeneracy code (see :data:`DEGENERATE_KINDS`).

    Args:
        maps: heatmaps ``(N, 1, H, W)``, attributions ``(N, C, H, W)``, ``(N, H, W)``, or flattened ``(N, D)``.

    Returns:
        ``(N,)`` int64 on the maps' device: 0 fine, 1 non-finite, 2 all zero, 3 constant non-zero.

    Example::

        >>> maps = torch.stack([torch.rand(1, 4, 4) + 0.1, torch.zeros(1, 4, 4), torch.full((1, 4, 4), 2.0)])
        >>> degenerate_kinds(maps).tolist()
        [0, 2, 3]
    """
    x = _rows(maps)
    finite = torch.isfinite(x).all(dim=1)
    safe = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    zero = safe.amax(dim=1) == 0
    flat = _flat_rows(safe)
    kind = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    kind = torch.where(flat, torch.full_like(kind, 3), kind)
    kind = torch.where(zero, torch.full_like(kind, 2), kind)
    return torch.where(finite, kind, torch.ones_like(kind))


def degenerate_rows(maps: Tensor) -> Tensor:
    """``(N,)`` bool: True for maps that are non-finite, all zero or constant (see the module docstring).

    Example::

        >>> degenerate_rows(torch.stack([torch.eye(3)[None], torch.zeros(1, 3, 3)])).tolist()
        [False, True]
    """
    return degenerate_kinds(maps) != 0
