"""Cost of the overlays of one method and epoch: v0.1's grid vs the panels the monitor logs now.

Both paths are timed in the same process, interleaved, on the same probes and maps, each with the PNG encoder its writer uses,
1 torch thread:

- old: v0.1's ``make_overlay_grid`` (copied below, unchanged): every probe enlarged to >= 96 px by nearest
  neighbour *before* blending, colormap gathered channels-first, one Pillow caption strip per probe, 8 per row
  (786 px wide for 32 px probes, shown at about a third of its size by TensorBoard);
- new: :class:`lightning_xai.render.ProbeRenderer` (probes de-normalised and sized once per run), ``.render_groups``
  (panels of 8 probes, each filling TensorBoard's default image card, plus the tiles kept in a
  :class:`~lightning_xai.render.Timeline`, as the monitor does): blended
  at the probe's size (or straight at tile size), 64 px tiles in 4 columns (276 x 214 px), caption lines cached as
  bitmaps, probe id / epoch / flags on the picture; encoded by :func:`lightning_xai.render.encode_png` (one "up"
  filter, zlib level 1) instead of Pillow's per-row adaptive filtering.

Scenarios: the demo (16 shapes probes at 32 px, Grad-CAM of a small CNN at 8x8) and a larger-image run (16 probes
at 224 px, 7x7 maps, as a ResNet gives). Run: ``python bench/render.py [--repeats 30]``.
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from torchvision.utils import make_grid

from lightning_xai.attribution import grad_cam
from lightning_xai.datasets import SHAPES_MEAN, SHAPES_STD, ShapesDataset
from lightning_xai.render import ProbeRenderer, Timeline, denormalize, encode_png, normalize_maps
from lightning_xai.render.colormap import _cpu_lut


# ----------------------------------------------------------------------------- v0.1's path, kept for the comparison
def _old_font(size):
    font = ImageFont.load_default(size=size)
    ascent, descent = font.getmetrics()
    return font, ascent + descent


def _old_fit(draw, text, font, max_width):
    if draw.textlength(text, font=font) <= max_width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if draw.textlength(text[:mid].rstrip() + "\u2026", font=font) <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "\u2026"


def _old_caption(image, lines, size):
    font, line_height = _old_font(size)
    width = int(image.shape[2])
    height = len(lines) * line_height + 4
    strip = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        text = _old_fit(draw, line, font, width - 4)
        if text:
            draw.text((2, 2 + i * line_height), text, font=font, fill=(255, 255, 255))
    strip_t = torch.frombuffer(bytearray(strip.tobytes()), dtype=torch.uint8).view(height, width, 3).permute(2, 0, 1)
    return torch.cat([image, strip_t], dim=1)


def _old_colormap(maps01, name):
    values = torch.nan_to_num(maps01.detach().float(), nan=0.0, posinf=0.0, neginf=0.0).clamp(0.0, 1.0)
    idx = (values[:, 0] * 255).round().long()
    return _cpu_lut(name).to(maps01.device)[idx].permute(0, 3, 1, 2).contiguous()


def old_grid(images, heatmaps, captions, *, alpha=0.5, colormap="jet", mean=None, std=None, nrow=8, upscale_to=96):
    images01 = denormalize(images, mean, std)
    n, _, h, w = images01.shape
    k = max(1, math.ceil(upscale_to / min(h, w)))
    if k > 1:
        images01 = F.interpolate(images01, scale_factor=k, mode="nearest")
    maps01, degenerate = normalize_maps(heatmaps)
    maps01 = F.interpolate(maps01, size=tuple(images01.shape[-2:]), mode="bilinear", align_corners=False).clamp(0, 1)
    blended = (1.0 - alpha) * images01 + alpha * _old_colormap(maps01, colormap)
    blended = torch.where(degenerate.view(-1, 1, 1, 1), images01, blended)
    cells = (torch.nan_to_num(blended, nan=0.0).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    size = max(8, min(16, (k * w) // 9))
    captioned = torch.stack([_old_caption(cells[i], captions[i], size) for i in range(n)])
    return make_grid(captioned, nrow=nrow, padding=2, pad_value=255)


# ----------------------------------------------------------------------------- shared
def new_encode(panels: list[torch.Tensor]) -> bytes:
    return b"".join(encode_png(panel) for panel in panels)


def old_encode(img: torch.Tensor) -> bytes:
    """What v0.1's TensorBoardWriter.add_image does with a uint8 (3, H, W) image (Pillow PNG, zlib level 1)."""
    buffer = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class SmallCNN(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))

    def forward(self, x):
        return self.head(self.features(x))


