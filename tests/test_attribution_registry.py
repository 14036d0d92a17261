"""The method registry: the contract every method meets, option routing and checking, failures kept local."""

from __future__ import annotations

import pytest
import torch
from attribution_helpers import FAST_OPTIONS, fast_options, tiny_cnn
from vit_reference import torchvision_vit

from lightning_xai.attribution import (
    METHODS,
    Method,
    available_methods,
    check_method_options,
    explain,
    explain_detailed,
    get_method,
    integrated_gradients,
)
from lightning_xai.attribution._registry import KINDS

CONTRACT = ("grad_cam", "saliency", "integrated_gradients", "input_x_gradient", "smoothgrad", "occlusion", "cam",
            "grad_cam_plus_plus", "layer_cam", "hires_cam", "guided_backprop", "deconvnet", "lime", "igos")
REGISTERED = available_methods()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(4)
    return torch.randn(3, 3, 12, 10, generator=g), torch.tensor([0, 2, 1])


def test_registry_lists_the_contract_methods():
    missing = [name for name in CONTRACT if name not in REGISTERED]
    assert not missing, f"not registered: {missing}"
    assert REGISTERED[:3] == METHODS  # the default three first
    for name in REGISTERED:
        cls = get_method(name)
        assert issubclass(cls, Method) and cls.name == name and cls.kind in KINDS
        assert cls.cost, f"{name} states no cost"
        assert "Cost" in (cls.__doc__ or ""), f"{name}'s docstring has no cost note"


@pytest.mark.parametrize("name", REGISTERED)
def test_every_method_gives_maps_of_the_input_size(batch, name):
    x, target = batch
    layer = "features.3" if get_method(name).uses_layer else None
    model = tiny_cnn()
    if get_method(name).requires is not None:  # only for vision transformers: a tiny ViT (square input)
        model, x = torchvision_vit(image_size=12, patch_size=4), torch.nn.functional.pad(x, (1, 1))  # 12x12
    out = explain_detailed(model, x, target, methods=(name,), layer=layer, options=fast_options([name]))
    m = out.maps[name]
    assert m.shape[0] == 3 and m.shape[1] in (1, 3) and m.shape[2:] == x.shape[2:]
    assert m.dtype == x.dtype and not m.requires_grad and torch.isfinite(m).all()
    assert m.abs().sum() > 0, f"{name} gave an all-zero map on a random CNN"
    assert out.logits.shape == (3, 3)
    assert not out.errors
    if get_method(name).uses_layer:
        assert out.layers == {name: "features.3"}


def test_check_method_options_without_a_model():
    full = check_method_options("integrated_gradients", {"n_steps": 8})
    assert full == {"baseline": None, "n_steps": 8, "tolerance": None, "max_steps": 256}
    with pytest.raises(ValueError, match=r"integrated_gradients option `n_steps` must be an int in \[1, 4096\], got 0"):
        check_method_options("integrated_gradients", {"n_steps": 0})
    with pytest.raises(ValueError, match=r"integrated_gradients has no option 'window'; its options: baseline"):
        check_method_options("integrated_gradients", {"window": 3})
    with pytest.raises(ValueError, match=r"unknown attribution method 'nope'; available: grad_cam"):
        check_method_options("nope", {})
    with pytest.raises(TypeError, match="mapping"):
        check_method_options("saliency", [("a", 1)])
    with pytest.raises(ValueError, match="max_steps.*4"):
        check_method_options("integrated_gradients", {"n_steps": 8, "tolerance": 0.1, "max_steps": 4})
    for name in REGISTERED:  # defaults are valid, and the fast test options too
        check_method_options(name, {})
        check_method_options(name, FAST_OPTIONS.get(name, {}))


