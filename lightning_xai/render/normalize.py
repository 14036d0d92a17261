"""Per-image min-max normalisation of heatmaps and de-normalisation of probe images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["denormalize", "normalize_maps"]


def _check_maps(maps: Tensor, name: str = "maps") -> None:
    if not isinstance(maps, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(maps).__name__}")
    if maps.dim() != 4 or maps.shape[1] != 1:
        raise ValueError(
            f"`{name}` must be heatmaps of shape (N, 1, H, W), got {tuple(maps.shape)}; "
            "reduce attributions with lightning_xai.attribution.to_heatmap first"
        )
    if maps.is_complex():
        raise TypeError(f"`{name}` must be a real tensor, got dtype {maps.dtype}")


def normalize_maps(maps: Tensor, *, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Min-max normalise each heatmap to ``[0, 1]``, never producing NaN.

    Non-finite values (NaN, ``±inf``) are replaced by 0 first. A map is *degenerate* when, after that, it is flat:
    ``max - min <= eps * max(|values|)`` (this includes an all-zero map and a map that was entirely non-finite).
    A degenerate map is returned as all zeros and flagged, instead of dividing by (almost) zero
    (pytorch-grad-cam #107). Computed in float32 (bf16/fp16 inputs are upcast), without overflow for large values.

    Args:
        maps: heatmaps, any real dtype.
        eps: relative flatness threshold, ``>= 0``.

    Returns:
        ``(normalized, degenerate)``: float32 maps in ``[0, 1]`` (each non-degenerate map has min 0 and max 1) and a
        bool tensor, both detached, on the device of ``maps``.

    Shape:
        - ``maps``: ``(N, 1, H, W)``.
        - ``normalized``: ``(N, 1, H, W)``; ``degenerate``: ``(N,)``.

    Example::

        >>> maps = torch.tensor([[0.0, 2.0, 4.0], [3.0, 3.0, 3.0]]).view(2, 1, 1, 3)
        >>> normalized, degenerate = normalize_maps(maps)
        >>> normalized.view(2, 3).tolist()
        [[0.0, 0.5, 1.0], [0.0, 0.0, 0.0]]
        >>> degenerate.tolist()
        [False, True]
    """
    _check_maps(maps)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0 or eps != eps:
        raise ValueError(f"`eps` must be a non-negative float, got {eps!r}")
    n = maps.shape[0]
    x = maps.detach().to(torch.float32)
    x = torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype, device=x.device))
    if x[0].numel() == 0:
        return x.clone(), torch.ones(n, dtype=torch.bool, device=x.device)
    flat = x.reshape(n, -1)
    scale = flat.abs().amax(dim=1)  # (N,), finite
    safe_scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    y = flat / safe_scale[:, None]  # in [-1, 1]: max - min cannot overflow
    lo = y.amin(dim=1)
    hi = y.amax(dim=1)
    rng = hi - lo
    degenerate = (scale <= 0) | (rng <= eps) | ~torch.isfinite(rng)
    safe_rng = torch.where(degenerate, torch.ones_like(rng), rng)
    out = ((y - lo[:, None]) / safe_rng[:, None]).clamp(0.0, 1.0)
    out = torch.where(degenerate[:, None], torch.zeros_like(out), out)
    return out.view_as(x), degenerate


def _channel_stats(value: Sequence[float] | Tensor | None, name: str, channels: int) -> Tensor | None:
    if value is None:
        return None
    try:
        t = torch.as_tensor(value, dtype=torch.float32).flatten()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"`{name}` must be a sequence of floats or a tensor, got {value!r}") from err
    if t.numel() not in (1, channels):
        raise ValueError(f"`{name}` must have 1 or {channels} (channels) values, got {t.numel()}: {value!r}")
    if not torch.isfinite(t).all():
        raise ValueError(f"`{name}` must be finite, got {value!r}")
    if name == "std" and not (t > 0).all():
        raise ValueError(f"`std` must be positive, got {value!r}")
    return t


def denormalize(
    images: Tensor,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """Undo a per-channel ``(x - mean) / std`` normalisation and return displayable RGB in ``[0, 1]``.

    Float images are mapped to ``x * std + mean`` (each only if given), then clamped to ``[0, 1]``; NaN becomes 0.
    ``uint8`` images are raw pixels: divided by 255 (``mean``/``std`` are not allowed with them). Grayscale images
    (``C == 1``) are replicated to three channels.

    Args:
        images: probe images, float (any range that de-normalises into ``[0, 1]``) or ``uint8`` in ``[0, 255]``.
        mean: per-channel mean (1 or ``C`` values) used to normalise the images, or ``None``.
        std: per-channel standard deviation (1 or ``C`` values, positive), or ``None``.

    Returns:
        Float32 RGB images in ``[0, 1]``, detached, on the device of ``images``.

    Shape:
        - ``images``: ``(N, C, H, W)`` with ``C`` in ``{1, 3}``.
        - Output: ``(N, 3, H, W)``.

    Example::

        >>> x = torch.zeros(1, 3, 2, 2)  # the mean colour, normalised
        >>> denormalize(x, mean=(0.5, 0.25, 0.0), std=(0.2, 0.2, 0.2))[0, :, 0, 0].tolist()
        [0.5, 0.25, 0.0]
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"`images` must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"`images` must have shape (N, C, H, W) with C in (1, 3), got {tuple(images.shape)}")
    channels = images.shape[1]
    mean_t = _channel_stats(mean, "mean", channels)
    std_t = _channel_stats(std, "std", channels)
    x = images.detach()
    if x.dtype == torch.uint8:
        if mean_t is not None or std_t is not None:
            raise ValueError("`mean`/`std` cannot be used with uint8 images (they are raw pixels in [0, 255])")
        x = x.to(torch.float32) / 255.0
    elif not x.is_floating_point():
        raise TypeError(f"`images` must be a float or uint8 tensor, got dtype {x.dtype}")
    else:
        x = x.to(torch.float32)
        if std_t is not None:
            x = x * std_t.to(x.device).view(1, -1, 1, 1)
        if mean_t is not None:
            x = x + mean_t.to(x.device).view(1, -1, 1, 1)
    x = torch.nan_to_num(x, nan=0.0).clamp(0.0, 1.0)
    if channels == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()
