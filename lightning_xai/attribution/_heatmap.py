"""Reduce attribution maps to one-channel heatmaps."""

from __future__ import annotations

from torch import Tensor

__all__ = ["to_heatmap"]


def to_heatmap(attributions: Tensor) -> Tensor:
    """Reduce an attribution map to a non-negative one-channel heatmap.

    Multi-channel maps (saliency, Integrated Gradients) become the sum of absolute values over channels;
    one-channel maps become their absolute value (Grad-CAM maps are already non-negative and pass unchanged).

    Args:
        attributions: attribution maps.

    Returns:
        The heatmaps, detached, same dtype and device.

    Raises:
        ValueError: ``attributions`` is not 4-D.

    Shape:
        - attributions: ``(N, C, H, W)``
        - output: ``(N, 1, H, W)``

    Example::

        >>> import torch
        >>> to_heatmap(torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.5]]]])).tolist()
        [[[[4.0, 2.5]]]]
    """
    if not isinstance(attributions, Tensor):
        raise TypeError(f"`attributions` must be a torch.Tensor, got {type(attributions).__name__}")
    if attributions.ndim != 4:
        raise ValueError(f"`attributions` must have shape (N, C, H, W), got {tuple(attributions.shape)}")
    attributions = attributions.detach()
    if attributions.shape[1] == 1:
        return attributions.abs()
    return attributions.abs().sum(dim=1, keepdim=True)
