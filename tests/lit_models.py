"""Tiny LightningModules and data shared by the callback tests (module level so DDP workers can pickle them)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

NUM_CLASSES = 3
IMAGE_SIZE = 16


def make_images(n: int, seed: int, size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable synthetic data: class k has a bright blob in region k, plus noise (local generator, global RNG untouched)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    images = 0.3 * torch.randn(n, 3, size, size, generator=g)
    third = size // 3
    for i, k in enumerate(labels.tolist()):
        images[i, :, 2:size - 2, k * third:(k + 1) * third] += 1.5
    return images, labels


class TinyCNN(pl.LightningModule):
    """Conv-BN-ReLU-Dropout-Conv-ReLU-pool-linear: BatchNorm and Dropout make interference visible."""

    def __init__(self, lr: float = 0.05, num_classes: int = NUM_CLASSES, inplace: bool = False,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=inplace),
            nn.Dropout(dropout),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(inplace=inplace),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class TupleOutputCNN(TinyCNN):
    """Returns (logits, features): needs output_transform."""

    def forward(self, x):
        feats = self.features(x)
        return self.head(feats), feats

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0])[0], batch[1])

    def validation_step(self, batch, batch_idx):
        pass


class DictDataset(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        self.images, self.labels = make_images(n, seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixels": self.images[i], "target": self.labels[i]}


class TinyDataModule(pl.LightningDataModule):
    def __init__(self, n_train: int = 48, n_val: int = 24, batch_size: int = 8, shuffle: bool = True) -> None:
        super().__init__()
        self.n_train, self.n_val, self.batch_size, self.shuffle = n_train, n_val, batch_size, shuffle

    def setup(self, stage: str) -> None:
        self.train_set = TensorDataset(*make_images(self.n_train, seed=1))
        self.val_set = TensorDataset(*make_images(self.n_val, seed=2))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)


class TrainOnlyDataModule(pl.LightningDataModule):
    """No validation loop: the monitor explains at on_train_epoch_end and takes probes from the training data."""

    def setup(self, stage: str) -> None:
        self.train_set = TensorDataset(*make_images(48, seed=1))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=8, shuffle=True)


def trainer_kwargs(tmp_path, **overrides):
    kwargs = dict(
        default_root_dir=str(tmp_path),
        max_epochs=3,
        limit_train_batches=4,
        limit_val_batches=2,
        accelerator="cpu",
        devices=1,
        deterministic=True,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=pl.loggers.TensorBoardLogger(str(tmp_path), name="tb", version=0),
    )
    kwargs.update(overrides)
    return kwargs
