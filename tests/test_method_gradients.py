"""Gradient methods on the registry: input x gradient, guided backprop, deconvnet against Captum."""

from __future__ import annotations

import pytest
import torch
from attribution_helpers import rel_diff, tiny_cnn
from captum.attr import Deconvolution, GuidedBackprop, InputXGradient
from torch import nn

from lightning_xai.attribution import explain, saliency


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(2)
    return torch.randn(4, 3, 12, 12, generator=g), torch.tensor([1, 0, 2, 2])


def test_input_x_gradient_equals_captum_and_is_free_with_saliency(batch):
    x, target = batch
    net = tiny_cnn()
    maps = explain(net, x, target, methods=("input_x_gradient", "saliency"))
    reference = InputXGradient(tiny_cnn()).attribute(x.clone(), target=target)
    assert rel_diff(maps["input_x_gradient"], reference) <= 1e-5
    torch.testing.assert_close(maps["input_x_gradient"], x * saliency(net, x, target))


@pytest.mark.parametrize(("name", "reference"), [("guided_backprop", GuidedBackprop), ("deconvnet", Deconvolution)])
def test_modified_backward_equals_captum(batch, name, reference):
    x, target = batch
    ours = explain(tiny_cnn(), x, target, methods=(name,))[name]
    theirs = reference(tiny_cnn()).attribute(x.clone(), target=target)
    assert rel_diff(ours, theirs) <= 1e-5
    assert rel_diff(ours, saliency(tiny_cnn(), x, target)) > 1e-3  # the rule changed something


@pytest.mark.parametrize("name", ["guided_backprop", "deconvnet"])
def test_modified_backward_with_inplace_and_reused_relu(batch, name):
    # In-place ReLUs give the same map as out-of-place ones; one ReLU module called twice (torchvision's BasicBlock)
    # is handled per call; the forward value is unchanged (same logits).
    x, target = batch
    plain = explain(tiny_cnn(), x, target, methods=(name,))[name]
    inplace = explain(tiny_cnn(inplace=True), x, target, methods=(name,))[name]
    torch.testing.assert_close(inplace, plain)

    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.relu = nn.ReLU(inplace=True)
            self.head = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.relu(self.b(self.relu(self.a(x)))).mean((2, 3)))

    torch.manual_seed(0)
    net = Reused().eval()
    theirs = (GuidedBackprop if name == "guided_backprop" else Deconvolution)(_out_of_place(net)).attribute(
        x.clone(), target=target)
    assert rel_diff(explain(net, x, target, methods=(name,))[name], theirs) <= 1e-5


def _out_of_place(net: nn.Module) -> nn.Module:
    import copy

    clone = copy.deepcopy(net)
    clone.relu = nn.ReLU()
    return clone