def demo_scenario():
    data = ShapesDataset(16, image_size=32, seed=3, marker="class", shortcut_strength=1.0)
    images = torch.stack([data[i][0] for i in range(16)])
    labels = torch.tensor([int(data[i][1]) for i in range(16)])
    torch.manual_seed(0)
    model = SmallCNN()
    maps = grad_cam(model, images, labels, layer="features")
    maps = F.interpolate(maps, size=(8, 8), mode="area")  # what the layer resolves; rendering upsamples it again
    return images, maps, labels, data.classes, SHAPES_MEAN, SHAPES_STD


def large_scenario():
    g = torch.Generator().manual_seed(0)
    images = F.interpolate(torch.rand(16, 3, 28, 28, generator=g), size=(224, 224), mode="bilinear")
    maps = torch.rand(16, 1, 7, 7, generator=g)
    labels = torch.arange(16) % 10
    return images, maps, labels, [f"class_{i}" for i in range(10)], None, None


def time_once(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run(name, scenario, repeats):
    images, maps, labels, classes, mean, std = scenario()
    pred = (labels + torch.arange(len(labels)) % 3 // 2) % len(classes)
    old_captions = [[f"y={classes[y]}", f"p={classes[p]} 0.87"] for y, p in zip(labels.tolist(), pred.tolist())]
    new_captions = [[f"#{7 * i} {classes[y]}", f"p={classes[p]} .87"]
                    for i, (y, p) in enumerate(zip(labels.tolist(), pred.tolist()))]
    flagged = [i % 5 == 1 for i in range(len(labels))]

    def old_render():
        return old_grid(images, maps, old_captions, mean=mean, std=std)

    t_setup, renderer = time_once(lambda: ProbeRenderer(images, mean=mean, std=std))  # once per run
    timeline = Timeline()

    def new_render():  # what the monitor does: panels of 8 probes, and the tiles kept for the timeline
        panels, tiles = renderer.render_groups(maps, new_captions, title="grad_cam | epoch 6", flagged=flagged,
                                               caption_lines=2)
        timeline.add("grad_cam", 6, tiles, flagged)
        return [panel for panel, _, _ in panels]

    times = {"old render": [], "old encode": [], "new render": [], "new encode": []}
    for i in range(repeats + 2):  # interleaved; the first two rounds warm caches and allocators
        for label, render, encode in (("old", old_render, old_encode), ("new", new_render, new_encode)):
            t_render, img = time_once(render)
            t_encode, png = time_once(lambda img=img, encode=encode: encode(img))
            if i >= 2:
                times[f"{label} render"].append(t_render)
                times[f"{label} encode"].append(t_encode)
            size = ([tuple(p.shape[1:]) for p in (img if isinstance(img, list) else [img])], len(png))
            if label == "old":
                old_size = size
            else:
                new_size = size
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    old_total, new_total = med["old render"] + med["old encode"], med["new render"] + med["new encode"]
    print(f"\n{name}: 16 probes, image {tuple(images.shape[-2:])}, median of {repeats} interleaved rounds")
    print(f"  old grid : one {old_size[0][0][1]}x{old_size[0][0][0]} px image, {old_size[1] / 1024:.0f} KiB PNG   "
          f"render {med['old render']:6.2f} ms + encode {med['old encode']:6.2f} ms = {old_total:6.2f} ms")
    print(f"  new      : {len(new_size[0])} panels of {new_size[0][0][1]}x{new_size[0][0][0]} px, "
          f"{new_size[1] / 1024:.0f} KiB PNG   "
          f"render {med['new render']:6.2f} ms + encode {med['new encode']:6.2f} ms = {new_total:6.2f} ms")
    print(f"  (new: preparing the probes once per run took {t_setup * 1e3:.2f} ms, not counted per image)")
    print(f"  new / old per method and epoch: {new_total / old_total:.3f}x ({old_total / new_total:.1f}x cheaper); "
          f"render alone {med['new render'] / med['old render']:.3f}x")
    return old_total / new_total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    np.random.seed(0)
    print("Overlays of one method and epoch, rendered and PNG-encoded: v0.1 grid vs panels (1 torch thread)")
    run("demo (shapes, 32 px)", demo_scenario, args.repeats)
    run("large images (224 px)", large_scenario, args.repeats)


if __name__ == "__main__":
    main()
