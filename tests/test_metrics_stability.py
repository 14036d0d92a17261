import math

import pytest
import torch

from lightning_xai.metrics import downsample, pairwise_agreement, rank_agreement, spearman_similarity, topk_overlap


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    # rank = 1 + number of smaller values + (number of other equal values) / 2
    less = (x[None, :] < x[:, None]).sum(1).double()
    equal = (x[None, :] == x[:, None]).sum(1).double()
    return 1 + less + (equal - 1) / 2


def _reference_spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / math.sqrt(float((ra * ra).sum() * (rb * rb).sum())))


def test_downsample_shapes_and_values():
    maps = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = downsample(maps, size=2)
    assert out.shape == (1, 4)
    torch.testing.assert_close(out, torch.tensor([[2.5, 4.5, 10.5, 12.5]]))
    torch.testing.assert_close(downsample(maps, size=4), maps.flatten(1))
    # multi-channel maps are reduced by the to_heatmap rule: sum of |.| over channels
    signed = torch.stack([maps[:, 0], -maps[:, 0]], dim=1)
    torch.testing.assert_close(downsample(signed, size=2), 2 * out)
    assert downsample(maps[:, 0], size=2).shape == (1, 4)  # (N, H, W)
    assert downsample(maps.double(), size=2).dtype == torch.float64


def test_spearman_hand_computed_with_ties():
    a = torch.tensor([[[[1.0, 2.0], [2.0, 3.0]]]])  # ranks 1, 2.5, 2.5, 4
    b = torch.tensor([[[[4.0, 3.0], [2.0, 1.0]]]])  # ranks 4, 3, 2, 1
    expected = -3 / math.sqrt(10)  # cov -4.5 / sqrt(4.5 * 5)
    torch.testing.assert_close(spearman_similarity(a, b, size=2), torch.tensor([expected]), atol=1e-5, rtol=0)


def test_spearman_matches_reference_with_many_ties():
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (5, 1, 6, 6), generator=gen).float()
    b = torch.randint(0, 4, (5, 1, 6, 6), generator=gen).float()
    got = spearman_similarity(a, b, size=6)
    expected = torch.tensor([_reference_spearman(a[i].flatten(), b[i].flatten()) for i in range(5)])
    torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=0)


