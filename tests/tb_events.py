"""Test helper: read back what was logged to TensorBoard event files.

Usage (``tests/`` is on ``sys.path`` under pytest)::

    from tb_events import read_events

    events = read_events(tmp_path)                  # a log dir (searched recursively) or one event file
    step, width, height, pixels = events["images"]["xai/grad_cam/overlay"][0]   # pixels: uint8 HWC numpy (RGB)
    events["scalars"]["xai/grad_cam/stability"]      # [(step, value), ...]
    events["texts"]["xai/drift"]                     # [(step, str), ...]
    events["files"]                                  # event files read, sorted

Text keys have the ``/text_summary`` suffix that ``SummaryWriter.add_text`` appends removed.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.util import tensor_util

__all__ = ["event_files", "read_events"]

_TEXT_SUFFIX = "/text_summary"
_SIZE_GUIDANCE = {ea.IMAGES: 0, ea.SCALARS: 0, ea.TENSORS: 0, ea.HISTOGRAMS: 0, ea.COMPRESSED_HISTOGRAMS: 0}


def event_files(log_dir: str | os.PathLike[str]) -> list[str]:
    """All ``events.out.tfevents.*`` files under ``log_dir`` (recursively), sorted; ``[log_dir]`` if it is a file."""
    path = Path(log_dir)
    if path.is_file():
        return [str(path)]
    return sorted(str(p) for p in path.rglob("events.out.tfevents.*") if p.is_file())


def _decode_text(tensor_proto: Any) -> str:
    array = tensor_util.make_ndarray(tensor_proto)
    parts = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in np.asarray(array).reshape(-1)]
    return "\n".join(parts)


def read_events(log_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Load every image, scalar and text event under ``log_dir``.

    Returns:
        ``{"images": {tag: [(step, width, height, uint8 HxWxC numpy)]}, "scalars": {tag: [(step, value)]},
        "texts": {tag: [(step, str)]}, "files": [event file paths]}``; within a tag, events are in file order
        (files sorted by name) and then in the order they were written. Nothing is dropped (size guidance 0).
    """
    files = event_files(log_dir)
    images: dict[str, list[tuple[int, int, int, np.ndarray]]] = {}
    scalars: dict[str, list[tuple[int, float]]] = {}
    texts: dict[str, list[tuple[int, str]]] = {}
    histograms: dict[str, list[tuple[int, int, float, float]]] = {}
    for file in files:
        acc = ea.EventAccumulator(file, size_guidance=_SIZE_GUIDANCE)
        acc.Reload()
        tags = acc.Tags()
        for tag in tags.get(ea.IMAGES, []):
            for event in acc.Images(tag):
                pixels = np.array(Image.open(io.BytesIO(event.encoded_image_string)))
                images.setdefault(tag, []).append((int(event.step), int(event.width), int(event.height), pixels))
        for tag in tags.get(ea.SCALARS, []):
            scalars.setdefault(tag, []).extend((int(e.step), float(e.value)) for e in acc.Scalars(tag))
        for tag in tags.get(ea.TENSORS, []):
            if acc.SummaryMetadata(tag).plugin_data.plugin_name != "text":
                continue
            key = tag[: -len(_TEXT_SUFFIX)] if tag.endswith(_TEXT_SUFFIX) else tag
            texts.setdefault(key, []).extend((int(e.step), _decode_text(e.tensor_proto)) for e in acc.Tensors(tag))
        for tag in tags.get(ea.HISTOGRAMS, []):
            histograms.setdefault(tag, []).extend(
                (int(e.step), int(e.histogram_value.num), float(e.histogram_value.min), float(e.histogram_value.max))
                for e in acc.Histograms(tag)
            )
    return {"images": images, "scalars": scalars, "texts": texts, "histograms": histograms, "files": files}
