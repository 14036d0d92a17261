"""No side effects: hooks, .grad, training flags, BatchNorm buffers, requires_grad, RNG; grad-disabled contexts."""

from __future__ import annotations

import pytest
import torch
from attribution_helpers import Explosive, fast_options, tiny_cnn
from torch import nn

from lightning_xai.attribution import (
    METHODS,
    NotApplicable,
    available_methods,
    explain,
    explain_detailed,
    find_gradcam_layer,
    get_method,
    grad_cam,
    integrated_gradients,
    preserved_state,
    saliency,
)

CALLS = {
    "explain": lambda net, x, t: explain(net, x, t, n_steps=3),
    "explain_adaptive": lambda net, x, t: explain(net, x, t, n_steps=3, tolerance=1e-6, max_steps=9),
    "saliency": lambda net, x, t: saliency(net, x, t),
    "grad_cam": lambda net, x, t: grad_cam(net, x, t),
    "grad_cam_named": lambda net, x, t: grad_cam(net, x, t, layer="features.2"),
    "integrated_gradients": lambda net, x, t: integrated_gradients(net, x, t, n_steps=3, internal_batch_size=2),
    "find_gradcam_layer": lambda net, x, t: find_gradcam_layer(net, x),
}


def _refused(net, x, t, name):
    # A method for another kind of model (e.g. vision transformers) must refuse this CNN clearly and leave no trace;
    # its side effects on the models it serves are tested in its own test file.
    try:
        explain(net, x, t, methods=(name,), options=fast_options([name]))
    except NotApplicable as err:  # anything else (e.g. an error of the model's forward) propagates
        assert "applies only to" in str(err)
    else:
        raise AssertionError(f"{name} (requires a {get_method(name).requires}) accepted a CNN")


# Every registered method on its own (its own passes, hooks and modified backward included).
for _name in available_methods():
    if get_method(_name).requires is None:
        CALLS[f"method:{_name}"] = lambda net, x, t, name=_name: explain(net, x, t, methods=(name,),
                                                                         options=fast_options([name]))
    else:
        CALLS[f"method:{_name}"] = lambda net, x, t, name=_name: _refused(net, x, t, name)


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {})) + len(getattr(m, "_forward_hooks_with_kwargs", {}))
        for m in model.modules()
    )


def _snapshot(model: nn.Module) -> dict:
    return {
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grad": {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
        "params": {name: p.detach().clone() for name, p in model.named_parameters()},
        "buffers": {name: b.clone() for name, b in model.named_buffers()},
        "hooks": _hook_count(model),
        "rng": torch.random.get_rng_state(),
    }


def _assert_same(before: dict, after: dict) -> None:
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"] == 0
    assert torch.equal(after["rng"], before["rng"])
    for key in ("grad", "params", "buffers"):
        assert before[key].keys() == after[key].keys()
        for name, value in before[key].items():
            if value is None:
                assert after[key][name] is None, f"{key} {name} appeared"
            else:
                assert torch.equal(after[key][name], value), f"{key} {name} changed"


def _mixed_state_model(model: nn.Module) -> nn.Module:
    # Training run state: mostly train mode, a frozen BN kept in eval, some frozen params, sentinel grads.
    model.train()
    model.features[1].eval()
    model.features[0].weight.requires_grad_(False)
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    model.fc.bias.grad = None
    return model


@pytest.mark.parametrize("call", list(CALLS))
def test_no_side_effects_after_normal_call(call):
    model = _mixed_state_model(Explosive())
    x = torch.randn(3, 3, 10, 10, requires_grad=True)
    target = torch.tensor([0, 1, 2])
    before = _snapshot(model)
    CALLS[call](model, x, target)
    _assert_same(before, _snapshot(model))
    assert x.requires_grad and x.grad is None
    assert not target.requires_grad


@pytest.mark.parametrize("call", list(CALLS))
def test_no_side_effects_after_exception_in_forward(call):
    model = _mixed_state_model(Explosive())
    x = torch.randn(3, 3, 10, 10)
    before = _snapshot(model)
    model.bomb.armed = True
    with pytest.raises(RuntimeError, match="boom"):
        CALLS[call](model, x, 1)
    model.bomb.armed = False
    _assert_same(before, _snapshot(model))
    assert not x.requires_grad


