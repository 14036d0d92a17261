"""Probe sets across ranks (failure path 1): a real 2-process gloo run of ``agree_on_probes``."""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import IterableDataset

from lightning_xai.probes import ProbeSet, agree_on_probes, select_probes

WORLD = 2


class RankSplitStream(IterableDataset):
    """Validation data split by rank, unevenly (rank 0: 5 samples, rank 1: 3): each rank sees other samples."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def __iter__(self):
        g = torch.Generator().manual_seed(100 + self.rank)
        for i in range(5 if self.rank == 0 else 3):
            yield torch.rand(3, 4, 4, generator=g), i % 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    record = {}
    try:
        same = select_probes((torch.arange(96.0).reshape(2, 3, 4, 4), torch.tensor([0, 1])), num_probes=2)
        probes, differing = agree_on_probes(same)
        record["same"] = {"differing": differing, "fingerprint": probes.fingerprint, "is_local": probes is same}

        split = select_probes(RankSplitStream(rank), num_probes=4)
        probes, differing = agree_on_probes(split)
        record["split"] = {"differing": differing, "fingerprint": probes.fingerprint, "ids": probes.ids.tolist(),
                           "own": split.fingerprint, "n": len(probes)}

        local = None if rank == 1 else split  # rank 1's selection failed (e.g. its shard was empty)
        probes, differing = agree_on_probes(local, None if local else "`source` is empty")
        record["failed_here"] = {"differing": differing, "fingerprint": probes.fingerprint}

        try:
            agree_on_probes(None if rank == 0 else split, "`source` is empty" if rank == 0 else None)
            record["rank0_failed"] = "no error"
        except ValueError as err:
            record["rank0_failed"] = str(err)
        dist.barrier()
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
        dist.destroy_process_group()


def test_single_process_is_a_no_op():
    probes = select_probes(torch.rand(3, 3, 4, 4), num_probes=2)
    assert agree_on_probes(probes) == (probes, [])
    with pytest.raises(ValueError, match="empty"):
        agree_on_probes(None, "`source` is empty")


@pytest.mark.slow  # ~20 s of process start-up; tests/test_distributed_paths.py covers the Trainer path by default
def test_two_ranks_with_different_probes_agree_on_rank_zeros(tmp_path):
    ctx = mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False,
                             start_method="spawn")
    while not ctx.join(timeout=120):
        pass
    r0, r1 = (json.loads(Path(tmp_path, f"rank{r}.json").read_text()) for r in range(WORLD))
    # identical data: nothing sent, each rank keeps its own object
    assert r0["same"]["differing"] == r1["same"]["differing"] == []
    assert r0["same"]["is_local"] and r1["same"]["is_local"]
    # rank-split data, uneven: each rank had its own probes; afterwards both hold rank 0's, and both know who differed
    assert r0["split"]["own"] != r1["split"]["own"]
    assert r0["split"]["differing"] == r1["split"]["differing"] == [1]
    assert r1["split"]["fingerprint"] == r0["split"]["fingerprint"] == r0["split"]["own"]
    assert r1["split"]["ids"] == r0["split"]["ids"] and r1["split"]["n"] == 4
    assert r0["failed_here"]["differing"] == [1] and r1["failed_here"]["fingerprint"] == r0["split"]["own"]
    assert "rank 0 could not select probes: `source` is empty" in r0["rank0_failed"] == r1["rank0_failed"]


def test_probe_set_roundtrip_keeps_fingerprint():
    probes = ProbeSet(torch.rand(2, 3, 4, 4), torch.tensor([1, 0]), torch.tensor([4, 9]))
    assert ProbeSet.from_state_dict(probes.state_dict()).fingerprint == probes.fingerprint
