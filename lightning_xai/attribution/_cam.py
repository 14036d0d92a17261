"""The CAM family's shared half (pytorch-grad-cam's ``BaseCAM`` shape): a variant only says how to combine.

A :class:`CamMethod` asks the shared pass for its layer's activation ``A`` and gradient ``dS/dA`` at the inputs (one
forward + backward, or nothing extra inside Integrated Gradients), turns both into ``(N, C, h, w)`` through
:func:`~lightning_xai.attribution._layers.as_spatial` (tokens and channels-last maps recognised; the ``reshape``
option for anything else; the automatic layer brings its own), and lets the
subclass combine them in :meth:`CamMethod.combine`; the result is rectified (``relu``) and bilinearly upsampled to
the input size (``align_corners=False``), not normalised.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from lightning_xai.attribution._engine import Context, Shared
from lightning_xai.attribution._layers import as_spatial
from lightning_xai.attribution._registry import LAYER, RESHAPE, Method, Option, Request

__all__ = ["CamMethod"]


class CamMethod(Method):
    kind = "CAM"
    uses_layer = True
    options: ClassVar[dict[str, Option]] = {"layer": LAYER, "reshape": RESHAPE}
    cost = "1 (0 inside integrated_gradients)"

    def request(self) -> Request:
        return Request(layer=self.opts["layer"])

    def combine(self, act: Tensor, grad: Tensor, ctx: Context, shared: Shared) -> Tensor:
        """``(N, 1, h, w)`` map from the fp32 activation and gradient ``(N, C, h, w)`` (before relu/upsampling)."""
        raise NotImplementedError

    def compute(self, ctx: Context, shared: Shared) -> Tensor:
        name, act, grad = shared.layer(self.name)
        reshape = self.opts["reshape"] if self.opts["reshape"] is not None else shared.reshape_of.get(self.name)
        size = tuple(ctx.x.shape[-2:])
        try:
            act, grad = as_spatial(act, reshape, input_size=size), as_spatial(grad, reshape, input_size=size)
        except ValueError as err:
            raise ValueError(f"{self.name} at layer {name!r}: {err}") from err
        act, grad = act.float(), grad.float()
        cam = self.combine(act, grad, ctx, shared).relu()
        return F.interpolate(cam, size=tuple(ctx.x.shape[-2:]), mode="bilinear", align_corners=False).to(ctx.x.dtype)
