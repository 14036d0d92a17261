"""Completeness of Integrated Gradients: how far the attributions' sum is from ``f(x) - f(baseline)``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_xai.metrics._utils import _check_tensor

__all__ = ["relative_error", "summarize"]


def relative_error(delta: Tensor, f_x: Tensor, f_b: Tensor, eps: float = 1e-4) -> Tensor:
    """Per-sample relative completeness error ``|delta| / max(|f_x - f_b|, eps)``.

    ``delta`` is IG's convergence delta, ``sum(attributions) - (f_x - f_b)``. When the target output barely changes
    between baseline and input (``|f_x - f_b| < eps``) a relative error is ill-defined; the denominator is then
    clamped to ``eps``, so the value is ``|delta| / eps``: 0 for an exact attribution, large (but finite) when the
    attributions sum to something the output change does not explain. Finite inputs always give finite outputs;
    NaN/inf in an input propagates to that sample.

    Args:
        delta: convergence deltas.
        f_x: target outputs (logits) at the inputs.
        f_b: target outputs at the baselines.
        eps: positive floor for the denominator, in the units of the outputs.

    Returns:
        Detached float tensor on ``delta``'s device.

    Shape:
        - delta, f_x, f_b: ``(N,)`` (anything broadcastable to a common ``(N,)``)
        - output: ``(N,)``

    Cost: elementwise, negligible.

    Example::

        >>> relative_error(torch.tensor([0.1, 0.0]), torch.tensor([3.0, 1.0]), torch.tensor([1.0, 1.0]))
        tensor([0.0500, 0.0000])
    """
    for name, value in (("delta", delta), ("f_x", f_x), ("f_b", f_b)):
        _check_tensor(value, name)
        if value.ndim > 1:
            raise ValueError(f"`{name}` must have shape (N,) or be a scalar, got {tuple(value.shape)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"`eps` must be a positive finite number, got {eps!r}")
    delta, f_x, f_b = (t.detach() for t in (delta, f_x, f_b))
    dtype = torch.float64 if torch.float64 in (delta.dtype, f_x.dtype, f_b.dtype) else torch.float32
    try:
        torch.broadcast_shapes(delta.shape, f_x.shape, f_b.shape)
    except RuntimeError as err:
        raise ValueError(
            f"`delta`, `f_x` and `f_b` must have matching shapes, got {tuple(delta.shape)}, {tuple(f_x.shape)} and "
            f"{tuple(f_b.shape)}"
        ) from err
    delta, f_x, f_b = (
        delta.to(dtype),
        f_x.to(device=delta.device, dtype=dtype),
        f_b.to(device=delta.device, dtype=dtype),
    )
    denom = (f_x - f_b).abs().clamp_min(eps)
    # clamp_min keeps NaN, so a NaN output difference stays NaN instead of silently becoming eps.
    return (delta.abs() / denom).reshape(-1)


def summarize(errors: Tensor) -> dict[str, Tensor]:
    """Distribution summary of per-sample errors, ignoring NaN/inf entries.

    Args:
        errors: per-sample values, e.g. from :func:`relative_error`.

    Returns:
        ``{"median", "p90", "max", "count"}`` as 0-dim float tensors on the input's device; ``count`` is the number
        of finite entries used. With no finite entry the three statistics are NaN and ``count`` is 0, so callers
        should check ``count`` before logging.

    Shape:
        - errors: ``(N,)`` (any shape is flattened)

    Cost: one sort of ``N`` values.

    Example::

        >>> s = summarize(torch.tensor([0.0, 1.0, 2.0, float("nan")]))
        >>> {k: round(v.item(), 3) for k, v in s.items()}
        {'median': 1.0, 'p90': 1.8, 'max': 2.0, 'count': 3.0}
    """
    errors = _check_tensor(errors, "errors").detach()
    values = errors.reshape(-1)
    if not values.is_floating_point():
        values = values.float()
    values = values[torch.isfinite(values)]
    count = torch.tensor(float(values.numel()), dtype=values.dtype, device=values.device)
    if values.numel() == 0:
        nan = torch.tensor(float("nan"), dtype=values.dtype, device=values.device)
        return {"median": nan, "p90": nan.clone(), "max": nan.clone(), "count": count}
    return {
        "median": torch.quantile(values, 0.5),
        "p90": torch.quantile(values, 0.9),
        "max": values.max(),
        "count": count,
    }
