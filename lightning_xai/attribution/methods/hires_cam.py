"""HiResCAM (Draelos & Carin, 2020): the element-wise product of gradient and activation, summed over channels."""

from __future__ import annotations

from torch import Tensor

from lightning_xai.attribution._cam import CamMethod
from lightning_xai.attribution._engine import Context, Shared
from lightning_xai.attribution._registry import register


@register
class HiResCam(CamMethod):
    """``relu(sum_k dS/dA_k * A_k)``; equal to pytorch-grad-cam's ``HiResCAM`` before its normalisation.

    Cost: one forward + backward per probe, shared; nothing extra inside Integrated Gradients.
    """

    name = "hires_cam"

    def combine(self, act: Tensor, grad: Tensor, ctx: Context, shared: Shared) -> Tensor:
        return (grad * act).sum(dim=1, keepdim=True)
