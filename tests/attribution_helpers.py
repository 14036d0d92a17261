"""Shared tiny models for the attribution tests (no tests here; module level so they pickle)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


class TinyCNN(nn.Module):
    """Conv-BN-ReLU-Conv-ReLU, global pool, dropout, linear: BN, Dropout and (optionally) in-place ReLU."""

    def __init__(self, num_classes: int = 3, inplace: bool = False, act: type[nn.Module] | None = None) -> None:
        super().__init__()

        def make_act() -> nn.Module:
            return act() if act is not None else nn.ReLU(inplace=inplace)

        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), make_act(),
            nn.Conv2d(8, 8, 3, padding=1), make_act(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, num_classes)
        with torch.no_grad():  # non-trivial BN statistics, so train vs eval mode differ
            self.features[1].running_mean.uniform_(-0.5, 0.5)
            self.features[1].running_var.uniform_(0.5, 2.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(self.pool(self.features(x)).flatten(1)))


def tiny_cnn(seed: int = 0, **kwargs) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN(**kwargs).eval()


class TupleOut(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.net(x)
        return logits, logits.softmax(1)


class DictOut(TupleOut):
    def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        return {"aux": x.mean(), "logits": self.net(x)}


@dataclass
class Output:
    logits: Tensor


class DataclassOut(TupleOut):
    def forward(self, x: Tensor) -> Output:  # type: ignore[override]
        return Output(self.net(x))


class Bomb(nn.Module):
    """Raises in forward when armed; draws random numbers either way (RNG consumption)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: Tensor) -> Tensor:
        torch.rand(3)
        if self.armed:
            raise RuntimeError("boom")
        return x


class Explosive(TinyCNN):
    def __init__(self) -> None:
        super().__init__()
        self.bomb = Bomb()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(self.pool(self.bomb(self.features(x))).flatten(1)))
