"""transformer_attribution (Chefer et al. 2021): equal to the papers' equations on torchvision and timm ViTs,
class-specific, peaks on the one patch that decides the class, refused clearly on other models, no side effects."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from attribution_helpers import tiny_cnn
from vit_reference import timm_forward, timm_vit, to_image, torchvision_forward, torchvision_vit, train_one_patch_vit

from lightning_xai.attribution import NotApplicable, available_methods, explain, explain_detailed

METHOD = "transformer_attribution"


def reference(forward, net, x: torch.Tensor, target: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Chefer et al.: Abar = E_h[(grad A * A)^+], R = I, R <- R + Abar R per block; the class token's row."""
    logits, maps = forward(net, x)
    grads = torch.autograd.grad(logits.gather(1, target.unsqueeze(1)).sum(), maps)
    tokens = maps[0].shape[-1]
    rel = torch.eye(tokens).expand(x.shape[0], tokens, tokens)
    for attn, grad in zip(maps, grads):
        rel = rel + (grad * attn).clamp(min=0).mean(dim=1) @ rel
    return to_image(rel[:, 0, 1:], grid, tuple(x.shape[-2:])).detach()


def test_registered():
    assert METHOD in available_methods()


def test_equals_reference_on_torchvision_vit():
    net = torchvision_vit()
    x, target = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 2, 1])
    logits, _ = torchvision_forward(net, x)
    torch.testing.assert_close(logits, net(x), rtol=1e-4, atol=1e-5)  # the reference is the model
    ours = explain(net, x, target, methods=(METHOD,))[METHOD]
    ref = reference(torchvision_forward, net, x, target, (4, 4))
    assert ours.shape == (3, 1, 16, 16) and ref.abs().sum() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


def test_equals_reference_on_timm_vit_and_restores_fused_attn():
    net = timm_vit()
    flags = [block.attn.fused_attn for block in net.blocks]
    x, target = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)), torch.tensor([1, 2])
    logits, _ = timm_forward(net, x)
    torch.testing.assert_close(logits, net(x), rtol=1e-4, atol=1e-5)
    ours = explain(net, x, target, methods=(METHOD,))[METHOD]
    ref = reference(timm_forward, net, x, target, (4, 4))
    assert ref.abs().sum() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)
    assert [block.attn.fused_attn for block in net.blocks] == flags


def test_class_specific_and_batch_independent():
    net = torchvision_vit()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    a = explain(net, x, 0, methods=(METHOD,))[METHOD]
    b = explain(net, x, 1, methods=(METHOD,))[METHOD]
    assert not torch.allclose(a, b)
    one = explain(net, x[2:3], 1, methods=(METHOD,), internal_batch_size=1)[METHOD]
    torch.testing.assert_close(one, b[2:3], rtol=1e-4, atol=1e-6)


def test_peaks_on_the_patch_that_decides_the_class():
    net, data, accuracy = train_one_patch_vit()
    assert accuracy > 0.95
    maps = explain(net, data.x[:24], data.y[:24], methods=(METHOD,))[METHOD]
    share = F.adaptive_avg_pool2d(maps, 4).flatten(1)
    share = share / share.sum(1, keepdim=True)  # each probe's relevance per patch, summing to 1
    assert share.mean(0).argmax() == data.index
    assert share[:, data.index].mean() > 3 / 16  # over 3x a uniform map's share (measured 0.26-0.38, 4 seeds)
    assert (share.argmax(1) == data.index).float().mean() >= 0.6  # measured 0.71-0.88


def test_refused_clearly_on_a_cnn_and_collected():
    x = torch.randn(2, 3, 10, 10)
    with pytest.raises(NotApplicable, match=r"transformer_attribution applies only to class-token vision "
                                            r"transformers.*TinyCNN has no nn.MultiheadAttention"):
        explain(tiny_cnn(), x, 0, methods=(METHOD,))
    out = explain_detailed(tiny_cnn(), x, 0, methods=("saliency", METHOD), errors="collect")
    assert set(out.maps) == {"saliency"} and isinstance(out.errors[METHOD], NotApplicable)


def test_refused_without_a_class_token():
    import timm

    pooled = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                               num_classes=3, class_token=False, global_pool="avg").eval()
    with pytest.raises(NotApplicable, match="needs a class token"):
        explain(pooled, torch.randn(1, 3, 32, 32), 0, methods=(METHOD,))


def test_no_side_effects_on_a_vit_in_training_state():
    net = torchvision_vit().train()
    net.encoder.layers[0].eval()
    net.conv_proj.weight.requires_grad_(False)
    for p in net.parameters():
        p.grad = torch.full_like(p, 3.0)
    params = {k: v.detach().clone() for k, v in net.state_dict().items()}
    training = {k: m.training for k, m in net.named_modules()}
    x = torch.randn(2, 3, 16, 16)
    rng = torch.random.get_rng_state()
    explain(net, x, 1, methods=(METHOD,))
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert {k: m.training for k, m in net.named_modules()} == training
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in params.items())
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in net.parameters())
    assert not net.conv_proj.weight.requires_grad
    hooks = sum(len(m._forward_hooks) + len(m._forward_hooks_with_kwargs) + len(m._forward_pre_hooks)
                for m in net.modules())
    assert hooks == 0


def test_under_inference_mode_and_bf16_autocast():
    from lightning_xai.metrics.stability import spearman_similarity

    net = timm_vit()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    ref = explain(net, x, 1, methods=(METHOD,))[METHOD]
    with torch.inference_mode():  # Lightning's validation hooks on a single device
        inside = explain(net, x.clone(), 1, methods=(METHOD,))[METHOD]
    torch.testing.assert_close(inside, ref, rtol=0, atol=0)
    low = explain(net, x, 1, methods=(METHOD,), autocast_dtype=torch.bfloat16)[METHOD]
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert spearman_similarity(low, ref, size=4).min() > 0.9  # measured 0.99
