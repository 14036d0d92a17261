"""Segmentation models and data for the tests: a tiny U-Net, torchvision's FCN / LRASPP (random weights), a
LightningModule around any of them, and pixel-labelled shapes (:class:`~lightning_xai.datasets.SegmentedShapes`)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lightning_xai.datasets import SegmentedShapes, ShapesDataset

NUM_CLASSES = 3  # background + 2 shapes
VOID = 255


class TinyUNet(nn.Module):
    """Two scales, one skip connection; output ``(N, K, H, W)`` at the input's size."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True))
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc(x)
        return self.head(self.dec(torch.cat([skip, self.up(self.down(skip))], dim=1)))


def torchvision_model(name: str, num_classes: int = NUM_CLASSES) -> nn.Module:
    import torchvision.models.segmentation as seg

    torch.manual_seed(0)
    return getattr(seg, name)(weights=None, weights_backbone=None, num_classes=num_classes)


class SegModule(pl.LightningModule):
    """Trains ``net`` with pixel-wise cross-entropy (void pixels ignored); a dict output's ``"out"`` is the
    prediction (``"aux"``, when present, adds its own loss as torchvision's reference scripts do)."""

    def __init__(self, net: nn.Module, lr: float = 0.05) -> None:
        super().__init__()
        self.net, self.lr = net, lr

    def forward(self, x: torch.Tensor):
        return self.net(x)

    def _loss(self, batch) -> torch.Tensor:
        images, maps = batch
        out = self(images)
        if isinstance(out, dict):
            loss = F.cross_entropy(out["out"], maps, ignore_index=VOID)
            if "aux" in out:
                loss = loss + 0.5 * F.cross_entropy(out["aux"], maps, ignore_index=VOID)
            return loss
        return F.cross_entropy(out, maps, ignore_index=VOID)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def shapes(n: int, *, size: int = 32, seed: int = 0) -> SegmentedShapes:
    return SegmentedShapes(ShapesDataset(n, image_size=size, num_classes=NUM_CLASSES - 1, seed=seed))


def loaders(*, size: int = 32, n_train: int = 16, n_val: int = 8, batch_size: int = 4):
    return (DataLoader(shapes(n_train, size=size, seed=1), batch_size=batch_size, shuffle=True),
            DataLoader(shapes(n_val, size=size, seed=2), batch_size=batch_size))
