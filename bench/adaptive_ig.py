"""Fixed-step vs adaptive Integrated Gradients on a briefly trained small ReLU CNN: completeness error and cost.

The model is trained for a few hundred steps on a synthetic task (which quadrant holds a bright blob, 32x32 RGB,
4 classes), so it has the uneven, kinked path integrands of a real ReLU network (a random-init network with zero
biases is positively homogeneous and integrates trivially). For each fixed node count (trapezoid, 2^k + 1 nodes so
grids nest) the script prints the median / worst completeness relative error, the model evaluations, the wall time
and the map error (relative L2 distance to the finest fixed run, ``--max-steps`` nodes). Then adaptive IG
(``tolerance``) from each ``--start`` node count, and the ratio of its evaluations and wall time to the cheapest
fixed node count that reaches the same worst-case completeness error -- searched on the nested grid first, then
every ``--fine`` nodes between the last nested count that misses and the first that reaches it, so adaptive is not
compared with a needlessly coarse set of fixed counts.

Completeness is a scalar check: the map error column shows what it does not (an adaptive run meets the tolerance
where the kinks of the path are resolved for the *sum*, which can leave a map less accurate than a fixed run with
the same worst completeness error).

Last, the stopping rule on *untrained* models (issue: random initialisation used to refine most probes to the cap):
the same adaptive call on the random-init SmallCNN and on a random-init torchvision resnet18 at 64x64 (monitor
defaults: 16 nodes, tolerance 0.02, cap 128), evaluations per probe with the rule (flat floor + stall stop + no
refinement of degenerate maps) and without it (``--no-untrained`` skips this part).

Usage::

    python bench/adaptive_ig.py --threads 1    # 64 probes, starts 9 and 16 (the ExplanationMonitor default)
    python bench/adaptive_ig.py --quick        # 16 probes, shorter training
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn

from lightning_xai.attribution import _engine, explain_detailed


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


def run_ig(model: nn.Module, x: Tensor, target: Tensor, **options) -> tuple[Tensor, Tensor, Tensor, float]:
    """``(attributions, completeness relative error, evals per probe, seconds)``."""
    start = time.perf_counter()
    out = explain_detailed(model, x, target, ("integrated_gradients",), internal_batch_size=64, **options)
    seconds = time.perf_counter() - start
    if out.ig_relative_error is None or out.ig_evals is None:
        raise RuntimeError("explain_detailed returned no IG diagnostics")
    return out.maps["integrated_gradients"], out.ig_relative_error, out.ig_evals, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--start", default="9,16", help="adaptive IG's starting node counts, comma-separated")
    parser.add_argument("--max-steps", type=int, default=257)
    parser.add_argument("--fine", type=int, default=4, help="step of the fine search over fixed node counts")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-untrained", action="store_true", help="skip the untrained-model part")
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

    reference, _, _, _ = run_ig(model, x, target, n_steps=args.max_steps)

    def map_error(attr: Tensor) -> Tensor:
        return (attr - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1).clamp_min(1e-12)

    print(f"{'IG':<28} {'median err':>10} {'worst err':>10} {'evals':>7} {'time s':>7} {'map err med/worst':>18}")

    def show(label: str, err: Tensor, evals: Tensor, seconds: float, attr: Tensor) -> None:
        m = map_error(attr)
        print(f"{label:<28} {err.median().item():>10.4f} {err.max().item():>10.4f} {int(evals.sum()):>7} "
              f"{seconds:>7.2f} {m.median().item():>8.4f} / {m.max().item():.4f}")

    fixed: dict[int, tuple[Tensor, Tensor, float]] = {}

    def run_fixed(n: int) -> None:
        if n not in fixed:
            attr, err, evals, seconds = run_ig(model, x, target, n_steps=n)
            fixed[n] = (err, evals, seconds)
            show(f"fixed n_steps={n}", err, evals, seconds, attr)

    n = 3
    while n <= args.max_steps:
        run_fixed(n)
        n = 2 * n - 1

    for start in (int(v) for v in args.start.split(",")):
        attr, err, evals, seconds = run_ig(model, x, target, n_steps=start, tolerance=args.tolerance,
                                           max_steps=args.max_steps)
        show(f"adaptive tol={args.tolerance} from {start}", err, evals, seconds, attr)
        counts = torch.bincount(evals)
        print("  evals per probe (count x probes): "
              + ", ".join(f"{k} x{int(c)}" for k, c in enumerate(counts.tolist()) if c))
        print("  evals per probe, in probe order: " + " ".join(str(v) for v in evals.tolist()))

        worst = err.max().item()
        nested = sorted(fixed)
        reach = [n for n in nested if fixed[n][0].max().item() <= worst]
        if not reach:
            print(f"  no fixed node count up to {args.max_steps} reaches the adaptive worst error {worst:.4f}")
            continue
        lower = max([n for n in nested if n < reach[0]], default=reach[0])
        for n in range(lower + args.fine, reach[0], args.fine):  # fine search between the nested counts
            run_fixed(n)
        n_fixed = min(n for n, (e, _, _) in fixed.items() if e.max().item() <= worst)
        _, f_evals, f_seconds = fixed[n_fixed]
        print(f"  cheapest fixed IG with worst error <= {worst:.4f}: n_steps={n_fixed} "
              f"({int(f_evals.sum())} evals, {f_seconds:.2f} s)")
        print(f"  ratios adaptive / fixed: evals {int(evals.sum()) / int(f_evals.sum()):.3f}, "
              f"wall time {seconds / f_seconds:.3f}   (target <= 0.5)")

    if not args.no_untrained:
        untrained(args.probes)


def untrained(probes: int) -> None:
    """Adaptive IG's evaluations on random-init models, with and without the stopping rule for flat models."""
    import torchvision

    torch.manual_seed(1)
    models = {"SmallCNN random init, 32x32": (SmallCNN().eval(), 32),
              "resnet18 random init, 64x64": (torchvision.models.resnet18(weights=None, num_classes=10).eval(), 64)}
    print("\nuntrained models, adaptive IG from 16 nodes, tolerance 0.02, max_steps 128 (monitor defaults)")
    print(f"{'model':<30} {'rule':<5} {'evals/probe mean':>16} {'max':>5} {'at cap':>7} {'worst err':>10} {'time s':>7}")
    saved = (_engine.FLAT_FRACTION, _engine.STALL_RATIO)
    for label, (model, size) in models.items():
        x = torch.randn(probes, 3, size, size, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            target = model(x).argmax(1)
        for rule in ("on", "off"):
            if rule == "off":  # the previous rule: relative error only, refine until tolerance or cap
                _engine.FLAT_FRACTION, _engine.STALL_RATIO = 0.0, float("inf")
            try:
                _, err, evals, seconds = run_ig(model, x, target, n_steps=16, tolerance=0.02, max_steps=128)
            finally:
                _engine.FLAT_FRACTION, _engine.STALL_RATIO = saved
            print(f"{label:<30} {rule:<5} {evals.float().mean().item():>16.1f} {int(evals.max()):>5} "
                  f"{int((evals >= 128).sum()):>7} {err.max().item():>10.4f} {seconds:>7.2f}")


if __name__ == "__main__":
    main()
