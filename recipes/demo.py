"""The demo: train a small CNN on generated shapes, watch its explanations, and catch a planted shortcut.

For the first epochs the training images are clean: the only evidence for a class is the shape. From
``--shortcut-epoch`` on, every training image also carries a small coloured marker in a corner that encodes its
class -- a shortcut the model learns quickly. Accuracy stays high, so a loss curve shows nothing; the
``ExplanationMonitor`` sees the evidence move from the shape to the corner and raises a drift alarm.

The probes carry the class marker from the start (it is simply ignored by a model that never learnt it), and their
ground-truth shape masks let the demo report how much of each map falls on the shape and how much on the marker.

    python recipes/demo.py                 # 46 s on 2 idle CPU cores (14 min when shared at load 14-18)
    python recipes/demo.py --fast          # 20-50 s: what the tests run
    tensorboard --logdir runs/demo --samples_per_plugin images=1000
    python -m lightning_xai.report runs/demo   # rebuild the HTML report of the newest run (next to the monitor's)

The last printed line is the path of the run's HTML report, ``xai_report.html``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader

# `python recipes/demo.py` puts recipes/ on sys.path; the explicit insert also covers imports by path (tests, cli.py)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from console import around_monitor, print_table_legend, quiet_third_party  # noqa: E402

from lightning_xai import ExplanationMonitor  # noqa: E402
from lightning_xai.attribution import METHODS  # noqa: E402
from lightning_xai.datasets import SHAPES_MEAN, SHAPES_STD, ShapesDataset  # noqa: E402
from lightning_xai.metrics import relevance_mass  # noqa: E402
from lightning_xai.report import REPORT_FILE  # noqa: E402

#: What the network learned, per epoch (lightning_xai.views); attention graphs once at the end.
VIEWS = ("activations", "max_min", "projector", "activation_max", "dissection", "attention_graphs")
SHORT = {"grad_cam": "gc", "saliency": "sal", "integrated_gradients": "ig"}


class ShapesCNN(pl.LightningModule):
    """Three conv blocks with BatchNorm (two pooled: Grad-CAM sees an 8x8 grid at 32 px), global pooling, linear."""

    def __init__(self, num_classes: int = 4, width: int = 16, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        w = width

        def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                       nn.ReLU(inplace=True)]
            return layers + ([nn.MaxPool2d(2)] if pool else [])

        self.features = nn.Sequential(*block(3, w, True), *block(w, 2 * w, True), *block(2 * w, 4 * w, False))
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                                        nn.Linear(4 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def training_step(self, batch, batch_idx):
        images, labels, _ = batch
        loss = nn.functional.cross_entropy(self(images), labels)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels, _ = batch
        logits = self(images)
        self.log("val_loss", nn.functional.cross_entropy(logits, labels))
        self.log("val_acc", (logits.argmax(1) == labels).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class ShapesData(pl.LightningDataModule):
    """Clean training shapes (the shortcut is planted later), clean validation shapes, marked probes."""

    def __init__(self, image_size: int = 32, num_classes: int = 4, train_size: int = 2048, val_size: int = 512,
                 batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_set = ShapesDataset(train_size, image_size=image_size, num_classes=num_classes, seed=seed + 1)
        self.val_set = ShapesDataset(val_size, image_size=image_size, num_classes=num_classes, seed=seed + 2,
                                     marker="none")
        # Probes: a fixed held-out set with the class marker, so the maps can move onto it once it means something.
        self.probe_set = ShapesDataset(256, image_size=image_size, num_classes=num_classes, seed=seed + 3,
                                       shortcut_strength=1.0, marker="class")

    def train_dataloader(self):
        # num_workers=0: PlantShortcut changes the dataset in place, which worker copies would not see
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, num_workers=0)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=256, num_workers=0)


class PlantShortcut(Callback):
    """From ``epoch`` on, every training image carries its class marker."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.datamodule.train_set.set_shortcut(1.0, marker="class")


class EvidenceReport(Callback):
    """Per epoch: validation accuracy and how much of each map falls on the shape and on the marker."""

    def __init__(self, monitor: ExplanationMonitor, probe_data: ShapesDataset) -> None:
        self.monitor = monitor
        self.probe_data = probe_data
        self.rows: dict[int, dict[str, float]] = {}

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking and "val_acc" in trainer.callback_metrics:
            self.rows.setdefault(trainer.current_epoch, {})["val_acc"] = float(trainer.callback_metrics["val_acc"])

    def on_validation_end(self, trainer, pl_module):
        latest = self.monitor.latest
        if trainer.sanity_checking or latest is None or latest["epoch"] != trainer.current_epoch:
            return
        ids = self.monitor.probe_set.ids.tolist()
        marker = torch.stack([self.probe_data.marker_mask(i) for i in ids])
        shape = self.monitor.probe_set.masks
        row = self.rows.setdefault(trainer.current_epoch, {})
        for m, maps in latest["maps"].items():
            row[f"shape_{m}"] = float(relevance_mass(maps, shape).mean())
            row[f"marker_{m}"] = float(relevance_mass(maps, marker).mean())


