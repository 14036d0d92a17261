"""Explain your own images: an ImageFolder, a torchvision classifier, and the ExplanationMonitor.

Your data is a directory with one sub-directory per class (``torchvision.datasets.ImageFolder``)::

    my_images/cat/001.jpg, my_images/cat/002.png, ..., my_images/dog/001.jpg, ...

A deterministic share of each class (``--val-fraction``) is held out for validation; the monitor's probes are taken,
class-balanced, from it. The model is any torchvision classification model, by name, with random initialisation or
loaded from a local state-dict file (e.g. ImageNet weights you saved earlier with ``torch.save(m.state_dict(), p)``:
a classifier head of the wrong size is re-initialised for your classes). Nothing is downloaded.

    python recipes/folder.py --make-demo-folder data/shapes             # no data at hand? export the shapes
    python recipes/folder.py --data data/shapes --model resnet18 --epochs 5
    python recipes/folder.py --data my_images --model mobilenet_v3_small --weights mnv3.pth --image-size 160
    tensorboard --logdir runs/folder --samples_per_plugin images=100

Grad-CAM's resolution is that of the chosen layer: 1/32 of ``--image-size`` for a ResNet, so the default 224 gives
a 7x7 grid (64 px would give 2x2). On a CPU, ``--image-size 128`` needs about 3x less compute, with a 4x4 grid.
Images are normalised with the ImageNet mean/std (what torchvision weights expect); the monitor gets the same values
so the overlays show the real colours.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

# `python recipes/folder.py` puts recipes/ on sys.path; the explicit insert also covers imports by path (tests)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from console import around_monitor, print_table_legend, quiet_third_party, say  # noqa: E402

from lightning_xai import ExplanationMonitor  # noqa: E402
from lightning_xai.attribution import METHODS, available_methods  # noqa: E402
from lightning_xai.report import REPORT_FILE  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RecipeError(Exception):
    """A problem with the user's input: printed as one message, without a traceback."""


class ImageClassifier(pl.LightningModule):
    """Wraps any ``nn.Module`` classifier: cross-entropy, AdamW, ``val_acc``."""

    def __init__(self, model: nn.Module, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = nn.functional.cross_entropy(self(images), labels)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        self.log("val_loss", nn.functional.cross_entropy(logits, labels))
        self.log("val_acc", (logits.argmax(1) == labels).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=1e-4)


# ---------------------------------------------------------------------- data
def load_folder(root: str, image_size: int, val_fraction: float, seed: int) -> tuple[Subset, Subset, list[str]]:
    """Train/val subsets of ``ImageFolder(root)``: the split is per class and depends only on ``seed``."""
    path = Path(root)
    if not path.is_dir():
        raise RecipeError(f"--data {root!r}: no such directory. Expected an ImageFolder tree root/<class>/<image>; "
                          "to try the recipe without data: --make-demo-folder DIR")
    evaluate = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor(),
                                   transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    train_tf = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    try:
        train_view = torchvision.datasets.ImageFolder(root, transform=train_tf)
        val_view = torchvision.datasets.ImageFolder(root, transform=evaluate)
    except (FileNotFoundError, RuntimeError) as err:  # no class folders / no images with a known extension
        raise RecipeError(f"--data {root!r} is not a usable ImageFolder tree (root/<class>/<image>): {err}") from None
    classes = train_view.classes
    if len(classes) < 2:
        raise RecipeError(f"--data {root!r}: found {len(classes)} class folder(s) {classes}; need at least 2")

    gen = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(train_view.targets):
        by_class.setdefault(label, []).append(index)
    train_idx, val_idx = [], []
    for label in sorted(by_class):
        indices = by_class[label]
        order = torch.randperm(len(indices), generator=gen).tolist()
        n_val = min(len(indices) - 1, max(1, round(val_fraction * len(indices)))) if len(indices) > 1 else 0
        val_idx += [indices[i] for i in order[:n_val]]
        train_idx += [indices[i] for i in order[n_val:]]
    if not val_idx:
        raise RecipeError(f"--data {root!r}: too few images to hold out a validation set (need 2+ in some class)")
    return Subset(train_view, sorted(train_idx)), Subset(val_view, sorted(val_idx)), classes


class _Counted:
    """A dataset that says how far an export got (every tenth of it): writing 800 PNGs takes a while on a busy CPU."""

    def __init__(self, dataset, label: str) -> None:
        self._dataset, self._label = dataset, label
        self._n, self._next, self._began = len(dataset), 0, time.perf_counter()

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int):
        done = index + 1
        if done * 10 >= self._next * self._n or done == self._n:
            say(f"{self._label}: {done}/{self._n} ({time.perf_counter() - self._began:.0f} s)")
            self._next += 1
        return self._dataset[index]

    def __getattr__(self, name: str):  # classes, normalize, denormalize: the export reads them
        return getattr(self._dataset, name)


