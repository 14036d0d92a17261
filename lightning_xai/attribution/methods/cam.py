"""CAM (Zhou et al., 2016): for a global-average-pooling head, the head's class weights applied to the feature map."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from lightning_xai._validation import Option
from lightning_xai.attribution._cam import CamMethod
from lightning_xai.attribution._engine import Context, Shared
from lightning_xai.attribution._layers import resolve_layer
from lightning_xai.attribution._registry import LAYER, RESHAPE, register


@register
class Cam(CamMethod):
    """``relu(sum_k w_{c,k} A_k)`` with ``w`` the weight of the linear head that follows global average pooling.

    The head is ``head=`` (a name or module) or, automatically, the last ``nn.Linear`` whose ``in_features`` equals
    the layer's channel count and whose ``out_features`` equals the number of logits. CAM is only defined for
    ``layer -> global average pooling -> linear`` heads; there it equals Grad-CAM times ``h * w`` (the gradient of
    the score w.r.t. ``A_k`` is ``w_{c,k} / (h w)`` everywhere). For any other head use ``grad_cam``.

    Cost: the layer's activation at the inputs, taken in the shared pass (one forward + backward, or nothing extra
    inside Integrated Gradients).
    """

    name = "cam"
    options: ClassVar[dict[str, Option]] = {
        "layer": LAYER,
        "reshape": RESHAPE,
        "head": Option(None, lambda v: v is None or isinstance(v, (str, nn.Module)),
                       "None (automatic) or the nn.Linear head after global average pooling (name or module)"),
    }

    def _head(self, ctx: Context, channels: int, classes: int) -> nn.Linear:
        head = self.opts["head"]
        if head is not None:
            name, module = resolve_layer(ctx.net, head)
            if not isinstance(module, nn.Linear):
                raise ValueError(f"cam option `head`={name!r} must be an nn.Linear, got {type(module).__name__}")
        else:
            found = [m for m in ctx.net.modules() if isinstance(m, nn.Linear) and m.in_features == channels
                     and m.out_features == classes]
            if not found:
                raise ValueError(f"cam needs a global-average-pooling head: no nn.Linear with in_features={channels} "
                                 f"(the layer's channels) and out_features={classes} (the logits); pass `head=` or use "
                                 "grad_cam")
            module = found[-1]
        if module.in_features != channels or module.out_features != classes:
            raise ValueError(f"cam option `head` maps {module.in_features} -> {module.out_features}, but the layer has "
                             f"{channels} channels and the model {classes} logits")
        return module

    def combine(self, act: Tensor, grad: Tensor, ctx: Context, shared: Shared) -> Tensor:
        head = self._head(ctx, act.shape[1], shared.logits.shape[1])
        weights = head.weight.detach().float()[ctx.target]  # (N, C)
        return (weights[:, :, None, None] * act).sum(dim=1, keepdim=True)
