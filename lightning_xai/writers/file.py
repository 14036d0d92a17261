"""Write explanation results as plain files (PNG, CSV, Markdown): the fallback when there is no TensorBoard."""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from PIL import Image
from torch import Tensor

from lightning_xai.writers.base import check_image, check_step, check_tag, finite_scalars, finite_values

__all__ = ["FileWriter"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _tag_dirname(tag: str) -> str:
    """``'xai/grad_cam/overlay'`` -> ``'xai_grad_cam_overlay'``: characters other than ``[A-Za-z0-9._-]`` -> ``_``."""
    name = _UNSAFE.sub("_", tag)
    return name.replace(".", "_") if set(name) <= {"."} else name


class FileWriter:
    """Write images, scalars and text under ``log_dir``; same interface as :class:`TensorBoardWriter`.

    Layout (directories and files are created on first use):

    - images: ``log_dir/xai_images/<tag>/step_<step:07d>.png`` (RGB PNG), where ``<tag>`` has ``/`` and every
      character other than ``[A-Za-z0-9._-]`` replaced by ``_``;
    - scalars: appended to ``log_dir/xai_scalars.csv`` with header ``step,tag,value`` (non-finite values skipped);
    - text: appended to ``log_dir/xai_text.md`` as a ``## <tag> (step <step>)`` section.

    Every call opens, writes and closes its file, so :meth:`flush` has nothing to do and a crash loses nothing.

    Args:
        log_dir: directory to write into.

    Attributes:
        skipped_counts: per tag, how many non-finite scalar values were skipped so far.

    Example::

        >>> import tempfile, torch
        >>> with tempfile.TemporaryDirectory() as d:
        ...     writer = FileWriter(d)
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

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise TypeError(f"`log_dir` must be a non-empty path (str or os.PathLike), got {log_dir!r}")
        self.log_dir = Path(log_dir)
        if self.log_dir.exists() and not self.log_dir.is_dir():
            raise ValueError(f"`log_dir` must be a directory, got an existing file: {str(self.log_dir)!r}")
        self.skipped_counts: Counter[str] = Counter()

    def image_path(self, tag: str, step: int) -> Path:
        """The PNG path :meth:`add_image` writes for ``tag`` at ``step``."""
        return self.log_dir / self.IMAGES_DIR / _tag_dirname(tag) / f"step_{step:07d}.png"

    def add_image(self, tag: str, img: Tensor, step: int) -> None:
        """Save a ``uint8`` RGB image ``(3, H, W)`` as a PNG (overwriting one of the same tag and step)."""
        check_tag(tag)
        step = check_step(step)
        img = check_image(img)
        path = self.image_path(tag, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()).save(path, format="PNG", compress_level=1)

    def add_scalars(self, values: Mapping[str, float], step: int) -> list[str]:
        """Append one ``step,tag,value`` row per finite value; return the tags skipped as non-finite."""
        step = check_step(step)
        kept, skipped = finite_scalars(values)
        self.skipped_counts.update(skipped)
        if kept:
            path = self.log_dir / self.SCALARS_FILE
            self.log_dir.mkdir(parents=True, exist_ok=True)
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
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / self.HISTOGRAM_FILE
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
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str, got {type(text).__name__}")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / self.TEXT_FILE).open("a", encoding="utf-8") as f:
            f.write(f"## {tag} (step {step})\n\n{text.rstrip()}\n\n")

    def flush(self) -> None:
        """Nothing to do: every call writes and closes its file."""
