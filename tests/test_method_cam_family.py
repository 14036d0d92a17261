"""The CAM family on the registry: Grad-CAM++, HiResCAM, LayerCAM against pytorch-grad-cam; CAM against its identity."""

from __future__ import annotations

import pytest
import torch
from attribution_helpers import grad_cam_reference, min_max, tiny_cnn
from torch import nn

from lightning_xai.attribution import explain, explain_detailed, grad_cam

pytest.importorskip("pytorch_grad_cam")


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 12, 12, generator=g), torch.tensor([0, 2, 1, 2])


@pytest.mark.parametrize(("name", "reference"), [("grad_cam_plus_plus", "GradCAMPlusPlus"), ("hires_cam", "HiResCAM"),
                                                 ("layer_cam", "LayerCAM"), ("grad_cam", "GradCAM")])
def test_equal_to_pytorch_grad_cam_after_min_max(batch, name, reference):
    import pytorch_grad_cam

    x, target = batch
    ours = explain(tiny_cnn(), x, target, methods=(name,), layer="features.3")[name][:, 0]
    theirs = grad_cam_reference(getattr(pytorch_grad_cam, reference), x, target)
    # Same maps up to pytorch-grad-cam's min-max normalisation (the layer has the input's size: no resize); its
    # eps = 1e-7 in the denominator is 2e-4 of these small random-weight maps' range.
    assert (min_max(ours) - theirs).abs().max() < 1e-3
    assert theirs.amax() > 0.99


def test_cam_is_grad_cam_times_area_on_a_gap_head(batch):
    x, target = batch
    net = tiny_cnn()
    maps = explain_detailed(net, x, target, methods=("cam", "grad_cam"), layer="features")
    h, w = 12, 12  # the pooled feature map keeps the input size
    torch.testing.assert_close(maps.maps["cam"], maps.maps["grad_cam"] * h * w, rtol=1e-4, atol=1e-6)
    assert maps.layers == {"cam": "features", "grad_cam": "features"}
    assert explain(net, x, target, methods=("cam",), layer="features.3", options={"cam": {"head": "fc"}})[
        "cam"].shape == (4, 1, 12, 12)


def test_cam_needs_a_gap_head(batch):
    x, target = batch
    net = tiny_cnn()
    with pytest.raises(ValueError, match="head.*Linear"):
        explain(net, x, target, methods=("cam",), layer="features.3", options={"cam": {"head": "pool"}})
    with pytest.raises(ValueError, match="in_features=8"):
        explain(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 10 * 10, 3)), x, target,
                methods=("cam",), layer="1")


def test_all_cam_methods_share_one_pass_with_grad_cam(batch):
    # Every CAM-family method gets the same activation/gradient: the bundle equals the single-method calls.
    x, target = batch
    net = tiny_cnn()
    names = ("grad_cam", "grad_cam_plus_plus", "hires_cam", "layer_cam", "cam")
    together = explain(net, x, target, methods=(*names, "integrated_gradients"), layer="features.3", n_steps=4)
    for name in names:
        alone = explain(net, x, target, methods=(name,), layer="features.3")[name]
        torch.testing.assert_close(together[name], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(together["grad_cam"], grad_cam(net, x, target, layer="features.3"))


def test_reshape_option_reaches_token_layers():
    # A layer with (N, tokens, C) output works once `reshape` maps it to (N, C, h, w).
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 6, 4, stride=4)
            self.mix = nn.Linear(6, 6)
            self.head = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.embed(x).flatten(2).transpose(1, 2)  # (N, 9, 6)
            return self.head(self.mix(tokens).relu().mean(1))

    torch.manual_seed(0)
    net = Tokens().eval()
    x = torch.randn(2, 3, 12, 12)

    def to_grid(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], 3, 3)

    out = explain_detailed(net, x, 1, methods=("layer_cam", "hires_cam", "grad_cam"), layer="mix", errors="collect",
                           options={"layer_cam": {"reshape": to_grid}, "grad_cam": {"layer": "head"}})
    assert out.maps["layer_cam"].shape == (2, 1, 12, 12) and out.maps["layer_cam"].abs().sum() > 0
    # Without `reshape`, as_spatial recognises the 3x3 patch tokens of a 12x12 input by itself.
    auto = explain(net, x, 1, methods=("layer_cam",), layer="mix")["layer_cam"]
    torch.testing.assert_close(auto, out.maps["layer_cam"])
    assert "hires_cam" in out.maps
    assert list(out.errors) == ["grad_cam"]
    assert "(2, 2)" in str(out.errors["grad_cam"]) and "reshape=" in str(out.errors["grad_cam"])
