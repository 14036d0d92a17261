"""Grad-CAM layers on the models people train: transformers (tokens, channels-last), compiled, wrapped, frozen."""

from __future__ import annotations

import pytest
import torch
from attribution_helpers import tiny_cnn
from torch import nn

from lightning_xai.attribution import (
    ChannelsLast,
    TokenGrid,
    as_spatial,
    find_gradcam_layer,
    grad_cam,
    gradcam_layer,
    gradient_blockers,
    resolve_layer,
)

torchvision = pytest.importorskip("torchvision")


def small_vit(num_layers: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=num_layers, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=3).eval()


# --------------------------------------------------------------------------------------------------- as_spatial


def test_as_spatial_passes_nchw_through_and_permutes_channels_last():
    x = torch.randn(2, 8, 4, 4)
    assert as_spatial(x) is x
    assert as_spatial(x, input_size=(32, 32)) is x  # 8 channels at 4x4 of a 32x32 input: NCHW
    swin = torch.randn(2, 4, 4, 96)  # Swin: (N, h, w, C), 96 channels do not fit a 32x32 input's grid
    torch.testing.assert_close(as_spatial(swin, input_size=(32, 32)), swin.permute(0, 3, 1, 2))
    torch.testing.assert_close(as_spatial(swin, ChannelsLast()), swin.permute(0, 3, 1, 2))


def test_token_grid_places_each_patch_token_at_its_position_and_drops_the_class_token():
    n, h, w, c = 2, 2, 3, 5
    tokens = torch.arange(n * (1 + h * w) * c, dtype=torch.float).view(n, 1 + h * w, c)
    grid = TokenGrid(h, w, prefix=1)(tokens)
    assert grid.shape == (n, c, h, w)
    for i in range(h):
        for j in range(w):  # row-major patch order, as a patch embedding flattens (h, w)
            torch.testing.assert_close(grid[:, :, i, j], tokens[:, 1 + i * w + j, :])
    with pytest.raises(ValueError, match="reshape="):
        TokenGrid(2, 2, prefix=1)(tokens)


def test_as_spatial_infers_the_patch_grid_or_asks_for_reshape():
    assert as_spatial(torch.zeros(2, 1 + 14 * 14, 8)).shape == (2, 8, 14, 14)  # ViT-B/16 at 224: class + 196
    assert as_spatial(torch.zeros(2, 2 + 4 * 8, 8), input_size=(32, 64)).shape == (2, 8, 4, 8)  # DeiT, non-square
    with pytest.raises(ValueError, match=r"reshape=.*TokenGrid"):
        as_spatial(torch.zeros(2, 17, 8))  # 1 + 4x4 or 8 + 3x3 without the input's size: ambiguous
    assert as_spatial(torch.zeros(2, 17, 8), input_size=(32, 32)).shape == (2, 8, 4, 4)
    with pytest.raises(ValueError, match="reshape="):
        as_spatial(torch.zeros(2, 8))
    with pytest.raises(ValueError, match=r"`reshape`=.*must return"):
        as_spatial(torch.zeros(2, 5, 8), reshape=lambda t: t)
    assert as_spatial(torch.zeros(2, 5, 8), reshape=lambda t: t[:, 1:].transpose(1, 2).reshape(2, 8, 2, 2)).shape \
        == (2, 8, 2, 2)


# -------------------------------------------------------------------------------------------- automatic layers


def test_torchvision_vit_uses_a_late_blocks_tokens_not_the_patch_embedding():
    net = small_vit(num_layers=3)
    found = gradcam_layer(net, torch.randn(1, 3, 32, 32))
    # The class token alone reaches the head after the last block, so the block before it is the last whose patch
    # tokens matter (a zero-initialised head, as torchvision's, does not change that).
    assert found.name == "encoder.layers.encoder_layer_1"
    assert found.reshape == TokenGrid(4, 4, prefix=1)
    assert found.warning is None
    last = gradcam_layer(net, torch.randn(1, 3, 32, 32), "encoder.layers.encoder_layer_2")
    assert last.warning is not None and "does not depend" in last.warning


def test_swin_uses_a_channels_last_stage_with_more_than_one_position():
    torch.manual_seed(0)
    net = torchvision.models.swin_t(weights=None, num_classes=3).eval()
    at32 = gradcam_layer(net, torch.randn(1, 3, 32, 32))
    assert (at32.name, at32.reshape, at32.shape) == ("features.5", ChannelsLast(), (1, 2, 2, 384))  # 7 is 1x1
    assert find_gradcam_layer(net, torch.randn(1, 3, 64, 64)) == "features.7"


