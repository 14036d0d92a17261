"""LayerCAM (Jiang et al., 2021): every location weighted by its own positive gradient."""

from __future__ import annotations

from torch import Tensor

from lightning_xai.attribution._cam import CamMethod
from lightning_xai.attribution._engine import Context, Shared
from lightning_xai.attribution._registry import register


@register
class LayerCam(CamMethod):
    """``relu(sum_k relu(dS/dA_k) * A_k)``; equal to pytorch-grad-cam's ``LayerCAM`` before its normalisation.

    Cost: one forward + backward per probe, shared; nothing extra inside Integrated Gradients.
    """

    name = "layer_cam"

    def combine(self, act: Tensor, grad: Tensor, ctx: Context, shared: Shared) -> Tensor:
        return (grad.relu() * act).sum(dim=1, keepdim=True)
