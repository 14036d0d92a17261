"""Cross-method agreement: do two attribution methods rank the same regions as relevant?"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from lightning_xai.metrics.stability import spearman_similarity

__all__ = ["pairwise_agreement", "rank_agreement"]


def rank_agreement(maps_a: Tensor, maps_b: Tensor, size: int = 16) -> Tensor:
    """Per-sample Spearman rank correlation between two methods' heatmaps.

    The same measure as :func:`~lightning_xai.metrics.stability.spearman_similarity` (maps pooled to
    ``size x size`` cells after the ``to_heatmap`` rule, i.e. attribution magnitudes; flat vs flat 1.0, flat vs
    non-flat 0.0).

    Args:
        maps_a: heatmaps of method a.
        maps_b: heatmaps of method b, same ``N``.
        size: side of the pooled grid.

    Returns:
        Detached ``(N,)`` float tensor in ``[-1, 1]``.

    Shape:
        - maps_a, maps_b: ``(N, C, H, W)``
        - output: ``(N,)``

    Cost: pooling plus one sort of ``size**2`` values per sample.
    """
    return spearman_similarity(maps_a, maps_b, size=size)


def pairwise_agreement(maps: Mapping[str, Tensor], size: int = 16) -> dict[str, Tensor]:
    """Rank agreement for every pair of methods, named ``"{a}_vs_{b}"`` with ``a`` before ``b`` in ``maps``' order.

    Args:
        maps: method name -> heatmaps, all with the same ``N``. Names must not contain ``"_vs_"``.
        size: side of the pooled grid.

    Returns:
        Dict in pair order (``(m0, m1), (m0, m2), ..., (m1, m2), ...``) of ``(N,)`` tensors; empty with fewer than two
        methods.

    Shape:
        - each map: ``(N, C, H, W)``
        - each output: ``(N,)``

    Cost: ``k * (k - 1) / 2`` comparisons for ``k`` methods.

    Example::

        >>> import torch
        >>> m = torch.rand(2, 1, 8, 8)
        >>> list(pairwise_agreement({"grad_cam": m, "saliency": m, "integrated_gradients": m}))
        ['grad_cam_vs_saliency', 'grad_cam_vs_integrated_gradients', 'saliency_vs_integrated_gradients']
    """
    if not isinstance(maps, Mapping):
        raise TypeError(f"`maps` must be a mapping of method name to heatmaps, got {type(maps).__name__}")
    names = list(maps)
    for name in names:
        if not isinstance(name, str) or "_vs_" in name:
            raise ValueError(f"`maps` keys must be strings without '_vs_', got {name!r}")
    out: dict[str, Tensor] = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            out[f"{a}_vs_{b}"] = rank_agreement(maps[a], maps[b], size=size)
    return out
