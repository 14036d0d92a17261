"""A segmentation model under DDP (2 processes, gloo): uneven probe shards (3 probes on 2 ranks), each rank explains
its probes' class regions (the region rule has no collective), the round is gathered and logged once by rank 0."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from lit_models import trainer_kwargs
from seg_models import SegModule, TinyUNet, loaders
from tb_events import read_events

from lightning_xai import ExplanationMonitor


def run(tmp_path, **overrides):
    pl.seed_everything(5, workers=True)
    monitor = ExplanationMonitor(num_probes=3, methods=("grad_cam", "saliency"), max_overhead=None,
                                 drift={"pool_size": 0})
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=2,
                                                               limit_val_batches=1, num_sanity_val_steps=0,
                                                               **overrides))
    train, val = loaders()
    trainer.fit(SegModule(TinyUNet()), train, val)
    return read_events(tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_spawn_segmentation_round_is_gathered_and_logged_once(tmp_path):
    ddp = run(tmp_path / "ddp", devices=2, strategy="ddp_spawn", deterministic=False)
    single = run(tmp_path / "one")
    for events in (ddp, single):
        assert len(events["images"]["xai/grad_cam/overlay"]) == 1
        assert "xai/saliency/pointing_game" in events["scalars"]
    first = {k: v[0][1] for k, v in ddp["scalars"].items() if k.startswith("xai/") and k.endswith("relevance_mass")}
    assert first and all(torch.isfinite(torch.tensor(v)) for v in first.values())
