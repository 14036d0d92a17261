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


def rel_diff(a: Tensor, b: Tensor) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def min_max(maps: Tensor) -> Tensor:
    """Per-sample min-max normalisation the way pytorch-grad-cam scales its maps (``eps = 1e-7``)."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo + 1e-7)).view_as(maps)


def grad_cam_reference(cam_class: type, x: Tensor, target: Tensor, seed: int = 0) -> Tensor:
    """pytorch-grad-cam's map at ``features.3`` of a fresh ``tiny_cnn(seed)`` (same size as the input: no resize)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = tiny_cnn(seed)  # a copy: pytorch-grad-cam calls model.eval() and keeps hooks until closed
    with cam_class(model=net, target_layers=[net.features[3]]) as cam:
        return torch.from_numpy(cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(int(t)) for t in target]))


# Cheap options per method for tests that run every registered method (unknown names get none).
FAST_OPTIONS: dict[str, dict] = {
    "integrated_gradients": {"n_steps": 3},
    "smoothgrad": {"n_samples": 2},
    "occlusion": {"window": 4, "stride": 4},
    "lime": {"n_samples": 8, "grid": 3},
    "igos": {"iterations": 2, "ig_steps": 2},
}


def fast_options(names) -> dict:
    return {name: FAST_OPTIONS[name] for name in names if name in FAST_OPTIONS}
