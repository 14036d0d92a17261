"""LIME against Captum's Lime with the same grid segmentation, samples, kernel and ridge model."""

from __future__ import annotations

import pytest
import torch
from attribution_helpers import rel_diff, tiny_cnn

from lightning_xai.attribution import check_method_options, explain
from lightning_xai.attribution.methods.lime import grid_segments, kernel_weights

pytest.importorskip("sklearn")


def test_equals_captum_lime_with_identical_segmentation_and_samples():
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import Lime

    x = torch.randn(2, 3, 12, 10, generator=torch.Generator().manual_seed(8))
    target = torch.tensor([1, 2])
    opts = {"grid": (3, 2), "n_samples": 40, "seed": 5, "ridge": 0.5, "baseline": 0.25}
    ours = explain(tiny_cnn(), x, target, methods=("lime",), options={"lime": opts})["lime"]
    segments = grid_segments((12, 10), (3, 2), x.device)
    # The samples as documented: one generator, probe by probe, (n_samples, cells) Bernoulli(1/2) draws.
    g = torch.Generator().manual_seed(5)
    samples = [torch.bernoulli(torch.full((40, 6), 0.5), generator=g) for _ in range(2)]
    for i in range(2):
        rows = iter(samples[i])

        def perturb(inputs, rows=rows, **kwargs):
            while True:
                yield next(rows).unsqueeze(0)

        def similarity(original, perturbed, interpretable, **kwargs):
            return kernel_weights(interpretable, 0.25)

        lime = Lime(tiny_cnn(), interpretable_model=SkLearnRidge(alpha=0.5), similarity_func=similarity,
                    perturb_func=perturb)
        theirs = lime.attribute(x[i:i + 1].clone(), target=int(target[i]), baselines=0.25,
                                feature_mask=segments[None, None].expand(1, 3, 12, 10), n_samples=40,
                                perturbations_per_eval=40)
        assert rel_diff(ours[i:i + 1].expand_as(theirs), theirs) <= 1e-4


def test_recovers_a_linear_model_on_the_grid():
    # A score that is a sum of per-cell weights is exactly linear in the masks: LIME recovers the weights.
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1 * 4 * 4, 1))
    cell_weights = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    with torch.no_grad():
        net[1].weight.copy_(cell_weights.repeat_interleave(2, 0).repeat_interleave(2, 1).flatten() / 4)
        net[1].bias.zero_()
    out = explain(net, torch.ones(1, 1, 4, 4), 0, methods=("lime",),
                  options={"lime": {"grid": 2, "n_samples": 64, "ridge": 0.0}})["lime"]
    torch.testing.assert_close(out[0, 0, ::2, ::2], cell_weights, rtol=1e-5, atol=1e-5)


def test_options():
    with pytest.raises(ValueError, match="lime option `n_samples`"):
        check_method_options("lime", {"n_samples": 1})
    with pytest.raises(ValueError, match="more cells"):
        explain(tiny_cnn(), torch.randn(1, 3, 4, 4), 0, methods=("lime",), options={"lime": {"grid": 5}})
