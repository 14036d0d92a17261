"""Shard / gather helpers over ``torch.distributed`` (no Lightning).

The probe set is split into contiguous shards, one per rank (:func:`shard_bounds`); each rank explains its shard and
:func:`gather_shards` reassembles the full result, in probe order, on every rank. ``all_gather`` needs equal sizes
on every rank, so shards are padded to the longest one and trimmed after the gather (PITFALLS 11); a
``DistributedSampler`` would instead pad by repeating samples.

Every function here is a collective when a process group is initialised: **all ranks must call it**, in the same
order, never from rank-zero-only code. Without an initialised process group every function is a cheap no-op, so the
same code runs on one device. Mismatched arguments across ranks (shard sizes that do not add up, different trailing
shapes or dtypes) raise the same ``ValueError`` on every rank instead of hanging.

Backends: with NCCL the communication buffers live on the current CUDA device; with gloo (and any other backend) on
the CPU. Results come back on the device of the tensor passed in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "broadcast_tensor",
    "gather_shards",
    "is_distributed",
    "rank_zero_buffers",
    "shard_bounds",
]

_MAX_DIMS = 16
# dtype <-> small integer code, so ranks can compare dtypes inside an int64 header.
_DTYPES: tuple[torch.dtype, ...] = (
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
)


def is_distributed(group: dist.ProcessGroup | None = None) -> bool:
    """True if ``torch.distributed`` is available and initialised (the helpers then communicate)."""
    return dist.is_available() and dist.is_initialized()


def shard_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """Contiguous shard ``[start, stop)`` of ``n`` items for ``rank`` of ``world_size``.

    The first ``n % world_size`` ranks get one item more; when ``n < world_size`` the last ranks get empty shards.

    Example::

        >>> [shard_bounds(5, 2, r) for r in range(2)]
        [(0, 3), (3, 5)]
        >>> [shard_bounds(1, 3, r) for r in range(3)]
        [(0, 1), (1, 1), (1, 1)]
    """
    for name, value in (("n", n), ("world_size", world_size), ("rank", rank)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"`{name}` must be an int, got {value!r}")
    if n < 0:
        raise ValueError(f"`n` must be >= 0, got {n}")
    if world_size < 1:
        raise ValueError(f"`world_size` must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"`rank` must be in [0, {world_size}), got {rank}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _comm_device(group: dist.ProcessGroup | None) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _comm_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype to send: gloo cannot all_gather bool (and some builds not bfloat16/float16)."""
    if dtype == torch.bool:
        return torch.uint8
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return dtype


def _header(t: Tensor, device: torch.device) -> Tensor:
    """int64 ``[n, ndim, dtype_code, *shape[1:], -1 padding]`` describing a shard (ndim -1: unusable shape)."""
    if t.dim() == 0 or t.dim() > _MAX_DIMS:  # reported on every rank after the header exchange, not here
        return torch.tensor([0, -1, -1] + [-1] * (_MAX_DIMS - 1), dtype=torch.int64, device=device)
    code = _DTYPES.index(t.dtype) if t.dtype in _DTYPES else len(_DTYPES)
    trailing = list(t.shape[1:]) + [-1] * (_MAX_DIMS - t.dim())
    return torch.tensor([t.shape[0], t.dim(), code, *trailing], dtype=torch.int64, device=device)


def gather_shards(local: Tensor, n_total: int, *, group: dist.ProcessGroup | None = None) -> Tensor:
    """Concatenate every rank's shard, in rank order, on every rank (pad to the longest shard, all_gather, trim).

    A collective: every rank of ``group`` must call it. Shards may have different lengths, including 0, but must
    share trailing shape and dtype (pass e.g. ``images[0:0]`` for an empty shard, not ``torch.empty(0)``).

    Args:
        local: this rank's shard ``(n_local, ...)``; any dtype including bool.
        n_total: the sum of all shard lengths (the length of the result).
        group: process group (default: the world).

    Returns:
        ``(n_total, ...)`` tensor on ``local``'s device, with ``local``'s dtype. Without an initialised process
        group, ``local`` itself (its length must then be ``n_total``).

    Raises:
        ValueError: on every rank, if the shard lengths do not add up to ``n_total`` or shards differ in trailing
            shape or dtype.
    """
    if not isinstance(local, Tensor):
        raise TypeError(f"`local` must be a tensor, got {type(local).__name__}")
    if isinstance(n_total, bool) or not isinstance(n_total, int) or n_total < 0:
        raise ValueError(f"`n_total` must be an int >= 0, got {n_total!r}")
    if not is_distributed(group):
        if local.dim() == 0 or local.shape[0] != n_total:
            raise ValueError(f"`local` has shape {tuple(local.shape)} but `n_total`={n_total} (not distributed)")
        return local

    world = dist.get_world_size(group)
    device = _comm_device(group)
    header = _header(local, device)
    headers = [torch.empty_like(header) for _ in range(world)]
    dist.all_gather(headers, header, group=group)
    table = torch.stack(headers).cpu()
    bad = [r for r in range(world) if table[r, 1] < 0]
    if bad:
        raise ValueError(
            f"gather_shards: ranks {bad} passed a shard with 0 or more than {_MAX_DIMS} dims; every shard must be "
            "(n_local, ...) with the items along dim 0"
        )
    sizes = table[:, 0].tolist()
    if sum(sizes) != n_total:
        raise ValueError(
            f"gather_shards: shard lengths {sizes} (by rank) add up to {sum(sizes)}, not n_total={n_total}"
        )
    if not bool((table[:, 1:] == table[0, 1:]).all()):
        shapes = [tuple(int(d) for d in row[3 : 2 + int(row[1])]) for row in table]
        dtypes = [_DTYPES[int(c)] if int(c) < len(_DTYPES) else "other" for c in table[:, 2]]
        raise ValueError(
            f"gather_shards: shards differ across ranks: trailing shapes {shapes}, dtypes {dtypes} (by rank)"
        )
    if table[0, 2] == len(_DTYPES):
        raise ValueError(f"gather_shards: unsupported dtype {local.dtype}; supported: {list(_DTYPES)}")

    max_len = max(sizes)
    send_dtype = _comm_dtype(local.dtype, device)
    padded = torch.zeros((max_len, *local.shape[1:]), dtype=send_dtype, device=device)
    if local.shape[0] > 0:
        padded[: local.shape[0]] = local.detach().to(device=device, dtype=send_dtype)
    buffers = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(buffers, padded, group=group)
    out = torch.cat([buf[:size] for buf, size in zip(buffers, sizes)])
    return out.to(device=local.device, dtype=local.dtype)


