"""Real architectures (random weights, small inputs), wrappers and model features that break naive hooks."""

from __future__ import annotations

import pytest
import torch
from attribution_helpers import tiny_cnn
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn
from torch.utils.checkpoint import checkpoint

from lightning_xai.attribution import METHODS, explain_detailed, grad_cam, resolve_layer, saliency

torchvision = pytest.importorskip("torchvision")


@pytest.mark.parametrize(
    ("arch", "layer"),
    [("resnet18", "layer4"), ("mobilenet_v3_small", "features"), ("densenet121", "features")],
)
def test_torchvision_models(arch, layer):
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None, num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        target = net(x).argmax(1)  # the predicted class: random weights give all-negative CAMs for some others
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = explain_detailed(net, x, target, n_steps=2)
    assert out.layer == layer
    assert out.maps["grad_cam"].shape == (2, 1, 64, 64)
    for name in METHODS:
        assert torch.isfinite(out.maps[name]).all()
    assert out.maps["saliency"].abs().sum() > 0
    assert out.ig_relative_error.shape == (2,)
    # Grad-CAM equals Captum's (for densenet121 this checks the clone that protects against its in-place ReLU).
    ref = LayerGradCam(net, resolve_layer(net, layer)[1]).attribute(x.clone(), target=target, relu_attributions=True)
    ref = LayerAttribution.interpolate(ref, (64, 64), "bilinear")
    assert ref.abs().max() > 0
    assert ((out.maps["grad_cam"] - ref).abs().max() / ref.abs().max()) <= 1e-4
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in net.parameters())


def test_inplace_relu_after_hooked_layer_matches_out_of_place_model():
    x = torch.randn(3, 3, 10, 10)
    plain = grad_cam(tiny_cnn(inplace=False), x, 1, layer="features.3")
    inplace = grad_cam(tiny_cnn(inplace=True), x, 1, layer="features.3")  # conv followed by ReLU(inplace=True)
    torch.testing.assert_close(inplace, plain, rtol=0, atol=0)
    assert plain.abs().max() > 0


def test_torch_compile_uses_the_eager_module():
    net = tiny_cnn()
    compiled = torch.compile(net)  # never run: attribution must unwrap it (hooks are ignored after compilation)
    x = torch.randn(2, 3, 10, 10)
    ref = explain_detailed(net, x, 0, n_steps=3)
    out = explain_detailed(compiled, x, 0, n_steps=3, layer="_orig_mod.features.3")
    ref_named = explain_detailed(net, x, 0, n_steps=3, layer="features.3")
    assert out.layer == "features.3"
    torch.testing.assert_close(out.maps["grad_cam"], ref_named.maps["grad_cam"])
    torch.testing.assert_close(saliency(compiled, x, 0), ref.maps["saliency"])
    assert explain_detailed(compiled, x, 0, ("grad_cam",)).layer == ref.layer
    assert all(not m._forward_hooks for m in compiled.modules())


class Checkpointed(nn.Module):
    def __init__(self, use_reentrant: bool) -> None:
        super().__init__()
        self.net = tiny_cnn()
        self.use_reentrant = use_reentrant

    def forward(self, x):
        feats = checkpoint(self.net.features, x, use_reentrant=self.use_reentrant)
        return self.net.fc(self.net.pool(feats).flatten(1))


def test_reentrant_checkpointing_gives_a_clear_error():
    x = torch.randn(2, 3, 8, 8)
    ref = saliency(tiny_cnn(), x, 1)
    torch.testing.assert_close(saliency(Checkpointed(use_reentrant=False), x, 1), ref)
    with pytest.raises(RuntimeError, match="reentrant gradient checkpointing.*use_reentrant=False"):
        saliency(Checkpointed(use_reentrant=True), x, 1)


def test_module_called_twice_uses_last_call():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.conv(self.conv(x).relu()).mean((2, 3)))

    torch.manual_seed(0)
    net = Shared()
    x = torch.randn(2, 3, 6, 6)
    ours = grad_cam(net, x, 1, layer="conv")
    ref = LayerGradCam(net, net.conv).attribute(x.clone(), target=1, relu_attributions=True)
    torch.testing.assert_close(ours, ref.detach(), rtol=1e-5, atol=1e-7)
