"""Occlusion sensitivity against Captum's Occlusion (same windows, strides, baseline)."""

from __future__ import annotations

import pytest
import torch
from attribution_helpers import rel_diff, tiny_cnn
from captum.attr import Occlusion

from lightning_xai.attribution import check_method_options, explain


@pytest.mark.parametrize(("window", "stride", "baseline"), [(4, 2, 0.0), (3, 2, 0.5), ((5, 3), (2, 3), -1.0)])
def test_equals_captum(window, stride, baseline):
    x = torch.randn(3, 3, 12, 11, generator=torch.Generator().manual_seed(7))
    target = torch.tensor([0, 2, 1])
    ours = explain(tiny_cnn(), x, target, methods=("occlusion",), baseline=baseline,
                   options={"occlusion": {"window": window, "stride": stride}})["occlusion"]
    k = (window, window) if isinstance(window, int) else window
    s = (stride, stride) if isinstance(stride, int) else stride
    theirs = Occlusion(tiny_cnn()).attribute(x.clone(), sliding_window_shapes=(3, *k), strides=(3, *s),
                                             baselines=baseline, target=target)
    assert ours.shape == (3, 1, 12, 11)
    assert rel_diff(ours.expand_as(theirs), theirs) <= 1e-5


def test_occluding_the_evidence_is_positive():
    # A linear score on the top-left quadrant: occluding a 2x2 window there (3 channels) lowers it by 12, elsewhere
    # nothing changes.
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].weight[1].view(3, 8, 8)[:, :4, :4] = 1.0
        net[1].bias.zero_()
    x = torch.ones(1, 3, 8, 8)
    attr = explain(net, x, 1, methods=("occlusion",), options={"occlusion": {"window": 2, "stride": 2}})["occlusion"]
    assert (attr[0, 0, :4, :4] == 12.0).all() and (attr[0, 0, 4:, :] == 0).all() and (attr[0, 0, :, 4:] == 0).all()


def test_options():
    assert check_method_options("occlusion", {"window": (6, 4)})["stride"] == (3, 2)
    with pytest.raises(ValueError, match="occlusion option `stride` must not exceed"):
        check_method_options("occlusion", {"window": 2, "stride": 3})
    with pytest.raises(ValueError, match="occlusion option `window`"):
        check_method_options("occlusion", {"window": (2,)})
    with pytest.raises(ValueError, match="larger than the input"):
        explain(tiny_cnn(), torch.randn(1, 3, 6, 6), 0, methods=("occlusion",), options={"occlusion": {"window": 7}})