def test_spearman_is_rank_based():
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(3, 1, 8, 8, generator=gen)
    torch.testing.assert_close(spearman_similarity(a, a**3 + 2.0, size=8), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(spearman_similarity(a, 1.5 - a, size=8), -torch.ones(3), atol=1e-5, rtol=0)
    # like to_heatmap, signed maps are compared by magnitude
    torch.testing.assert_close(spearman_similarity(a, -a, size=8), torch.ones(3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fn", [spearman_similarity, topk_overlap])
def test_degenerate_maps_are_defined(fn):
    gen = torch.Generator().manual_seed(2)
    zeros = torch.zeros(2, 1, 7, 7)
    noise = torch.rand(2, 1, 7, 7, generator=gen)
    const = torch.full((2, 1, 7, 7), 0.3)  # 7 -> 3 pooling averages over windows of different sizes
    for x, y, expected in [
        (zeros, zeros, 1.0),
        (zeros, const, 1.0),
        (const, const * 5, 1.0),
        (zeros, noise, 0.0),
        (noise, const, 0.0),
    ]:
        out = fn(x, y, size=3)
        assert not torch.isnan(out).any()
        torch.testing.assert_close(out, torch.full((2,), expected))


@pytest.mark.parametrize("fn", [spearman_similarity, topk_overlap])
def test_nan_map_gives_nan_only_for_that_sample(fn):
    a = torch.rand(3, 1, 8, 8)
    b = a.clone()
    b[1, 0, 2, 2] = float("nan")
    out = fn(a, b, size=4)
    assert torch.isnan(out[1])
    torch.testing.assert_close(out[[0, 2]], torch.ones(2), atol=1e-5, rtol=0)


def test_topk_overlap_hand_computed():
    a = torch.tensor([[[[4.0, 3.0], [2.0, 1.0]]]])  # top-2 cells: 0, 1
    b = torch.tensor([[[[4.0, 1.0], [3.0, 2.0]]]])  # top-2 cells: 0, 2
    torch.testing.assert_close(topk_overlap(a, b, k=0.5, size=2), torch.tensor([0.5]))
    torch.testing.assert_close(topk_overlap(a, b, k=0.25, size=2), torch.tensor([1.0]))
    torch.testing.assert_close(topk_overlap(a, b, k=1.0, size=2), torch.tensor([1.0]))
    torch.testing.assert_close(topk_overlap(a, a.flip(-1).flip(-2), k=0.5, size=2), torch.tensor([0.0]))
    # at least one cell even for a tiny k
    torch.testing.assert_close(topk_overlap(a, b, k=0.01, size=2), torch.tensor([1.0]))


def test_input_validation():
    a = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="same number"):
        spearman_similarity(a, torch.rand(3, 1, 4, 4))
    with pytest.raises(ValueError, match="size"):
        downsample(a, size=0)
    with pytest.raises(ValueError, match="`k`"):
        topk_overlap(a, a, k=0.0)
    with pytest.raises(ValueError, match="shape"):
        downsample(torch.rand(4, 4))
    with pytest.raises(TypeError, match="maps"):
        downsample([[1.0]])


def test_low_precision_and_integer_inputs():
    a = torch.rand(2, 1, 8, 8)
    out = spearman_similarity(a.bfloat16(), a.bfloat16(), size=4)
    torch.testing.assert_close(out, torch.ones(2), atol=1e-5, rtol=0)
    assert spearman_similarity(torch.ones(2, 1, 4, 4, dtype=torch.long), a).tolist() == [0.0, 0.0]


def test_rank_and_pairwise_agreement():
    gen = torch.Generator().manual_seed(3)
    a, b, c = (torch.rand(4, 1, 8, 8, generator=gen) for _ in range(3))
    out = pairwise_agreement({"grad_cam": a, "saliency": b, "ig": c}, size=4)
    assert list(out) == ["grad_cam_vs_saliency", "grad_cam_vs_ig", "saliency_vs_ig"]
    torch.testing.assert_close(out["grad_cam_vs_ig"], rank_agreement(a, c, size=4))
    torch.testing.assert_close(rank_agreement(a, b, size=4), spearman_similarity(a, b, size=4))
    assert pairwise_agreement({"only": a}) == {}
    with pytest.raises(ValueError, match="_vs_"):
        pairwise_agreement({"a_vs_b": a, "c": b})


def test_inference_mode_tensors_are_accepted():
    # Lightning's validation hooks create inference tensors; metrics are called on them outside inference mode.
    with torch.inference_mode():
        a = torch.rand(2, 3, 8, 8)
        b = torch.rand(2, 3, 8, 8)
    assert spearman_similarity(a, b, size=4).shape == (2,)
    assert topk_overlap(a, b, size=4).shape == (2,)
    assert list(pairwise_agreement({"a": a, "b": b})) == ["a_vs_b"]
    with torch.inference_mode():
        inside = spearman_similarity(a, b, size=4)
    torch.testing.assert_close(inside, spearman_similarity(a, b, size=4))


def test_spearman_equals_torchmetrics_per_sample_on_many_maps():
    # all samples ranked at once must give what torchmetrics' spearman_corrcoef gives sample by sample, ties included
    from torchmetrics.functional import spearman_corrcoef

    g = torch.Generator().manual_seed(0)
    a = (torch.rand(24, 1, 8, 8, generator=g) * 5).round()  # many ties
    b = (torch.rand(24, 1, 8, 8, generator=g) * 7).round()
    b[:6] = a[:6].flip(-1)
    got = spearman_similarity(a, b, size=8)
    expected = torch.stack([spearman_corrcoef(a[i].flatten(), b[i].flatten()) for i in range(24)])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
