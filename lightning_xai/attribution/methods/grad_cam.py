"""Grad-CAM (Selvaraju et al., 2017): channels weighted by their spatially averaged gradient."""

from __future__ import annotations

from torch import Tensor

from lightning_xai.attribution._cam import CamMethod
from lightning_xai.attribution._engine import Context, Shared
from lightning_xai.attribution._registry import register


@register
class GradCam(CamMethod):
    """``relu(sum_k mean(dS/dA_k) A_k)``; equal to Captum's ``LayerGradCam`` + bilinear interpolation.

    Cost: one forward + backward per probe, shared with the other gradient-at-input methods; nothing extra inside
    Integrated Gradients.
    """

    name = "grad_cam"

    def combine(self, act: Tensor, grad: Tensor, ctx: Context, shared: Shared) -> Tensor:
        return (grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1, keepdim=True)
