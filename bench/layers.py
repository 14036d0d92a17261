"""Cost of the automatic Grad-CAM layer choice (one traced forward + one backward on one image) vs a plain forward.

    PYTHONPATH=$PWD python bench/layers.py

Prints, per model: the chosen layer, its reshape, and the median time of `gradcam_layer` and of one no-grad forward
of the same image (CPU, random weights).
"""

from __future__ import annotations

import statistics
import time

import torch
import torchvision

from lightning_xai.attribution import gradcam_layer


def _median(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    models = {
        "resnet18 @64": (torchvision.models.resnet18(num_classes=10), 64),
        "vgg11 @32": (torchvision.models.vgg11(num_classes=10), 32),
        "VisionTransformer(L=4, d=64) @32": (torchvision.models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10), 32),
        "swin_t @64": (torchvision.models.swin_t(num_classes=10), 64),
    }
    try:
        import timm

        models["timm vit_tiny_patch16_224 @64"] = (timm.create_model("vit_tiny_patch16_224", img_size=64,
                                                                     pretrained=False, num_classes=10), 64)
    except ImportError:
        pass
    print(f"{'model':36s} {'layer':36s} {'reshape':34s} {'choose (ms)':>11s} {'forward (ms)':>12s}")
    for name, (net, size) in models.items():
        net.eval()
        x = torch.randn(1, 3, size, size)
        found = gradcam_layer(net, x)
        choose = _median(lambda net=net, x=x: gradcam_layer(net, x))

        def forward(net=net, x=x):
            with torch.no_grad():
                net(x)

        fwd = _median(forward)
        print(f"{name:36s} {found.name:36s} {found.reshape!r:34s} {choose * 1e3:11.1f} {fwd * 1e3:12.1f}")


if __name__ == "__main__":
    main()
