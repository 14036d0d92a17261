"""Save the views' pictures of a run (read back from its TensorBoard event files) as PNGs, e.g. for the README.

For each image tag of the views (``xai/activations/top_channels``, ``xai/max_min/grid``,
``xai/activation_max/classes``, ``xai/attention_graphs/probes``) the event at the epoch asked for (by default the
last one) is written as ``<out>/views_<name>.png``; ``--epoch-index`` picks another logged epoch (0 = first).

    python tools/views_pictures.py runs/demo/full/version_0 --out docs
    python tools/views_pictures.py runs/demo/full/version_0 --out docs --epoch-index 5 --suffix _clean
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea

TAGS = {
    "xai/activations/top_channels": "activations",
    "xai/max_min/grid": "max_min",
    "xai/activation_max/classes": "activation_max",
    "xai/attention_graphs/probes": "attention_graphs",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="the run's log directory (holding its event files)")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--epoch-index", type=int, default=-1, help="which logged epoch (default: the last)")
    parser.add_argument("--suffix", default="", help="appended to the file names")
    parser.add_argument("--tags", nargs="*", default=list(TAGS), help="image tags to save")
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    main()
