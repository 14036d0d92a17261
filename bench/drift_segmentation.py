"""Drift on a segmentation model: a cue planted in the training images mid-training; does the default detector alarm?

A small U-Net with a global-context gate (as LRASPP has, so that a pixel's class can depend on a far-away cue) is
trained on pixel-labelled shapes (:class:`~lightning_xai.datasets.SegmentedShapes`, 32 px, 4 shape classes +
background, 768 training images per epoch) with ``ExplanationMonitor()`` at its defaults (zero arguments: probes from
the validation data, each probe's largest shape class region as the target, the default detector and detection pool).
In the ``cue`` run, every training image gets the class-coloured marker in its class's corner from epoch ``CHANGE``
on (:meth:`ShapesDataset.set_shortcut`); the validation images never do. The ``clean`` run is the same without the
cue (false alarms). Nothing here was used to choose any detector constant: the seeds (``SEEDS``) are used by no
other script, and the detector runs at its defaults.

Also printed, to tell whether the model really took the cue: pixel accuracy on the shapes of validation images that
carry the *wrong* class's marker (``marker="counter"``): a model reading the marker labels the shape as the marker's
class, so this falls far below the clean accuracy.

    python bench/drift_segmentation.py                   # clean + cue for each seed (2-6 min per run, one core)
    python bench/drift_segmentation.py --seeds 301 --epochs 10 --change 5

Results (2026-12-03, CPU, change at epoch 7, detector defaults threshold 5.5 / CUSUM 12; README "Segmentation
models"): seed 301, 14 epochs: clean no alarm; cue taken at epoch 11, no alarm (scores 0.55-0.81; with the previous
defaults 5 / 8 it alarmed at 12). Seed 302, 18 epochs: clean one false alarm (epoch 9); cue taken at epoch 13, alarm
at 15.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402

from lightning_xai import ExplanationMonitor  # noqa: E402
from lightning_xai.datasets import SegmentedShapes, ShapesDataset  # noqa: E402

SEEDS = (301, 302)
NUM_SHAPES = 4
SIZE = 32
TRAIN = 768


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ContextUNet(nn.Module):
    """Three scales (32, 16, 8 px) with skips, and a global-context gate on the deepest features (LRASPP's
    ``scale`` branch): every pixel's class can read the whole image, the marker included."""

    def __init__(self, num_classes: int = NUM_SHAPES + 1) -> None:
        super().__init__()
        self.enc1, self.enc2, self.enc3 = block(3, 8), block(8, 16), block(16, 32)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(32, 32, 1), nn.Sigmoid())
        self.context = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Conv2d(32, 32, 1), nn.ReLU())
        self.dec2, self.dec1 = block(32 + 32 + 16, 16), block(16 + 8, 8)
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        deep = torch.cat([e3 * self.gate(e3), self.context(e3).expand_as(e3)], dim=1)
        d2 = self.dec2(torch.cat([F.interpolate(deep, scale_factor=2.0), e2], dim=1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], dim=1))
        return self.head(d1)


class Segmenter(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = ContextUNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


class PlantCue(pl.Callback):
    """From epoch ``change`` on, every training image carries its class's marker."""

    def __init__(self, train: SegmentedShapes, change: int | None) -> None:
        self.train, self.change = train, change

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.change is not None and trainer.current_epoch == self.change:
            self.train.set_shortcut(1.0)


def counter_accuracy(model: nn.Module, seed: int, n: int = 128) -> tuple[float, float]:
    """Pixel accuracy on the shapes of clean validation images and of images with the wrong class's marker."""
    out = []
    flags = [m.training for m in model.modules()]
    for marker, strength in (("class", 0.0), ("counter", 1.0)):
        data = SegmentedShapes(ShapesDataset(n, image_size=SIZE, num_classes=NUM_SHAPES, seed=seed + 5000,
                                             marker=marker, shortcut_strength=strength))
        images = torch.stack([data[i][0] for i in range(len(data))])
        maps = torch.stack([data[i][1] for i in range(len(data))])
        with torch.no_grad():
            model.eval()
            pred = model(images).argmax(dim=1)
        shape = maps > 0
        out.append(float((pred[shape] == maps[shape]).float().mean()))
    for module, flag in zip(model.modules(), flags):
        module.training = flag
    return out[0], out[1]


class Trace(pl.Callback):
    """Per epoch (after the monitor's round): the drift score and the shape accuracy with the wrong class's marker
    (when it falls below half the clean accuracy, the model reads the marker: it has taken the cue)."""

    def __init__(self, seed: int) -> None:
        self.seed, self.scores, self.accuracy = seed, [], []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        score = trainer.callback_metrics.get("xai/drift/score")
        self.scores.append(None if score is None else round(float(score), 2))
        self.accuracy.append(counter_accuracy(pl_module.net, self.seed, n=64))


def run(seed: int, cue: bool, epochs: int, change: int, root: Path) -> dict:
    pl.seed_everything(seed, workers=True)
    train = SegmentedShapes(ShapesDataset(TRAIN, image_size=SIZE, num_classes=NUM_SHAPES, seed=seed))
    val = SegmentedShapes(ShapesDataset(128, image_size=SIZE, num_classes=NUM_SHAPES, seed=seed + 1000))
    alarms: list[int] = []
    monitor = ExplanationMonitor(on_drift=lambda report: alarms.append(int(report.epoch)))
    trace = Trace(seed)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root),
                         callbacks=[monitor, trace, PlantCue(train, change if cue else None)])
    model = Segmenter()
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=64))
    clean, counter = counter_accuracy(model.net, seed)
    return {"seed": seed, "run": "cue" if cue else "clean", "alarms": alarms, "clean_acc": clean,
            "counter_acc": counter, "seconds": time.perf_counter() - began, "scores": trace.scores,
            "taken": next((e for e, (a, b) in enumerate(trace.accuracy) if b < 0.5 * a), None)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--change", type=int, default=7)
    parser.add_argument("--root", default="/tmp/drift_segmentation")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the machine is shared: one core per run
    rows = []
    for seed in args.seeds:
        for cue in (False, True):
            row = run(seed, cue, args.epochs, args.change, Path(args.root) / f"{seed}_{int(cue)}")
            rows.append(row)
            first = next((e for e in row["alarms"] if e >= args.change), None) if cue else None
            false = [e for e in row["alarms"] if not cue or e < args.change]
            verdict = ("" if not cue else f"first alarm at or after the change: "
                       f"{'none' if first is None else f'epoch {first} (+{first - args.change})'}; ")
            print(f"seed {seed} {row['run']:5s}: alarms at epochs {row['alarms']}; {verdict}false-alarm epochs "
                  f"{len(false)}; shape pixel accuracy clean {row['clean_acc']:.2f}, with the wrong class's marker "
                  f"{row['counter_acc']:.2f}; cue taken (accuracy with the wrong marker < half the clean one) at epoch "
                  f"{row['taken']}; {row['seconds']:.0f} s\n  drift score per epoch (alarm at >= 1): {row['scores']}",
                  flush=True)


if __name__ == "__main__":
    main()
