"""The README's segmentation picture, from a real run: ``docs/segmentation_overlays.png``.

Trains the bench's small context U-Net (``bench/drift_segmentation.py``) on pixel-labelled shapes (48 px, 4 shape
classes + background) for a few epochs with ``ExplanationMonitor(max_overhead=None)`` (zero arguments otherwise, so
every default method runs every epoch), reads the last epoch's overlay panels back from the TensorBoard event
files and puts them side by side (one per method; each tile outlines the explained class region in white).

    python tools/segmentation_pictures.py --out docs            # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import io
import sys
import warnings
from pathlib import Path

from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import pytorch_lightning as pl  # noqa: E402
from drift_segmentation import NUM_SHAPES, Segmenter  # noqa: E402

from lightning_xai import ExplanationMonitor  # noqa: E402
from lightning_xai.datasets import SHAPES_MEAN, SHAPES_STD, SegmentedShapes, ShapesDataset  # noqa: E402

METHODS = ("grad_cam", "saliency", "integrated_gradients")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs")
    parser.add_argument("--root", default="/tmp/segmentation_pictures")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--size", type=int, default=48)
    args = parser.parse_args(argv)
    pl.seed_everything(0, workers=True)
    train = SegmentedShapes(ShapesDataset(512, image_size=args.size, num_classes=NUM_SHAPES, seed=11))
    val = SegmentedShapes(ShapesDataset(64, image_size=args.size, num_classes=NUM_SHAPES, seed=12))
    monitor = ExplanationMonitor(num_probes=8, methods=METHODS, max_overhead=None,
                                 display={"mean": list(SHAPES_MEAN), "std": list(SHAPES_STD),
                                          "class_names": val.classes})
    logger = pl.loggers.TensorBoardLogger(args.root, name="segmentation", version=0)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=logger,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[monitor])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Segmenter(), DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=64))
    events = ea.EventAccumulator(logger.log_dir, size_guidance={ea.IMAGES: 0})
    events.Reload()
    panels = []
    for m in METHODS:
        last = events.Images(f"xai/{m}/overlay")[-1]
        panels.append(Image.open(io.BytesIO(last.encoded_image_string)).convert("RGB"))
    gap = 8
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, max(p.height for p in panels)), (255, 255, 255))
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + gap
    out = Path(args.out) / "segmentation_overlays.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    print(f"wrote {out} ({canvas.width} x {canvas.height}) from {logger.log_dir}; layer {monitor.layer_name}; "
          f"probe classes {[val.classes[c] for c in monitor.probe_set.labels.tolist()]}")


if __name__ == "__main__":
    main()
