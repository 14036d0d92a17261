"""Similarity of two sets of heatmaps: used for epoch-to-epoch stability, method agreement and sanity checks.

Both measures compare *per-sample* heatmaps after an adaptive average pool to ``size x size`` cells, which removes
pixel-level noise and makes the cost independent of the image size. Every metric in this package first reduces maps
with the ``attribution.to_heatmap`` rule (sum of absolute values over channels; one-channel maps become their absolute
value), so it compares attribution magnitudes.

Degenerate maps have defined values and never give NaN: two flat (constant, e.g. all-zero) maps are identical (1.0);
a flat map against a non-flat one scores 0.0. Values closer than ``1e-6`` times a map's largest magnitude count as
ties. The only NaN output is for a sample whose map itself contains NaN/inf, so that callers (e.g.
:class:`~lightning_xai.drift.DriftDetector`) can skip it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_xai.metrics._utils import _as_heatmap, _check_size, _flat_rows, _snap

__all__ = ["downsample", "spearman_similarity", "topk_overlap"]


def downsample(maps: Tensor, size: int = 16) -> Tensor:
    """Adaptive-average-pool heatmaps to ``size x size`` cells and flatten them.

    Args:
        maps: heatmaps ``(N, 1, H, W)`` or attributions ``(N, C, H, W)``, first reduced with the ``to_heatmap`` rule
            (sum of absolute values over channels); ``(N, H, W)`` is accepted too.
        size: side of the pooled grid. Maps smaller than ``size`` are repeated (adaptive pooling), not padded.

    Returns:
        Detached float tensor on the input's device (float64 stays float64).

    Shape:
        - maps: ``(N, C, H, W)``
        - output: ``(N, size * size)``

    Cost: one pooling pass, ``O(N * C * H * W)``.
    """
    size = _check_size(size)
    heat = _as_heatmap(maps, "maps")
    return F.adaptive_avg_pool2d(heat, (size, size)).flatten(1)


def _pair(a: Tensor, b: Tensor, size: int) -> tuple[Tensor, Tensor]:
    da = downsample(a, size)
    db = downsample(b, size)
    if da.shape[0] != db.shape[0]:
        raise ValueError(f"`a` and `b` must hold the same number of maps, got {da.shape[0]} and {db.shape[0]}")
    dtype = torch.promote_types(da.dtype, db.dtype)
    if da.device != db.device:
        raise ValueError(f"`a` and `b` must be on the same device, got {da.device} and {db.device}")
    return da.to(dtype), db.to(dtype)


def _degenerate(da: Tensor, db: Tensor, value: Tensor) -> Tensor:
    """Apply the flat-map and non-finite rules to a per-sample ``value``."""
    n = da.shape[0]
    both = torch.cat([da, db])  # one pass over both sides
    return _rules(_flat_rows(both), torch.isfinite(both).all(dim=1), n, value)


def _rules(flat: Tensor, finite: Tensor, n: int, value: Tensor) -> Tensor:
    """The flat-map and non-finite rules, from ``(2N,)`` flags of ``a``'s rows then ``b``'s."""
    flat_a, flat_b = flat[:n], flat[n:]
    value = torch.where(flat_a & flat_b, torch.ones_like(value), value)
    value = torch.where(flat_a ^ flat_b, torch.zeros_like(value), value)
    return torch.where(finite[:n] & finite[n:], value, torch.full_like(value, float("nan")))


def spearman_similarity(a: Tensor, b: Tensor, size: int = 16) -> Tensor:
    """Per-sample Spearman rank correlation between two sets of heatmaps.

    The maps are downsampled with :func:`downsample`, then each sample's ``size * size`` cells are ranked (ties get
    their average rank, as in ``torchmetrics.functional.spearman_corrcoef``) and Pearson-correlated. 1.0 means the
    same ordering of regions, 0.0 unrelated, -1.0 reversed.

    Args:
        a: heatmaps ``(N, C, H, W)`` (see :func:`downsample` for the accepted shapes).
        b: heatmaps with the same ``N``; ``H, W`` and ``C`` may differ from ``a``.
        size: side of the pooled grid.

    Returns:
        Detached ``(N,)`` float tensor in ``[-1, 1]`` on the input's device. Flat vs flat gives 1.0, flat vs non-flat
        0.0; NaN only for samples whose maps contain NaN/inf.

    Shape:
        - a, b: ``(N, C, H, W)``
        - output: ``(N,)``

    Cost: pooling plus one batched sort of the ``size**2`` values of every sample, negligible next to any model
    forward pass.

    Example::

        >>> a = torch.tensor([[[[1.0, 2.0], [2.0, 3.0]]]])
        >>> spearman_similarity(a, a.flip(-1).flip(-2), size=2)
        tensor([-1.0000])
    """
    da, db = _pair(a, b, size)
    n = da.shape[0]
    both = torch.cat([da, db])  # a's maps then b's: every per-map step runs once for both
    finite = torch.isfinite(both).all(dim=1)
    if both.shape[1] == 1:
        rho = torch.zeros(n, dtype=both.dtype, device=both.device)
    else:
        # Ranks of non-finite rows would be meaningless; give them a harmless placeholder and mark NaN afterwards.
        ranks = _average_ranks(torch.where(finite[:, None], _snap(both), torch.zeros_like(both)))
        rho = _pearson_rows(ranks[:n], ranks[n:]).to(both.dtype)
    return _rules(_flat_rows(both), finite, n, rho)


def _average_ranks(x: Tensor) -> Tensor:
    """Ranks ``1..D`` of each row of ``x`` ``(N, D)``, ties given their mean rank, as float32 (the ranks of
    ``torchmetrics.functional.spearman_corrcoef``), for all rows at once: one sort, no loop over samples."""
    n, d = x.shape
    values, order = x.sort(dim=1)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    group = starts.long().cumsum(dim=1) - 1  # tie group of each sorted position
    position = torch.arange(1, d + 1, dtype=torch.float32, device=x.device).expand(n, d)
    sums = torch.zeros(n, d, dtype=torch.float32, device=x.device).scatter_add_(1, group, position)
    counts = torch.zeros(n, d, dtype=torch.float32, device=x.device).scatter_add_(1, group, torch.ones_like(position))
    mean_rank = (sums / counts.clamp_min(1.0)).gather(1, group)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-row Pearson correlation of ``(N, D)`` tensors, clamped to ``[-1, 1]`` (torchmetrics' formula, ``eps``
    included, so flat rows give 0 rather than NaN)."""
    da = a - a.mean(dim=1, keepdim=True)
    db = b - b.mean(dim=1, keepdim=True)
    cov = (da * db).mean(dim=1)
    return (cov / ((da * da).mean(dim=1).sqrt() * (db * db).mean(dim=1).sqrt() + eps)).clamp(-1.0, 1.0)


