"""Guided backpropagation (Springenberg et al., 2015): only positive gradients through positive ReLU inputs."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_xai.attribution._engine import Context, Shared
from lightning_xai.attribution._registry import Method, register


def modified_gradient(ctx: Context, mode: str) -> Tensor:
    """The input gradient with every ``nn.ReLU`` module's backward replaced (``mode``: "guided" or "deconv")."""
    out = torch.zeros_like(ctx.x)

    def consume(sl: slice, logits: Tensor, grads: Tensor) -> None:
        out[sl] = grads.to(out.dtype)

    ctx.gradients(ctx.n, lambda sl: (ctx.x[sl], ctx.target[sl]), relu_mode=mode, consume=consume)
    return out


@register
class GuidedBackprop(Method):
    """The input gradient where every ``nn.ReLU`` passes back ``relu(grad) * (input > 0)``; equal to Captum's
    ``GuidedBackprop``.

    The rule is installed by hooks on the model's ``nn.ReLU`` modules that live for this call (see
    :func:`~lightning_xai.attribution._engine.modified_relu`); functional ``F.relu`` calls in ``forward`` cannot be
    hooked and keep the ordinary backward. Known to fail the model-randomisation sanity check (it reconstructs the
    input more than it explains the model; Adebayo et al., 2018).

    Cost: one forward + backward per probe of its own (the modified backward cannot be shared).
    """

    name = "guided_backprop"
    kind = "gradient"
    cost = "1 (own pass: modified backward)"

    def compute(self, ctx: Context, shared: Shared) -> Tensor:
        return modified_gradient(ctx, "guided")