def test_exception_in_output_transform_and_bad_target_leave_no_trace():
    model = _mixed_state_model(Explosive())
    x = torch.randn(2, 3, 10, 10)
    before = _snapshot(model)

    def broken(out):
        raise KeyError("logits")

    with pytest.raises(KeyError):
        explain(model, x, 0, n_steps=3, output_transform=broken)
    with pytest.raises(ValueError, match="target"):
        explain(model, x, 9, n_steps=3)  # detected after the first forward, inside the guard
    _assert_same(before, _snapshot(model))


def test_runs_in_eval_mode_and_rng_neutral():
    # Dropout in train mode would make two calls differ (and consume RNG); BN in train mode would use batch stats.
    model = tiny_cnn().train()
    x = torch.randn(3, 3, 10, 10)
    a = explain(model, x, 1, n_steps=3)
    b = explain(model, x, 1, n_steps=3)
    ref = explain(tiny_cnn().eval(), x, 1, n_steps=3)
    for name in METHODS:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
        torch.testing.assert_close(a[name], ref[name])
    assert all(m.training for m in model.modules())


def test_forward_that_flips_requires_grad_is_restored():
    class Flipper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_cnn()

        def forward(self, x):
            self.net.fc.weight.requires_grad_(False)
            return self.net(x)

    model = Flipper()
    saliency(model, torch.randn(2, 3, 8, 8), 0)
    assert model.net.fc.weight.requires_grad


def test_frozen_parameters_give_the_same_result():
    x = torch.randn(3, 3, 10, 10)
    ref = explain_detailed(tiny_cnn(), x, 2, n_steps=4)
    frozen = tiny_cnn()
    for p in frozen.parameters():
        p.requires_grad_(False)
    out = explain_detailed(frozen, x, 2, n_steps=4)
    for name in METHODS:
        torch.testing.assert_close(out.maps[name], ref.maps[name])
    assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())


@pytest.mark.parametrize("context", ["inference_mode", "no_grad"])
def test_works_under_grad_disabled_contexts(context):
    model = tiny_cnn()
    x = torch.randn(3, 3, 10, 10)
    target = torch.tensor([0, 2, 1])
    ref = explain_detailed(model, x, target, n_steps=4)
    ctx = torch.inference_mode if context == "inference_mode" else torch.no_grad
    with ctx():
        # Lightning makes probe images and gathered labels inside the validation loop: inference tensors.
        x_inf, target_inf = x.clone(), target.clone()
        out = explain_detailed(model, x_inf, target_inf, n_steps=4, baseline=torch.zeros_like(x_inf))
        assert not torch.is_grad_enabled()
    for name in METHODS:
        torch.testing.assert_close(out.maps[name], ref.maps[name])
    torch.testing.assert_close(out.ig_delta, ref.ig_delta)


def test_ambient_autocast_is_disabled():
    model = tiny_cnn()
    x = torch.randn(2, 3, 10, 10)
    ref = integrated_gradients(model, x, 1, n_steps=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = integrated_gradients(model, x, 1, n_steps=4)
    torch.testing.assert_close(out, ref)
    assert out.dtype == torch.float32


def test_preserved_state_restores_on_exception():
    model = tiny_cnn().train()
    model.features[1].eval()
    rng = torch.random.get_rng_state()
    with pytest.raises(ZeroDivisionError), torch.no_grad(), preserved_state(model):
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        assert not any(m.training for m in model.modules())
        torch.rand(5)
        model.fc.weight.requires_grad_(False)
        1 / 0  # noqa: B018
    assert model.training and model.features[0].training and not model.features[1].training
    assert model.fc.weight.requires_grad
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_grads_of_params_stay_none_when_none():
    model = tiny_cnn()
    explain(model, torch.randn(2, 3, 8, 8), 0, n_steps=3)
    assert all(p.grad is None for p in model.parameters())
