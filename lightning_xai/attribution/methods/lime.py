"""LIME for images (Ribeiro et al., 2016): a weighted linear model of the score on random superpixel masks."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from lightning_xai._validation import Option
from lightning_xai.attribution._engine import Context, Shared, baseline_tensor
from lightning_xai.attribution._registry import (
    BASELINE,
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    WINDOW,
    Method,
    int_in,
    option,
    register,
)


def grid_segments(size: tuple[int, int], grid: int | tuple[int, int], device: torch.device) -> Tensor:
    """``(H, W)`` long superpixel ids of a ``gh x gw`` grid of (nearly) equal cells, row-major."""
    gh, gw = (grid, grid) if isinstance(grid, int) else grid
    h, w = size
    if gh > h or gw > w:
        raise ValueError(f"lime option `grid` {grid} has more cells than the input {tuple(size)} has pixels per side")
    rows = torch.arange(h, device=device) * gh // h
    cols = torch.arange(w, device=device) * gw // w
    return rows[:, None] * gw + cols[None, :]


def kernel_weights(samples: Tensor, width: float) -> Tensor:
    """LIME's image kernel: ``exp(-d^2 / width^2)`` with ``d`` the cosine distance of each binary sample to all-ones."""
    d = samples.shape[-1]
    cosine = (samples.sum(-1) / d).sqrt()  # cos(z, 1) = |z|_1 / (sqrt(|z|_1) sqrt(d)) for binary z
    return torch.exp(-((1 - cosine) ** 2) / width**2)


def weighted_ridge(z: Tensor, y: Tensor, w: Tensor, alpha: float) -> Tensor:
    """Coefficients of ``min sum_s w_s (y_s - c - z_s . beta)^2 + alpha |beta|^2`` (intercept ``c`` unpenalised), per
    probe, as scikit-learn's ``Ridge(alpha).fit(z, y, sample_weight=w)``. Shapes ``(N, S, d), (N, S), (N, S)``."""
    z, y, w = z.double(), y.double(), w.double()
    w_sum = w.sum(1, keepdim=True).clamp_min(1e-300)
    z_mean = (w.unsqueeze(-1) * z).sum(1, keepdim=True) / w_sum.unsqueeze(-1)
    y_mean = (w * y).sum(1, keepdim=True) / w_sum
    zc, yc = z - z_mean, y - y_mean
    gram = zc.transpose(1, 2) @ (w.unsqueeze(-1) * zc)
    gram = gram + alpha * torch.eye(z.shape[-1], dtype=gram.dtype, device=gram.device)
    rhs = zc.transpose(1, 2) @ (w * yc).unsqueeze(-1)
    return torch.linalg.lstsq(gram, rhs).solution.squeeze(-1)


@register
class Lime(Method):
    """Per probe: ``n_samples`` random on/off masks over a ``grid`` of superpixels (each cell on with probability
    1/2), the target score of each masked image (off cells set to ``baseline``), and a ridge regression of the scores
    on the masks weighted by LIME's kernel; a pixel's value is its cell's coefficient.

    Masks come from a ``torch.Generator`` seeded with ``seed``, drawn probe by probe (``(n_samples, cells)`` each).
    With the same segmentation, samples and kernel, equal to Captum's ``Lime`` with ``SkLearnRidge(alpha=ridge)``.
    Superpixels are a regular grid (no image segmentation dependency): coarse, but the same for every probe and epoch,
    which keeps maps comparable across epochs. Opt-in: it needs many samples to be stable.

    Cost: ``n_samples`` forwards (no backward) per probe, batched, plus a ``cells x cells`` solve.
    """

    name = "lime"
    kind = "perturbation"
    cost = "n_samples forwards, no backward"
    options: ClassVar[dict[str, Option]] = {
        "grid": option(8, WINDOW),
        "n_samples": option(128, int_in(2, 8192)),
        "kernel_width": option(0.25, POSITIVE),
        "ridge": option(1.0, NON_NEGATIVE),
        "baseline": BASELINE,
        "seed": SEED,
    }

    def passes(self, image_size: tuple[int, int]) -> float:
        return self.opts["n_samples"] / 3  # forwards only

    def compute(self, ctx: Context, shared: Shared) -> Tensor:
        x, n = ctx.x, ctx.n
        segments = grid_segments(tuple(x.shape[-2:]), self.opts["grid"], x.device)
        cells, s = int(segments.max()) + 1, self.opts["n_samples"]
        generator = torch.Generator(device=x.device).manual_seed(self.opts["seed"])
        half = torch.full((s, cells), 0.5, device=x.device)
        z = torch.stack([torch.bernoulli(half, generator=generator) for _ in range(n)])  # (N, S, cells)
        b = baseline_tensor(self.opts["baseline"], x)

        def make(sl: slice) -> tuple[Tensor, Tensor]:
            rows = torch.arange(sl.start, sl.stop, device=x.device)
            i = rows // s
            keep = z.view(n * s, cells)[rows][:, segments].unsqueeze(1).bool()  # (R, 1, H, W)
            return torch.where(keep, x[i], b[i]), ctx.target[i]

        y = ctx.scores(n * s, make).view(n, s)
        coef = weighted_ridge(z, y, kernel_weights(z, self.opts["kernel_width"]), self.opts["ridge"])
        return coef[:, segments].unsqueeze(1).to(x.dtype)
