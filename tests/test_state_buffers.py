"""preserved_state restores every buffer, not only BatchNorm's (failure path 7, PITFALLS 26)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_xai.attribution import explain, preserved_state


class CountingNet(nn.Module):
    """A classifier whose forward changes its own state: an in-place counter, a reassigned running sum, a lazily
    registered buffer, and an output that depends on the counter (so a moved counter changes the training)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("seen", torch.zeros(()))
        self.register_buffer("shared", torch.ones(2))
        self.shared_alias = self.shared  # the same tensor under two owners below
        self.inner = nn.Module()
        self.inner.register_buffer("shared", self.shared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1  # in place
        self.seen = self.seen + x.detach().abs().mean()  # reassigned
        self.shared.mul_(2.0)
        if not hasattr(self, "lazy"):
            self.register_buffer("lazy", torch.ones(1))
        h = torch.relu(self.bn(self.conv(x)))
        return self.head(h.mean(dim=(2, 3))) * (1.0 + 1e-3 * self.calls.float())


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in model.named_buffers(remove_duplicate=False)}


def test_every_buffer_comes_back_bitwise_and_as_the_same_object():
    torch.manual_seed(0)
    model = CountingNet().train()
    model(torch.rand(2, 3, 8, 8))  # lazy buffer exists from here on, as after a first training step
    before = snapshot(model)
    objects = {name: b for name, b in model.named_buffers(remove_duplicate=False)}
    maps = explain(model, torch.rand(3, 3, 8, 8), torch.tensor([0, 1, 2]), n_steps=4, layer="conv")
    assert set(maps) == {"grad_cam", "saliency", "integrated_gradients"}
    after = dict(model.named_buffers(remove_duplicate=False))
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name
        assert after[name] is objects[name], name  # identity too: optimisers, DDP and compiled graphs hold them
    assert model.training and model.bn.training


def test_buffer_registered_inside_is_removed_and_restore_survives_errors():
    model = CountingNet()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), preserved_state(model):
        model(torch.rand(1, 3, 8, 8))
        assert hasattr(model, "lazy") and int(model.calls) == 1
        raise RuntimeError("boom")
    assert "lazy" not in dict(model.named_buffers())
    after = snapshot(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_a_buffer_that_does_not_change_is_not_rewritten():
    model = nn.BatchNorm2d(2)
    version = model.running_mean._version
    with preserved_state(model):
        model(torch.rand(2, 2, 3, 3))  # eval mode inside: BatchNorm reads its statistics only
    assert model.running_mean._version == version
