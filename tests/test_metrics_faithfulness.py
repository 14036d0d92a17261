import math

import pytest
import torch
from torch import nn

from lightning_xai.metrics import deletion_auc, deletion_curve, insertion_auc, insertion_curve


class OnePixel(nn.Module):
    """Two logits ``[10 * x[0, 0] - 5, 0]``: the target-0 probability depends on one pixel only."""

    def forward(self, x):
        z = 10 * x[:, 0, 0, 0] - 5
        return torch.stack([z, torch.zeros_like(z)], dim=1)


class Region(nn.Module):
    """Class 0 evidence = mean of a 4x4 region of channel 0; has BatchNorm and Dropout to check modes."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        x = self.drop(self.norm(x))
        z = 8 * x[:, 0, 2:6, 8:12].mean(dim=(1, 2)) - 4
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def test_deletion_curve_analytic():
    x = torch.ones(1, 1, 4, 4)
    heat = torch.zeros(1, 1, 4, 4)
    heat[0, 0, 0, 0] = 1.0  # the one pixel ranked first
    curves, auc = deletion_curve(OnePixel(), x, 0, heat, steps=16, perturbation="zero")
    hi, lo = 1 / (1 + math.exp(-5)), 1 / (1 + math.exp(5))
    expected = torch.tensor([[hi] + [lo] * 16])
    torch.testing.assert_close(curves, expected)
    torch.testing.assert_close(auc, torch.tensor([(hi + lo) / 2 / 16 + lo * 15 / 16]))

    curves, auc = insertion_curve(OnePixel(), x, 0, heat, steps=16, perturbation="zero")
    torch.testing.assert_close(curves, torch.tensor([[lo] + [hi] * 16]))
    torch.testing.assert_close(auc, torch.tensor([(hi + lo) / 2 / 16 + hi * 15 / 16]))


def test_pixel_ranked_last_changes_prob_only_at_the_end():
    x = torch.ones(1, 1, 4, 4)
    heat = torch.ones(1, 1, 4, 4)
    heat[0, 0, 0, 0] = 0.0
    curves, _ = deletion_curve(OnePixel(), x, torch.tensor([0]), heat, steps=4, perturbation="zero")
    hi, lo = 1 / (1 + math.exp(-5)), 1 / (1 + math.exp(5))
    torch.testing.assert_close(curves, torch.tensor([[hi, hi, hi, hi, lo]]))


def test_correct_map_beats_random_map_and_model_state_is_untouched():
    gen = torch.Generator().manual_seed(0)
    n = 16
    x = torch.rand(n, 3, 16, 16, generator=gen) * 0.2
    x[:, 0, 2:6, 8:12] += 0.8
    true_map = torch.zeros(n, 1, 16, 16)
    true_map[:, 0, 2:6, 8:12] = 1.0
    true_map += 0.01 * torch.rand(n, 1, 16, 16, generator=gen)
    random_map = torch.rand(n, 1, 16, 16, generator=gen)

    model = Region()
    model.train()
    model.norm.eval()  # a user-frozen submodule must stay frozen
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()

    model.calls = 0
    _, auc_true = deletion_curve(model, x, 0, true_map, perturbation="mean")
    assert model.calls == 3  # 16 probes x 17 steps = 272 images in batches of 128
    auc_random = deletion_auc(model, x, 0, random_map, perturbation="mean")
    assert (auc_true < auc_random).all()
    assert auc_true.mean() < auc_random.mean() - 0.2
    assert (
        insertion_auc(model, x, 0, true_map, perturbation="mean")
        > insertion_auc(model, x, 0, random_map, perturbation="mean")
    ).all()

    assert model.training and model.drop.training and not model.norm.training
    assert all(torch.equal(buffers[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("perturbation", ["blur", "mean", "zero"])
def test_batching_does_not_change_results(perturbation):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 16, 16, generator=gen)
    heat = torch.rand(3, 3, 8, 8, generator=gen)  # multi-channel, lower resolution: reduced and resized
    model = Region().eval()
    curves, auc = deletion_curve(model, x, torch.tensor([0, 1, 0]), heat, steps=5, perturbation=perturbation)
    curves_b, auc_b = deletion_curve(
        model, x, torch.tensor([0, 1, 0]), heat, steps=5, perturbation=perturbation, batch_size=4
    )
    assert curves.shape == (3, 6) and auc.shape == (3,)
    torch.testing.assert_close(curves, curves_b)
    torch.testing.assert_close(auc, auc_b)
    assert torch.isfinite(curves).all() and (curves >= 0).all() and (curves <= 1).all()
    # step 0 is the clean input
    torch.testing.assert_close(curves[:, 0], model(x).softmax(1)[[0, 1, 2], [0, 1, 0]])


def test_blur_of_constant_image_is_the_image():
    x = torch.full((1, 1, 8, 8), 0.7)
    heat = torch.rand(1, 1, 8, 8)
    curves, _ = deletion_curve(OnePixel(), x, 0, heat, steps=4, perturbation="blur")
    torch.testing.assert_close(curves, curves[:, :1].expand(1, 5))


def test_output_transform_and_validation():
    x = torch.ones(2, 1, 4, 4)
    heat = torch.rand(2, 1, 4, 4)

    class TupleOut(nn.Module):
        def forward(self, x):
            return (OnePixel()(x), None)

    curves, _ = deletion_curve(TupleOut(), x, 0, heat, steps=2, output_transform=lambda out: out[0])
    assert curves.shape == (2, 3)
    with pytest.raises(RuntimeError, match="output_transform"):
        deletion_curve(TupleOut(), x, 0, heat, steps=2)
    with pytest.raises(ValueError, match="perturbation"):
        deletion_curve(OnePixel(), x, 0, heat, perturbation="noise")
    with pytest.raises(ValueError, match="steps"):
        deletion_curve(OnePixel(), x, 0, heat, steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        deletion_curve(OnePixel(), x, 0, heat, batch_size=0)
    with pytest.raises(ValueError, match="one map per input"):
        deletion_curve(OnePixel(), x, 0, heat[:1])
    with pytest.raises(ValueError, match=r"target.*\[0, 2\)"):
        deletion_curve(OnePixel(), x, torch.tensor([0, 2]), heat)
    with pytest.raises(TypeError, match="target"):
        deletion_curve(OnePixel(), x, torch.tensor([0.5, 1.0]), heat)