def topk_overlap(a: Tensor, b: Tensor, k: float = 0.1, size: int = 16) -> Tensor:
    """Per-sample share of the top-``k`` cells of ``a`` that are also top-``k`` cells of ``b``.

    ``k`` is a fraction of the ``size * size`` cells; at least one cell is used. Ties are broken by cell index (a
    stable sort), so identical maps always overlap fully.

    Args:
        a: heatmaps ``(N, C, H, W)`` (see :func:`downsample`).
        b: heatmaps with the same ``N``.
        k: fraction of cells in ``(0, 1]``.
        size: side of the pooled grid.

    Returns:
        Detached ``(N,)`` float tensor in ``[0, 1]``. Flat vs flat gives 1.0, flat vs non-flat 0.0; NaN only for
        samples whose maps contain NaN/inf.

    Shape:
        - a, b: ``(N, C, H, W)``
        - output: ``(N,)``

    Cost: pooling plus one sort per sample of ``size**2`` values.

    Example::

        >>> a = torch.tensor([[[[4.0, 3.0], [2.0, 1.0]]]])
        >>> b = torch.tensor([[[[4.0, 1.0], [3.0, 2.0]]]])
        >>> topk_overlap(a, b, k=0.5, size=2)
        tensor([0.5000])
    """
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not (0.0 < float(k) <= 1.0):
        raise ValueError(f"`k` must be a fraction in (0, 1], got {k!r}")
    da, db = _pair(a, b, size)
    num_cells = da.shape[1]
    kk = max(1, int(round(float(k) * num_cells)))
    finite = torch.isfinite(da).all(dim=1) & torch.isfinite(db).all(dim=1)
    sa = torch.where(finite[:, None], _snap(da), torch.zeros_like(da))
    sb = torch.where(finite[:, None], _snap(db), torch.zeros_like(db))
    top_a = torch.argsort(sa, dim=1, descending=True, stable=True)[:, :kk]
    top_b = torch.argsort(sb, dim=1, descending=True, stable=True)[:, :kk]
    mask_a = torch.zeros_like(sa, dtype=torch.bool).scatter_(1, top_a, True)
    mask_b = torch.zeros_like(sb, dtype=torch.bool).scatter_(1, top_b, True)
    overlap = (mask_a & mask_b).sum(dim=1).to(da.dtype) / kk
    return _degenerate(da, db, overlap)
