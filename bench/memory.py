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
   largest activation footprint at any moment. For the explanation phase the explicit buffers it holds at the same
   time are added: the inputs, baseline, integral and maps, and adaptive IG's stored per-node input gradients
   (evaluations x one image; their worst case, every probe at ``max_steps``, is printed too). For the training step
   the parameter gradients are added.
2. **Peak RSS growth in fresh subprocesses** (cross-check, noisy): each measurement runs in its own Python process;
   ``ru_maxrss`` after the operation minus the RSS just before it. It includes allocator slack and one-off
   allocations (kernels' workspaces, the first Adam step's state is excluded by timing the second step).

Usage::

    python bench/memory.py              # both measurements
    python bench/memory.py --no-rss     # only the deterministic one
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
    """Live and peak bytes of the tensors autograd saves for backward (parameters and buffers excluded)."""

    def __init__(self, model: nn.Module) -> None:
        self.live = self.peak = 0
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
        counter.peak = max(counter.peak, counter.live)

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


def explain_phase(model: nn.Module, probes: Tensor, labels: Tensor, rows: int):
    from lightning_xai.attribution import explain_detailed

    return explain_detailed(model, probes, labels, internal_batch_size=rows, **OPTIONS)


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
    counter = LiveSavedBytes(model)
    with counter.hooks():
        out = explain_phase(model, probes, probe_labels, BATCH)
    image_bytes = probes[0].numel() * probes.element_size()
    evals = int(out.ig_evals.sum())
    # inputs, baseline, integral, saliency, IG map (+ a 1-channel Grad-CAM map) and the stored node gradients
    buffers = 5 * PROBES * image_bytes + PROBES * SIZE * SIZE * 4
    explain_peak = counter.peak + buffers + evals * image_bytes
    worst_nodes = PROBES * OPTIONS["max_steps"] * image_bytes
    return {"train_saved": train_saved,
            "param_grads": param_grads, "train_peak": train_peak, "explain_saved": counter.peak,
            "explain_buffers": buffers, "node_grads": evals * image_bytes, "evals": evals,
            "explain_peak": explain_peak, "explain_worst": counter.peak + buffers + worst_nodes}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-rss", action="store_true", help="skip the subprocess peak-RSS cross-check")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=("train", "explain"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        rss_child(args.child)
        return
    mib = 1 / 2**20
    f = saved_bytes_figures()
    print(f"demo ShapesCNN, {SIZE}x{SIZE}, training batch {BATCH}; explanation: {PROBES} probes, all three methods, "
          f"{OPTIONS}, internal_batch_size={BATCH}")
    print(f"training step : autograd-saved peak {f['train_saved'] * mib:7.2f} MiB + parameter grads "
          f"{f['param_grads'] * mib:.2f} MiB = {f['train_peak'] * mib:7.2f} MiB")
    print(f"explanation   : autograd-saved peak {f['explain_saved'] * mib:7.2f} MiB + buffers "
          f"{f['explain_buffers'] * mib:.2f} MiB + node gradients {f['node_grads'] * mib:.2f} MiB "
          f"({f['evals']} evals) = {f['explain_peak'] * mib:7.2f} MiB")
    print(f"ratio explanation / training step: {f['explain_peak'] / f['train_peak']:.3f}   (target <= 1); "
          f"worst case (every probe at max_steps): {f['explain_worst'] / f['train_peak']:.3f}")
    if not args.no_rss:
        r = rss_figures(args.repeats)
        print("peak RSS growth in fresh processes (MiB, per run): "
              f"train {[round(v * mib, 1) for v in r['train']]}, explain {[round(v * mib, 1) for v in r['explain']]}")
        print(f"ratio of medians explanation / training step: "
              f"{sorted(r['explain'])[len(r['explain']) // 2] / max(sorted(r['train'])[len(r['train']) // 2], 1):.3f}")


if __name__ == "__main__":
    main()
