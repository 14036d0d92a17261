"""Attention weights of vision transformers, captured for one call: the transformer-native methods' shared half.

Two kinds of attention module are recognised (found by structure, so a ViT wrapped in a LightningModule works):

- ``nn.MultiheadAttention`` (torchvision's ``VisionTransformer``, called with ``need_weights=False``, often on the
  fused fast path). Its returned weights are a view taken *after* they were used, so they carry no gradient; instead a
  forward hook (this call only) recomputes the self-attention explicitly from the module's own ``in_proj`` /
  ``out_proj`` weights, keeps the softmax ``A`` and returns the explicit output in place of the module's, so the
  rest of the network (and the target score) depends on that very ``A``.
- timm's attention modules (a boolean ``fused_attn`` flag and an ``attn_drop`` child): ``fused_attn`` is set to
  ``False`` for the call (restored in ``finally``), so the module computes ``softmax(q k^T * scale)`` itself and
  passes it through ``attn_drop`` (identity in eval mode), where a forward hook keeps it.

The patch grid comes from the patch embedding (the first ``Conv2d`` whose kernel equals its stride); the tokens in
front of the patches are the class token (index 0) and any register tokens. Models without a class token, or whose
head does not read it (timm ``global_pool != "token"``), are refused with :class:`NotApplicable`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai.attribution import _batching
from lightning_xai.attribution._engine import Context

__all__ = ["AttentionCapture", "NotApplicable", "attention_modules", "capture_attention", "class_token_map",
           "class_token_relevance", "token_layout"]


class NotApplicable(RuntimeError):
    """The method needs a class-token vision transformer and the model is not one (the message says why)."""


def _is_timm_attention(module: nn.Module) -> bool:
    return isinstance(getattr(module, "fused_attn", None), bool) and isinstance(getattr(module, "attn_drop", None),
                                                                                nn.Module)


def attention_modules(net: nn.Module, method: str) -> list[nn.Module]:
    """The model's self-attention modules (``nn.MultiheadAttention`` or timm attention), in module order."""
    found = [m for m in net.modules() if isinstance(m, nn.MultiheadAttention) or _is_timm_attention(m)]
    if not found:
        raise NotApplicable(
            f"{method} applies only to class-token vision transformers (torchvision VisionTransformer, timm ViT/DeiT): "
            f"{type(net).__name__} has no nn.MultiheadAttention or timm attention module")
    return found


