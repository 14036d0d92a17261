"""Integrated Gradients (Sundararajan et al., 2017) on the trapezoid rule, fixed or adaptive nodes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from torch import Tensor

from lightning_xai._validation import Option, integer, number
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

# Integrated Gradients' options, declared once: what each means, its bounds, explain's defaults and the monitor's.
MAX_STEPS = 4096
DOCS = {
    "n_steps": "path nodes, both ends included; the start when `tolerance` is set",
    "tolerance": "refine probes whose completeness error exceeds it, up to `max_steps` nodes",
    "max_steps": ">= n_steps; cap of the adaptive refinement",
    "baseline": "the path's start: zeros, a constant in the model's input space or a tensor like the inputs",
}
#: ``explain``'s defaults: exact IG on a fine fixed grid (one call, no budget).
DEFAULTS = {"n_steps": 32, "tolerance": None, "max_steps": 256}
#: The monitor's: it explains every epoch, so fewer start nodes refined only where the completeness error asks, and
#: a lower cap (``bench/adaptive_ig.py``: 0.28x the evaluations of the fixed grid reaching the same worst case).
MONITOR_DEFAULTS = {"n_steps": 16, "tolerance": 0.02, "max_steps": 128}
_FIX = "each path node is one forward + backward per probe, and adaptive IG keeps one input gradient per node"


def monitor_options(max_rows: int) -> dict[str, Option]:
    """The options ``ExplanationMonitor(method_options={"integrated_gradients": ...})`` takes: these, with the
    monitor's defaults, ``n_steps >= 2`` (adaptive refinement needs both ends), a constant baseline (the monitor's
    probes change with the data) and ``internal_batch_size`` (rows per pass, at most ``max_rows``)."""
    return {
        "n_steps": integer(MONITOR_DEFAULTS["n_steps"], 2, MAX_STEPS, DOCS["n_steps"], fix=_FIX),
        "tolerance": number(MONITOR_DEFAULTS["tolerance"], 0.0, 1e3, "refine probes whose completeness error exceeds "
                            "it", open_low=True, none="exactly n_steps"),
        "max_steps": integer(MONITOR_DEFAULTS["max_steps"], 2, MAX_STEPS, DOCS["max_steps"], fix=_FIX),
        "baseline": number(None, -1e6, 1e6, "a constant in the model's input space", none="zeros"),
        "internal_batch_size": integer(None, 1, max_rows, "rows per forward + backward", none="the training batch "
                                       "size, so an explanation pass never needs more memory than a training step"),
    }


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
        "baseline": replace(BASELINE, doc=DOCS["baseline"]),
        "n_steps": replace(option(DEFAULTS["n_steps"], int_in(1, MAX_STEPS)), doc=DOCS["n_steps"], fix=_FIX),
        "tolerance": replace(option(DEFAULTS["tolerance"], optional(POSITIVE)), doc=DOCS["tolerance"]),
        "max_steps": replace(option(DEFAULTS["max_steps"], int_in(1, MAX_STEPS)), doc=DOCS["max_steps"], fix=_FIX),
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
