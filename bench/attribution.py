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

``--methods``: every registered method instead, on ``--method-images`` probes of the same model: its time, the time
of its reference implementation where one exists (Captum / pytorch-grad-cam, same settings; ratio ours/theirs), its
cost per probe, and the model-randomisation sanity check (``lightning_xai.metrics.sanity_similarity``, all layers
re-initialised) on bench/adaptive_ig.py's SmallCNN trained briefly: mean Spearman similarity of the trained and the
randomised model's maps over 32 probes; a method passes below 0.5 (the monitor's ``metric_options['sanity']['threshold']``).

Usage::

    python bench/attribution.py            # 32 images, 32 steps
    python bench/attribution.py --methods --threads 1   # the per-method table (README "Methods")
    python bench/attribution.py --methods --sanity-only  # sanity check only: all layers and the top layer
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
    parser.add_argument("--methods", action="store_true", help="the per-method table instead")
    parser.add_argument("--method-images", type=int, default=8)
    parser.add_argument("--sanity-only", action="store_true",
                        help="with --methods: only the sanity check, all layers and the top layer randomised")
    args = parser.parse_args()
    if args.methods:
        if args.threads:
            torch.set_num_threads(args.threads)
        warnings.filterwarnings("ignore")
        methods_table(args)
        return
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


# Options of the per-method table (the methods' defaults otherwise); the references get the same settings.
TABLE_OPTIONS = {"integrated_gradients": {"n_steps": 32}, "occlusion": {"window": 8, "stride": 4},
                 "smoothgrad": {"n_samples": 16, "stdev": 0.3}, "lime": {"n_samples": 128, "grid": 8}}


def _references(net, x, target, size):  # noqa: ANN001, ANN202 - bench helper
    import pytorch_grad_cam as pgc
    from captum.attr import (
        Deconvolution,
        GuidedBackprop,
        InputXGradient,
        IntegratedGradients,
        Lime,
        NoiseTunnel,
        Occlusion,
        Saliency,
    )
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from lightning_xai.attribution.methods.lime import grid_segments

    targets = [ClassifierOutputTarget(int(t)) for t in target]

    def cam(cls):  # noqa: ANN001, ANN202
        def run() -> None:
            with cls(model=net, target_layers=[net.layer4]) as c:
                c(input_tensor=x.clone(), targets=targets)
        return run

    segments = grid_segments((size, size), 8, x.device)[None, None].expand(1, 3, size, size)

    def lime() -> None:
        for i in range(x.shape[0]):
            Lime(net).attribute(x[i:i + 1].clone(), target=int(target[i]), feature_mask=segments, n_samples=128,
                                perturbations_per_eval=64)

    return {
        "saliency": lambda: Saliency(net).attribute(x.clone(), target=target, abs=False),
        "integrated_gradients": lambda: IntegratedGradients(net).attribute(
            x.clone(), target=target, n_steps=32, method="riemann_trapezoid", internal_batch_size=64),
        "input_x_gradient": lambda: InputXGradient(net).attribute(x.clone(), target=target),
        "smoothgrad": lambda: NoiseTunnel(Saliency(net)).attribute(
            x.clone(), nt_type="smoothgrad", nt_samples=16, stdevs=0.3, target=target, abs=False,
            nt_samples_batch_size=8),
        "occlusion": lambda: Occlusion(net).attribute(x.clone(), sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4),
                                                     target=target, perturbations_per_eval=64),
        "guided_backprop": lambda: GuidedBackprop(net).attribute(x.clone(), target=target),
        "deconvnet": lambda: Deconvolution(net).attribute(x.clone(), target=target),
        "grad_cam": cam(pgc.GradCAM),
        "grad_cam_plus_plus": cam(pgc.GradCAMPlusPlus),
        "hires_cam": cam(pgc.HiResCAM),
        "layer_cam": cam(pgc.LayerCAM),
        "lime": lime,
    }


def methods_table(args: argparse.Namespace) -> None:
    import copy
    import sys
    from pathlib import Path

    from lightning_xai.attribution import available_methods, get_method
    from lightning_xai.metrics.sanity import sanity_similarity

    sys.path.insert(0, str(Path(__file__).parent))
    from adaptive_ig import SmallCNN, make_data, train

    def cnn_methods() -> list[str]:  # the table runs on CNNs; methods for vision transformers are left out
        return [name for name in available_methods() if get_method(name).requires is None]

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(args.method_images, 3, args.size, args.size)
    with torch.no_grad():
        target = net(x).argmax(1)
    references = _references(copy.deepcopy(net), x, target, args.size)

    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    small = SmallCNN()
    accuracy = train(small, 300, generator)
    probes, labels = make_data(32, generator)

    print(f"resnet18 random init, {args.method_images} images {args.size}x{args.size}, threads="
          f"{torch.get_num_threads()}, best of {args.repeats}; sanity on SmallCNN trained 300 steps (held-out "
          f"accuracy {accuracy:.2f}), 32 probes 32x32, all layers randomised")
    if args.sanity_only:
        print(f"{'method':<22} {'all layers':>10} {'top layer':>10}   (mean similarity; passes below 0.5)")
        for name in cnn_methods():
            opts = {name: TABLE_OPTIONS.get(name, {})}
            sims = [sanity_similarity(small, lambda m, name=name, opts=opts: explain(
                m, probes, labels, methods=(name,), options=opts), num_layers=k)[name].mean().item() for k in (None, 1)]
            print(f"{name:<22} {sims[0]:>10.2f} {sims[1]:>10.2f}")
        return
    print(f"{'method':<22} {'kind':<13} {'ours s':>7} {'ref s':>7} {'ratio':>6} {'sanity sim':>10} {'pass':>5}  cost")
    for name in cnn_methods():
        cls = get_method(name)
        opts = {name: TABLE_OPTIONS.get(name, {})}
        layer = "layer4" if cls.uses_layer else None
        ours = min(_timed(lambda n=name, lay=layer, o=opts: explain(net, x, target, methods=(n,), layer=lay, options=o))
                   for _ in range(args.repeats))
        ref = references.get(name)
        theirs = min(_timed(ref) for _ in range(args.repeats)) if ref is not None else float("nan")
        sim = sanity_similarity(small, lambda m, name=name, opts=opts: explain(m, probes, labels, methods=(name,),
                                                                               options=opts))[name].mean().item()
        print(f"{name:<22} {cls.kind:<13} {ours:>7.3f} {theirs:>7.3f} {ours / theirs:>6.2f} {sim:>10.2f} "
              f"{'yes' if sim < 0.5 else 'NO':>5}  {cls.cost}")


if __name__ == "__main__":
    main()
