"""Integrated Gradients (Sundararajan et al., 2017) on the trapezoid rule, fixed or adaptive nodes."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from lightning_xai._validation import Option
from lightning_xai.attribution._engine import Context, Shared
from lightning_xai.attribution._registry import (
    BASELINE,
    POSITIVE,
    Method,
    Request,
    int_in,
    option,
    optional,
    register,
)


@register
class IntegratedGradients(Method):
    """``(x - b) * integral_0^1 grad S(b + alpha (x - b)) d alpha``; see :func:`~lightning_xai.attribution.integrated_gradients`.

    Cost: ``n_steps`` forward + backward per probe (adaptive: more only where the completeness error asks for it,
    up to ``max_steps``; :attr:`~lightning_xai.attribution.Explanation.ig_evals` reports them). Saliency, input x
    gradient and the CAM family ride on its ``alpha = 1`` node for free.
    """

    name = "integrated_gradients"
    kind = "gradient"
    cost = "n_steps (adaptive: n_steps..max_steps, reported in ig_evals)"
    options: ClassVar[dict[str, Option]] = {
        "baseline": BASELINE,
        "n_steps": option(32, int_in(1, 4096)),
        "tolerance": option(None, optional(POSITIVE)),
        "max_steps": option(256, int_in(1, 4096)),
    }

    @staticmethod
    def check(opts: dict[str, Any]) -> None:
        if opts["tolerance"] is not None:
            if opts["n_steps"] < 2:
                raise ValueError(f"integrated_gradients option `n_steps` must be >= 2 when `tolerance` is set (the "
                                 f"refined grid needs both ends), got {opts['n_steps']}")
            if opts["max_steps"] < opts["n_steps"]:
                raise ValueError(f"integrated_gradients option `max_steps` must be an int >= n_steps "
                                 f"({opts['n_steps']}), got {opts['max_steps']!r}")

    def passes(self, image_size: tuple[int, int]) -> float:
        return float(self.opts["n_steps"])  # the start of adaptive IG; ig_evals reports what it took

    def request(self) -> Request:
        return Request(path={k: self.opts[k] for k in ("baseline", "n_steps", "tolerance", "max_steps")})

    def compute(self, ctx: Context, shared: Shared) -> Tensor:
        assert shared.ig is not None
        return shared.ig.attr
