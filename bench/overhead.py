"""Training wall time with vs without ExplanationMonitor, on the demo and on small runs as users start them.

Settings (``--settings``, comma-separated; all CPU, ``torch.set_num_threads(1)``, same seed for every run, a
TensorBoardLogger in a temporary directory, no checkpointing, no progress bar):

- ``demo``: ``recipes/demo.py``'s ``ShapesCNN``, ``ShapesData`` (2048 training + 512 validation images, 32 px,
  generated on the fly) and ``PlantShortcut`` (at half the epochs), 4 epochs; the monitor gets the demo's probe set
  and mean/std, otherwise its defaults. Targets: with/without <= 1.05 (issue 21; <= 1.10 in issue 6).
- ``resnet18_256``: torchvision ``resnet18(num_classes=4)``, random init, 256 training + 128 validation images at
  64 px per epoch (shapes, rendered once before timing), batch 32, Adam, 3 epochs, ``ExplanationMonitor()`` with no
  arguments. Target <= 1.25.
- ``vit_256``: the same with a small torchvision ViT (``VisionTransformer(image_size=64, patch_size=8,
  num_layers=4, num_heads=3, hidden_dim=192, mlp_dim=768)``). Target <= 1.5. ``timm_vit_256``: timm's
  ``vit_tiny_patch16_224`` at 64 px, patch 8 (if timm is installed).
- ``resnet18_2048``: resnet18 with 2048 training images per epoch, 2 epochs. Target <= 1.10.

Variants (``--variants``): ``default`` (``max_overhead="auto"``), ``none`` (``max_overhead=None``: every method
every epoch, the behaviour before issue 21), ``no_pool`` (without the drift detector's detection pool,
``drift={"pool_size": 0}``), ``none_no_pool``, ``no_images``, ``no_sanity``, ``budget10`` (``max_overhead=0.1``).

Runs are interleaved (without, variant, variant, ... per round) so background load hits all alike; ratios use the
minimum per configuration, and every run is printed so the spread is visible. The process's CPU time (all threads)
is printed too: on a machine shared with other jobs its ratio moves less than the wall time's (an upper bound of the
idle machine's wall-time ratio, since the overlay thread's CPU counts although it overlaps training). In runs with the monitor the time in
each part of the callback is recorded (functions wrapped in the callback's module namespace): explanation
(``explain_detailed`` in the rounds, the reference and the sanity check), setup (probe selection, the one-forward
validation, the dry run), the end of fit (timelines and the HTML report read back from the event files), the
sanity check, and the rest of the hooks: the per-round bookkeeping (targets, gather, drift, measures, scalars and
text, waiting for the previous overlays). Overlays are drawn on a background thread (render + write), overlapping
training. The issue's share "non-explanation / explanation" is (callback - explanation) / explanation.

Usage::

    python bench/overhead.py                                  # every setting, 1 round, default variant
    python bench/overhead.py --settings demo --rounds 2
    python bench/overhead.py --settings resnet18_256,vit_256 --variants default,none
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "recipes"))

SETTINGS: dict[str, dict[str, Any]] = {
    # name: model, training images per epoch, epochs, target ratio
    "demo": {"model": "demo", "train_size": 2048, "epochs": 4, "target": 1.05},
    "resnet18_256": {"model": "resnet18", "train_size": 256, "epochs": 3, "target": 1.25},
    "vit_256": {"model": "vit", "train_size": 256, "epochs": 3, "target": 1.5},
    "timm_vit_256": {"model": "timm_vit", "train_size": 256, "epochs": 3, "target": 1.5},
    "resnet18_2048": {"model": "resnet18", "train_size": 2048, "epochs": 2, "target": 1.10},
}
VAL_SIZE, IMAGE_SIZE, BATCH = 128, 64, 32

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "none": {"max_overhead": None},
    "no_pool": {"drift": {"pool_size": 0}},  # without the drift detector's detection pool
    "none_no_pool": {"max_overhead": None, "drift": {"pool_size": 0}},
    "no_images": {"log_images": False},
    "no_sanity": {"metrics": ("localisation", "agreement")},
    "budget10": {"max_overhead": 0.1},
}


def _timer(parts: dict[str, float], key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Adds ``fn``'s time to ``parts[key]``; inside the sanity check, to ``parts["sanity/" + key]`` instead."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        name = key if key in ("sanity", "callback") or not parts.get("_in_sanity") else f"sanity/{key}"
        if key == "sanity":
            parts["_in_sanity"] = 1.0
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            parts[name] += time.perf_counter() - start
            if key == "sanity":
                parts["_in_sanity"] = 0.0

    return wrapped


# ---------------------------------------------------------------------------------------------- small runs
_TENSORS: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _shapes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` generated shapes at 64 px as tensors, rendered once (outside the timed fits)."""
    if (n, seed) not in _TENSORS:
        from lightning_xai.datasets import ShapesDataset

        data = ShapesDataset(n, image_size=IMAGE_SIZE, num_classes=4, seed=seed)
        samples = [data[i] for i in range(n)]
        _TENSORS[(n, seed)] = (torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples]))
    return _TENSORS[(n, seed)]


