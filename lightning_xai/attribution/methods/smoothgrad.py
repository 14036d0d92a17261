"""SmoothGrad (Smilkov et al., 2017): any method averaged over noisy copies of the input (Captum's NoiseTunnel)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from lightning_xai._validation import Option
from lightning_xai.attribution._engine import Context, Shared
from lightning_xai.attribution._registry import (
    POSITIVE,
    SEED,
    Method,
    check_method_options,
    get_method,
    int_in,
    option,
    optional,
    register,
)


@register
class SmoothGrad(Method):
    """The mean of ``base``'s maps at ``n_samples`` copies ``x + N(0, sigma^2)`` of each input.

    ``sigma = stdev`` if given, else ``noise_level * (max(x_i) - min(x_i))`` per probe (the paper's rule). Noise comes
    from a ``torch.Generator`` seeded with ``seed`` and drawn probe by probe (``(n_samples, C, H, W)`` each), so a
    probe's map depends neither on the global RNG nor on the other probes of the batch. With one probe and
    ``torch.manual_seed(seed)`` before the call, equal to Captum's ``NoiseTunnel(base).attribute(x,
    nt_type="smoothgrad", nt_samples=n_samples, stdevs=sigma)``. ``base`` can be any other registered method
    (``saliency`` by default); its options come from ``base_options`` and from ``explain``'s flat keywords.

    Cost: ``n_samples`` times the base method's cost per probe (``n_samples`` forward + backward for saliency);
    the copies run batched.
    """

    name = "smoothgrad"
    kind = "gradient"
    cost = "n_samples x base (saliency: n_samples)"
    options: ClassVar[dict[str, Option]] = {
        "base": Option("saliency", lambda v: isinstance(v, str) and v != "smoothgrad",
                       "the name of another registered method"),
        "base_options": Option({}, lambda v: isinstance(v, dict), "a dict of the base method's options"),
        "n_samples": option(16, int_in(1, 1024)),
        "noise_level": option(0.15, POSITIVE),
        "stdev": option(None, optional(POSITIVE)),
        "seed": SEED,
    }

    @staticmethod
    def check(opts: dict[str, Any]) -> None:
        check_method_options(opts["base"], opts["base_options"])

    def passes(self, image_size: tuple[int, int]) -> float:
        base = get_method(self.opts["base"])(check_method_options(self.opts["base"], self.opts["base_options"]))
        return self.opts["n_samples"] * base.passes(image_size)

    @staticmethod
    def route(opts: dict[str, Any], routed: dict[str, Any]) -> dict[str, Any]:
        base = get_method(opts["base"])
        inherited = {k: v for k, v in routed.items() if k in base.options}
        opts["base_options"] = check_method_options(opts["base"], {**inherited, **opts["base_options"]})
        return opts

    def compute(self, ctx: Context, shared: Shared) -> Tensor:
        base = get_method(self.opts["base"])(check_method_options(self.opts["base"], self.opts["base_options"]))
        n_samples, x = self.opts["n_samples"], ctx.x
        generator = torch.Generator(device=x.device).manual_seed(self.opts["seed"])
        total: Tensor | None = None
        start = 0
        while start < ctx.n:
            # Probes per sub-call: about one chunk of rows of the base method (known after the first sub-call).
            stop = min(start + max(1, (ctx.engine.rows or 16) // n_samples), ctx.n)
            noisy = []
            for i in range(start, stop):
                sigma = self.opts["stdev"] or self.opts["noise_level"] * float(x[i].max() - x[i].min())
                std = torch.full((n_samples, *x.shape[1:]), sigma, dtype=x.dtype, device=x.device)
                noisy.append(x[i:i + 1] + torch.normal(0.0, std, generator=generator))
            maps = ctx.run(base, torch.cat(noisy), ctx.target[start:stop].repeat_interleave(n_samples))
            mean = maps.view(stop - start, n_samples, *maps.shape[1:]).mean(1)
            if total is None:
                total = x.new_zeros(ctx.n, *mean.shape[1:])
            total[start:stop] = mean
            start = stop
        assert total is not None
        return total
