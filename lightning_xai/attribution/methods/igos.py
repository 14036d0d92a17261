"""I-GOS (Qi, Khorram & Li, 2019): a smooth deletion mask optimised with integrated-gradient descent directions."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_xai._validation import Option
from lightning_xai.attribution._engine import REL_EPS, Context, Shared, baseline_tensor, trapezoid
from lightning_xai.attribution._registry import (
    BASELINE,
    NON_NEGATIVE,
    Method,
    int_in,
    option,
    register,
)

_ARMIJO = 1e-4


def _regulariser(mask: Tensor, l1: float, tv: float) -> Tensor:
    """``l1 * mean|1 - M| + tv * mean(|dM/dy|^2 + |dM/dx|^2)`` per probe (``M`` is ``(N, 1, m, m)``)."""
    area = (1 - mask).abs().flatten(1).mean(1)
    dy = (mask[..., 1:, :] - mask[..., :-1, :]).pow(2).flatten(1).mean(1)
    dx = (mask[..., :, 1:] - mask[..., :, :-1]).pow(2).flatten(1).mean(1)
    return l1 * area + tv * (dy + dx)


@register
class IGOS(Method):
    """The region whose deletion most lowers the target score: ``1 - upsample(M)`` for a ``mask_size^2`` mask ``M``.

    Objective (deletion, per probe): ``L(M) = (S(phi(M)) - S(b)) / |S(x) - S(b)| + l1 * mean|1 - M| + tv * TV(M)``
    with ``phi(M) = x * up(M) + b * (1 - up(M))`` (``up``: bilinear) and the score normalised so the weights do not
    depend on the model's logit scale. Each of ``iterations`` steps takes as the score's descent direction its
    integrated gradient w.r.t. the mask along ``alpha * M`` (``ig_steps`` trapezoid nodes; it sees past the
    saturation that stalls plain gradient descent), adds the regulariser's gradient, and takes the best of a
    backtracking line search (steps ``1, 1/2, ..., 1/2^(line_search - 1)`` of a unit-max direction, with an
    Armijo test), keeping ``M`` in ``[0, 1]``. No reference implementation to compare with: tested on models where
    the answer is known. Opt-in (costly).

    Cost: ``iterations * ig_steps`` forward + backward and ``iterations * (line_search + 1)`` forwards per probe
    (defaults: 80 and 60); all probes run batched.
    """

    name = "igos"
    kind = "optimisation"
    cost = "iterations x ig_steps + iterations x (line_search + 1) forwards"
    options: ClassVar[dict[str, Option]] = {
        "mask_size": option(8, int_in(1, 256)),
        "iterations": option(10, int_in(1, 1000)),
        "ig_steps": option(8, int_in(2, 256)),
        "line_search": option(5, int_in(1, 100)),
        "l1": option(1.0, NON_NEGATIVE),
        "tv": option(0.5, NON_NEGATIVE),
        "baseline": BASELINE,
    }

    def passes(self, image_size: tuple[int, int]) -> float:
        o = self.opts  # per iteration: the integrated gradient along the mask, then the line search's forwards
        return o["iterations"] * (o["ig_steps"] + (o["line_search"] + 1) / 3) + 2 / 3

    def compute(self, ctx: Context, shared: Shared) -> Tensor:
        x, n, tgt = ctx.x, ctx.n, ctx.target
        size = tuple(x.shape[-2:])
        m, l1, tv = self.opts["mask_size"], self.opts["l1"], self.opts["tv"]
        b = baseline_tensor(self.opts["baseline"], x)
        f_x = shared.logits.gather(1, tgt.unsqueeze(1)).squeeze(1)
        f_b = ctx.scores(n, lambda sl: (b[sl], tgt[sl]))
        scale = (f_x - f_b).abs().clamp_min(REL_EPS)
        alphas, weights = trapezoid(self.opts["ig_steps"], torch.float32)
        alphas, weights = alphas.to(x.device), weights.to(x.device)
        k, tries = alphas.shape[0], self.opts["line_search"]
        steps = 0.5 ** torch.arange(tries, device=x.device, dtype=torch.float32)

        def up(mask: Tensor) -> Tensor:
            return F.interpolate(mask, size=size, mode="bilinear", align_corners=False)

        def phi(mask_up: Tensor, i: Tensor) -> Tensor:
            return x[i] * mask_up + b[i] * (1 - mask_up)

        def objective(masks: Tensor, i: Tensor) -> Tensor:
            """``L`` for ``masks`` ``(R, 1, m, m)`` of probes ``i``, forward only."""
            scores = ctx.scores(masks.shape[0], lambda sl: (phi(up(masks[sl]).to(x.dtype), i[sl]), tgt[i[sl]]))
            return (scores - f_b[i]) / scale[i] + _regulariser(masks, l1, tv)

        mask = torch.ones(n, 1, m, m, device=x.device)
        probes = torch.arange(n, device=x.device)
        current = objective(mask, probes)
        rows_i, rows_a = probes.repeat(k), alphas.repeat_interleave(n)  # alpha-major rows of the IG nodes
        rows_w = weights.repeat_interleave(n)

        def score_gradient(m0: Tensor) -> Tensor:
            """Integrated gradient of the score w.r.t. ``up(M)`` along ``alpha * M`` (``(N, 1, H, W)``)."""
            grad_up = torch.zeros(n, 1, *size, device=x.device)

            def make(sl: slice) -> tuple[Tensor, Tensor]:
                i = rows_i[sl]
                return phi(up(rows_a[sl].view(-1, 1, 1, 1) * m0[i]).to(x.dtype), i), tgt[i]

            def consume(sl: slice, logits: Tensor, g: Tensor) -> None:
                i = rows_i[sl]
                # dS/d up(M) = sum over channels of (x - b) * dS/d phi
                grad_up.index_add_(0, i, rows_w[sl].view(-1, 1, 1, 1) * ((x[i] - b[i]) * g).sum(1, keepdim=True).float())

            ctx.gradients(n * k, make, consume=consume)
            return grad_up

        for _ in range(self.opts["iterations"]):
            grad_up = score_gradient(mask)
            with torch.enable_grad():
                leaf = mask.clone().requires_grad_(True)
                # Adjoint of the upsampling (the integral is linear in dS/d up(M)), and the regulariser's gradient.
                (g_mask,) = torch.autograd.grad(up(leaf), leaf, grad_outputs=grad_up)
                (g_reg,) = torch.autograd.grad(_regulariser(leaf, l1, tv).sum(), leaf)
            direction = -(mask * g_mask / scale.view(-1, 1, 1, 1) + g_reg)
            unit = direction.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
            direction = direction / unit
            candidates = (mask.unsqueeze(1) + steps.view(1, -1, 1, 1, 1) * direction.unsqueeze(1)).clamp(0, 1)
            values = objective(candidates.flatten(0, 1), probes.repeat_interleave(tries)).view(n, tries)
            slope = (direction * (mask * g_mask / scale.view(-1, 1, 1, 1) + g_reg)).flatten(1).sum(1)
            armijo = values <= current.unsqueeze(1) + _ARMIJO * steps.view(1, -1) * slope.unsqueeze(1)
            # The largest step passing Armijo, else the best value if it improves, else stay.
            first_ok = torch.where(armijo.any(1), armijo.float().argmax(1), values.argmin(1))
            best = values.gather(1, first_ok.unsqueeze(1)).squeeze(1)
            better = best < current
            chosen = candidates[probes, first_ok]
            mask = torch.where(better.view(-1, 1, 1, 1), chosen, mask)
            current = torch.where(better, best, current)
        return (1 - up(mask)).to(x.dtype)
