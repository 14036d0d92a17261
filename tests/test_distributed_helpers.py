"""Shard / gather helpers: pure shard arithmetic, single-process no-ops, and a real 2-process gloo run."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_xai.distributed import (
    broadcast_tensor,
    gather_shards,
    is_distributed,
    shard_bounds,
)

WORLD = 2
SIZES = (5, 7, 1, 2, 0)


# ---------------------------------------------------------------------------------------------------- pure functions
@pytest.mark.parametrize("n", [0, 1, 2, 5, 7, 16, 33])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_shard_bounds_partition(n, world):
    bounds = [shard_bounds(n, world, r) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    for (_, stop), (start, _) in zip(bounds, bounds[1:]):
        assert stop == start  # contiguous, in rank order
    lengths = [b - a for a, b in bounds]
    assert max(lengths) - min(lengths) <= 1
    assert lengths == sorted(lengths, reverse=True)  # the first n % world ranks get the extra item
    assert sum(lengths) == n


def test_shard_bounds_examples():
    assert [shard_bounds(5, 2, r) for r in range(2)] == [(0, 3), (3, 5)]
    assert [shard_bounds(7, 2, r) for r in range(2)] == [(0, 4), (4, 7)]
    assert [shard_bounds(1, 2, r) for r in range(2)] == [(0, 1), (1, 1)]
    assert [shard_bounds(2, 4, r) for r in range(4)] == [(0, 1), (1, 2), (2, 2), (2, 2)]


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((-1, 2, 0), ValueError, "`n`"),
        ((5, 0, 0), ValueError, "`world_size`"),
        ((5, 2, 2), ValueError, "`rank`"),
        ((5, 2, -1), ValueError, "`rank`"),
        ((5.0, 2, 0), TypeError, "`n`"),
        ((5, True, 0), TypeError, "`world_size`"),
    ],
)
def test_shard_bounds_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        shard_bounds(*args)


def test_single_process_noops():
    assert not is_distributed()
    x = torch.randn(5, 3)
    assert gather_shards(x, 5) is x
    assert broadcast_tensor(x) is x
    with pytest.raises(ValueError, match="n_total"):
        gather_shards(x, 4)
    with pytest.raises(ValueError, match="n_total"):
        gather_shards(x, -1)
    with pytest.raises(TypeError, match="`local`"):
        gather_shards([1, 2], 2)


# ---------------------------------------------------------------------------------------------------- 2 processes
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _full_float(n: int) -> torch.Tensor:
    return torch.arange(n * 6, dtype=torch.float32).view(n, 2, 3) * 0.37 - 1.0


def _full_bool(n: int) -> torch.Tensor:
    return torch.arange(n) % 3 == 0


def _full_half(n: int) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.float32) / 8).to(torch.float16)


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Runs in a spawned process. Records everything in a file; the parent asserts on it."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    results: dict = {}
    try:
        for n in SIZES:
            start, stop = shard_bounds(n, world, rank)
            results[f"float_{n}"] = gather_shards(_full_float(n)[start:stop], n)
            results[f"bool_{n}"] = gather_shards(_full_bool(n)[start:stop], n)
            results[f"half_{n}"] = gather_shards(_full_half(n)[start:stop], n)
            results[f"ids_{n}"] = gather_shards(torch.arange(n)[start:stop], n)

        sent = torch.tensor([[1.5, -2.0, 3.25]]) if rank == 0 else torch.empty(0)
        results["bcast_float"] = broadcast_tensor(sent, src=0)
        sent_bool = torch.tensor([True, False, True]) if rank == 1 else torch.zeros(7, dtype=torch.bool)
        results["bcast_bool"] = broadcast_tensor(sent_bool, src=1)

        # Inconsistent arguments must raise on every rank (not hang one of them).
        for name, local, n_total in (
            ("err_sizes", torch.ones(2 - rank, 3), 4),  # shards of 2 and 1 do not add up to 4
            ("err_shape", torch.ones(1, 3 + rank), 2),  # trailing shapes differ
            ("err_dtype", torch.ones(1, 3, dtype=torch.float32 if rank == 0 else torch.float64), 2),
            ("err_scalar", torch.tensor(1.0) if rank == 0 else torch.ones(1), 2),
        ):
            try:
                gather_shards(local, n_total)
                results[name] = "no error"
            except ValueError as err:
                results[name] = f"ValueError: {err}"
        # The group still works after those errors.
        results["gather_after_errors"] = gather_shards(torch.arange(3)[slice(*shard_bounds(3, world, rank))], 3)
    except Exception as err:  # recorded, and re-raised so that spawn fails too
        results["worker_error"] = repr(err)
        raise
    finally:
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def gloo_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(WORLD, _free_port(), str(out_dir)), nprocs=WORLD, join=True)
    results = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r, res in enumerate(results):
        assert "worker_error" not in res, f"rank {r}: {res['worker_error']}"
    return results


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize(
    ("kind", "make"), [("float", _full_float), ("bool", _full_bool), ("half", _full_half), ("ids", torch.arange)]
)
def test_gloo_gather_uneven(gloo_results, n, kind, make):
    expected = make(n)
    for rank, res in enumerate(gloo_results):
        got = res[f"{kind}_{n}"]
        assert got.dtype == expected.dtype, (rank, got.dtype)
        assert got.shape == expected.shape, (rank, got.shape)
        assert torch.equal(got, expected), (rank, got, expected)


@pytest.mark.timeout(120)
def test_gloo_group_works_after_errors(gloo_results):
    for res in gloo_results:
        assert torch.equal(res["gather_after_errors"], torch.arange(3))


@pytest.mark.timeout(120)
def test_gloo_broadcast(gloo_results):
    for res in gloo_results:
        assert torch.equal(res["bcast_float"], torch.tensor([[1.5, -2.0, 3.25]]))
        assert torch.equal(res["bcast_bool"], torch.tensor([True, False, True]))


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("err_sizes", "add up to 3, not n_total=4"),
        ("err_shape", "differ"),
        ("err_dtype", "differ"),
        ("err_scalar", "dims"),
    ],
)
def test_gloo_inconsistent_shards_raise_on_every_rank(gloo_results, name, match):
    for rank, res in enumerate(gloo_results):
        assert res[name].startswith("ValueError"), (rank, res[name])
        assert match in res[name], (rank, res[name])
