"""Save the views' pictures of a run (read back from its TensorBoard event files) as PNGs, e.g. for the README.

For each image tag of the views (``xai/activations/top_channels``, ``xai/max_min/grid``,
``xai/activation_max/classes``, ``xai/dissection/units``, ``xai/attention_graphs/probes``) the event at the epoch asked for (by default the
last one) is written as ``<out>/views_<name>.png``; ``--epoch-index`` picks another logged epoch (0 = first).

    python tools/views_pictures.py runs/demo/full/version_0 --out docs
    python tools/views_pictures.py runs/demo/full/version_0 --out docs --epoch-index 5 --suffix _clean

``--projector I J ...`` also draws the projector's embeddings number I, J, ... (in ``projector_config.pbtxt``
order, one per logged epoch) as PCA scatter plots side by side, coloured by label: ``<out>/views_projector.png``
(TensorBoard's projector itself is interactive; this is a still for a document).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch
from google.protobuf import text_format
from PIL import Image, ImageDraw
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.projector import projector_config_pb2

TAGS = {
    "xai/activations/top_channels": "activations",
    "xai/max_min/grid": "max_min",
    "xai/activation_max/classes": "activation_max",
    "xai/dissection/units": "dissection",
    "xai/attention_graphs/probes": "attention_graphs",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="the run's log directory (holding its event files)")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--epoch-index", type=int, default=-1, help="which logged epoch (default: the last)")
    parser.add_argument("--suffix", default="", help="appended to the file names")
    parser.add_argument("--tags", nargs="*", default=list(TAGS), help="image tags to save")
    parser.add_argument("--projector", nargs="*", type=int, default=[], help="embedding indices to plot")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.projector:
        projector_still(Path(args.run), args.projector, Path(args.out) / "views_projector.png")
    acc = ea.EventAccumulator(args.run, size_guidance={ea.IMAGES: 0})
    acc.Reload()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for tag in args.tags:
        if tag not in acc.Tags()["images"]:
            print(f"{tag}: not in {args.run}")
            continue
        events = acc.Images(tag)
        event = events[args.epoch_index] if tag != "xai/attention_graphs/probes" else events[-1]
        path = out / f"views_{TAGS.get(tag, tag.replace('/', '_'))}{args.suffix}.png"
        Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB").save(path, optimize=True)
        print(f"{tag} (step {event.step}) -> {path}")


COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def projector_still(run: Path, indices: list[int], path: Path, side: int = 320) -> None:
    config = text_format.Parse((run / "projector_config.pbtxt").read_text(), projector_config_pb2.ProjectorConfig())
    panels = []
    for index in indices:
        emb = config.embeddings[index]
        x = torch.tensor([[float(v) for v in line.split("\t")]
                          for line in (run / emb.tensor_path).read_text().strip().split("\n")])
        rows = [line.split("\t") for line in (run / emb.metadata_path).read_text().strip().split("\n")]
        header, rows = rows[0], rows[1:]
        labels = [r[header.index("label")] for r in rows]
        names = sorted(set(labels))
        x = x - x.mean(0)
        _, _, v = torch.pca_lowrank(x, q=2, center=False)
        xy = x @ v[:, :2]
        xy = (xy - xy.min(0).values) / (xy.max(0).values - xy.min(0).values).clamp_min(1e-9)
        img = Image.new("RGB", (side, side + 20), "white")
        draw = ImageDraw.Draw(img)
        for (px, py), label in zip(xy.tolist(), labels):
            cx, cy = 10 + px * (side - 20), 30 + py * (side - 40)
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=COLOURS[names.index(label) % len(COLOURS)])
        draw.text((6, 4), f"{emb.tensor_name}  (PCA of {x.shape[1]}-d features)", fill="black")
        legend = "  ".join(names)
        draw.text((6, side + 4), legend, fill="black")
        x0 = 6
        for name in names:  # colour the legend words
            draw.text((x0, side + 4), name, fill=COLOURS[names.index(name) % len(COLOURS)])
            x0 += int(draw.textlength(name + "  "))
        panels.append(img)
    out = Image.new("RGB", (sum(p.width for p in panels) + 4 * (len(panels) - 1), panels[0].height), "white")
    x0 = 0
    for panel in panels:
        out.paste(panel, (x0, 0))
        x0 += panel.width + 4
    out.save(path, optimize=True)
    print(f"projector embeddings {indices} -> {path}")


if __name__ == "__main__":
    main()
