"""Occlusion sensitivity (Zeiler & Fergus, 2014): the score drop when a sliding window is set to a baseline."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from lightning_xai._validation import Option
from lightning_xai.attribution._engine import Context, Shared, baseline_tensor
from lightning_xai.attribution._registry import (
    BASELINE,
    WINDOW,
    Method,
    option,
    optional,
    register,
)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def window_masks(size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int],
                 device: torch.device) -> Tensor:
    """``(P, H, W)`` bool masks of every window position, Captum's grid: ``ceil((H - k) / s) + 1`` positions per
    axis at ``0, s, 2s, ...``, the last one cut at the border."""
    axes = []
    for length, k, s in zip(size, window, stride):
        if k > length:
            raise ValueError(f"occlusion option `window` {window} is larger than the input {tuple(size)}")
        count = math.ceil((length - k) / s) + 1
        starts = torch.arange(count, device=device) * s
        pos = torch.arange(length, device=device)
        axes.append((pos[None, :] >= starts[:, None]) & (pos[None, :] < starts[:, None] + k))  # (count, length)
    rows, cols = axes
    return (rows[:, None, :, None] & cols[None, :, None, :]).flatten(0, 1)


@register
class Occlusion(Method):
    """Per pixel, the mean over the windows covering it of ``S(x) - S(x with the window set to baseline)``.

    Windows cover all channels; positions as Captum's ``Occlusion(model).attribute(x, sliding_window_shapes=(C,
    *window), strides=(C, *stride), baselines=baseline)``, which it equals (ours is one channel: Captum's channels are
    identical copies). Positive where hiding the region lowers the target score.

    Cost: one forward (no backward) per window position per probe, ``(ceil((H - k) / s) + 1) * (ceil((W - k) / s) +
    1)`` (e.g. 64 at 32x32 with window 8, stride 4); the occluded copies run batched.
    """

    name = "occlusion"
    kind = "perturbation"
    cost = "positions forwards, no backward"
    options: ClassVar[dict[str, Option]] = {
        "window": option(8, WINDOW),
        "stride": option(None, optional(WINDOW)),
        "baseline": BASELINE,
    }

    @staticmethod
    def check(opts: dict[str, Any]) -> None:
        window = _pair(opts["window"])
        if opts["stride"] is None:
            opts["stride"] = tuple(max(1, k // 2) for k in window) if not isinstance(opts["window"], int) else max(
                1, opts["window"] // 2)
        stride = _pair(opts["stride"])
        if any(s > k for s, k in zip(stride, window)):
            raise ValueError(f"occlusion option `stride` must not exceed the window {opts['window']} (pixels would be "
                             f"skipped), got {opts['stride']!r}")

    def passes(self, image_size: tuple[int, int]) -> float:
        window, stride = _pair(self.opts["window"]), _pair(self.opts["stride"] or self.opts["window"])
        positions = 1
        for side, k, s in zip(image_size, window, stride):
            positions *= max(1, -(-(side - k) // s) + 1)
        return positions / 3  # forwards only

    def compute(self, ctx: Context, shared: Shared) -> Tensor:
        x, n = ctx.x, ctx.n
        masks = window_masks(tuple(x.shape[-2:]), _pair(self.opts["window"]), _pair(self.opts["stride"]), x.device)
        p = masks.shape[0]
        b = baseline_tensor(self.opts["baseline"], x)
        f_x = shared.logits.gather(1, ctx.target.unsqueeze(1)).squeeze(1)

        def make(sl: slice) -> tuple[Tensor, Tensor]:
            rows = torch.arange(sl.start, sl.stop, device=x.device)
            i, m = rows // p, masks[rows % p].unsqueeze(1)
            return torch.where(m, b[i], x[i]), ctx.target[i]

        drops = (f_x.repeat_interleave(p) - ctx.scores(n * p, make)).view(n, p)
        weights = masks.flatten(1).to(drops.dtype)
        attr = (drops @ weights) / weights.sum(0)
        return attr.view(n, 1, *x.shape[-2:]).to(x.dtype)
