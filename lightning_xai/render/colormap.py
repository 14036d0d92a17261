"""Colormaps as 256-entry look-up tables built in torch (no matplotlib dependency).

``jet`` is computed from its analytic piecewise-linear definition (the same segment data as matplotlib's);
``inferno`` and ``viridis`` are interpolated from 17 anchor colours sampled from matplotlib's tables (every 16th
entry plus the last), which agrees with matplotlib's 256-entry tables to within 7/255 per channel (not visible in
an overlay).
"""

from __future__ import annotations

from functools import cache

import torch
from torch import Tensor

__all__ = ["COLORMAPS", "apply_colormap", "colormap_lut"]

#: Names accepted by :func:`apply_colormap`.
COLORMAPS: tuple[str, ...] = ("jet", "inferno", "viridis")

_LUT_SIZE = 256

# jet: per channel, (x, value) knots of a piecewise-linear function on [0, 1].
_JET_SEGMENTS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),  # red
    ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),  # green
    ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),  # blue
)

# Anchors at LUT indices 0, 16, 32, ..., 240, 255.
_ANCHOR_INDICES: tuple[int, ...] = (*range(0, 256, 16), 255)

_VIRIDIS_ANCHORS: tuple[tuple[float, float, float], ...] = (
    (0.2670, 0.0049, 0.3294),
    (0.2823, 0.0950, 0.4173),
    (0.2788, 0.1755, 0.4834),
    (0.2590, 0.2515, 0.5247),
    (0.2297, 0.3224, 0.5457),
    (0.1994, 0.3876, 0.5546),
    (0.1727, 0.4488, 0.5579),
    (0.1490, 0.5081, 0.5573),
    (0.1276, 0.5669, 0.5506),
    (0.1206, 0.6258, 0.5335),
    (0.1579, 0.6838, 0.5017),
    (0.2461, 0.7389, 0.4520),
    (0.3692, 0.7889, 0.3829),
    (0.5160, 0.8312, 0.2943),
    (0.6785, 0.8637, 0.1895),
    (0.8456, 0.8873, 0.0997),
    (0.9932, 0.9062, 0.1439),
)

_INFERNO_ANCHORS: tuple[tuple[float, float, float], ...] = (
    (0.0015, 0.0005, 0.0139),
    (0.0423, 0.0281, 0.1411),
    (0.1293, 0.0473, 0.2908),
    (0.2383, 0.0366, 0.3964),
    (0.3415, 0.0623, 0.4294),
    (0.4412, 0.0993, 0.4316),
    (0.5409, 0.1347, 0.4151),
    (0.6401, 0.1714, 0.3811),
    (0.7357, 0.2159, 0.3302),
    (0.8224, 0.2752, 0.2661),
    (0.8943, 0.3534, 0.1936),
    (0.9470, 0.4492, 0.1153),
    (0.9784, 0.5579, 0.0349),
    (0.9879, 0.6753, 0.0653),
    (0.9746, 0.7977, 0.2063),
    (0.9476, 0.9174, 0.4107),
    (0.9884, 0.9984, 0.6449),
)


def _piecewise_linear(x: Tensor, knots_x: Tensor, knots_y: Tensor) -> Tensor:
    """Evaluate the piecewise-linear function through ``(knots_x, knots_y)`` at ``x`` (``knots_x`` increasing)."""
    idx = torch.searchsorted(knots_x, x, right=True).clamp(1, knots_x.numel() - 1)
    x0, x1 = knots_x[idx - 1], knots_x[idx]
    y0, y1 = knots_y[idx - 1], knots_y[idx]
    t = ((x - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return y0 + t * (y1 - y0)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or name not in COLORMAPS:
        raise ValueError(f"`colormap` must be one of {COLORMAPS}, got {name!r}")


@cache
def _cpu_lut(name: str) -> Tensor:
    x = torch.linspace(0.0, 1.0, _LUT_SIZE, dtype=torch.float64)
    if name == "jet":
        channels = []
        for segments in _JET_SEGMENTS:
            kx = torch.tensor([s[0] for s in segments], dtype=torch.float64)
            ky = torch.tensor([s[1] for s in segments], dtype=torch.float64)
            channels.append(_piecewise_linear(x, kx, ky))
        lut = torch.stack(channels, dim=1)
    else:
        anchors = _VIRIDIS_ANCHORS if name == "viridis" else _INFERNO_ANCHORS
        kx = torch.tensor(_ANCHOR_INDICES, dtype=torch.float64) / (_LUT_SIZE - 1)
        ky = torch.tensor(anchors, dtype=torch.float64)
        lut = torch.stack([_piecewise_linear(x, kx, ky[:, c]) for c in range(3)], dim=1)
    return lut.clamp(0.0, 1.0).to(torch.float32)


def colormap_lut(name: str = "jet") -> Tensor:
    """Return the 256-entry look-up table of a colormap.

    Args:
        name: one of :data:`COLORMAPS` (``"jet"``, ``"inferno"``, ``"viridis"``).

    Returns:
        A new float32 CPU tensor of RGB colours in ``[0, 1]``; entry 0 is the colour of 0.0, entry 255 of 1.0.

    Shape:
        - Output: ``(256, 3)``.

    Example::

        >>> lut = colormap_lut("jet")
        >>> lut.shape
        torch.Size([256, 3])
        >>> lut[0].tolist(), lut[-1].tolist()  # dark blue ... dark red
        ([0.0, 0.0, 0.5], [0.5, 0.0, 0.0])
    """
    _check_name(name)
    return _cpu_lut(name).clone()


def apply_colormap(maps01: Tensor, name: str = "jet") -> Tensor:
    """Colour heatmaps with values in ``[0, 1]``.

    Values are clamped to ``[0, 1]`` and quantised to the nearest of the 256 LUT entries; non-finite values are
    treated as 0.

    Args:
        maps01: heatmaps normalised to ``[0, 1]`` (for example by :func:`normalize_maps`).
        name: one of :data:`COLORMAPS`.

    Returns:
        Float32 RGB images in ``[0, 1]`` on the device of ``maps01``.

    Shape:
        - ``maps01``: ``(N, 1, H, W)``.
        - Output: ``(N, 3, H, W)``.

    Example::

        >>> rgb = apply_colormap(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1), "jet")
        >>> rgb.shape
        torch.Size([2, 3, 1, 1])
        >>> rgb[:, :, 0, 0].tolist()
        [[0.0, 0.0, 0.5], [0.5, 0.0, 0.0]]
    """
    _check_name(name)
    if not isinstance(maps01, Tensor):
        raise TypeError(f"`maps01` must be a torch.Tensor, got {type(maps01).__name__}")
    if maps01.dim() != 4 or maps01.shape[1] != 1:
        raise ValueError(f"`maps01` must have shape (N, 1, H, W), got {tuple(maps01.shape)}")
    values = torch.nan_to_num(maps01.detach().float(), nan=0.0, posinf=0.0, neginf=0.0).clamp(0.0, 1.0)
    idx = (values[:, 0] * (_LUT_SIZE - 1)).round().long()  # (N, H, W)
    lut = _cpu_lut(name).to(maps01.device)
    return lut[idx].permute(0, 3, 1, 2).contiguous()
