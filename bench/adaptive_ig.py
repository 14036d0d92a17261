"""Fixed-step vs adaptive Integrated Gradients on a briefly trained small ReLU CNN: completeness error and cost.

The model is trained for a few hundred steps on a synthetic task (which quadrant holds a bright blob, 32x32 RGB,
4 classes), so it has the uneven, kinked path integrands of a real ReLU network (a random-init network with zero
biases is positively homogeneous and integrates trivially). For each fixed node count (trapezoid, 2^k + 1 nodes so
grids nest) the script prints the median / worst completeness relative error and the model evaluations; then
adaptive IG (``tolerance``) from a small start, and the ratio of its evaluations and wall time to the cheapest fixed
node count that reaches the same worst-case error.

Usage::

    python bench/adaptive_ig.py            # 64 probes
    python bench/adaptive_ig.py --quick    # 16 probes, shorter training
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn

from lightning_xai.attribution import explain_detailed


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def make_data(n: int, generator: torch.Generator, size: int = 32) -> tuple[Tensor, Tensor]:
    labels = torch.randint(0, 4, (n,), generator=generator)
    images = 0.3 * torch.randn(n, 3, size, size, generator=generator)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    half = size // 2
    for i, label in enumerate(labels.tolist()):
        cy = (label // 2) * half + int(torch.randint(3, half - 3, (1,), generator=generator))
        cx = (label % 2) * half + int(torch.randint(3, half - 3, (1,), generator=generator))
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)
        color = torch.rand(3, generator=generator) + 0.5
        images[i] += color[:, None, None] * blob
    return images, labels


def train(model: nn.Module, steps: int, generator: torch.Generator) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        x, y = make_data(64, generator)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = make_data(256, generator)
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def run_ig(model: nn.Module, x: Tensor, target: Tensor, **options) -> tuple[Tensor, Tensor, float]:
    start = time.perf_counter()
    out = explain_detailed(model, x, target, ("integrated_gradients",), internal_batch_size=64, **options)
    seconds = time.perf_counter() - start
    assert out.ig_relative_error is not None and out.ig_evals is not None
    return out.ig_relative_error, out.ig_evals, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--start", type=int, default=9, help="adaptive IG's starting node count")
    parser.add_argument("--max-steps", type=int, default=257)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.probes, args.train_steps = 16, 120
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = SmallCNN()
    accuracy = train(model, args.train_steps, generator)
    x, y = make_data(args.probes, generator)
    with torch.no_grad():
        target = model(x).argmax(1)
    print(f"SmallCNN trained {args.train_steps} steps (held-out accuracy {accuracy:.2f}); {args.probes} probes 32x32, "
          f"target = predicted class, zero baseline, trapezoid rule, threads={torch.get_num_threads()}")
    print(f"{'IG':<28} {'median err':>10} {'worst err':>10} {'evals':>7} {'time s':>7}")

    fixed = {}
    n = 3
    while n <= args.max_steps:
        err, evals, seconds = run_ig(model, x, target, n_steps=n)
        fixed[n] = (err, evals, seconds)
        print(f"{f'fixed n_steps={n}':<28} {err.median().item():>10.4f} {err.max().item():>10.4f} "
              f"{int(evals.sum()):>7} {seconds:>7.2f}")
        n = 2 * n - 1

    err, evals, seconds = run_ig(model, x, target, n_steps=args.start, tolerance=args.tolerance,
                                 max_steps=args.max_steps)
    label = f"adaptive tol={args.tolerance} from {args.start}"
    print(f"{label:<28} {err.median().item():>10.4f} {err.max().item():>10.4f} {int(evals.sum()):>7} "
          f"{seconds:>7.2f}")
    counts = torch.bincount(evals)
    print("  evals per probe: " + ", ".join(f"{k} x{int(c)}" for k, c in enumerate(counts.tolist()) if c))

    worst = err.max().item()
    reach = [n for n, (e, _, _) in fixed.items() if e.max().item() <= worst]
    if not reach:
        print(f"no fixed node count up to {args.max_steps} reaches the adaptive worst error {worst:.4f}")
        return
    n_fixed = reach[0]
    _, f_evals, f_seconds = fixed[n_fixed]
    print(f"cheapest fixed IG with worst error <= {worst:.4f}: n_steps={n_fixed}")
    print(f"ratios adaptive / fixed: evals {int(evals.sum()) / int(f_evals.sum()):.3f}, "
          f"wall time {seconds / f_seconds:.3f}   (target <= 0.5)")


if __name__ == "__main__":
    main()
