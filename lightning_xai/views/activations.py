"""The layer's strongest channels for a few probes, as one tiled image per epoch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_xai import keys
from lightning_xai._validation import integer
from lightning_xai.render import apply_colormap
from lightning_xai.views._common import View, ViewContext, ViewOutput, checked, display, tile_grid

__all__ = ["ActivationsView", "strongest_channels"]


def strongest_channels(acts: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per sample, the ``k`` channels with the largest mean activation.

    Args:
        acts: ``(N, C, h, w)`` activations.
        k: channels per sample (at most ``C``).

    Returns:
        ``(channels (N, k) long, means (N, k) float)``, strongest first.
    """
    means = acts.float().mean(dim=(2, 3))
    values, idx = means.topk(min(k, acts.shape[1]), dim=1)
    return idx, values


class ActivationsView(View):
    """Tiles of the ``num_channels`` strongest channels of the layer for the first ``num_probes`` probes.

    One row per probe: the probe, then its strongest channels (largest spatial mean) coloured with ``inferno`` on a
    scale shared by the row (0 to the row's largest activation, so channels compare within a probe); captions give
    the channel index and its mean. Scalar ``xai/activations/dead_fraction``: the fraction of channels that are
    never positive on any probe (a rising value means units dying).

    Cost: one forward pass over ``num_probes`` probes with a hook on the layer, plus rendering
    ``num_probes * (num_channels + 1)`` tiles.

    Logged: ``xai/activations/top_channels`` (image), ``xai/activations/dead_fraction`` (scalar).
    """

    name = "activations"
    options = {
        "num_probes": integer(4, 1, 64, "probes shown, one row each"),
        "num_channels": integer(8, 1, 256, "strongest channels shown per probe"),
    }

    def __init__(self, num_probes: int = 4, num_channels: int = 8) -> None:
        opts = checked(type(self).__name__, self.options, num_probes=num_probes, num_channels=num_channels)
        self.num_probes = opts["num_probes"]
        self.num_channels = opts["num_channels"]

    def __call__(self, ctx: ViewContext) -> ViewOutput:
        acts_all = ctx.outputs("probes")[1]
        dead = float((acts_all.amax(dim=(0, 2, 3)) <= 0).float().mean())
        n = min(self.num_probes, ctx.images.shape[0])
        acts = acts_all[:n].cpu()
        channels, means = strongest_channels(acts, self.num_channels)
        images = display(ctx.images[:n], ctx.mean, ctx.std)
        size = images.shape[-2:]
        tiles, captions = [], []
        for i in range(n):
            tiles.append(images[i])
            captions.append([f"#{int(ctx.ids[i])} {ctx.class_name(int(ctx.labels[i]))}"])
            row = acts[i, channels[i]].clamp_min(0.0)  # (k, h, w)
            scale = float(row.max())
            maps01 = row / scale if scale > 0 else torch.zeros_like(row)
            maps01 = F.interpolate(maps01[:, None], size=size, mode="nearest")
            tiles.extend(apply_colormap(maps01, "inferno"))
            captions.extend([f"ch{int(c)} {float(m):.2f}"] for c, m in zip(channels[i], means[i]))
        grid = tile_grid(torch.stack(tiles), captions, nrow=channels.shape[1] + 1)
        return ViewOutput(images={keys.of("activations", "top_channels"): grid},
                          scalars={keys.of("activations", "dead_fraction"): dead})