def broadcast_tensor(t: Tensor, src: int = 0, *, group: dist.ProcessGroup | None = None) -> Tensor:
    """Rank ``src``'s tensor on every rank (a new tensor on ``t``'s device); ``t`` itself without distributed.

    A collective: every rank must call it. Only ``src``'s shape and dtype matter: the other ranks may pass any
    tensor (e.g. a placeholder ``torch.empty(0)``); its device decides where the result lives.

    Args:
        t: the tensor to send (on ``src``) or a placeholder (elsewhere).
        src: global rank of the sender.
        group: process group (default: the world).
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"`t` must be a tensor, got {type(t).__name__}")
    if not is_distributed(group):
        return t
    device = _comm_device(group)
    is_src = dist.get_rank() == src
    if is_src:
        if t.dim() > _MAX_DIMS or t.dtype not in _DTYPES:
            bad = torch.tensor([-1] * (_MAX_DIMS + 2), dtype=torch.int64, device=device)
            dist.broadcast(bad, src=src, group=group)
            raise ValueError(f"broadcast_tensor: unsupported tensor of shape {tuple(t.shape)} and dtype {t.dtype}")
        header = torch.tensor(
            [t.dim(), _DTYPES.index(t.dtype), *t.shape, *([-1] * (_MAX_DIMS - t.dim()))],
            dtype=torch.int64,
            device=device,
        )
    else:
        header = torch.empty(_MAX_DIMS + 2, dtype=torch.int64, device=device)
    dist.broadcast(header, src=src, group=group)
    info = header.cpu().tolist()
    if info[0] < 0:
        raise ValueError(f"broadcast_tensor: rank {src} passed an unsupported tensor")
    ndim, dtype = info[0], _DTYPES[info[1]]
    shape = info[2 : 2 + ndim]
    send_dtype = _comm_dtype(dtype, device)
    buf = (
        t.detach().to(device=device, dtype=send_dtype).clone()
        if is_src
        else torch.empty(shape, dtype=send_dtype, device=device)
    )
    dist.broadcast(buf, src=src, group=group)
    return buf.to(device=t.device, dtype=dtype)


@contextmanager
def rank_zero_buffers(module: torch.nn.Module, src: int = 0, *, group: dist.ProcessGroup | None = None
                      ) -> Iterator[None]:
    """Inside the block, ``module``'s buffers hold rank ``src``'s values on every rank; each rank's own come back
    on exit (also after an exception).

    DDP broadcasts rank 0's buffers (e.g. BatchNorm running statistics) at the start of each training forward, then
    every rank updates its own copy on its own batch: after the last step of an epoch the ranks' buffers differ, so
    shards explained in eval mode would each see a slightly different model. A collective on entry (all ranks must
    enter, with the same module structure); nothing on exit. A no-op without distributed or with one rank.
    """
    if not is_distributed(group) or dist.get_world_size(group) == 1:
        yield
        return
    buffers = list(module.buffers())
    saved = [b.detach().clone() for b in buffers]
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for b in buffers:
        by_dtype.setdefault(b.dtype, []).append(b)
    try:
        with torch.no_grad():
            for dtype in sorted(by_dtype, key=str):  # the same order on every rank
                group_buffers = by_dtype[dtype]
                flat = broadcast_tensor(torch.cat([b.detach().reshape(-1) for b in group_buffers]), src, group=group)
                offset = 0
                for b in group_buffers:
                    b.copy_(flat[offset : offset + b.numel()].view_as(b))
                    offset += b.numel()
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)
