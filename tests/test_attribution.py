"""Numerics of the attribution core: analytic cases, axioms, equality with Captum, sharing, validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from attribution_helpers import DataclassOut, DictOut, TupleOut, tiny_cnn
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency
from torch import nn

from lightning_xai.attribution import (
    METHODS,
    explain,
    explain_detailed,
    find_gradcam_layer,
    grad_cam,
    integrated_gradients,
    resolve_layer,
    saliency,
    to_heatmap,
)


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 12, 12, generator=g), torch.tensor([0, 2, 1, 2])


# ------------------------------------------------------------------------------------------------- analytic cases


def test_linear_saliency_is_weight_row_and_ig_is_exact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    x = torch.randn(3, 3, 4, 4)
    target = torch.tensor([4, 0, 2])
    sal = saliency(net, x, target)
    expected = net[1].weight[target].reshape(3, 3, 4, 4)
    torch.testing.assert_close(sal, expected, rtol=0, atol=0)
    for n_steps in (1, 2, 7):  # trapezoid (and the one-node rule) is exact on a linear path integrand
        attr, delta = integrated_gradients(net, x, target, n_steps=n_steps, return_delta=True)
        torch.testing.assert_close(attr, x * expected, rtol=1e-6, atol=1e-6)
        assert delta.abs().max() < 1e-5


def test_grad_cam_hand_computed():
    # Layer = the input itself (Identity); head = global average pool + linear, so dS/dA_k = W[t, k] / (h w).
    torch.manual_seed(0)
    net = nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
    x = torch.randn(2, 3, 5, 5)
    target = torch.tensor([1, 3])
    cam = grad_cam(net, x, target, layer="0")
    w = net[3].weight[target] / 25
    expected = (w[:, :, None, None] * x).sum(1, keepdim=True).relu()
    torch.testing.assert_close(cam, expected, rtol=1e-6, atol=1e-7)
    assert (cam >= 0).all() and cam.shape == (2, 1, 5, 5)


def test_grad_cam_upsamples_bilinearly():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 2, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))
    x = torch.randn(2, 3, 8, 8)
    cam = grad_cam(net, x, 1, layer="1")
    with torch.no_grad():
        act = net[1](net[0](x))
    w = net[4].weight[1].view(1, 4, 1, 1) / 16
    small = (w * act * (act > 0)).sum(1, keepdim=True).relu()
    torch.testing.assert_close(cam, F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False),
                               rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------------- axioms


def test_ig_completeness_small_on_smooth_model(batch):
    net = tiny_cnn(act=nn.Tanh)
    x, target = batch
    out = explain_detailed(net, x, target, ("integrated_gradients",), n_steps=32)
    assert out.ig_relative_error is not None and out.ig_delta is not None
    assert out.ig_relative_error.max() < 2e-3
    f_x = net(x).gather(1, target[:, None]).squeeze(1)
    f_b = net(torch.zeros_like(x)).gather(1, target[:, None]).squeeze(1)
    attr_sum = out.maps["integrated_gradients"].flatten(1).sum(1)
    torch.testing.assert_close(out.ig_delta, attr_sum - (f_x - f_b), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.ig_relative_error, out.ig_delta.abs() / (f_x - f_b).abs(), rtol=1e-4, atol=1e-6)


def test_ig_completeness_error_shrinks_with_steps_on_relu_cnn():
    net = tiny_cnn(seed=3)
    x = torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    errors = [explain_detailed(net, x, 1, ("integrated_gradients",), n_steps=n).ig_relative_error.mean().item()
              for n in (3, 9, 33)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < errors[0] / 4


# ------------------------------------------------------------------------------------------- equality with Captum


def _captum_reference(net, layer_module, x, target, n_steps):
    sal = Saliency(net).attribute(x.clone(), target=target, abs=False)
    cam = LayerGradCam(net, layer_module).attribute(x.clone(), target=target, relu_attributions=True)
    cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")
    # Captum's riemann_trapezoid uses our nodes but step 1/n instead of 1/(n-1); rescale to the true trapezoid.
    ig = IntegratedGradients(net).attribute(x.clone(), target=target, n_steps=n_steps, method="riemann_trapezoid")
    return sal, cam, ig * n_steps / (n_steps - 1)


@pytest.mark.parametrize("inplace", [False, True])
def test_equal_to_captum_tiny_cnn(batch, inplace):
    net = tiny_cnn(inplace=inplace)
    x, target = batch
    maps = explain(net, x, target, layer="features.3", n_steps=6)
    sal, cam, ig = _captum_reference(net, net.features[3], x, target, 6)
    assert _rel_diff(maps["saliency"], sal) <= 1e-4
    assert _rel_diff(maps["grad_cam"], cam) <= 1e-4
    assert _rel_diff(maps["integrated_gradients"], ig) <= 1e-4
    assert cam.abs().max() > 0  # a non-degenerate comparison


def test_captum_trapezoid_misses_completeness_by_n_minus_1_over_n():
    # Why the reference above is rescaled: on a linear model Captum's "riemann_trapezoid" sums to (n-1)/n of
    # f(x) - f(b), ours is exact.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    x = torch.randn(2, 3, 2, 2)
    ours = integrated_gradients(net, x, 1, n_steps=4)
    captum = IntegratedGradients(net).attribute(x, target=1, n_steps=4, method="riemann_trapezoid")
    torch.testing.assert_close(captum, ours * 3 / 4, rtol=1e-5, atol=1e-6)


def test_equal_to_captum_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    target = torch.tensor([3, 1])
    maps = explain(net, x, target, n_steps=3)
    assert find_gradcam_layer(net, x) == "layer4"  # 2x2 at 64x64 input (at 32x32 it is 1x1 and layer3 is picked)
    sal, cam, ig = _captum_reference(net, net.layer4, x, target, 3)
    assert _rel_diff(maps["saliency"], sal) <= 1e-4
    assert _rel_diff(maps["grad_cam"], cam) <= 1e-4
    assert _rel_diff(maps["integrated_gradients"], ig) <= 1e-4


def test_grad_cam_close_to_pytorch_grad_cam_after_min_max(batch):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = tiny_cnn()
    x, target = batch
    ours = grad_cam(net, x, target, layer="features.3")[:, 0]
    reference_net = tiny_cnn()  # a copy: pytorch-grad-cam calls model.eval() and keeps hooks until closed
    with GradCAM(model=reference_net, target_layers=[reference_net.features[3]]) as cam:
        theirs = torch.from_numpy(cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(int(t)) for t in target]))
    flat = ours.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    ours_norm = ((flat - lo) / (hi - lo + 1e-7)).view_as(ours)
    # Same maps up to their normalisation and OpenCV's resize (same size here, so no resize).
    assert (ours_norm - theirs).abs().max() < 1e-3


# ---------------------------------------------------------------------------------------------------- sharing


def test_explain_equals_single_method_functions(batch):
    net = tiny_cnn()
    x, target = batch
    baseline = torch.full_like(x, 0.3)
    out = explain_detailed(net, x, target, layer="features.2", baseline=baseline, n_steps=5, internal_batch_size=7)
    assert list(out.maps) == list(METHODS)
    tol = {"rtol": 1e-5, "atol": 1e-7}
    torch.testing.assert_close(out.maps["saliency"], saliency(net, x, target), **tol)
    torch.testing.assert_close(out.maps["grad_cam"], grad_cam(net, x, target, layer="features.2"), **tol)
    attr, delta = integrated_gradients(net, x, target, baseline=baseline, n_steps=5, return_delta=True)
    torch.testing.assert_close(out.maps["integrated_gradients"], attr, **tol)
    torch.testing.assert_close(out.ig_delta, delta, **tol)
    torch.testing.assert_close(out.logits, net(x), **tol)
    assert out.ig_evals.tolist() == [5] * 4 and out.ig_evals.dtype == torch.long
    assert out.layer == "features.2"
    assert all(not t.requires_grad for t in out.maps.values())


def test_explain_subsets_and_order(batch):
    net = tiny_cnn()
    x, target = batch
    maps = explain(net, x, target, methods=("saliency", "grad_cam"))
    assert list(maps) == ["saliency", "grad_cam"]
    assert explain_detailed(net, x, target, methods="saliency").ig_evals is None
    torch.testing.assert_close(maps["saliency"], saliency(net, x, target))


def test_batched_equals_one_at_a_time_and_independent_of_internal_batch_size(batch):
    net = tiny_cnn()
    x, target = batch
    full = explain_detailed(net, x, target, n_steps=4, internal_batch_size=3)
    for i in range(x.shape[0]):
        single = explain_detailed(net, x[i:i + 1], int(target[i]), n_steps=4, internal_batch_size=1)
        for name in METHODS:
            torch.testing.assert_close(single.maps[name], full.maps[name][i:i + 1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(single.ig_delta, full.ig_delta[i:i + 1], rtol=1e-4, atol=1e-6)
    for ibs in (1, 5, 64, None):
        other = explain(net, x, target, n_steps=4, internal_batch_size=ibs)
        for name in METHODS:
            torch.testing.assert_close(other[name], full.maps[name], rtol=1e-5, atol=1e-6)


def test_target_forms(batch):
    net = tiny_cnn()
    x, _ = batch
    ref = saliency(net, x, 2)
    torch.testing.assert_close(saliency(net, x, torch.tensor(2)), ref)
    torch.testing.assert_close(saliency(net, x, torch.full((4,), 2)), ref)
    torch.testing.assert_close(saliency(net, x, torch.full((4,), 2, dtype=torch.int32)), ref)


def test_baseline_forms(batch):
    net = tiny_cnn()
    x, target = batch
    ref = integrated_gradients(net, x, target, baseline=torch.full_like(x, 0.5), n_steps=3)
    for baseline in (0.5, torch.full(x.shape[1:], 0.5), torch.full((1, *x.shape[1:]), 0.5), torch.tensor(0.5)):
        torch.testing.assert_close(integrated_gradients(net, x, target, baseline=baseline, n_steps=3), ref)
    torch.testing.assert_close(integrated_gradients(net, x, target, n_steps=3),
                               integrated_gradients(net, x, target, baseline=torch.zeros_like(x), n_steps=3))


@pytest.mark.parametrize("wrapper", [TupleOut, DictOut, DataclassOut])
def test_output_transform(batch, wrapper):
    net = tiny_cnn()
    x, target = batch
    select = {TupleOut: lambda o: o[0], DictOut: lambda o: o["logits"], DataclassOut: lambda o: o.logits}[wrapper]
    wrapped = wrapper(net)
    with pytest.raises(TypeError, match="output_transform"):
        saliency(wrapped, x, target)
    ref = explain(net, x, target, layer="features.3", n_steps=3)
    got = explain(wrapped, x, target, layer="net.features.3", n_steps=3, output_transform=select)
    for name in METHODS:
        torch.testing.assert_close(got[name], ref[name])


def test_to_heatmap():
    attr = torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.5]]]])
    torch.testing.assert_close(to_heatmap(attr), torch.tensor([[[[4.0, 2.5]]]]))
    torch.testing.assert_close(to_heatmap(-attr[:, :1]), torch.tensor([[[[1.0, 2.0]]]]))
    with pytest.raises(ValueError, match="attributions"):
        to_heatmap(torch.zeros(2, 3))


# ------------------------------------------------------------------------------------------------- layer lookup


def test_find_and_resolve_layer():
    net = tiny_cnn()
    x = torch.randn(1, 3, 12, 12)
    assert find_gradcam_layer(net, x) == "features"
    assert resolve_layer(net, "features.3") == ("features.3", net.features[3])
    assert resolve_layer(net, net.features[3])[0] == "features.3"
    assert resolve_layer(torch.compile(net), "_orig_mod.features.3")[1] is net.features[3]
    with pytest.raises(ValueError, match=r"features\.3.*Candidates: .*features"):
        resolve_layer(net, "features.33")
    with pytest.raises(ValueError, match="not a submodule"):
        resolve_layer(net, nn.Conv2d(1, 1, 1))
    with pytest.raises(RuntimeError, match="no submodule produced a 4-D"):
        find_gradcam_layer(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.randn(1, 3, 2, 2))


def test_grad_cam_layer_errors(batch):
    net = tiny_cnn()
    x, target = batch
    with pytest.raises(ValueError, match=r"fc.*must be \(N, C, h, w\).*reshape="):
        grad_cam(net, x, target, layer="fc")
    with pytest.raises(ValueError, match="layer"):
        grad_cam(net, x, target, layer="nope")


# -------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"inputs": torch.randn(3, 12, 12)}, "inputs.*rank 3"),
        ({"inputs": torch.randn(0, 3, 12, 12)}, "inputs"),
        ({"target": torch.tensor([0, 1])}, r"target.*\(4,\).*\(2,\)"),
        ({"target": 3}, "target.*class index 3.*3 outputs"),
        ({"target": torch.tensor([0, 1, 7, 0])}, "target.*7"),
        ({"target": -1}, "target.*-1"),
        ({"n_steps": 0}, "n_steps.*0"),
        ({"baseline": torch.zeros(4, 3, 6, 6)}, r"baseline.*\(4, 3, 6, 6\)"),
        ({"internal_batch_size": 0}, "internal_batch_size.*0"),
        ({"methods": ("saliency", "nope")}, "methods.*nope"),
        ({"tolerance": -0.1}, "tolerance.*-0.1"),
        ({"tolerance": 0.1, "max_steps": 4}, "max_steps.*4"),
    ],
)
def test_validation_errors(batch, kwargs, match):
    net = tiny_cnn()
    x, target = batch
    args = {"inputs": x, "target": target, **kwargs}
    with pytest.raises(ValueError, match=match):
        explain(net, args.pop("inputs"), args.pop("target"), n_steps=args.pop("n_steps", 8), **args)


def test_type_errors(batch):
    net = tiny_cnn()
    x, target = batch
    with pytest.raises(TypeError, match="target"):
        saliency(net, x, 1.5)
    with pytest.raises(TypeError, match="inputs"):
        saliency(net, x.long(), target)
    with pytest.raises(TypeError, match="model"):
        saliency(lambda t: t, x, target)


# --------------------------------------------------------------------------------------------- docs and layering


@pytest.mark.parametrize(
    "name",
    ["lightning_xai.attribution._core", "lightning_xai.attribution._layers", "lightning_xai.attribution._state",
     "lightning_xai.attribution._heatmap", "lightning_xai.attribution._registry"],
)
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_attribution_does_not_import_lightning():
    import ast
    from pathlib import Path

    import lightning_xai.attribution as pkg

    files = sorted(Path(pkg.__file__).parent.rglob("*.py"))  # the method files included
    assert len(files) >= 10
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(("lightning", "pytorch_lightning")) or name.startswith("lightning_xai"), (
                    path, name)
                # metrics.degenerate is the library's one rule for degenerate maps (adaptive IG uses it); nothing
                # else from metrics, so that attribution stays usable on its own.
                assert not name.startswith(("lightning_xai.callbacks", "lightning_xai.metrics")) or (
                    name == "lightning_xai.metrics.degenerate"), (path, name)
