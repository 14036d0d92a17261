"""Gradient-weighted attention relevance (Chefer, Gur & Wolf, 2021): class-specific relevance of the patch tokens."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_xai.attribution._attention import class_token_map, class_token_relevance
from lightning_xai.attribution._engine import Context, Shared
from lightning_xai.attribution._registry import Method, register


def relevance(attention: list[Tensor], gradients: list[Tensor] | None) -> Tensor:
    """``R = I``, then per block ``R <- R + mean_h[(dS/dA * A)^+] @ R``, ``(N, T, T)``."""
    assert gradients is not None  # class_token_relevance(..., gradients=True)
    first = attention[0]
    n, tokens = first.shape[0], first.shape[-1]
    rel = torch.eye(tokens, dtype=first.dtype, device=first.device).expand(n, tokens, tokens)
    for attn, grad in zip(attention, gradients):
        weighted = (grad * attn).clamp_min(0).mean(dim=1)
        rel = rel + weighted @ rel
    return rel


@register
class TransformerAttribution(Method):
    """The class token's row of the gradient-weighted attention relevance over the patch tokens, upsampled.

    Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
    Transformers" (ICCV 2021), the self-attention rule that also serves their ViT work ("Transformer
    Interpretability Beyond Attention Visualization", CVPR 2021) without its LRP pass: per block
    ``Abar = E_h[(dS/dA * A)^+]`` with ``S`` the target logit and ``A`` the attention probabilities, and
    ``R = R + Abar @ R`` from ``R = I`` in the order the blocks run. Row 0 (the class token) over the patch tokens,
    reshaped to the patch grid and bilinearly upsampled gives ``(N, 1, H, W)``, non-negative, not normalised.

    Class-specific through the gradient of the target logit. Applies only to class-token vision transformers
    (torchvision ``VisionTransformer``, timm ViT/DeiT, also wrapped); other models fail with
    :class:`~lightning_xai.attribution._attention.NotApplicable` naming the cause.

    Cost: one forward + backward per probe of its own (each attention computed explicitly and differentiated with
    ``torch.autograd.grad``; parameter ``.grad`` untouched).
    """

    name = "transformer_attribution"
    kind = "gradient"
    cost = "1 (own pass: attention and its gradient)"
    requires = "class-token vision transformer"

    def compute(self, ctx: Context, shared: Shared) -> Tensor:
        row = class_token_relevance(ctx, self.name, relevance, gradients=True)
        return class_token_map(row, ctx, self.name).to(ctx.x.dtype)
