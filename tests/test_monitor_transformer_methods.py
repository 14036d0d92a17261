"""The transformer-native methods through ExplanationMonitor: a real Trainer run on a tiny ViT logs their overlays
and stability; on a CNN the setup dry run leaves them out with the cause and training goes on."""

from __future__ import annotations

import math
import warnings

import pytorch_lightning as pl
import torch
from lit_models import TinyCNN, TinyDataModule, trainer_kwargs
from tb_events import read_events
from torch import nn
from torchvision.models import VisionTransformer

from lightning_xai import ExplanationMonitor

METHODS = ("attention_rollout", "transformer_attribution")


class TinyViT(pl.LightningModule):
    """A torchvision ViT on the 16x16 images of ``TinyDataModule`` (3 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.vit = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16,
                                     mlp_dim=32, num_classes=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def test_vit_in_a_real_trainer(tmp_path):
    monitor = ExplanationMonitor(methods=("saliency", *METHODS), num_probes=3, metrics=(),
                                 method_options={"attention_rollout": {"head_fusion": "max"}})
    pl.seed_everything(3, workers=True)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyViT(), datamodule=TinyDataModule())
    left_out = [str(w.message) for w in caught if "left out" in str(w.message)]
    assert not left_out, left_out
    assert monitor.config.methods == ("saliency", *METHODS)
    events = read_events(trainer.logger.log_dir)
    for m in METHODS:
        assert len(events["images"][f"xai/{m}/overlay"]) == 2, m
        values = events["scalars"][f"xai/{m}/stability"]
        assert values and all(math.isfinite(v) for _, v in values), m


def test_left_out_on_a_cnn_with_the_cause(tmp_path):
    monitor = ExplanationMonitor(methods=("saliency", "attention_rollout"), num_probes=3, metrics=())
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyCNN(), datamodule=TinyDataModule())
    said = "\n".join(str(w.message) for w in caught)
    assert "explaining with saliency only" in said
    assert "attention_rollout: NotApplicable: attention_rollout applies only to class-token vision transformers" in said
    assert monitor.config.methods == ("saliency",)
    assert "xai/saliency/overlay" in read_events(trainer.logger.log_dir)["images"]
