"""Saliency: the raw, signed gradient of the target score w.r.t. the input (Simonyan et al., 2014)."""

from __future__ import annotations

from torch import Tensor

from lightning_xai.attribution._engine import Context, Shared
from lightning_xai.attribution._registry import Method, Request, register


@register
class Saliency(Method):
    """``dS/dx`` at the input; equal to Captum's ``Saliency(model).attribute(x, target, abs=False)``.

    Cost: one forward + backward per probe, shared with every other method that needs the input gradient or a CAM
    layer; nothing extra inside Integrated Gradients (its ``alpha = 1`` node is the input).
    """

    name = "saliency"
    kind = "gradient"
    cost = "1 (0 inside integrated_gradients)"

    def request(self) -> Request:
        return Request(input_grad=True)

    def compute(self, ctx: Context, shared: Shared) -> Tensor:
        assert shared.input_grad is not None
        return shared.input_grad
