"""Plain files (PNG, CSV, Markdown, TSV): the sink for CSV loggers, no logger, and loggers the monitor does not know."""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin
from torch import Tensor

from lightning_xai.writers.base import (
    check_embedding,
    check_image,
    check_step,
    check_tag,
    check_text,
    finite_scalars,
    finite_values,
    hwc,
)

__all__ = ["FileSink", "FileWriter", "next_version_dir"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _tag_dirname(tag: str) -> str:
    """``'xai/grad_cam/overlay'`` -> ``'xai_grad_cam_overlay'``: characters other than ``[A-Za-z0-9._-]`` -> ``_``."""
    name = _UNSAFE.sub("_", tag)
    return name.replace(".", "_") if set(name) <= {"."} else name


def next_version_dir(root: str | os.PathLike[str]) -> Path:
    """Create and return ``root/version_<n>`` with the smallest ``n`` not taken yet (a fresh directory per run).

    Example::

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     [next_version_dir(d).name for _ in range(2)]
        ['version_0', 'version_1']
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    taken = {p.name for p in root.iterdir()}
    n = 0
    while True:
        candidate = root / f"version_{n}"
        if candidate.name not in taken:
            try:
                candidate.mkdir()  # atomic: two processes never get the same directory
                return candidate
            except FileExistsError:
                pass
        n += 1


class FileSink:
    """Write images, scalars, text and embeddings as files under ``log_dir``; a :class:`~lightning_xai.writers.Sink`.

    Layout (directories and files are created on first use):

    - images: ``log_dir/xai_images/<tag>/step_<step:07d>.png`` (RGB PNG), where ``<tag>`` has ``/`` and every
      character other than ``[A-Za-z0-9._-]`` replaced by ``_``;
    - scalars: appended to ``log_dir/xai_scalars.csv`` with header ``step,tag,value`` (non-finite values skipped);
    - text: appended to ``log_dir/xai_text.md`` as a ``## <tag> (step <step>)`` section;
    - histograms: appended to ``log_dir/xai_histograms.csv`` (``step,tag,values``);
    - embeddings: ``log_dir/xai_embeddings/<tag>/step_<step:07d>/`` with ``features.tsv`` and ``metadata.tsv``
      (the TensorBoard projector's formats) and ``thumbnails.png`` when images are given.

    Files are appended to, so a resumed run continues them; the monitor gives every new run its own directory
    (a logger's version directory, or :func:`next_version_dir`). Every call opens, writes and closes its file, so :meth:`flush` has nothing to do and a crash loses nothing.

    Args:
        log_dir: directory to write into.
        scalars: write scalars to ``xai_scalars.csv``; ``False`` next to a CSV logger, whose ``metrics.csv`` already
            gets them through ``log_metrics``.

    Attributes:
        skipped_counts: per tag, how many non-finite scalar values were skipped so far.

    Example::

        >>> import tempfile, torch
        >>> with tempfile.TemporaryDirectory() as d:
        ...     writer = FileSink(d)
        ...     writer.add_image("xai/grad_cam/overlay", torch.zeros(3, 8, 8, dtype=torch.uint8), step=5)
        ...     writer.add_scalars({"xai/grad_cam/stability": 0.5}, step=5)
        ...     sorted(str(p.relative_to(d)) for p in Path(d).rglob("*.*"))
        []
        ['xai_images/xai_grad_cam_overlay/step_0000005.png', 'xai_scalars.csv']
    """

    IMAGES_DIR = "xai_images"
    SCALARS_FILE = "xai_scalars.csv"
    TEXT_FILE = "xai_text.md"
    HISTOGRAM_FILE = "xai_histograms.csv"
    EMBEDDINGS_DIR = "xai_embeddings"

    supports_images = True
    supports_text = True
    supports_histograms = True
    supports_embedding = True
    supports_custom_scalars = False

    def __init__(self, log_dir: str | os.PathLike[str], *, scalars: bool = True) -> None:
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise TypeError(f"`log_dir` must be a non-empty path (str or os.PathLike), got {log_dir!r}")
        self.root = Path(log_dir)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"`log_dir` must be a directory, got an existing file: {str(self.root)!r}")
        self.skipped_counts: Counter[str] = Counter()
        self.write_scalars = bool(scalars)

    def __repr__(self) -> str:
        return f"FileSink({self.log_dir!r})"

    @property
    def log_dir(self) -> str:
        return str(self.root)

    def image_path(self, tag: str, step: int) -> Path:
        """The PNG path :meth:`add_image` writes for ``tag`` at ``step``."""
        return self.root / self.IMAGES_DIR / _tag_dirname(tag) / f"step_{step:07d}.png"

    def add_image(self, tag: str, img: Tensor, step: int, caption: str | None = None) -> None:
        """Save a ``uint8`` RGB image ``(3, H, W)`` as a PNG (overwriting one of the same tag and step); a caption
        goes into the PNG's ``Description`` text chunk."""
        check_tag(tag)
        step = check_step(step)
        img = check_image(img)
        path = self.image_path(tag, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        info = None
        if caption is not None:
            info = PngImagePlugin.PngInfo()
            info.add_text("Description", check_text(caption))
        Image.fromarray(hwc(img)).save(path, format="PNG", compress_level=1, pnginfo=info)

    def add_scalars(self, values: Mapping[str, float], step: int) -> list[str]:
        """Append one ``step,tag,value`` row per finite value; return the tags skipped as non-finite."""
        step = check_step(step)
        kept, skipped = finite_scalars(values)
        self.skipped_counts.update(skipped)
        if kept and self.write_scalars:
            path = self.root / self.SCALARS_FILE
            self.root.mkdir(parents=True, exist_ok=True)
            new = not path.exists() or path.stat().st_size == 0
            with path.open("a", newline="", encoding="utf-8") as f:
                rows = csv.writer(f)
                if new:
                    rows.writerow(["step", "tag", "value"])
                for tag, value in kept.items():
                    rows.writerow([step, tag, repr(value)])
        return skipped

    def add_histogram(self, tag: str, values: Tensor, step: int) -> None:
        """Append the finite entries of ``values`` to ``xai_histograms.csv`` (columns step, tag, values)."""
        check_tag(tag)
        step = check_step(step)
        values = finite_values(values)
        if not values.numel():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / self.HISTOGRAM_FILE
        new = not path.exists()
        with path.open("a", newline="", encoding="utf-8") as f:
            rows = csv.writer(f)
            if new:
                rows.writerow(["step", "tag", "values"])
            rows.writerow([step, tag, " ".join(repr(v) for v in values.tolist())])

    def add_text(self, tag: str, text: str, step: int) -> None:
        """Append ``text`` to ``xai_text.md`` under a ``## <tag> (step <step>)`` heading."""
        check_tag(tag)
        step = check_step(step)
        check_text(text)
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / self.TEXT_FILE).open("a", encoding="utf-8") as f:
            f.write(f"## {tag} (step {step})\n\n{text.rstrip()}\n\n")

    def add_embedding(self, features: Tensor, metadata: Sequence[Any] | None = None, label_img: Tensor | None = None,
                      step: int = 0, tag: str = "default", metadata_header: Sequence[str] | None = None) -> None:
        """Write ``features.tsv`` (one row per point), ``metadata.tsv`` (one label per row; with ``metadata_header``
        a header line, then one line of columns per row) and ``thumbnails.png`` (the images side by side, in row
        order)."""
        check_tag(tag)
        step = check_step(step)
        features, metadata, label_img, header = check_embedding(features, metadata, label_img, metadata_header)
        folder = self.root / self.EMBEDDINGS_DIR / _tag_dirname(tag) / f"step_{step:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "features.tsv").open("w", encoding="utf-8") as f:
            for row in features.tolist():
                f.write("\t".join(repr(v) for v in row) + "\n")
        if metadata is not None:
            with (folder / "metadata.tsv").open("w", encoding="utf-8") as f:
                for row in ([header] if header is not None else []) + metadata:
                    cells = row if isinstance(row, (list, tuple)) else [row]
                    f.write("\t".join(str(c).replace("\t", " ").replace("\n", " ") for c in cells) + "\n")
        if label_img is not None:
            strip = label_img.permute(1, 2, 0, 3).reshape(3, label_img.shape[2], -1)
            Image.fromarray(hwc(strip)).save(folder / "thumbnails.png", format="PNG", compress_level=1)

    def add_custom_scalars_layout(self, layout: Mapping[str, Any]) -> None:
        """Not stored: a layout is a TensorBoard feature (``supports_custom_scalars`` is False)."""

    def flush(self) -> None:
        """Nothing to do: every call writes and closes its file."""

    def close(self) -> None:
        """Nothing to do: no file stays open."""


#: The v0.1 name of :class:`FileSink`.
FileWriter = FileSink
