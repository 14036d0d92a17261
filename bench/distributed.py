"""Wall time of ExplanationMonitor's explanation phase with 1 rank vs 2 DDP ranks (CPU, gloo, one thread per rank).

Same probes (``--probes`` random images, labels as targets), same model (a small ResNet-18-like CNN: four stages of
two BasicBlocks, widths 16-32-64-128, random init, BatchNorm), same monitor settings (grad_cam + saliency +
integrated_gradients, ``--steps`` IG steps, overlays rendered and logged to TensorBoard on rank 0). What is timed is
``ExplanationMonitor._run`` as called at each epoch end (shard, explain, gather, metrics, broadcast, rank-0 render and
write): the longest rank's time per epoch, minimum over ``--epochs`` epochs (the reference pass before training is
not counted). Each process runs ``torch.set_num_threads(1)``, so 2 ranks use 2 cores and 1 rank uses 1.

Usage::

    python bench/distributed.py                     # 16 probes, 32x32, 32 steps, 3 epochs
    python bench/distributed.py --size 64 --probes 16
    python bench/distributed.py --quick             # 8 probes, 8 steps, 2 epochs

The target (issue 4) is 2 ranks at most 0.6x the time of 1 rank.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_xai import ExplanationMonitor

NUM_CLASSES = 10


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(pl.LightningModule):
    """ResNet-18 layout (2-2-2-2 BasicBlocks) at a quarter of the width."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                   nn.ReLU(inplace=True)]
        cin = widths[0]
        for i, w in enumerate(widths):
            layers += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class TimedMonitor(ExplanationMonitor):
    """Times each end-of-epoch ``_run`` on every rank; rank r writes ``times_rank{r}.json`` at the end."""

    def __init__(self, out_dir: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.out_dir = out_dir
        self.times: list[float] = []
        self.cpu_times: list[float] = []  # this process's CPU time in _run: insensitive to other load on the machine
        self.shard_times: list[float] = []  # of which explaining this rank's shard (the part that parallelises)

    def setup(self, trainer, pl_module, stage):
        torch.set_num_threads(1)  # in the worker process: one core per rank
        super().setup(trainer, pl_module, stage)
        explain = self._explainer.explain

        def timed(*args, **kwargs):  # explaining this rank's shard: the part that parallelises
            start = time.perf_counter()
            try:
                return explain(*args, **kwargs)
            finally:
                self.shard_times.append(time.perf_counter() - start)

        self._explainer.explain = timed

    def _run(self, trainer, pl_module, *, reference):
        trainer.strategy.barrier()  # start together: the time is the phase's, not a rank's wait for the other
        start, cpu_start, n_shard = time.perf_counter(), time.process_time(), len(self.shard_times)
        super()._run(trainer, pl_module, reference=reference)
        cpu = time.process_time() - cpu_start
        trainer.strategy.barrier()  # until the slowest rank (rank 0 renders and writes) is done
        if reference:
            del self.shard_times[n_shard:]
        else:
            self.times.append(time.perf_counter() - start)
            self.cpu_times.append(cpu)

    def on_train_end(self, trainer, pl_module):
        with open(os.path.join(self.out_dir, f"times_rank{trainer.global_rank}.json"), "w") as f:
            json.dump({"times": self.times, "cpu": self.cpu_times, "shard": self.shard_times,
                       "threads": torch.get_num_threads(), "world": trainer.world_size}, f)


def run(devices: int, args: argparse.Namespace, probes: tuple[torch.Tensor, torch.Tensor]) -> dict[str, list[float]]:
    out_dir = tempfile.mkdtemp(prefix=f"bench_dist_{devices}_")
    monitor = TimedMonitor(out_dir, probes=probes, num_probes=args.probes,
                           method_options={"integrated_gradients": {"n_steps": args.steps}})
    g = torch.Generator().manual_seed(1)
    train = TensorDataset(torch.randn(8 * devices, 3, args.size, args.size, generator=g),
                          torch.randint(0, NUM_CLASSES, (8 * devices,), generator=g))
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=args.epochs, limit_train_batches=1, limit_val_batches=0, num_sanity_val_steps=0,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        logger=pl.loggers.TensorBoardLogger(out_dir, name="tb"), default_root_dir=out_dir, callbacks=[monitor],
    )
    torch.manual_seed(0)
    trainer.fit(SmallResNet(), DataLoader(train, batch_size=4))
    infos = []
    for rank in range(devices):
        with open(os.path.join(out_dir, f"times_rank{rank}.json")) as f:
            info = json.load(f)
        assert info["threads"] == 1 and info["world"] == devices, info
        infos.append(info)
    # per epoch, the slowest rank (the barriers make the wall times ~equal); rank 0 alone renders and writes
    return {key: [max(ts) for ts in zip(*(info[key] for info in infos))] for key in ("times", "cpu", "shard")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.probes, args.steps, args.epochs = 8, 8, 2
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    probes = (torch.randn(args.probes, 3, args.size, args.size, generator=g),
              torch.arange(args.probes) % NUM_CLASSES)

    load = os.getloadavg()[0]
    one = run(1, args, probes)
    two = run(2, args, probes)
    print(f"\nExplanation phase, {args.probes} probes {args.size}x{args.size}, IG {args.steps} steps, "
          f"3 methods, one thread per rank ({os.cpu_count()} CPUs, load before/after {load:.1f}/"
          f"{os.getloadavg()[0]:.1f}); min over {args.epochs} epochs, slowest rank")
    print(f"{'':10s}{'wall':>9s}{'cpu':>9s}{'shard':>9s}   wall per epoch")
    for name, r in (("1 rank", one), ("2 ranks", two)):
        print(f"{name:10s}{min(r['times']):9.3f}{min(r['cpu']):9.3f}{min(r['shard']):9.3f}   "
              + ", ".join(f"{t:.3f}" for t in r["times"]))
    for key in ("times", "cpu", "shard"):
        print(f"ratio 2/1 {key:6s}: {min(two[key]) / min(one[key]):.2f}", end="   ")
    print("(target: wall <= 0.60)")


if __name__ == "__main__":
    main()
