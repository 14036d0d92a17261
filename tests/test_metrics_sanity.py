import pytest
import torch
from torch import nn

from lightning_xai.metrics import parameterized_layers, randomized_copy, sanity_similarity


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


def _trained_like():
    torch.manual_seed(0)
    model = TinyCNN()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
        model.features[1].running_mean.fill_(0.3)
    return model


def _saliency(model, x):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
    return grad


def test_parameterized_layers_order():
    assert parameterized_layers(TinyCNN()) == ["features.0", "features.1", "head"]


def test_randomized_copy_cascade_and_isolation():
    model = _trained_like()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()

    top1 = randomized_copy(model, num_layers=1, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)  # global RNG neither used nor advanced
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # original untouched
    assert not torch.equal(top1.head.weight, model.head.weight)
    assert not torch.equal(top1.head.bias, model.head.bias)
    assert top1.head.weight.abs().max() <= 1 / 16**0.5
    assert torch.equal(top1.features[0].weight, model.features[0].weight)
    assert torch.equal(top1.features[1].running_mean, model.features[1].running_mean)

    full = randomized_copy(model)
    assert not torch.equal(full.features[0].weight, model.features[0].weight)
    assert torch.equal(full.features[1].weight, torch.ones(4))  # norm layers back to their defaults
    assert torch.equal(full.features[1].running_mean, torch.zeros(4))

    assert torch.equal(randomized_copy(model, seed=3).head.weight, randomized_copy(model, seed=3).head.weight)
    assert not torch.equal(randomized_copy(model, seed=3).head.weight, randomized_copy(model, seed=4).head.weight)
    none = randomized_copy(model, num_layers=0)
    assert all(torch.equal(before[k], v) for k, v in none.state_dict().items())
    assert none is not model


def test_randomized_copy_keeps_flags():
    model = _trained_like()
    model.train()
    model.features[1].eval()
    model.features[0].weight.requires_grad_(False)
    copy = randomized_copy(model)
    assert copy.training and not copy.features[1].training
    assert not copy.features[0].weight.requires_grad and copy.head.weight.requires_grad


def test_randomized_copy_validation():
    with pytest.raises(ValueError, match=r"num_layers.*\[0, 3\]"):
        randomized_copy(TinyCNN(), num_layers=4)
    with pytest.raises(ValueError, match="num_layers"):
        randomized_copy(TinyCNN(), num_layers=-1)
    with pytest.raises(TypeError, match="model"):
        randomized_copy("not a model")


def test_sanity_similarity():
    model = _trained_like().eval()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    calls = []

    def explain_fn(m):
        calls.append(m)
        return {"saliency": _saliency(m, x), "input": x.clone()}

    same = sanity_similarity(model, explain_fn, num_layers=0, size=8)
    torch.testing.assert_close(same["saliency"], torch.ones(4), atol=1e-5, rtol=0)

    out = sanity_similarity(model, explain_fn, size=8)
    assert set(out) == {"saliency", "input"} and out["saliency"].shape == (4,)
    assert (out["saliency"] < 0.9).all()  # gradients depend on the weights
    torch.testing.assert_close(out["input"], torch.ones(4), atol=1e-5, rtol=0)  # a model-blind "explanation"

    calls.clear()
    reference = explain_fn(model)
    sanity_similarity(model, explain_fn, reference=reference)
    assert len(calls) == 2 and calls[1] is not model

    with pytest.raises(RuntimeError, match="no maps"):
        sanity_similarity(model, lambda m: {"a": x} if m is model else {"b": x})