def _net(name: str) -> torch.nn.Module:
    import torchvision

    if name == "resnet18":
        return torchvision.models.resnet18(num_classes=4)
    if name == "vit":
        return torchvision.models.VisionTransformer(image_size=IMAGE_SIZE, patch_size=8, num_layers=4, num_heads=3,
                                                    hidden_dim=192, mlp_dim=768, num_classes=4)
    if name == "timm_vit":
        import timm

        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=IMAGE_SIZE, patch_size=8,
                                 num_classes=4)
    raise ValueError(f"unknown model {name!r}")


def _small_run(name: str, train_size: int) -> tuple[Any, Any, dict[str, Any]]:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    class Classifier(pl.LightningModule):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class Data(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(*_shapes(train_size, 1)), batch_size=BATCH, shuffle=True)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(*_shapes(VAL_SIZE, 2)), batch_size=BATCH)

    _shapes(train_size, 1), _shapes(VAL_SIZE, 2)  # rendered before the clock starts
    return Classifier(_net(name)), Data(), {}


# ---------------------------------------------------------------------------------------------- one fit
def run(setting: str, variant: str | None, seed: int = 0) -> tuple[float, dict[str, float], dict[str, Any]]:
    """One fit of ``setting``; ``variant=None``: without the monitor."""
    import pytorch_lightning as pl

    import lightning_xai.callbacks._pool as pool_module
    import lightning_xai.callbacks._reporter as reporter
    import lightning_xai.callbacks._round as round_
    import lightning_xai.writers as writers
    from lightning_xai import ExplanationMonitor
    from lightning_xai.drift import DriftDetector

    spec = SETTINGS[setting]
    pl.seed_everything(seed, workers=True)
    callbacks: list[Any] = []
    monitor_kwargs: dict[str, Any] = dict(VARIANTS[variant]) if variant is not None else {}
    if spec["model"] == "demo":
        from demo import PlantShortcut, ShapesCNN, ShapesData

        from lightning_xai.datasets import SHAPES_MEAN, SHAPES_STD

        data = ShapesData(image_size=32, train_size=spec["train_size"], val_size=512, seed=seed)
        model = ShapesCNN(num_classes=data.train_set.num_classes)
        callbacks.append(PlantShortcut(spec["epochs"] // 2))
        monitor_kwargs.update(probes=data.probe_set, display={"mean": SHAPES_MEAN, "std": SHAPES_STD})
    else:
        model, data, _ = _small_run(spec["model"], spec["train_size"])
    parts: dict[str, float] = defaultdict(float)
    info: dict[str, Any] = {}
    patched: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, key: str) -> None:
        patched.append((owner, name, getattr(owner, name)))
        setattr(owner, name, _timer(parts, key, getattr(owner, name)))

    if variant is not None:
        monitor = ExplanationMonitor(**monitor_kwargs)
        callbacks.insert(0, monitor)
        patch(round_, "explain_detailed", "explain")
        patch(reporter.ProbeRenderer, "render_groups", "render")
        patch(reporter.Reporter, "finish_images", "finish")  # waiting for the last overlays at the end of fit
        patch(DriftDetector, "update", "drift")  # the lead's detector: its share is reported, not cut here
        patch(pool_module.DetectionPool, "samples", "pool_read")  # re-reading the pool's training samples
        patch(pool_module.DetectionPool, "setup", "pool_setup")
        for cls in (writers.TensorBoardSink, writers.FileSink):
            for name in ("add_image", "add_scalars", "add_text", "flush"):
                patch(cls, name, "write")
        patch(monitor, "check_sanity", "sanity")
        patch(monitor, "_end_of_fit", "end")
        patch(monitor, "setup", "setup")
        for hook in ("setup", "on_train_start", "on_train_end", "on_validation_epoch_end", "on_train_epoch_end"):
            patch(monitor, hook, "callback")
        overhead: list[float] = []
        info["overhead"], info["monitor"] = overhead, monitor

        class Overhead(pl.Callback):
            def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                value = trainer.callback_metrics.get("xai/overhead")
                if value is not None and monitor._last_explained_epoch == trainer.current_epoch:
                    overhead.append(float(value))

        callbacks.append(Overhead())
    with tempfile.TemporaryDirectory() as log_dir:
        trainer = pl.Trainer(max_epochs=spec["epochs"], accelerator="cpu", callbacks=callbacks,
                             logger=pl.loggers.TensorBoardLogger(log_dir, name="", version=""),
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             log_every_n_steps=10)
        start, cpu = time.perf_counter(), time.process_time()
        try:
            trainer.fit(model, datamodule=data)
        finally:
            elapsed = time.perf_counter() - start
            info["cpu"] = time.process_time() - cpu
            for owner, name, original in reversed(patched):
                setattr(owner, name, original)
    return elapsed, dict(parts), info


def _report(setting: str, variants: list[str | None], times: dict[str | None, list[float]],
            best: dict[str | None, tuple[dict[str, float], dict[str, Any]]],
            cpu: dict[str | None, list[float]]) -> None:
    spec = SETTINGS[setting]
    base = min(times[None])
    what = ("demo recipe, 2048 training + 512 validation images 32x32, batch 64" if spec["model"] == "demo" else
            f"{spec['model']}, {spec['train_size']} training + {VAL_SIZE} validation images {IMAGE_SIZE}x{IMAGE_SIZE}, "
            f"batch {BATCH}, zero-argument monitor")
    print(f"\n== {setting}: {what}, {spec['epochs']} epochs, threads=1, {len(times[None])} interleaved round(s); min "
          "per configuration")
    for variant in variants:
        t = times[variant]
        label = "without monitor" if variant is None else f"with monitor: {variant}"
        ratio = "" if variant is None else (f"  ratio {min(t) / base:.3f}; CPU time ratio "
                                            f"{min(cpu[variant]) / min(cpu[None]):.3f}")
        print(f"  {label:<28} min {min(t):7.2f} s  (runs {', '.join(f'{v:.2f}' for v in t)}; max/min "
              f"{max(t) / min(t):.2f}; CPU {min(cpu[variant]):.2f} s){ratio}")
    for variant in variants:
        if variant is None:
            continue
        parts, info = best[variant]
        p = defaultdict(float, parts)
        monitor = info["monitor"]
        explain = p["explain"] + p["sanity/explain"]
        other = p["callback"] - explain
        rounds = other - p["setup"] - p["end"] - (p["sanity"] - p["sanity/explain"]) - p["finish"]
        n_rounds = max(len(monitor.history), 1)
        budget = monitor.budget
        ran = {m: sum(1 for r in monitor.history if m in r["stability"]) for m in monitor.methods}
        target = f" (target <= {spec['target']})" if variant == "default" else ""
        print(f"  [{variant}] ratio {min(times[variant]) / base:.3f}{target}; callback {p['callback']:.2f} s blocking = "
              f"explanation {explain:.2f} + other {other:.2f}: setup {p['setup']:.2f}, per-round bookkeeping "
              f"{rounds:.2f} ({rounds / n_rounds * 1e3:.0f} ms x {n_rounds}), sanity check without its explanation "
              f"{p['sanity'] - p['sanity/explain']:.2f}, waiting for the last overlays {p['finish']:.2f}, end of fit (timelines, "
              f"report) {p['end']:.2f}; background "
              f"render {p['render']:.2f} + write {p['write']:.2f}")
        share = f"{other / explain:.0%}" if explain > 0 else "n/a"
        share_rounds = f"{rounds / explain:.0%}" if explain > 0 else "n/a"
        print(f"  [{variant}] non-explanation / explanation: {share} (per-round bookkeeping alone {share_rounds}; "
              "target <= 25%); rounds per method: " + ", ".join(f"{m} {k}/{n_rounds}" for m, k in ran.items())
              + (f"; xai/overhead mean {sum(info['overhead']) / len(info['overhead']):.1%}" if info["overhead"] else ""))
        pool = monitor._pool
        drift_share = f"{p['drift'] / explain:.0%} of the explanation" if explain > 0 else "n/a"
        print(f"  [{variant}] detection pool {pool.size} samples (setup chose {pool.chosen} before the budget): setup "
              f"{p['pool_setup']:.2f} s, reading its training samples {p['pool_read']:.2f} s in all; drift detector "
              f"updates {p['drift']:.2f} s ({drift_share})")
        if budget.row_seconds is not None:
            print(f"  [{variant}] measured: one sample through the cheap methods (Grad-CAM + saliency pass) "
                  f"{budget.row_seconds * 1e3:.2f} ms; " + ", ".join(
                      f"{k} {budget.last(k):.2f} s" for k in ("integrated_gradients", "sanity")
                      if budget.last(k) is not None) + f"; budget trained {budget.trained:.1f} s, spent "
                  f"{budget.spent:.2f} s")


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return sorted(runs)[len(runs) // 2]


def _per_sample_case(model: torch.nn.Module, size: int, batch: int, repeats: int) -> tuple[float, float]:
    """(explanation, training) seconds per sample: Grad-CAM + saliency at ``internal_batch_size=batch``, and a
    forward + backward + Adam step at batch ``batch`` (on a copy of the weights, restored afterwards)."""
    from lightning_xai.attribution import explain_detailed

    n = 4 * batch
    x, y = torch.randn(n, 3, size, size), torch.arange(n) % 4
    explain = _median_seconds(
        lambda: explain_detailed(model, x, y, ("grad_cam", "saliency"), internal_batch_size=batch), repeats)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train() -> None:
        for i in range(0, n, batch):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i:i + batch]), y[i:i + batch]).backward()
            optimizer.step()

    train_s = _median_seconds(train, repeats)
    model.load_state_dict(state)
    return explain / n, train_s / n


