"""Real 2-process gloo DDP (ddp_spawn): probe sets that differ across ranks (failure path 1) and monitor writes that
fail on rank 0 from the first step (failure path 3), in one run with on_error="warn": training finishes on both ranks,
both explain rank 0's probes, nothing hangs."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from flaky_loggers import FlakyPLTensorBoardLogger
from lit_models import TinyCNN, make_images, trainer_kwargs
from pytorch_lightning.callbacks import Callback
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lightning_xai import ExplanationMonitor

TIMEOUT = 150


class RankSplitValidation(IterableDataset):
    """Validation data split by rank, unevenly: rank 0 reads samples 0-5, rank 1 samples 6-9."""

    def __iter__(self):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        images, labels = make_images(10, seed=2)
        for i in (range(0, 6) if rank == 0 else range(6, 10)):
            yield images[i], labels[i]


class SplitDataModule(pl.LightningDataModule):
    def train_dataloader(self):
        return DataLoader(TensorDataset(*make_images(32, seed=1)), batch_size=8)

    def val_dataloader(self):
        return DataLoader(RankSplitValidation(), batch_size=8)  # one batch on each rank


class Witness(Callback):
    """First in the callback list: records this rank's warnings from setup on, and at the end what the monitor held."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def setup(self, trainer, pl_module, stage):
        self._catch = warnings.catch_warnings(record=True)
        self._caught = self._catch.__enter__()
        warnings.simplefilter("always")

    def on_train_end(self, trainer, pl_module):
        monitor = next(cb for cb in trainer.callbacks if isinstance(cb, ExplanationMonitor))
        record = {"rank": trainer.global_rank, "global_step": trainer.global_step,
                  "probe_ids": monitor.probe_set.ids.tolist(), "fingerprint": monitor.probe_set.fingerprint,
                  "history": [h["epoch"] for h in monitor.history],
                  "stability": float(trainer.callback_metrics["xai/grad_cam/stability"]),
                  "warnings": [str(w.message) for w in self._caught if "ExplanationMonitor" in str(w.message)]}
        self._catch.__exit__(None, None, None)
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.timeout(TIMEOUT) if hasattr(pytest.mark, "timeout") else (lambda f: f)
def test_rank_split_probes_and_failing_writes_under_ddp(tmp_path):
    monitor = ExplanationMonitor(num_probes=6, methods=("grad_cam", "saliency"), metrics=("sanity",))
    logger = FlakyPLTensorBoardLogger(str(tmp_path), name="tb", broken=True)  # every monitor write fails on rank 0
    trainer = pl.Trainer(callbacks=[Witness(str(tmp_path)), monitor],
                         **trainer_kwargs(tmp_path, devices=2, strategy="ddp_spawn", max_epochs=2,
                                          limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                                          deterministic=False, logger=logger))
    trainer.fit(TinyCNN(), datamodule=SplitDataModule())
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["global_step"] == r1["global_step"] == 4  # both ranks trained to the end
    # path 1: rank 1 had other (and fewer) probes; both explained rank 0's six, and rank 0 said so
    assert r0["fingerprint"] == r1["fingerprint"] and r0["probe_ids"] == r1["probe_ids"] and len(r0["probe_ids"]) == 6
    assert r0["history"] == r1["history"] == [0, 1] and r0["stability"] == r1["stability"]
    assert any("the probe set differs across ranks (rank(s) [1]" in w for w in r0["warnings"]), r0["warnings"]
    # path 3: the writes of every epoch (and of the end-of-fit sanity check) failed on rank 0, none stopped it; the
    # cause (a full disk) was warned once (the repeats are summed up at the end of fit, after this witness)
    assert any("failed at epoch 0 (writing) on rank 0: SinkError" in w and "No space left" in w
               for w in r0["warnings"]), r0["warnings"]
    assert sum("No space left" in w for w in r0["warnings"]) == 1, r0["warnings"]  # not one per epoch
    assert not r1["warnings"]  # rank-zero warnings only


def test_rank_split_validation_really_differs():
    """The data above gives the ranks different probes (else the DDP test would not test anything)."""
    from lightning_xai.probes import select_probes

    images, labels = make_images(10, seed=2)
    rank0 = select_probes((images[:6], labels[:6]), num_probes=6)
    rank1 = select_probes((images[6:], labels[6:]), num_probes=6)
    assert len(rank0) == 6 and len(rank1) == 4 and rank0.fingerprint != rank1.fingerprint
    assert os.cpu_count()  # noqa: S101 - keeps os imported for the workers' environment