def print_table(monitor: ExplanationMonitor, report: EvidenceReport, shortcut_epoch: int) -> list[dict]:
    header = (f"{'epoch':>5} {'phase':>8} {'val_acc':>7} | {'stability gc/sal/ig':^20} | {'flagged gc/sal/ig':^17} | "
              f"{'alarm':^5} | {'on shape gc/sal/ig':^20} | {'on marker gc/sal/ig':^20}")
    print("\n" + header + "\n" + "-" * len(header))
    rows = []
    for record in monitor.history:
        e = record["epoch"]
        extra = report.rows.get(e, {})
        stab = [_mean(record["stability"][m]) for m in METHODS]
        flags = [sum(record["flags"][m]) for m in METHODS]
        shape = [extra.get(f"shape_{m}", float("nan")) for m in METHODS]
        marker = [extra.get(f"marker_{m}", float("nan")) for m in METHODS]
        phase = "shortcut" if e >= shortcut_epoch else "clean"
        alarm = "ALARM" if record.get("alarm") else "."
        print(f"{e:>5} {phase:>8} {extra.get('val_acc', float('nan')):>7.3f} | "
              f"{' '.join(f'{v:6.2f}' for v in stab)} | {' '.join(f'{v:5d}' for v in flags)} | {alarm:^5} | "
              f"{' '.join(f'{v:6.2f}' for v in shape)} | {' '.join(f'{v:6.2f}' for v in marker)}")
        rows.append({"epoch": e, "phase": phase, "stability": stab, "flags": flags, "alarm": bool(record.get("alarm")),
                     "shape": shape, "marker": marker, "val_acc": extra.get("val_acc")})
    return rows


def print_views_table(monitor: ExplanationMonitor, shortcut_epoch: int) -> list[dict]:
    """Per epoch: units of the Grad-CAM layer that detect the marker / any shape class (network dissection), and
    how well the penultimate features separate the classes on the (marked) pool."""
    header = (f"{'epoch':>5} {'phase':>8} | {'marker units':>12} {'max IoU':>7} | {'shape units':>11} | "
              f"{'centroid acc':>12} {'silhouette':>10} | {'max/min change':>14}")
    print("\nWhat the network learned (views on the Grad-CAM layer, pool of marked probes)\n" + header + "\n"
          + "-" * len(header))
    rows = []
    for record in monitor.views_history:
        e, s = record["epoch"], record["scalars"]
        shapes = sum(v for k, v in s.items() if k.startswith("xai/dissection/units/") and not k.endswith("/marker"))
        row = {"epoch": e, "phase": "shortcut" if e >= shortcut_epoch else "clean",
               "marker_units": s.get("xai/dissection/units/marker", float("nan")),
               "marker_iou": s.get("xai/dissection/max_iou/marker", float("nan")), "shape_units": shapes,
               "centroid_accuracy": s.get("xai/projector/centroid_accuracy", float("nan")),
               "silhouette": s.get("xai/projector/silhouette", float("nan")),
               "max_min_change": s.get("xai/max_min/change", float("nan"))}
        print(f"{e:>5} {row['phase']:>8} | {row['marker_units']:>12.0f} {row['marker_iou']:>7.3f} | "
              f"{shapes:>11.0f} | {row['centroid_accuracy']:>12.2f} {row['silhouette']:>10.2f} | "
              f"{row['max_min_change']:>14.2f}")
        rows.append(row)
    return rows


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return sum(finite) / len(finite) if finite else float("nan")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--shortcut-epoch", type=int, default=6, help="first epoch trained with the marker")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--num-probes", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/demo",
                        help="log root: each run gets its own directory, <out>/full/version_N (or fast/version_N)")
    parser.add_argument("--fast", action="store_true", help="a tiny run for smoke tests")
    args = parser.parse_args(argv)
    if args.fast:
        args.epochs, args.shortcut_epoch, args.image_size, args.train_size, args.num_probes = 3, 2, 24, 96, 4
    quiet_third_party()

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    pl.seed_everything(args.seed, workers=True)
    data = ShapesData(image_size=args.image_size, train_size=args.train_size, val_size=128 if args.fast else 512,
                      seed=args.seed)
    model = ShapesCNN(num_classes=data.train_set.num_classes)
    monitor = ExplanationMonitor(
        probes=data.probe_set,
        num_probes=args.num_probes,
        display_options={"mean": SHAPES_MEAN, "std": SHAPES_STD},
        drift_options={"warmup_epochs": 1 if args.fast else 3},
        # defaults otherwise
        method_options={"integrated_gradients": {"n_steps": 4, "tolerance": None}} if args.fast else None,
        views=VIEWS,
        view_options={"activation_max": {"steps": 4}, "pool": {"size": 16}} if args.fast else None,
        # the demo shows every method and view at every epoch; the default ("auto") runs the cheap methods every
        # epoch and Integrated Gradients and the views when the run has paid for them (within 5% of training time)
        max_overhead=None,
    )
    report = EvidenceReport(monitor, data.probe_set)
    # A new version directory per run: re-running never mixes two runs' steps in one TensorBoard run.
    logger = pl.loggers.TensorBoardLogger(args.out, name="fast" if args.fast else "full")
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=logger,
        callbacks=[*around_monitor(monitor), PlantShortcut(args.shortcut_epoch), report],
        enable_checkpointing=False,
        enable_progress_bar=True,
        enable_model_summary=False,
        log_every_n_steps=1 if args.fast else 10,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    elapsed = time.perf_counter() - start
    rows = print_table(monitor, report, args.shortcut_epoch)
    print_table_legend()
    print_views_table(monitor, args.shortcut_epoch)
    alarms = [r["epoch"] for r in rows if r["alarm"]]
    print(f"\nTrained {args.epochs} epochs in {elapsed:.0f} s; shortcut planted at epoch {args.shortcut_epoch}; "
          + (f"drift alarm at epoch {', '.join(map(str, alarms))}." if alarms else "no drift alarm."))
    print(f"TensorBoard logs: {os.path.abspath(logger.log_dir)}")
    print(f"Open them with:  tensorboard --logdir {args.out} --samples_per_plugin images=1000")
    report_file = os.path.join(os.path.abspath(logger.log_dir), REPORT_FILE)
    if os.path.isfile(report_file):
        print(f"Report: {report_file}")  # the last line: open it in a browser
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
