"""SmoothGrad as a wrapper over any method, against Captum's NoiseTunnel with the same noise."""

from __future__ import annotations

import pytest
import torch
from attribution_helpers import rel_diff, tiny_cnn
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

from lightning_xai.attribution import check_method_options, explain


@pytest.fixture
def one():
    g = torch.Generator().manual_seed(6)
    return torch.randn(1, 3, 12, 12, generator=g), torch.tensor([2])


def test_equals_noise_tunnel_over_saliency(one):
    x, target = one
    sigma = 0.15 * float(x.max() - x.min())
    ours = explain(tiny_cnn(), x, target, methods=("smoothgrad",),
                   options={"smoothgrad": {"n_samples": 6, "seed": 3}})["smoothgrad"]
    reference = NoiseTunnel(Saliency(tiny_cnn()))  # tiny_cnn() seeds the global RNG: build it first
    torch.manual_seed(3)
    theirs = reference.attribute(x.clone(), nt_type="smoothgrad", nt_samples=6,
                                                          stdevs=sigma, target=target, abs=False)
    assert rel_diff(ours, theirs) <= 1e-5


def test_wraps_integrated_gradients_with_routed_options(one):
    x, target = one
    ours = explain(tiny_cnn(), x, target, methods=("smoothgrad",), n_steps=5,
                   options={"smoothgrad": {"base": "integrated_gradients", "n_samples": 3, "stdev": 0.2}})["smoothgrad"]
    ig = IntegratedGradients(tiny_cnn())
    torch.manual_seed(0)
    # Captum's riemann_trapezoid weights are (n-1)/n of the trapezoid rule's (see test_attribution.py).
    theirs = NoiseTunnel(ig).attribute(x.clone(), nt_type="smoothgrad", nt_samples=3, stdevs=0.2, target=target,
                                       n_steps=5, method="riemann_trapezoid") * 5 / 4
    assert rel_diff(ours, theirs) <= 1e-4


def test_noise_is_per_probe_and_seeded():
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 1, 2])
    opts = {"smoothgrad": {"n_samples": 4}}
    batch = explain(tiny_cnn(), x, target, methods=("smoothgrad",), options=opts)["smoothgrad"]
    again = explain(tiny_cnn(), x, target, methods=("smoothgrad",), options=opts)["smoothgrad"]
    torch.testing.assert_close(batch, again, rtol=0, atol=0)
    # The first probe's map does not depend on the others (its noise is drawn first, from the method's own seed).
    first = explain(tiny_cnn(), x[:1], target[:1], methods=("smoothgrad",), options=opts)["smoothgrad"]
    torch.testing.assert_close(batch[:1], first, rtol=1e-5, atol=1e-7)
    other = explain(tiny_cnn(), x, target, methods=("smoothgrad",),
                    options={"smoothgrad": {"n_samples": 4, "seed": 1}})["smoothgrad"]
    assert not torch.equal(batch, other)


def test_options_checked_with_the_base():
    with pytest.raises(ValueError, match="smoothgrad option `base`"):
        check_method_options("smoothgrad", {"base": "smoothgrad"})
    with pytest.raises(ValueError, match="integrated_gradients option `n_steps`"):
        check_method_options("smoothgrad", {"base": "integrated_gradients", "base_options": {"n_steps": 0}})
    with pytest.raises(ValueError, match="smoothgrad option `n_samples`"):
        check_method_options("smoothgrad", {"n_samples": 0})
