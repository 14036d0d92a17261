"""Training wall time of the demo recipe with vs without ExplanationMonitor at its default settings (target 4).

Issue 6, target 4: on the demo recipe with the default monitor settings, the callback adds <= 10% to training wall
time. Setting: ``recipes/demo.py``'s ``ShapesCNN``, ``ShapesData`` and ``PlantShortcut`` (planted at half the
epochs), CPU, ``torch.set_num_threads(1)``, same seed for every run; the monitor gets the demo's probe set and
mean/std and otherwise its defaults (16 probes, all three methods, adaptive IG ``n_steps=16``,
``tolerance=0.02``, ``max_steps=128``, ``internal_batch_size`` = the training batch size, metrics
localisation + agreement + sanity, overlays logged to TensorBoard). Both configurations log to a TensorBoardLogger in
a temporary directory; no checkpointing, no progress bar.

Runs are interleaved (A B A B ...) so background load hits both alike; the ratio uses the minimum per
configuration, and every run is printed so the spread is visible. In the runs with the monitor, the time spent in
each part of the callback is recorded (functions wrapped in the callback's module namespace): explanation
(``explain_detailed``), rendering (``make_overlay_grid``), writing (writer calls: image/scalars/text/flush), the
sanity check (``check_sanity``: explain a randomised copy at the end of fit) and the callback total. It also prints
the fit-start reference round against the regular rounds (target: the start costs no more than one regular round)
and the monitor's own ``xai/overhead`` (its share of each explained epoch's wall time).

The monitor's cost per explained epoch is about ``num_probes x evals per probe`` model evaluations (forward +
input-gradient backward), against ``train_size`` training image-steps plus ``val_size`` validation forwards per
epoch: its share falls as the dataset grows. The script prints that arithmetic for the demo's sizes.

Usage::

    python bench/overhead.py                 # 4 epochs, 2 rounds
    python bench/overhead.py --epochs 12     # the demo's length
    python bench/overhead.py --quick         # 2 epochs, 512 training images, 1 round
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "recipes"))

PARTS = ("explain", "render", "write", "sanity", "callback")


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


VARIANTS = {
    # name: (ExplanationMonitor keyword overrides, PNG compression level for TensorBoard images or None = default 6)
    "default": ({}, None),
    "no_images": ({"log_images": False}, None),
    "png_level1": ({}, 1),
    "no_sanity": ({"metrics": ("localisation", "agreement")}, None),
    "start8": ({"method_options": {"integrated_gradients": {"n_steps": 8}}}, None),
    "budget10": ({"max_overhead": 0.1}, None),
}


@contextlib.contextmanager
def _png_level(level: int | None) -> Iterator[None]:
    """TensorBoard's ``make_image`` encodes PNG at PIL's default level 6; the proposal tests a faster level."""
    if level is None:
        yield
        return
    import io

    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import summary

    original = summary.make_image

    def make_image(tensor: Any, rescale: float = 1, rois: Any = None, labels: Any = None) -> Any:
        height, width, channel = tensor.shape
        output = io.BytesIO()
        Image.fromarray(tensor).save(output, format="PNG", compress_level=level)
        return Summary.Image(height=height, width=width, colorspace=channel, encoded_image_string=output.getvalue())

    summary.make_image = make_image
    try:
        yield
    finally:
        summary.make_image = original


def run(variant: str | None, epochs: int, train_size: int, seed: int = 0) -> tuple[float, dict[str, float], dict]:
    """One fit; ``variant=None``: without the monitor."""
    with_monitor = variant is not None
    overrides, png_level = VARIANTS[variant] if variant is not None else ({}, None)
    import pytorch_lightning as pl
    from demo import PlantShortcut, ShapesCNN, ShapesData

    import lightning_xai.callbacks._reporter as reporter
    import lightning_xai.callbacks._round as round_
    import lightning_xai.writers as writers
    from lightning_xai import ExplanationMonitor
    from lightning_xai.datasets import SHAPES_MEAN, SHAPES_STD

    pl.seed_everything(seed, workers=True)
    data = ShapesData(image_size=32, train_size=train_size, val_size=512, seed=seed)
    model = ShapesCNN(num_classes=data.train_set.num_classes)
    callbacks: list[Any] = [PlantShortcut(epochs // 2)]
    parts: dict[str, float] = defaultdict(float)
    info: dict[str, Any] = {}
    patched: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, key: str) -> None:
        patched.append((owner, name, getattr(owner, name)))
        setattr(owner, name, _timer(parts, key, getattr(owner, name)))

    monitor = None
    if with_monitor:
        monitor = ExplanationMonitor(probes=data.probe_set, display={"mean": SHAPES_MEAN, "std": SHAPES_STD},
                                     **overrides)
        callbacks.insert(0, monitor)
        patch(round_, "explain_detailed", "explain")
        patch(reporter.ProbeRenderer, "render_groups", "render")
        for cls in (writers.TensorBoardSink, writers.FileSink):
            for name in ("add_image", "add_scalars", "add_text", "flush"):
                patch(cls, name, "write")
        patch(monitor, "check_sanity", "sanity")
        rounds_s: dict[str, list[float]] = {"reference": [], "regular": []}
        inner_round = monitor._round_once

        def timed_round(trainer: Any, pl_module: Any, *, reference: bool, start: float) -> None:
            begin = time.perf_counter()
            try:
                inner_round(trainer, pl_module, reference=reference, start=start)
            finally:
                rounds_s["reference" if reference else "regular"].append(time.perf_counter() - begin)

        monitor._round_once = timed_round
        info["round_s"] = rounds_s
        overhead: list[float] = []
        info["overhead"] = overhead

        class Overhead(pl.Callback):
            def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                value = trainer.callback_metrics.get("xai/overhead")
                if value is not None and monitor._last_explained_epoch == trainer.current_epoch:
                    overhead.append(float(value))

        callbacks.append(Overhead())
        for hook in ("setup", "on_train_start", "on_train_end", "on_validation_epoch_end", "on_train_epoch_end"):
            patch(monitor, hook, "callback")
        evals: list[int] = []
        inner = round_.explain_detailed

        def counting(*args: Any, **kwargs: Any) -> Any:
            out = inner(*args, **kwargs)
            if out.ig_evals is not None:
                evals.append(int(out.ig_evals.sum()))
            return out

        round_.explain_detailed = counting
        patched.append((round_, "explain_detailed", inner))
        info["evals"] = evals
    with tempfile.TemporaryDirectory() as log_dir:
        trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", callbacks=callbacks,
                             logger=pl.loggers.TensorBoardLogger(log_dir, name="", version=""),
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             log_every_n_steps=10)
        start = time.perf_counter()
        try:
            with _png_level(png_level):
                trainer.fit(model, datamodule=data)
        finally:
            elapsed = time.perf_counter() - start
            for owner, name, original in reversed(patched):
                setattr(owner, name, original)
    info["batch_size"] = data.hparams.batch_size
    return elapsed, dict(parts), info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=2048, help="training images (the demo's: 2048)")
    parser.add_argument("--rounds", type=int, default=2, help="A/B pairs")
    parser.add_argument("--quick", action="store_true", help="2 epochs, 512 training images, 1 round")
    parser.add_argument("--variants", default="default",
                        help=f"comma-separated monitor configurations to compare, from {sorted(VARIANTS)}")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.train_size, args.rounds = 2, 512, 1
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import logging

    import pytorch_lightning  # noqa: F401  (its loggers exist from here on)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("pytorch_lightning", "lightning")):
            logging.getLogger(name).setLevel(logging.ERROR)

    variants = [None, *args.variants.split(",")]
    times: dict[str | None, list[float]] = {v: [] for v in variants}
    best_parts: dict[str, float] = {}
    info: dict[str, Any] = {}
    infos: dict[str | None, dict[str, Any]] = {}
    for r in range(args.rounds):
        for variant in variants:
            elapsed, parts, run_info = run(variant, args.epochs, args.train_size)
            times[variant].append(elapsed)
            if elapsed <= min(times[variant]):
                infos[variant] = run_info
            if variant == "default" and elapsed <= min(times[variant]):
                best_parts, info = parts, run_info
            print(f"round {r}: {variant or 'without monitor':<16} {elapsed:7.2f} s", flush=True)

    base = min(times[None])
    print(f"\ndemo recipe, {args.epochs} epochs, {args.train_size} training + 512 validation images 32x32, "
          f"batch {info.get('batch_size', 64)}, threads=1, {args.rounds} interleaved rounds; min per configuration")
    for variant in variants:
        t = times[variant]
        label = "without monitor" if variant is None else f"with monitor: {variant}"
        ratio = "" if variant is None else f"  ratio with/without {min(t) / base:.3f}"
        extra = ""
        if variant is not None and infos.get(variant, {}).get("overhead") is not None:
            shares = infos[variant]["overhead"]
            extra = (f"; {len(shares)} explained epochs, xai/overhead mean "
                     f"{sum(shares) / max(len(shares), 1):.1%}")
        print(f"  {label:<30} min {min(t):7.2f} s  (runs {', '.join(f'{v:.2f}' for v in t)}; max/min "
              f"{max(t) / min(t):.2f}){ratio}{extra}")
    if "default" in times:
        print(f"target 4 (default settings): ratio with/without {min(times['default']) / base:.3f}   (<= 1.10)")
    if not best_parts:
        return

    p = defaultdict(float, best_parts)
    total, sanity = p["callback"], p["sanity"]
    rounds = info.get("evals", [])
    other = total - sanity - p["explain"]
    print("\nwhere the monitor's time goes (fastest run with it; seconds over the whole fit):")
    print(f"  callback hooks total {total:.2f} (blocking training) = explanation {p['explain']:.2f} (reference round + "
          f"one per epoch) + sanity check {sanity:.2f} (end of fit; of which explanation {p['sanity/explain']:.2f}) "
          f"+ other {other:.2f} (setup, targets, gather, metrics, drift, scalars and text, waiting for the previous "
          f"overlays); on the background thread, overlapping training: render {p['render']:.2f} + write "
          f"{p['write']:.2f} (PNG encoding in add_image, event files)")
    print(f"  explanation rounds: {len(rounds)} (reference + one per explained epoch + sanity at the end), IG evals "
          f"per round: {rounds}")
    round_s = info.get("round_s", {})
    if round_s.get("reference") and round_s.get("regular"):
        ref, regular = round_s["reference"][0], sorted(round_s["regular"])
        median = regular[len(regular) // 2]
        print(f"  fit start: reference round {ref:.2f} s vs median regular round {median:.2f} s "
              f"(ratio {ref / median:.2f}; target <= 1); regular rounds {', '.join(f'{v:.2f}' for v in regular)}")
    if info.get("overhead"):
        values = info["overhead"]
        print(f"  xai/overhead (the monitor's share of each explained epoch): "
              f"{', '.join(f'{v:.1%}' for v in values)}; mean {sum(values) / len(values):.1%}")
    per_epoch = (total - sanity) / max(args.epochs, 1)
    print(f"  per-epoch cost of the callback without the sanity check: {per_epoch:.2f} s "
          f"({per_epoch / (base / args.epochs):.1%} of an epoch without the monitor)")
    epoch_evals = sorted(rounds)[len(rounds) // 2] if rounds else 0
    explain_rounds = max(len(rounds) - (1 if sanity else 0), 1)
    per_eval = p["explain"] / max(sum(sorted(rounds)[:explain_rounds]), 1)
    epoch = base / args.epochs
    per_image = epoch / (args.train_size + 512 / 3)  # a validation forward counted as 1/3 of a training step
    print(f"  arithmetic: ~{epoch_evals} IG evals per explained epoch (16 probes x ~{epoch_evals / 16:.0f}) at "
          f"{per_eval * 1e3:.2f} ms each = {epoch_evals * per_eval:.2f} s, vs {args.train_size} training image-steps "
          f"+ 512 validation forwards at {per_image * 1e3:.2f} ms per training image-step (data generation included)"
          f" = {epoch:.2f} s per epoch: the explanation alone is {epoch_evals * per_eval / epoch:.1%} of an epoch, "
          f"the whole callback {per_epoch / epoch:.1%}; both scale as 1 / dataset size:")
    for n in (2048, 10_000, 50_000):
        epoch_n = per_image * (n + 512 / 3)
        print(f"    train_size {n:>6}: callback ~{per_epoch / epoch_n:.1%} of an epoch, of which explanation "
              f"{epoch_evals * per_eval / epoch_n:.1%}")

if __name__ == "__main__":
    main()
