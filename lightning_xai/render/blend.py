"""Alpha-blend coloured heatmaps onto probe images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_xai.render.colormap import _check_name, apply_colormap
from lightning_xai.render.normalize import _check_maps, denormalize, normalize_maps

__all__ = ["overlay", "to_uint8"]


def to_uint8(images01: Tensor) -> Tensor:
    """Convert float images in ``[0, 1]`` to ``uint8`` (rounded, clamped; NaN becomes 0)."""
    return (torch.nan_to_num(images01, nan=0.0).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be a float in [0, 1], got {alpha!r}")


def _blend(images01: Tensor, heatmaps: Tensor, alpha: float, colormap: str) -> tuple[Tensor, Tensor]:
    """Blend RGB float ``images01`` (N,3,H,W) with ``heatmaps`` (N,1,h,w); returns float result and degenerate."""
    maps01, degenerate = normalize_maps(heatmaps)
    maps01 = maps01.to(images01.device)
    degenerate = degenerate.to(images01.device)
    size = tuple(images01.shape[-2:])
    if tuple(maps01.shape[-2:]) != size:
        maps01 = F.interpolate(maps01, size=size, mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    colours = apply_colormap(maps01, colormap)
    blended = (1.0 - alpha) * images01 + alpha * colours
    blended = torch.where(degenerate.view(-1, 1, 1, 1), images01, blended)
    return blended, degenerate


def overlay(
    images: Tensor,
    heatmaps: Tensor,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Overlay coloured heatmaps on images.

    Each image is de-normalised with :func:`denormalize` (``mean``/``std``, grayscale to RGB); each heatmap is
    min-max normalised with :func:`normalize_maps`, resized bilinearly to the image size if it differs, coloured with
    ``colormap`` and blended as ``(1 - alpha) * image + alpha * colour``. A degenerate (flat or non-finite) map
    shows the plain image.

    Args:
        images: probe images, float (normalised with ``mean``/``std`` or in ``[0, 1]``) or ``uint8``.
        heatmaps: one map per image, any real dtype (e.g. from ``grad_cam`` or ``to_heatmap``).
        alpha: weight of the heatmap colour, in ``[0, 1]``.
        colormap: ``"jet"`` (default), ``"inferno"`` or ``"viridis"``.
        mean: per-channel mean used to normalise ``images``, or ``None``.
        std: per-channel std used to normalise ``images``, or ``None``.

    Returns:
        ``(overlays, degenerate)``: ``uint8`` RGB overlays and a bool tensor marking flat/non-finite maps, both on the
        device of ``images``.

    Shape:
        - ``images``: ``(N, C, H, W)`` with ``C`` in ``{1, 3}``.
        - ``heatmaps``: ``(N, 1, h, w)``.
        - ``overlays``: ``(N, 3, H, W)``; ``degenerate``: ``(N,)``.

    Example::

        >>> images = torch.ones(2, 3, 8, 8) * 0.5
        >>> heatmaps = torch.zeros(2, 1, 4, 4)
        >>> heatmaps[0, 0, 0, 0] = 1.0  # second map is flat
        >>> out, degenerate = overlay(images, heatmaps)
        >>> out.shape, out.dtype, degenerate.tolist()
        (torch.Size([2, 3, 8, 8]), torch.uint8, [False, True])
    """
    _check_alpha(alpha)
    _check_name(colormap)
    _check_maps(heatmaps, "heatmaps")
    images01 = denormalize(images, mean, std)
    if heatmaps.shape[0] != images01.shape[0]:
        raise ValueError(
            f"`heatmaps` must have one map per image: got {heatmaps.shape[0]} maps for {images01.shape[0]} images"
        )
    blended, degenerate = _blend(images01, heatmaps, float(alpha), colormap)
    return to_uint8(blended), degenerate
