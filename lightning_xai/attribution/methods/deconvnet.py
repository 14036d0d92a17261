"""Deconvnet (Zeiler & Fergus, 2014): ReLUs pass back the positive part of the gradient, ignoring the forward sign."""

from __future__ import annotations

from torch import Tensor

from lightning_xai.attribution._engine import Context, Shared
from lightning_xai.attribution._registry import Method, register
from lightning_xai.attribution.methods.guided_backprop import modified_gradient


@register
class Deconvnet(Method):
    """The input gradient where every ``nn.ReLU`` passes back ``relu(grad)``; equal to Captum's ``Deconvolution``.

    Hooks live for this call only (as for ``guided_backprop``); functional ``F.relu`` calls cannot be hooked.

    Cost: one forward + backward per probe of its own (the modified backward cannot be shared).
    """

    name = "deconvnet"
    kind = "gradient"
    cost = "1 (own pass: modified backward)"

    def compute(self, ctx: Context, shared: Shared) -> Tensor:
        return modified_gradient(ctx, "deconv")