def make_demo_folder(root: str, num_samples: int, image_size: int) -> None:
    from lightning_xai.datasets import ShapesDataset, export_image_folder

    if Path(root).is_dir() and any(Path(root).iterdir()):
        raise RecipeError(f"--make-demo-folder {root!r} exists and is not empty; choose a new directory")
    say(f"Writing {num_samples} shape images ({image_size}x{image_size}) to {root} ...")
    data = _Counted(ShapesDataset(num_samples, image_size=image_size, seed=0), "images written")
    try:
        export_image_folder(data, root)
    except FileExistsError:
        raise RecipeError(f"--make-demo-folder {root!r} exists and is not empty; choose a new directory") from None
    print(f"Wrote {num_samples} shape images ({image_size}x{image_size}) as an ImageFolder tree to {root}\n"
          f"Now run:  python {sys.argv[0]} --data {root}")


# ---------------------------------------------------------------------- model
def classification_models() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_model(name: str, num_classes: int, weights: str | None) -> nn.Module:
    valid = classification_models()
    if name not in valid:
        close = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        examples = ", ".join(n for n in ("resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0",
                                         "convnext_tiny", "densenet121", "vgg11_bn") if n in valid)
        raise RecipeError(f"--model {name!r} is not a torchvision classification model; {hint}"
                          f"e.g. {examples} ({len(valid)} in all: torchvision.models.list_models(module="
                          "torchvision.models))")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if weights is not None:
        load_weights(model, name, weights)
    return model


