"""Private helpers shared by the metric modules (pure torch)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

# Values closer than this fraction of a map's largest magnitude are treated as ties.
_TIE_RTOL = 1e-6


def _check_tensor(value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}")
    return value


def _as_heatmap(maps: object, name: str = "maps") -> Tensor:
    """Return ``maps`` as a floating ``(N, 1, H, W)`` heatmap.

    The same rule as ``attribution.to_heatmap``: the sum of absolute values over channels (one-channel maps become
    their absolute value, so non-negative Grad-CAM maps are unchanged); ``(N, H, W)`` gets a channel axis. Non-float
    dtypes and half precision are promoted to float32, float64 is kept.
    """
    maps = _check_tensor(maps, name)
    if maps.ndim == 3:
        maps = maps.unsqueeze(1)
    if maps.ndim != 4:
        raise ValueError(f"`{name}` must have shape (N, C, H, W) or (N, H, W), got {tuple(maps.shape)}")
    if maps.shape[0] == 0 or maps.shape[2] == 0 or maps.shape[3] == 0:
        raise ValueError(f"`{name}` must be non-empty, got shape {tuple(maps.shape)}")
    if maps.dtype != torch.float64:
        maps = maps.float()
    return maps.detach().abs().sum(dim=1, keepdim=True)


def _check_size(size: object, name: str = "size") -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"`{name}` must be a positive int, got {size!r}")
    return size


def _flat_rows(x: Tensor) -> Tensor:
    """``(N,)`` bool: rows of ``x`` (N, D) whose values are all equal up to ``_TIE_RTOL`` (NaN rows are not flat)."""
    rng = x.amax(dim=1) - x.amin(dim=1)
    scale = x.abs().amax(dim=1)
    return rng <= _TIE_RTOL * scale


def _snap(x: Tensor) -> Tensor:
    """Quantise each row of ``x`` (N, D) to steps of ``_TIE_RTOL`` times its largest magnitude.

    Float rounding noise (e.g. averaging a constant over pooling windows of different sizes) then produces exact
    ties instead of arbitrary ranks. Non-finite rows are left alone.
    """
    scale = x.abs().amax(dim=1, keepdim=True) * _TIE_RTOL
    ok = torch.isfinite(scale) & (scale > 0)
    step = torch.where(ok, scale, torch.ones_like(scale))
    return torch.where(ok, torch.round(x / step), x)


def _module_training_flags(model: nn.Module) -> dict[nn.Module, bool]:
    return {m: m.training for m in model.modules()}


@contextmanager
def _evaluation(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode per submodule, ``no_grad``, global RNG (CPU and the device's CUDA) restored afterwards."""
    flags = _module_training_flags(model)
    cuda_devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda_devices), torch.no_grad():
            model.eval()
            yield
    finally:
        for module, flag in flags.items():
            module.training = flag