def per_sample(repeats: int = 5) -> None:
    """Seconds per sample of one Grad-CAM + saliency pass (the cheap methods share one forward + input-gradient
    backward) at the training batch size, against one training image-step (forward, backward, Adam step), for the
    drift detector's detection pool: the median of ``repeats`` timed calls after a warm-up."""
    from demo import ShapesCNN

    print("\n== per-sample cost of the cheap methods (Grad-CAM + saliency, one pass), 1 thread; median of "
          f"{repeats}")
    for name, model_name, size, batch in (("demo CNN", "demo", 32, 64), ("demo CNN", "demo", 64, 64),
                                          ("resnet18", "resnet18", 64, BATCH), ("small ViT", "vit", 64, BATCH)):
        torch.manual_seed(0)
        model = ShapesCNN(num_classes=4) if model_name == "demo" else _net(model_name)
        explain, train = _per_sample_case(model, size, batch, repeats)
        print(f"  {name} at {size} px, batch {batch}: {explain * 1e3:.2f} ms per sample through Grad-CAM + saliency; "
              f"a training image-step {train * 1e3:.2f} ms (ratio {explain / train:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="demo,resnet18_256,vit_256,resnet18_2048",
                        help=f"comma-separated, from {sorted(SETTINGS)}")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds per setting")
    parser.add_argument("--variants", default="default",
                        help=f"comma-separated monitor configurations, from {sorted(VARIANTS)}")
    parser.add_argument("--epochs", type=int, default=None, help="override every setting's epochs")
    parser.add_argument("--per-sample", action="store_true",
                        help="only the per-sample cost of a Grad-CAM + saliency pass (demo CNN, resnet18, small ViT)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import logging

    import pytorch_lightning  # noqa: F401  (its loggers exist from here on)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("pytorch_lightning", "lightning")):
            logging.getLogger(name).setLevel(logging.ERROR)
    if args.per_sample:
        per_sample()
        return
    variants: list[str | None] = [None, *args.variants.split(",")]
    for setting in args.settings.split(","):
        if args.epochs is not None:
            SETTINGS[setting]["epochs"] = args.epochs
        if SETTINGS[setting]["model"] == "timm_vit":
            try:
                import timm  # noqa: F401
            except ImportError:
                print(f"\n== {setting}: skipped (timm is not installed)")
                continue
        run(setting, None)  # warm-up (imports, data rendering), not timed
        times: dict[str | None, list[float]] = {v: [] for v in variants}
        cpu: dict[str | None, list[float]] = {v: [] for v in variants}
        best: dict[str | None, tuple[dict[str, float], dict[str, Any]]] = {}
        for r in range(args.rounds):
            for variant in variants:
                elapsed, parts, info = run(setting, variant)
                times[variant].append(elapsed)
                cpu[variant].append(info["cpu"])
                if elapsed <= min(times[variant]):
                    best[variant] = (parts, info)
                print(f"{setting} round {r}: {variant or 'without monitor':<16} {elapsed:7.2f} s", flush=True)
        _report(setting, variants, times, best, cpu)


if __name__ == "__main__":
    main()
