"""Automatic ``internal_batch_size``: how many path points go through the model in one forward/backward.

Rule (documented in :func:`lightning_xai.attribution.integrated_gradients`):

1. The first forward pass (at most :data:`PROBE_ROWS` rows) counts the bytes autograd saves for backward
   (``torch.autograd.graph.saved_tensors_hooks``; parameters and buffers excluded) and divides by its rows.
2. ``rows = budget // (SAFETY * bytes_per_row)``: the backward pass needs roughly as much again as the saved
   activations, plus temporaries, hence the safety factor of 3.
3. Budget: CUDA: half of the free device memory (``torch.cuda.mem_get_info``). CPU: a quarter of the available
   system memory (``MemAvailable`` in ``/proc/meminfo``; 4 GiB assumed where that file does not exist), at most
   2 GiB, since the host is shared with the training run.
4. Clamped to ``[1, cap]``: 2048 rows on CUDA; :data:`CPU_MAX_ROWS` on CPU, where larger batches do not run faster
   (measured in ``bench/attribution.py``) and only cost memory.

Given or automatic, ``rows`` is a memory budget of ``rows`` rows of saved activations: the buffers the explanation
itself holds (inputs, maps, adaptive IG's stored per-node gradients) take their share of it (:func:`chunk_rows`), so
an explanation at ``internal_batch_size=B`` needs no more memory than a training step at batch ``B``
(``bench/memory.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

PROBE_ROWS = 16
CPU_MAX_ROWS = 64
CUDA_MAX_ROWS = 2048
SAFETY = 3
CPU_BUDGET_CAP = 2 << 30
_GIB = 1 << 30


class SavedBytes:
    """Counts the bytes autograd saves for backward while active (parameters and buffers excluded)."""

    def __init__(self, model: nn.Module) -> None:
        self.bytes = 0
        self._skip = {t.data_ptr() for t in model.parameters()} | {t.data_ptr() for t in model.buffers()}

    def _pack(self, tensor: Tensor) -> Tensor:
        if tensor.data_ptr() not in self._skip:
            self.bytes += tensor.numel() * tensor.element_size()
        return tensor

    @contextlib.contextmanager
    def counting(self) -> Iterator[SavedBytes]:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self


def _cpu_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 4 * _GIB


def memory_budget(device: torch.device) -> tuple[int, int]:
    """``(budget_bytes, max_rows)`` for path points on ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2, CUDA_MAX_ROWS
    return min(_cpu_available_bytes() // 4, CPU_BUDGET_CAP), CPU_MAX_ROWS


def auto_rows(bytes_per_row: float, device: torch.device) -> int:
    """Rows per forward/backward for ``bytes_per_row`` saved-activation bytes per row (see the module rule)."""
    budget, cap = memory_budget(device)
    rows = int(budget // (SAFETY * max(bytes_per_row, 1.0)))
    return max(1, min(rows, cap))


def chunk_rows(rows: int, bytes_per_row: float, held_bytes: int) -> int:
    """Rows per chunk when ``held_bytes`` of the ``rows * bytes_per_row`` budget are already taken (at least 1)."""
    taken = -(-int(held_bytes) // max(int(bytes_per_row), 1))
    return max(1, rows - taken)
