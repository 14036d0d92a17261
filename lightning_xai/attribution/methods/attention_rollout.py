"""Attention rollout (Abnar & Zuidema, 2020): attention propagated through the residual stream, block by block."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from lightning_xai._validation import Option
from lightning_xai.attribution._attention import class_token_map, class_token_relevance
from lightning_xai.attribution._engine import Context, Shared
from lightning_xai.attribution._registry import Method, option, register

HEAD_FUSIONS = ("mean", "max", "min")


def rollout(attention: list[Tensor], head_fusion: str = "mean") -> Tensor:
    """``prod_l norm(fuse_heads(A_l) + I)`` (last block on the left), ``(N, T, T)``.

    Each block's attention is fused over heads, the residual connection is added as the identity and the rows are
    renormalised to sum to 1; the blocks' matrices are multiplied in the order the blocks run.
    """
    result = None
    for attn in attention:
        fused = getattr(attn, head_fusion)(dim=1)
        fused = fused if head_fusion == "mean" else fused.values
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        step = fused + eye
        step = step / step.sum(dim=-1, keepdim=True)
        result = step if result is None else step @ result
    assert result is not None  # class_token_relevance passes at least one block
    return result


@register
class AttentionRollout(Method):
    """The class token's row of the attention rollout over the patch tokens, upsampled to the input size.

    Per block the attention probabilities are fused over heads (``head_fusion``: ``"mean"`` as in the paper, or
    ``"max"`` / ``"min"`` as in jacobgil/vit-explain), the identity is added for the residual connection, rows are
    renormalised, and the blocks' matrices are multiplied (Abnar & Zuidema, "Quantifying Attention Flow in
    Transformers", 2020). Row 0 (the class token), columns of the patch tokens, reshaped to the patch grid and
    bilinearly upsampled gives ``(N, 1, H, W)``, non-negative, not normalised.

    Not class-specific: the map is the same whatever the target (it reads attention only, no gradient). Applies
    only to class-token vision transformers (torchvision ``VisionTransformer``, timm ViT/DeiT, also wrapped);
    other models fail with :class:`~lightning_xai.attribution._attention.NotApplicable` naming the cause (the
    monitor's setup dry run then leaves the method out).

    Cost: one forward per probe (no backward), with each attention computed explicitly (torchvision: from the
    ``nn.MultiheadAttention`` weights; timm: ``fused_attn`` off for the call).
    """

    name = "attention_rollout"
    kind = "gradient"  # the closest of the registry's kinds: it reads the model's internals at the inputs
    cost = "1 forward, no backward (own pass)"
    requires = "class-token vision transformer"
    options: ClassVar[dict[str, Option]] = {
        "head_fusion": option("mean", (lambda v: v in HEAD_FUSIONS, f"one of {HEAD_FUSIONS}")),
    }

    def compute(self, ctx: Context, shared: Shared) -> Tensor:
        fusion = self.opts["head_fusion"]
        row = class_token_relevance(ctx, self.name, lambda attention, _: rollout(attention, fusion), gradients=False)
        return class_token_map(row, ctx, self.name).to(ctx.x.dtype)
