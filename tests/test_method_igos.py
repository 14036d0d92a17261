"""I-GOS: the optimised deletion mask finds the evidence where the answer is known (no reference implementation)."""

from __future__ import annotations

import pytest
import torch
from attribution_helpers import tiny_cnn
from torch import nn

from lightning_xai.attribution import check_method_options, explain


class QuadrantNet(nn.Module):
    """Class 1's score is the ReLU'd mean brightness of the top-left quadrant (a kinked, saturating integrand)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top_left = x[:, :, :8, :8].mean((1, 2, 3))
        return torch.stack([torch.zeros_like(top_left), 4 * (top_left - 0.2).relu()], 1)


def test_finds_the_quadrant_that_matters():
    x = torch.ones(2, 3, 16, 16)
    out = explain(QuadrantNet(), x, 1, methods=("igos",), options={"igos": {"mask_size": 4, "iterations": 6}})["igos"]
    assert out.shape == (2, 1, 16, 16) and out.min() >= 0 and out.max() <= 1
    inside, outside = out[:, :, :8, :8].mean(), out[:, :, 8:, 8:].mean()
    assert inside > 0.5 and outside < 0.1


def test_each_probe_gets_its_own_evidence_in_one_batch():
    # Class 0 reads the bottom-right quadrant, class 1 the top-left: probes with different targets, one batch.
    class TwoQuadrants(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([3 * (x[:, :, 8:, 8:].mean((1, 2, 3)) - 0.1).relu(),
                                3 * (x[:, :, :8, :8].mean((1, 2, 3)) - 0.1).relu()], 1)

    x = torch.ones(2, 3, 16, 16)
    out = explain(TwoQuadrants(), x, torch.tensor([0, 1]), methods=("igos",),
                  options={"igos": {"mask_size": 4, "iterations": 4}})["igos"]
    assert out[0, :, 8:, 8:].mean() > 0.5 > out[0, :, :8, :8].mean()
    assert out[1, :, :8, :8].mean() > 0.5 > out[1, :, 8:, 8:].mean()
    # A random CNN: finite maps in [0, 1].
    heat = explain(tiny_cnn(), torch.randn(2, 3, 12, 12), 0, methods=("igos",), options={"igos": {"iterations": 2}})
    assert torch.isfinite(heat["igos"]).all() and heat["igos"].min() >= 0 and heat["igos"].max() <= 1


def test_options():
    with pytest.raises(ValueError, match="igos option `ig_steps`"):
        check_method_options("igos", {"ig_steps": 1})
    with pytest.raises(ValueError, match="igos option `l1`"):
        check_method_options("igos", {"l1": -1})
