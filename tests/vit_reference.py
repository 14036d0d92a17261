"""Tiny ViTs and a reference forward that computes every attention explicitly from the qkv weights (tests only).

The reference forwards are written from the architectures' definitions (torchvision ``VisionTransformer``, timm
``VisionTransformer``), independent of how ``lightning_xai`` captures attention; the tests check they reproduce the
models' logits before using their attention matrices for the papers' equations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import VisionTransformer


def torchvision_vit(seed: int = 0, image_size: int = 16, patch_size: int = 4, num_layers: int = 2,
                    num_classes: int = 3) -> VisionTransformer:
    torch.manual_seed(seed)
    net = VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=num_layers, num_heads=2,
                            hidden_dim=16, mlp_dim=32, num_classes=num_classes)
    nn.init.normal_(net.heads.head.weight)  # torchvision initialises the head to zero: no gradient would flow
    return net.eval()


def timm_vit(seed: int = 0, image_size: int = 32, depth: int = 2, num_classes: int = 3) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=image_size, patch_size=8,
                             depth=depth, num_heads=3, num_classes=num_classes).eval()


def _attention(y: Tensor, w: Tensor, b: Tensor | None, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """softmax(q k^T / sqrt(d)) per head, and v: (n, heads, T, T), (n, heads, T, d)."""
    n, t, e = y.shape
    q, k, v = F.linear(y, w, b).chunk(3, dim=-1)
    q, k, v = (z.reshape(n, t, heads, e // heads).transpose(1, 2) for z in (q, k, v))
    return torch.softmax(q @ k.transpose(-2, -1) / (e // heads) ** 0.5, dim=-1), v, q


def torchvision_forward(net: VisionTransformer, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Logits and each block's attention (n, heads, T, T), which the logits depend on."""
    n = x.shape[0]
    z = net.conv_proj(x).flatten(2).transpose(1, 2)
    z = torch.cat([net.class_token.expand(n, -1, -1), z], dim=1) + net.encoder.pos_embedding
    maps = []
    for layer in net.encoder.layers:
        mha = layer.self_attention
        attn, v, _ = _attention(layer.ln_1(z), mha.in_proj_weight, mha.in_proj_bias, mha.num_heads)
        maps.append(attn)
        mixed = (attn @ v).transpose(1, 2).reshape(z.shape)
        z = z + F.linear(mixed, mha.out_proj.weight, mha.out_proj.bias)
        z = z + layer.mlp(layer.ln_2(z))
    return net.heads(net.encoder.ln(z)[:, 0]), maps


def timm_forward(net: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    n = x.shape[0]
    z = net.patch_embed(x)
    z = torch.cat([net.cls_token.expand(n, -1, -1), z], dim=1) + net.pos_embed
    maps = []
    for block in net.blocks:
        att = block.attn
        attn, v, _ = _attention(block.norm1(z), att.qkv.weight, att.qkv.bias, att.num_heads)
        maps.append(attn)
        z = z + block.ls1(att.proj((attn @ v).transpose(1, 2).reshape(z.shape)))
        z = z + block.ls2(block.mlp(block.norm2(z)))
    return net.head(net.fc_norm(net.norm(z)[:, 0])), maps


def to_image(cls_row: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """The class token's row over the patches (n, grid h * grid w) as (n, 1, H, W), bilinear."""
    return F.interpolate(cls_row.reshape(-1, 1, *grid), size=size, mode="bilinear", align_corners=False)


class OnePatchData:
    """Images of noise whose class is which channel of one patch is lit (row 1, column 2 of a 4x4 grid of 4x4 patches)."""

    size, patch, where = 16, 4, (1, 2)

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, self.size, self.size, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)
        r, c, p = self.where[0] * self.patch, self.where[1] * self.patch, self.patch
        # Class c lights channel c of the patch: both classes have evidence there, of the same strength.
        light = F.one_hot(self.y, 3).float().view(n, 3, 1, 1) * 2.5
        self.x[:, :, r:r + p, c:c + p] = 0.3 * self.x[:, :, r:r + p, c:c + p] + light

    @property
    def index(self) -> int:
        return self.where[0] * (self.size // self.patch) + self.where[1]


def train_one_patch_vit(steps: int = 100, seed: int = 0) -> tuple[VisionTransformer, OnePatchData, float]:
    """A one-block torchvision ViT trained on :class:`OnePatchData`; returns it, held-out data, held-out accuracy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is ~15x faster than two on a shared, loaded machine
    try:
        return _train(steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train(steps: int, seed: int) -> tuple[VisionTransformer, OnePatchData, float]:
    net = torchvision_vit(seed, image_size=16, patch_size=4, num_layers=1, num_classes=3).train()
    train, held_out = OnePatchData(512, seed), OnePatchData(64, seed + 1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, 512, (64,), generator=g)
        loss = F.cross_entropy(net(train.x[idx]), train.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(held_out.x).argmax(1) == held_out.y).float().mean().item()
    return net, held_out, accuracy