def test_timm_vit_and_deit_skip_attention_internals():
    timm = pytest.importorskip("timm")
    x = torch.randn(1, 3, 32, 32)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, pretrained=False, num_classes=3).eval()
    found = gradcam_layer(vit, x)
    assert (found.name, found.reshape) == ("blocks.10", TokenGrid(2, 2, prefix=1))
    deit = timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, pretrained=False, num_classes=3).eval()
    assert gradcam_layer(deit, x).reshape == TokenGrid(2, 2, prefix=2)  # class + distillation token
    pooled = timm.create_model("vit_tiny_patch16_224", img_size=32, pretrained=False, num_classes=3,
                               global_pool="avg").eval()
    assert gradcam_layer(pooled, x).name == "blocks.11"  # average-pooled tokens: the last block counts
    with pytest.raises(ValueError, match=r"attention internal.*automatic choice is 'blocks.10'"):
        gradcam_layer(vit, x, "blocks.11.attn.k_norm")  # (B, heads, tokens, dim)


def test_timm_cnns_keep_the_last_stage():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    assert find_gradcam_layer(net, torch.randn(1, 3, 64, 64)) == "layer4"


def test_vgg_prefers_the_last_conv_block_over_pooling():
    torch.manual_seed(0)
    net = torchvision.models.vgg11(weights=None, num_classes=3).eval()
    # At 32 px avgpool upsamples a 1x1 map to 7x7 and features ends in a max-pool: neither is a feature map.
    assert find_gradcam_layer(net, torch.randn(1, 3, 32, 32)) == "features.19"


def test_explicit_layer_checks():
    net = tiny_cnn()
    x = torch.randn(1, 3, 8, 8)
    assert gradcam_layer(net, x, "features.3").reshape is None
    with pytest.raises(ValueError, match=r"`layer`='fc' outputs shape \(1, 3\).*reshape="):
        gradcam_layer(net, x, "fc")
    with pytest.raises(ValueError, match="`reshape` fails"):
        gradcam_layer(net, x, "features.3", reshape=lambda t: t.flatten(1))


# ---------------------------------------------------------------------------------- wrappers and frozen models


class Finetune(nn.Module):
    """A common fine-tuning pattern: a frozen backbone run under no_grad inside forward, a trained head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = tiny_cnn().features
        self.head = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(4, 3))

    def forward(self, x):
        with torch.no_grad():
            feats = self.backbone(x)
        return self.head(feats)


def test_frozen_backbone_under_no_grad_is_named_as_the_cause():
    net = Finetune().eval()
    x = torch.randn(1, 3, 8, 8)
    assert gradient_blockers(net, x) == ["backbone"]
    with pytest.raises(RuntimeError, match=r"computed under torch.no_grad\(\).*'backbone'"):
        gradcam_layer(net, x, "backbone.3")
    # The head's conv runs with gradients: it is the automatic choice (the no_grad block is skipped).
    assert find_gradcam_layer(net, x) == "head.1"
    assert gradient_blockers(tiny_cnn(), x) == []


def test_frozen_backbone_without_a_spatial_layer_after_it():
    class Frozen(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = tiny_cnn()
            self.backbone.fc = nn.Identity()
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            with torch.no_grad():
                feats = self.backbone(x)
            return self.head(feats)

    with pytest.raises(RuntimeError, match=r"computed under torch.no_grad\(\).*'backbone'.*saliency"):
        find_gradcam_layer(Frozen().eval(), torch.randn(1, 3, 8, 8))


class Outer(nn.Module):
    """A LightningModule-like wrapper holding a compiled submodule."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.model = torch.compile(net, backend="eager")

    def forward(self, x):
        return self.model(x)


def test_compiled_submodule_is_explained_through_the_eager_module():
    net = tiny_cnn()
    outer = Outer(net)
    x = torch.randn(2, 3, 8, 8)
    outer(x)  # compiled now: hooks added from here on are ignored by the compiled code
    assert find_gradcam_layer(outer, x[:1]) == "model._orig_mod.features"
    assert resolve_layer(outer, "model.features.3") == ("model._orig_mod.features.3", net.features[3])
    eager = grad_cam(net, x, 1, layer="features.3")
    assert eager.abs().max() > 0
    torch.testing.assert_close(grad_cam(outer, x, 1, layer="model.features.3"), eager)
    torch.testing.assert_close(grad_cam(outer, x, 1), grad_cam(net, x, 1))
    assert all(not m._forward_hooks for m in outer.modules())


def test_data_parallel_and_channels_last_inputs():
    net = tiny_cnn()
    x = torch.randn(1, 3, 8, 8)
    wrapped = nn.DataParallel(net)
    assert find_gradcam_layer(wrapped, x) == "features"
    assert resolve_layer(wrapped, "module.features.3")[1] is net.features[3]
    assert find_gradcam_layer(net, x.contiguous(memory_format=torch.channels_last)) == "features"