def token_layout(net: nn.Module, size: tuple[int, int], tokens: int, method: str) -> tuple[int, tuple[int, int]]:
    """``(prefix tokens, (grid h, grid w))`` for an input of ``size`` whose attention has ``tokens`` tokens."""
    for module in net.modules():  # timm VisionTransformer: says itself whether there is a class token it reads
        if hasattr(module, "num_prefix_tokens") and hasattr(module, "cls_token"):
            if module.cls_token is None:
                raise NotApplicable(f"{method} needs a class token; {type(module).__name__} was built without one "
                                    "(class_token=False)")
            pool = getattr(module, "global_pool", "token")
            if pool not in ("token", ""):
                raise NotApplicable(f"{method} explains the class token's row, but this model's head pools the "
                                    f"tokens with global_pool={pool!r}, not 'token'")
            break
    patch = next(((m.kernel_size[0], m.kernel_size[1]) for m in net.modules() if isinstance(m, nn.Conv2d)
                  and tuple(m.kernel_size) == tuple(m.stride) and m.kernel_size[0] > 1), None)
    h, w = size
    if patch is not None:
        grid = (h // patch[0], w // patch[1])
    else:  # no patch embedding convolution: one prefix token and a grid with the image's aspect ratio
        side = math.isqrt(tokens - 1)
        grid = (side, side) if side * side == tokens - 1 and h == w else (0, 0)
    prefix = tokens - grid[0] * grid[1]
    if grid[0] * grid[1] == 0 or prefix < 1:
        raise NotApplicable(f"{method} needs a class token in front of the patch tokens: the attention has {tokens} "
                            f"tokens, which is not 1 + a patch grid for an input of {h}x{w}"
                            + (f" with patches of {patch[0]}x{patch[1]}" if patch is not None else ""))
    return prefix, grid


def _explicit_self_attention(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
    """``(output like the module's, A (B, heads, T, T))``, computed from the module's weights."""
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
             "is_causal")
    call = dict(zip(names, args))
    call.update(kwargs)
    query, key, value = call["query"], call.get("key"), call.get("value")
    unsupported = [why for bad, why in (
        (key is not query or value is not query, "not self-attention (query, key, value differ)"),
        (not module._qkv_same_embed_dim, "separate q/k/v projection weights"),
        (module.bias_k is not None or module.add_zero_attn, "bias_k/bias_v or add_zero_attn"),
        (call.get("attn_mask") is not None or call.get("key_padding_mask") is not None or call.get("is_causal"),
         "an attention mask"),
    ) if bad]
    if unsupported:
        raise NotApplicable(f"nn.MultiheadAttention with {unsupported[0]} is not supported by the transformer "
                            "attribution methods")
    x = query if module.batch_first else query.transpose(0, 1)
    b, t, e = x.shape
    heads = module.num_heads
    q, k, v = F.linear(x, module.in_proj_weight, module.in_proj_bias).view(b, t, 3, heads, e // heads).permute(
        2, 0, 3, 1, 4)
    attn = ((q * (e // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    out = F.linear((attn @ v).transpose(1, 2).reshape(b, t, e), module.out_proj.weight, module.out_proj.bias)
    return (out if module.batch_first else out.transpose(0, 1)), attn


@dataclass
class AttentionCapture:
    """Attention probabilities ``(B, heads, T, T)`` of every block, in the order the blocks ran."""

    maps: list[Tensor]


@contextlib.contextmanager
def capture_attention(modules: list[nn.Module]) -> Iterator[AttentionCapture]:
    """Hooks (and timm ``fused_attn = False``) on ``modules`` for the block; all removed / restored in ``finally``."""
    capture = AttentionCapture([])
    handles: list[Any] = []
    flags: list[tuple[nn.Module, bool]] = []

    def mha_hook(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any) -> Any:
        out, attn = _explicit_self_attention(module, args, kwargs)
        capture.maps.append(attn)
        need = kwargs.get("need_weights", args[4] if len(args) > 4 else True)
        average = kwargs.get("average_attn_weights", args[6] if len(args) > 6 else True)
        return out, (None if not need else attn.mean(1) if average else attn)

    def drop_hook(module: nn.Module, args: tuple, output: Any) -> None:
        capture.maps.append(output)

    try:
        for module in modules:
            if isinstance(module, nn.MultiheadAttention):
                handles.append(module.register_forward_hook(mha_hook, with_kwargs=True))
            else:
                flags.append((module, module.fused_attn))
                module.fused_attn = False
                handles.append(module.attn_drop.register_forward_hook(drop_hook))
        yield capture
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags:
            module.fused_attn = flag


def class_token_relevance(ctx: Context, method: str, combine: Callable[[list[Tensor], list[Tensor] | None], Tensor],
                          *, gradients: bool) -> Tensor:
    """The class token's row ``(N, T)`` of ``combine(attention, gradients) -> (n, T, T)``, chunk by chunk.

    ``attention``: every block's attention probabilities ``(n, heads, T, T)`` float at the inputs, in the order the
    blocks ran; ``gradients`` (with ``gradients=True``, else ``None``): the target score's gradient with respect to
    each (``torch.autograd.grad``). Chunks hold the call's batch size; only the class row is kept (a ViT-B/16 at
    224 px holds ~22 MB of attention per probe).
    """
    engine = ctx.engine
    modules = attention_modules(engine.net, method)
    rows = engine.rows or _batching.PROBE_ROWS
    out: list[Tensor] = []
    for start in range(0, ctx.n, rows):
        xs, tgt = ctx.x[start:start + rows].detach(), ctx.target[start:start + rows]
        if engine.channels_last:
            xs = xs.contiguous(memory_format=torch.channels_last)
        with contextlib.ExitStack() as stack:
            if not gradients:
                stack.enter_context(torch.no_grad())
            capture = stack.enter_context(capture_attention(modules))
            with engine.autocast():
                logits = engine.logits(engine.net(xs), xs.shape[0], tgt)
        if not capture.maps:
            raise NotApplicable(f"{method}: none of the model's attention modules ran during the forward pass")
        grads = None
        if gradients:
            found = torch.autograd.grad(logits.gather(1, tgt.unsqueeze(1)).sum(), capture.maps, allow_unused=True)
            grads = [torch.zeros_like(a, dtype=torch.float) if g is None else g.detach().float()
                     for a, g in zip(capture.maps, found)]
        with torch.no_grad():
            out.append(combine([a.detach().float() for a in capture.maps], grads)[:, 0])
    return torch.cat(out)


def class_token_map(row: Tensor, ctx: Context, method: str) -> Tensor:
    """The class token's row ``(N, T)`` over the patch tokens, as ``(N, 1, H, W)`` (bilinear upsampling)."""
    prefix, grid = token_layout(ctx.engine.net, tuple(ctx.x.shape[-2:]), row.shape[-1], method)
    patches = row[:, prefix:].reshape(-1, 1, *grid)
    return F.interpolate(patches, size=tuple(ctx.x.shape[-2:]), mode="bilinear", align_corners=False)
