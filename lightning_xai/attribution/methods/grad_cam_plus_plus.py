"""Grad-CAM++ (Chattopadhyay et al., 2018): pixel-wise weights from the closed form with exponential scores."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_xai.attribution._cam import CamMethod
from lightning_xai.attribution._engine import Context, Shared
from lightning_xai.attribution._registry import register


@register
class GradCamPlusPlus(CamMethod):
    """Channel weights ``sum_ij a_ij relu(g_ij)``, ``a = g^2 / (2 g^2 + sum(A) g^3)``; as pytorch-grad-cam's
    ``GradCAMPlusPlus`` (same ``eps = 1e-6``; its maps are min-max normalised, ours are not).

    Cost: one forward + backward per probe, shared; nothing extra inside Integrated Gradients.
    """

    name = "grad_cam_plus_plus"

    def combine(self, act: Tensor, grad: Tensor, ctx: Context, shared: Shared) -> Tensor:
        g2 = grad.pow(2)
        aij = g2 / (2 * g2 + act.sum(dim=(2, 3), keepdim=True) * g2 * grad + 1e-6)
        aij = torch.where(grad != 0, aij, torch.zeros_like(aij))
        weights = (grad.relu() * aij).sum(dim=(2, 3), keepdim=True)
        return (weights * act).sum(dim=1, keepdim=True)
