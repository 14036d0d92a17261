"""Per class (and per chosen unit) the pool samples that score highest and lowest, and how much that set changed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_xai import keys
from lightning_xai._validation import custom, integer, is_int
from lightning_xai.views._common import View, ViewContext, ViewOutput, checked, display, tile_grid

__all__ = ["MaxMinView", "extremes", "set_change"]


def extremes(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Indices of the ``k`` highest and ``k`` lowest entries of each column of ``scores`` ``(N, K)``.

    Returns:
        ``(top (K, k), bottom (K, k))`` long; top sorted descending, bottom ascending. Ties go to the lower index.
    """
    k = min(k, scores.shape[0])
    # stable sort: equal scores keep pool order, so the sets do not flicker between epochs on ties
    order = torch.sort(scores.T, dim=1, descending=True, stable=True).indices
    top = order[:, :k]
    bottom = torch.sort(scores.T, dim=1, descending=False, stable=True).indices[:, :k]
    return top, bottom


def set_change(previous: Sequence[int], current: Sequence[int]) -> float:
    """Jaccard distance ``1 - |A & B| / |A | B|`` of two id sets (0: same set, 1: disjoint)."""
    a, b = set(previous), set(current)
    union = a | b
    return 1.0 - len(a & b) / len(union) if union else 0.0


class MaxMinView(View):
    """The ``k`` pool samples with the highest and lowest score for each class (and each unit in ``units``).

    The score of class ``c`` is its logit; of a unit (channel of the layer) its spatial mean activation. One
    captioned grid per epoch: a row per class / unit, the ``k`` highest (``max``) then the ``k`` lowest (``min``),
    captions ``max #id y=label`` and the score (softmax probability for classes). Scalar ``xai/max_min/change``:
    the Jaccard distance between this round's sets and the previous round's (by sample id), averaged over all rows
    and both ends (0 = the same samples, 1 = all new); absent in the first round.

    Cost: one forward over the pool (shared with the other views) and ``2 k`` tiles per row.

    Logged: ``xai/max_min/grid`` (image), ``xai/max_min/change`` (scalar).
    """

    name = "max_min"
    options = {
        "k": integer(4, 1, 64, "pool samples shown at each end of a row"),
        "units": custom((), lambda v: isinstance(v, Sequence) and not isinstance(v, (str, bytes)) and len(v) <= 64
                        and all(is_int(u) and 0 <= u < 2**31 for u in v),
                        "a list of at most 64 channel indices (ints >= 0) of the views' layer; checked against the "
                        "layer at setup"),
    }

    def __init__(self, k: int = 4, units: Sequence[int] = ()) -> None:
        opts = checked(type(self).__name__, self.options, k=k, units=units)
        self.k = opts["k"]
        self.units = tuple(opts["units"])
        self.previous: dict[str, list[int]] = {}

    def __call__(self, ctx: ViewContext) -> ViewOutput:
        pool, pool_ids, pool_labels = ctx.pool_images, ctx.pool_ids, ctx.pool_labels
        logits, acts, _ = ctx.outputs("pool")
        probs = logits.softmax(dim=1).cpu()
        columns = [logits.cpu()]
        names = [ctx.class_name(c) for c in range(logits.shape[1])]
        if self.units:
            unit_means = acts.mean(dim=(2, 3)).cpu()
            bad = [u for u in self.units if u >= unit_means.shape[1]]
            if bad:
                raise ValueError(f"`units` {bad} out of range: layer {ctx.layer!r} has {unit_means.shape[1]} channels")
            columns.append(unit_means[:, list(self.units)])
            names += [f"unit {u}" for u in self.units]
        scores = torch.cat(columns, dim=1)
        top, bottom = extremes(scores, self.k)
        images = display(pool, ctx.mean, ctx.std)
        ids = pool_ids.cpu().tolist()
        labels = pool_labels.cpu().tolist()
        num_classes = logits.shape[1]
        tiles, captions, changes = [], [], []
        current: dict[str, list[int]] = {}
        for row, name in enumerate(names):
            for end, idx in (("max", top[row]), ("min", bottom[row])):
                key = f"{end}/{name}"
                current[key] = [ids[i] for i in idx.tolist()]
                if key in self.previous:
                    changes.append(set_change(self.previous[key], current[key]))
                for i in idx.tolist():
                    tiles.append(images[i])
                    value = f"p={float(probs[i, row]):.2f}" if row < num_classes else f"a={float(scores[i, row]):.2f}"
                    captions.append([f"{end} {name}"[:14], f"#{ids[i]} y={ctx.class_name(labels[i])}"[:14], value])
        self.previous = current
        out = ViewOutput(images={keys.of("max_min", "grid"): tile_grid(torch.stack(tiles), captions, nrow=2 * top.shape[1])})
        if changes:
            out.scalars[keys.of("max_min", "change")] = sum(changes) / len(changes)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"previous": {key: list(value) for key, value in self.previous.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous = {str(key): [int(v) for v in value] for key, value in state.get("previous", {}).items()}
