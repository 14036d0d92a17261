"""Input x gradient (Shrikumar et al., 2016): the input times the target score's gradient at the input."""

from __future__ import annotations

from torch import Tensor

from lightning_xai.attribution._engine import Context, Shared
from lightning_xai.attribution._registry import Method, Request, register


@register
class InputXGradient(Method):
    """``x * dS/dx``; equal to Captum's ``InputXGradient``.

    Cost: one forward + backward per probe, shared with saliency and the CAM family; nothing extra inside Integrated
    Gradients.
    """

    name = "input_x_gradient"
    kind = "gradient"
    cost = "1 (0 inside integrated_gradients)"

    def request(self) -> Request:
        return Request(input_grad=True)

    def compute(self, ctx: Context, shared: Shared) -> Tensor:
        assert shared.input_grad is not None
        return ctx.x * shared.input_grad