def test_options_route_per_method_and_override_flat_keywords(batch):
    x, target = batch
    net = tiny_cnn()
    flat = explain(net, x, target, methods=("integrated_gradients",), n_steps=5)
    routed = explain(net, x, target, methods=("integrated_gradients",), n_steps=9,
                     options={"integrated_gradients": {"n_steps": 5}})
    torch.testing.assert_close(flat["integrated_gradients"], routed["integrated_gradients"], rtol=0, atol=0)
    torch.testing.assert_close(flat["integrated_gradients"], integrated_gradients(net, x, target, n_steps=5),
                               rtol=0, atol=0)
    # A flat keyword reaches every chosen method that has the option; per-method layers can differ.
    out = explain_detailed(net, x, target, methods=("grad_cam", "layer_cam"), layer="features.3",
                           options={"layer_cam": {"layer": "features.0"}})
    assert out.layers == {"grad_cam": "features.3", "layer_cam": "features.0"}
    with pytest.raises(ValueError, match="occlusion option `window`"):
        explain(net, x, target, methods=("saliency",), options={"occlusion": {"window": 0}})
    with pytest.raises(ValueError, match="not a method"):
        explain(net, x, target, methods=("saliency",), options={"nope": {}})
    with pytest.raises(ValueError, match="errors"):
        explain(net, x, target, methods=("saliency",), errors="ignore")


def test_failures_stay_local_with_errors_collect(batch):
    x, target = batch
    net = tiny_cnn()
    methods = ("grad_cam", "saliency", "integrated_gradients", "layer_cam")
    out = explain_detailed(net, x, target, methods=methods, n_steps=4, errors="collect",
                           options={"grad_cam": {"layer": "fc"}, "layer_cam": {"layer": "nope"}})
    assert sorted(out.maps) == ["integrated_gradients", "saliency"]
    assert set(out.errors) == {"grad_cam", "layer_cam"}
    assert "(3, 3)" in str(out.errors["grad_cam"]) and "reshape=" in str(out.errors["grad_cam"])
    assert "nope" in str(out.errors["layer_cam"])
    alone = explain(net, x, target, methods=("saliency", "integrated_gradients"), n_steps=4)
    for name, value in alone.items():
        torch.testing.assert_close(out.maps[name], value, rtol=0, atol=0)
    assert out.ig_evals.tolist() == [4, 4, 4]
    # The default raises, naming the layer's shape.
    with pytest.raises(ValueError, match=r"\(3, 3\).*reshape="):
        explain(net, x, target, methods=methods, n_steps=4, options={"grad_cam": {"layer": "fc"}})


def test_layer_without_gradient_fails_locally(batch):
    # A frozen part run under no_grad inside forward: its output has no gradient; the message says why.
    class Frozen(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = tiny_cnn().features
            self.head = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 1), torch.nn.AdaptiveAvgPool2d(1),
                                            torch.nn.Flatten(), torch.nn.Linear(8, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                feats = self.backbone(x)
            return self.head(feats)

    x, target = batch
    out = explain_detailed(Frozen().eval(), x, target, methods=("grad_cam", "hires_cam"), errors="collect",
                           options={"grad_cam": {"layer": "backbone"}, "hires_cam": {"layer": "head.0"}})
    assert list(out.maps) == ["hires_cam"] and "no_grad" in str(out.errors["grad_cam"])


def test_passes_per_probe_say_which_methods_are_cheap():
    # what the monitor's default budget runs at every epoch (one forward + backward per probe) and what it spaces
    from lightning_xai.attribution import is_cheap, passes

    cheap = {"grad_cam", "saliency", "input_x_gradient", "cam", "grad_cam_plus_plus", "layer_cam", "hires_cam",
             "guided_backprop", "deconvnet"}
    assert {m for m in REGISTERED if is_cheap(m)} & set(CONTRACT) == cheap
    assert passes("integrated_gradients", {"n_steps": 16}) == 16
    assert passes("smoothgrad", {"n_samples": 4}) == 4
    assert passes("lime", {"n_samples": 30}) == 10  # forwards count a third
    assert passes("occlusion", {"window": 4, "stride": 4}, (8, 8)) == 4 / 3  # 2 x 2 positions
    assert all(passes(m, image_size=(32, 32)) > 0 for m in REGISTERED)
    with pytest.raises(ValueError, match="n_steps"):
        passes("integrated_gradients", {"n_steps": 0})
