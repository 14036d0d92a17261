"""Peak memory of the ExplanationMonitor's explanation phase vs one training step at the user's batch size.

Target (issue 6, target 5): the explanation phase never needs more memory than a training step at the training
loader's batch size, so a monitor cannot cause an out-of-memory error where training fits.

Setting: the demo recipe's model (``recipes/demo.py``: ``ShapesCNN``, 32x32 RGB, batch size 64) and the monitor's
default explanation (16 probes, Grad-CAM + saliency + IG with ``n_steps=16``, adaptive ``tolerance=0.02`` up to
``max_steps=128``, ``internal_batch_size`` = the training batch size).

What is measured, and why (no GPU here, and ``tracemalloc`` does not see torch's allocations):

1. **Autograd-saved bytes, live peak** (deterministic, the main figure): a ``saved_tensors_hooks`` pack hook wraps
   every tensor autograd saves for backward (parameters and buffers excluded) in a holder that counts its bytes
   while alive and uncounts them when the graph frees it (CPython refcounting), so the peak of the live total is the
   largest activation footprint at any moment. For the explanation phase, the buffers it holds itself at that moment
   (inputs, baseline, integral, maps, adaptive IG's stored per-node input gradients: the engine's ``held_bytes()``)
   are added at every event. For the training step the parameter gradients are added. Not counted on either side:
   transient outputs of a backward op (the gradient being formed), a few images' worth here.
2. **Peak RSS growth in fresh subprocesses** (cross-check, noisy): each measurement runs in its own Python process;
   ``ru_maxrss`` after the operation minus the RSS just before it. It includes allocator slack and one-off
   allocations (kernels' workspaces, the first Adam step's state is excluded by timing the second step).

3. **RSS over a long run** (``--long``, issue 20): a tiny CNN trained for 300 epochs in a fresh process, with the
   default monitor (16 probes, Grad-CAM + saliency + adaptive IG, overlays, timelines) and without it (control);
   RSS after every epoch, and the slope of a least-squares line over the epochs after the warm-up (the first 50:
   the bounded buffers fill: 16 epochs of timeline tiles, 256 cached lines of caption text), in KiB per epoch with
   its standard error. Flat means the monitor's slope is within noise of the control's. Before the fix the monitor
   grew ~0.5 MB per epoch (text caches of 4096 lines, 48 epochs of tiles), found with ``tracemalloc``.

Usage::

    python bench/memory.py              # the first two measurements
    python bench/memory.py --no-rss     # only the deterministic one
    python bench/memory.py --long       # only the 300-epoch RSS slopes (about 6 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "recipes"))

PROBES, BATCH, SIZE = 16, 64, 32
OPTIONS = {"n_steps": 16, "tolerance": 0.02, "max_steps": 128}


class LiveSavedBytes:
    """Live and peak bytes of the tensors autograd saves for backward (parameters and buffers excluded).

    ``extra()`` is added to the live total at every event: the explanation's own buffers at that moment.
    """

    def __init__(self, model: nn.Module, extra: Callable[[], int] = lambda: 0) -> None:
        self.live = self.peak = 0
        self.extra = extra
        self._skip = {t.data_ptr() for t in model.parameters()} | {t.data_ptr() for t in model.buffers()}

    def pack(self, tensor: Tensor) -> object:
        if tensor.data_ptr() in self._skip:
            return tensor
        return _Held(self, tensor)

    @staticmethod
    def unpack(held: object) -> Tensor:
        return held.tensor if isinstance(held, _Held) else held  # type: ignore[return-value]

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


class _Held:
    __slots__ = ("counter", "nbytes", "tensor")

    def __init__(self, counter: LiveSavedBytes, tensor: Tensor) -> None:
        self.counter, self.tensor = counter, tensor
        self.nbytes = tensor.numel() * tensor.element_size()
        counter.live += self.nbytes
        counter.peak = max(counter.peak, counter.live + counter.extra())

    def __del__(self) -> None:
        self.counter.live -= self.nbytes


def setup(seed: int = 0) -> tuple[nn.Module, Tensor, Tensor, Tensor, Tensor]:
    from demo import ShapesCNN, ShapesData

    torch.manual_seed(seed)
    data = ShapesData(image_size=SIZE, train_size=BATCH * 4, val_size=64, seed=seed)
    model = ShapesCNN(num_classes=data.train_set.num_classes)
    images, labels, _ = next(iter(data.train_dataloader()))
    probes = torch.stack([data.probe_set[i][0] for i in range(PROBES)])
    probe_labels = torch.tensor([int(data.probe_set[i][1]) for i in range(PROBES)])
    return model, images, labels, probes, probe_labels


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor) -> None:
    model.train()
    loss = nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def explain_phase(model: nn.Module, probes: Tensor, labels: Tensor, rows: int, **overrides: float):
    from lightning_xai.attribution import explain_detailed

    return explain_detailed(model, probes, labels, internal_batch_size=rows, **{**OPTIONS, **overrides})


def saved_bytes_figures() -> dict[str, float]:
    model, images, labels, probes, probe_labels = setup()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    train_step(model, optimizer, images, labels)  # warm-up: Adam state exists from here on, like mid-training
    counter = LiveSavedBytes(model)
    with counter.hooks():
        train_step(model, optimizer, images, labels)
    param_grads = sum(p.numel() * p.element_size() for p in model.parameters())
    train_saved = counter.peak
    train_peak = train_saved + param_grads

    model.eval()
    from lightning_xai.attribution import _engine

    engines: list = []
    init = _engine._Engine.__init__

    def record(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        init(self, *args, **kwargs)
        engines.append(self)

    _engine._Engine.__init__ = record  # type: ignore[method-assign]
    try:
        saved = LiveSavedBytes(model)
        with saved.hooks():
            explain_phase(model, probes, probe_labels, BATCH)
        total = LiveSavedBytes(model, extra=lambda: engines[-1].held_bytes() if engines else 0)
        with total.hooks():
            out = explain_phase(model, probes, probe_labels, BATCH)
        # Forced worst case: an unreachable tolerance refines every probe to max_steps, all node gradients held.
        forced = LiveSavedBytes(model, extra=lambda: engines[-1].held_bytes() if engines else 0)
        with forced.hooks():
            forced_out = explain_phase(model, probes, probe_labels, BATCH, tolerance=1e-9)
    finally:
        _engine._Engine.__init__ = init  # type: ignore[method-assign]
    image_bytes = probes[0].numel() * probes.element_size()
    evals = int(out.ig_evals.sum())
    # Worst case: every probe refined to max_steps, its node gradients all held while a full chunk runs.
    worst = train_saved + 6 * PROBES * image_bytes + PROBES * OPTIONS["max_steps"] * image_bytes
    return {"train_saved": train_saved, "param_grads": param_grads, "train_peak": train_peak,
            "explain_saved": saved.peak, "explain_peak": total.peak, "evals": evals, "explain_worst_bound": worst,
            "forced_peak": forced.peak, "forced_evals": int(forced_out.ig_evals.sum())}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_child(which: str) -> None:
    torch.set_num_threads(1)
    model, images, labels, probes, probe_labels = setup()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    train_step(model, optimizer, images, labels)
    model.eval()
    run: Callable[[], object]
    if which == "train":
        run = lambda: train_step(model, optimizer, images, labels)  # noqa: E731
    else:
        run = lambda: explain_phase(model, probes, probe_labels, BATCH)  # noqa: E731
    before = _rss_bytes()
    # ru_maxrss is the process's peak so far; it only grows past the warm-up peak if this operation needs more.
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    run()
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"before": before, "peak_before": peak_before, "peak_after": peak_after}))


def rss_figures(repeats: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"train": [], "explain": []}
    for _ in range(repeats):
        for which in ("train", "explain"):  # interleaved
            proc = subprocess.run([sys.executable, __file__, "--child", which], capture_output=True, text=True,
                                  check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            out[which].append(r["peak_after"] - r["before"])
    return out


def long_child(which: str, epochs: int) -> None:
    """A tiny CNN trained ``epochs`` epochs (with or without the monitor); prints the RSS after every epoch."""
    import warnings

    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(0)

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(8, 3))

        def forward(self, x: Tensor) -> Tensor:
            return self.net(x)

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(96) % 3
    images = 0.3 * torch.randn(96, 3, 16, 16, generator=g)
    for i, k in enumerate(labels.tolist()):
        images[i, :, 2:14, 5 * k : 5 * k + 5] += 1.5
    train = DataLoader(TensorDataset(images[:64], labels[:64]), batch_size=16)
    val = DataLoader(TensorDataset(images[64:], labels[64:]), batch_size=16)
    rss: list[float] = []

    class Record(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            rss.append(_rss_bytes() / 2**10)

    callbacks: list = [Record()]
    if which == "monitor":
        from lightning_xai import ExplanationMonitor

        callbacks.insert(0, ExplanationMonitor(num_probes=16))
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(max_epochs=epochs, callbacks=callbacks, default_root_dir=root, accelerator="cpu",
                             logger=pl.loggers.TensorBoardLogger(root), enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False)
        trainer.fit(Tiny(), train, val)
    print(json.dumps(rss))


def slope(values: list[float], start: int) -> tuple[float, float]:
    """Least-squares slope of ``values[start:]`` per step and its standard error."""
    y = torch.tensor(values[start:], dtype=torch.float64)
    x = torch.arange(len(y), dtype=torch.float64)
    xc, yc = x - x.mean(), y - y.mean()
    b = float((xc * yc).sum() / (xc * xc).sum())
    resid = yc - b * xc
    se = float((resid.pow(2).sum() / max(len(y) - 2, 1) / (xc * xc).sum()).sqrt())
    return b, se


def long_figures(epochs: int, warm: int) -> None:
    out = {}
    for which in ("control", "monitor"):
        proc = subprocess.run([sys.executable, __file__, "--child", "long", "--which", which, "--epochs", str(epochs)],
                              capture_output=True, text=True, check=True)
        out[which] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"RSS over {epochs} epochs of a tiny CNN (16x16 images, 4 training batches/epoch), slope after epoch {warm}:")
    slopes = {}
    for which, rss in out.items():
        b, se = slope(rss, warm)
        slopes[which] = b
        print(f"  {which:8s}: RSS {rss[0] / 1024:.0f} -> {rss[warm] / 1024:.0f} (epoch {warm}) -> {rss[-1] / 1024:.0f} MiB;"
              f" slope {b:+.2f} +- {se:.2f} KiB/epoch ({b * 100 / 1024:+.2f} MiB per 100 epochs)")
    ratio = slopes["monitor"] / slopes["control"] if abs(slopes["control"]) > 1e-9 else float("inf")
    print(f"  slope ratio monitor / control: {ratio:.2f}; difference {slopes['monitor'] - slopes['control']:+.2f} "
          "KiB/epoch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-rss", action="store_true", help="skip the subprocess peak-RSS cross-check")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long", action="store_true", help="only the 300-epoch RSS slopes with and without monitor")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--warm", type=int, default=50)
    parser.add_argument("--child", choices=("train", "explain", "long"), help=argparse.SUPPRESS)
    parser.add_argument("--which", choices=("control", "monitor"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "long":
        long_child(args.which, args.epochs)
        return
    if args.child:
        rss_child(args.child)
        return
    if args.long:
        long_figures(args.epochs, args.warm)
        return
    mib = 1 / 2**20
    f = saved_bytes_figures()
    print(f"demo ShapesCNN, {SIZE}x{SIZE}, training batch {BATCH}; explanation: {PROBES} probes, all three methods, "
          f"{OPTIONS}, internal_batch_size={BATCH}")
    print(f"training step : autograd-saved peak {f['train_saved'] * mib:7.2f} MiB + parameter grads "
          f"{f['param_grads'] * mib:.2f} MiB = {f['train_peak'] * mib:7.2f} MiB")
    print(f"explanation   : autograd-saved peak {f['explain_saved'] * mib:7.2f} MiB; with its own buffers at the "
          f"same moment (inputs, maps, stored node gradients; {f['evals']} evals) {f['explain_peak'] * mib:7.2f} MiB")
    print(f"ratio explanation / training step: {f['explain_peak'] / f['train_peak']:.3f}   (target <= 1)")
    print(f"forced worst case (tolerance 1e-9: {f['forced_evals']} evals, every probe at max_steps): "
          f"{f['forced_peak'] * mib:.2f} MiB, ratio {f['forced_peak'] / f['train_peak']:.3f}; without the held-buffer "
          f"rule (full {BATCH}-row chunks + all node gradients) it would be about "
          f"{f['explain_worst_bound'] / f['train_peak']:.3f}")
    if not args.no_rss:
        r = rss_figures(args.repeats)
        print("peak RSS growth in fresh processes (MiB, per run): "
              f"train {[round(v * mib, 1) for v in r['train']]}, explain {[round(v * mib, 1) for v in r['explain']]}")
        print(f"ratio of medians explanation / training step: "
              f"{sorted(r['explain'])[len(r['explain']) // 2] / max(sorted(r['train'])[len(r['train']) // 2], 1):.3f}")


if __name__ == "__main__":
    main()