def load_weights(model: nn.Module, name: str, path: str) -> None:
    """Load a local state dict (or a Lightning checkpoint of this recipe); re-initialise a head of the wrong size."""
    if not Path(path).is_file():
        raise RecipeError(f"--weights {path!r}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- any unpickling error means "not a state dict we can read"
        raise RecipeError(f"--weights {path!r} could not be read as a state dict "
                          f"(torch.load(weights_only=True)): {type(err).__name__}: {err}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # a Lightning checkpoint
        state = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RecipeError(f"--weights {path!r} holds a {type(state).__name__}, not a state dict of tensors")

    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    head = _head_keys(model)
    if missing or unexpected or any(k not in head for k in wrong):
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" ... ({len(keys)} in all)" if len(keys) > 4 else "")

        problems = [f"{label}: {show(keys)}" for label, keys in (
            ("missing", missing), ("unexpected", unexpected),
            ("wrong shape", [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong])) if keys]
        raise RecipeError(f"--weights {path!r} does not fit torchvision {name!r}: " + "; ".join(problems) +
                          ". Was it saved from the same architecture (model.state_dict())?")
    if wrong:
        print(f"--weights: classifier head {sorted(wrong)} has {tuple(state[wrong[0]].shape)}, this data needs "
              f"{tuple(own[wrong[0]].shape)}: the head is re-initialised, everything else is loaded.")
        state = {k: v for k, v in state.items() if k not in wrong}
    model.load_state_dict(state, strict=not wrong)


def _head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the last module that holds parameters of its own (the classifier head)."""
    owners = [(name, module) for name, module in model.named_modules() if any(True for _ in module.parameters(False))]
    if not owners:
        return set()
    name, module = owners[-1]
    return {f"{name}.{k}" if name else k for k, _ in module.named_parameters(recurse=False)}


# ---------------------------------------------------------------------- run
SHORT = {"grad_cam": "gc", "saliency": "sal", "integrated_gradients": "ig"}


def print_table(monitor: ExplanationMonitor, val_acc: dict[int, float]) -> list[dict]:
    """Per explained epoch: validation accuracy, stability per method, probes flagged per method (evidence) and
    whether the epoch raised a drift alarm (the decision)."""
    methods = monitor.methods
    short = "/".join(SHORT.get(m, m[:6]) for m in methods)
    width = max(len(short) + 8, 6 * len(methods))
    header = (f"{'epoch':>5} {'val_acc':>7} | " + " ".join(f"{'stab ' + m[:8]:>14}" for m in methods)
              + f" | {'flagged ' + short:^{width}} | alarm")
    print("\n" + header + "\n" + "-" * len(header))
    rows = []
    for record in monitor.history:
        e = record["epoch"]
        # a method the budget did not run this epoch has no entry (max_overhead="auto": IG when paid for): nan
        stability = [_mean(record["stability"].get(m, [])) for m in methods]
        flags = [sum(record["flags"].get(m, [])) for m in methods]
        alarm = bool(record.get("alarm"))
        print(f"{e:>5} {val_acc.get(e, math.nan):>7.3f} | " + " ".join(f"{v:>14.2f}" for v in stability)
              + f" | {' '.join(f'{n:5d}' for n in flags):^{width}} | {'ALARM' if alarm else '.':^5}")
        rows.append({"epoch": e, "flags": flags, "alarm": alarm})
    print_table_legend()
    return rows


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return sum(finite) / len(finite) if finite else math.nan


class _ValAcc(pl.Callback):
    def __init__(self) -> None:
        self.values: dict[int, float] = {}

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking and "val_acc" in trainer.callback_metrics:
            self.values[trainer.current_epoch] = float(trainer.callback_metrics["val_acc"])


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_Help)
    parser.add_argument("--data", help="ImageFolder root: one sub-directory of images per class")
    parser.add_argument("--make-demo-folder", metavar="DIR",
                        help="export the embedded shapes dataset as an ImageFolder tree to DIR and exit")
    parser.add_argument("--demo-image-size", type=int, default=64,
                        help="size of the images --make-demo-folder writes (training resizes them to --image-size)")
    parser.add_argument("--model", default="resnet18", help="torchvision classification model name")
    parser.add_argument("--weights", help="local state-dict file (torch.save(model.state_dict(), path))")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (each one explained)")
    parser.add_argument("--image-size", type=int, default=224,
                        help="images are resized to this square size; Grad-CAM's grid is that of its layer: 1/32 "
                             "of it for a ResNet (7x7 at 224; 128 trains faster on a CPU, with a 4x4 grid)")
    parser.add_argument("--batch-size", type=int, default=32, help="training and validation batch size")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of each class held out")
    parser.add_argument("--num-probes", type=int, default=16, help="validation images explained every epoch")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=available_methods(),
                        metavar="METHOD", help=f"attribution methods, any of: {', '.join(available_methods())}")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the model and the probes")
    parser.add_argument("--out", default="runs/folder", help="log directory")
    parser.add_argument("--fast", action="store_true", help="a tiny run for smoke tests")
    args = parser.parse_args(argv)
    try:
        return run(args, parser)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    quiet_third_party()
    if args.make_demo_folder:
        make_demo_folder(args.make_demo_folder, num_samples=64 if args.fast else 800,
                         image_size=min(args.demo_image_size, 32) if args.fast else args.demo_image_size)
        return 0
    if not args.data:
        parser.error("--data DIR is required (an ImageFolder tree); no data at hand? --make-demo-folder DIR")
    if not 0.0 < args.val_fraction < 1.0:
        parser.error(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if args.fast:
        args.epochs, args.image_size, args.num_probes = min(args.epochs, 2), min(args.image_size, 32), 4

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    pl.seed_everything(args.seed, workers=True)
    train_set, val_set, classes = load_folder(args.data, args.image_size, args.val_fraction, args.seed)
    net = build_model(args.model, len(classes), args.weights)
    try:  # fail here, with a hint, rather than deep inside the first training step
        with torch.no_grad():
            net.eval()(val_set[0][0][None])
        net.train()
    except Exception as err:  # noqa: BLE001
        raise RecipeError(f"--model {args.model!r} fails on a {args.image_size}x{args.image_size} image "
                          f"({type(err).__name__}: {err}); some models need a larger or fixed --image-size "
                          "(e.g. 224 for vit_*, 299 for inception_v3)") from None
    model = ImageClassifier(net, lr=args.lr)
    print(f"{len(train_set)} training / {len(val_set)} validation images, {len(classes)} classes: "
          f"{', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}; model {args.model}"
          f"{' from ' + args.weights if args.weights else ' (random init)'}")

    loader_args = {"batch_size": args.batch_size, "num_workers": args.num_workers,
                   "persistent_workers": args.num_workers > 0}
    train_loader = DataLoader(train_set, shuffle=True, drop_last=len(train_set) > args.batch_size, **loader_args)
    val_loader = DataLoader(val_set, **loader_args)
    monitor = ExplanationMonitor(
        num_probes=min(args.num_probes, len(val_set)),
        methods=args.methods,
        display_options={"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "class_names": classes},
        drift_options={"warmup_epochs": 1 if args.fast else 3},
        method_options={m: {"n_steps": 4 if args.fast else 32} for m in args.methods if m == "integrated_gradients"},
        # --fast (the smoke test) shows every method every epoch; a real run keeps the default budget ("auto": the
        # cheap methods every epoch, Integrated Gradients when the run has paid for it within 5% of training time)
        max_overhead=None if args.fast else "auto",
    )
    val_acc = _ValAcc()
    logger = pl.loggers.TensorBoardLogger(args.out, name=args.model)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        devices=1,
        logger=logger,
        callbacks=[*around_monitor(monitor), val_acc],
        enable_checkpointing=not args.fast,
        enable_progress_bar=not args.fast,
        enable_model_summary=False,
        log_every_n_steps=5,
        limit_train_batches=4 if args.fast else None,
        limit_val_batches=2 if args.fast else None,
    )
    start = time.perf_counter()
    trainer.fit(model, train_loader, val_loader)
    rows = print_table(monitor, val_acc.values)
    alarms = [r["epoch"] for r in rows if r["alarm"]]
    print(f"\nTrained {trainer.current_epoch} epochs in {time.perf_counter() - start:.0f} s; "
          + (f"drift alarm at epoch {', '.join(map(str, alarms))}." if alarms else "no drift alarm."))
    print(f"TensorBoard logs: {os.path.abspath(logger.log_dir)}")
    print(f"Open them with:  tensorboard --logdir {args.out} --samples_per_plugin images=100")
    report_file = Path(logger.log_dir).resolve() / REPORT_FILE
    if report_file.is_file():
        print(f"Report: {report_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
