"""What the built-in measures share."""

from __future__ import annotations

import torch
from torch import Tensor


def finite_rows(maps: Tensor) -> Tensor:
    """``(N,)`` bool: the probes whose map is finite everywhere."""
    return torch.isfinite(maps.flatten(1)).all(dim=1)
