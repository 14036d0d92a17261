"""Vectorised statistics of pooled heatmaps for the drift detector: rank correlation per row, class-mean maps.

Pure torch, no Python loop over samples: the detector compares a pool of up to a few hundred maps every epoch.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["average_ranks", "class_means", "normalised", "row_spearman"]


def average_ranks(x: Tensor) -> Tensor:
    """Ranks ``0..D-1`` of each row of ``x`` ``(N, D)``, ties sharing their average rank (as Spearman needs)."""
    n, d = x.shape
    values, order = x.sort(dim=1)
    positions = torch.arange(d, dtype=torch.float64, device=x.device).expand(n, d)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    group = starts.long().cumsum(1) - 1  # tie group of each sorted position
    sums = torch.zeros(n, d, dtype=torch.float64, device=x.device).scatter_add_(1, group, positions)
    counts = torch.zeros(n, d, dtype=torch.float64, device=x.device).scatter_add_(1, group, torch.ones_like(positions))
    mean_rank = (sums / counts.clamp_min(1)).gather(1, group)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def row_spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman correlation of each row of ``a`` with the same row of ``b`` (``(N, D)`` each) -> ``(N,)`` float64.

    A flat row has no ordering: its correlation is NaN (the caller decides what a degenerate map means).
    """
    ra, rb = average_ranks(a.double()), average_ranks(b.double())
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    den = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    return torch.where(den > 0, (ra * rb).sum(1) / den.clamp_min(1e-300), torch.full_like(den, float("nan")))


def normalised(maps: Tensor) -> Tensor:
    """Rows of non-negative maps scaled to sum 1 (rows without mass stay zero): where the evidence lies, not how much."""
    rows = maps.clamp_min(0).double()
    total = rows.sum(1, keepdim=True)
    return torch.where(total > 0, rows / total.clamp_min(1e-300), torch.zeros_like(rows))


def class_means(maps: Tensor, labels: Tensor, valid: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
    """Mean normalised map of each class in ``classes`` over the valid rows of that class.

    Returns:
        ``(K, D)`` means and ``(K,)`` counts (a class without valid rows has a zero mean and count 0).
    """
    dist = normalised(maps)
    onehot = (labels[None, :] == classes[:, None]) & valid[None, :]  # (K, N)
    counts = onehot.sum(1)
    sums = onehot.double() @ dist
    return sums / counts.clamp_min(1)[:, None], counts
