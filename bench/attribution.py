"""Time the attribution bundle against IG alone, Captum, pytorch-grad-cam and the physical floor, in one run.

Same model (random-init torchvision resnet18, eval mode) and probes (32 random 64x64 images, predicted class as
target) for every contender; each timing is the minimum over ``--repeats`` rounds, contenders interleaved within a
round so background load hits them alike.

- ours/explain: ``explain`` with grad_cam + saliency + integrated_gradients (``n_steps``, automatic batch size)
- ours/IG: ``integrated_gradients`` alone, same ``n_steps``
- captum/3 calls: ``Saliency`` + ``LayerGradCam`` (+ bilinear interpolate) + ``IntegratedGradients``
  (``riemann_trapezoid``, same ``n_steps``, ``internal_batch_size`` = the rows ours chose)
- grad-cam: pytorch-grad-cam ``GradCAM`` on ``layer4`` vs ours ``grad_cam``
- floor: ``n_steps`` x (one batched forward of the N probes + ``autograd.grad`` w.r.t. the input)

Usage::

    python bench/attribution.py            # 32 images, 32 steps
    python bench/attribution.py --quick    # 8 images, 8 steps, 1 round
    python bench/attribution.py --threads 1  # pin torch threads (stabler on a shared machine)
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import torch
import torchvision

from lightning_xai.attribution import _batching, explain, grad_cam, integrated_gradients


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for this benchmark")
    parser.add_argument("--quick", action="store_true", help="8 images, 8 steps, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.images, args.steps, args.repeats = 8, 8, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)

    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(args.images, 3, args.size, args.size)
    with torch.no_grad():
        target = net(x).argmax(1)
    n, steps = args.images, args.steps

    chosen: list[int] = []
    real_auto_rows = _batching.auto_rows

    def spy(bytes_per_row: float, device: torch.device) -> int:
        chosen.append(real_auto_rows(bytes_per_row, device))
        return chosen[-1]

    _batching.auto_rows = spy
    explain(net, x[:2], target[:2], n_steps=2)  # warm-up (oneDNN primitives, layer discovery) and row choice
    rows = chosen[-1]

    def floor() -> None:
        for _ in range(steps):
            inp = x.clone().requires_grad_(True)
            score = net(inp).gather(1, target[:, None]).sum()
            torch.autograd.grad(score, inp)

    def captum_three() -> None:
        Saliency(net).attribute(x.clone(), target=target, abs=False)
        cam = LayerGradCam(net, net.layer4).attribute(x.clone(), target=target, relu_attributions=True)
        LayerAttribution.interpolate(cam, (args.size, args.size), "bilinear")
        IntegratedGradients(net).attribute(x.clone(), target=target, n_steps=steps, method="riemann_trapezoid",
                                           internal_batch_size=rows)

    gc = GradCAM(model=net, target_layers=[net.layer4])
    targets = [ClassifierOutputTarget(int(t)) for t in target]

    contenders: dict[str, Callable[[], object]] = {
        "ours/explain(3)": lambda: explain(net, x, target, n_steps=steps),
        "ours/IG": lambda: integrated_gradients(net, x, target, n_steps=steps),
        "floor": floor,
        "captum/3 calls": captum_three,
        "ours/grad_cam": lambda: grad_cam(net, x, target, layer="layer4"),
        "pytorch-grad-cam": lambda: gc(input_tensor=x.clone(), targets=targets),
    }
    best = {name: float("inf") for name in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            best[name] = min(best[name], _timed(fn))
    gc.__exit__(None, None, None)  # remove pytorch-grad-cam's hooks

    print(f"resnet18 random init, {n} images {args.size}x{args.size}, {steps} IG steps, "
          f"threads={torch.get_num_threads()}, auto internal_batch_size={rows} rows, best of {args.repeats}")
    for name, seconds in best.items():
        print(f"  {name:<18} {seconds:8.3f} s")
    print("ratios:")
    print(f"  explain(3) / IG alone          {best['ours/explain(3)'] / best['ours/IG']:.3f}   (target <= 1.05)")
    print(f"  explain(3) / captum 3 calls    {best['ours/explain(3)'] / best['captum/3 calls']:.3f}   (target < 1)")
    print(f"  IG / floor                     {best['ours/IG'] / best['floor']:.3f}   (target <= 1.1)")
    print(f"  explain(3) / floor             {best['ours/explain(3)'] / best['floor']:.3f}")
    print(f"  grad_cam / pytorch-grad-cam    {best['ours/grad_cam'] / best['pytorch-grad-cam']:.3f}")


if __name__ == "__main__":
    main()
