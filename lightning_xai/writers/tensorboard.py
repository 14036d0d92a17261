"""Write explanation results through a TensorBoard ``SummaryWriter``."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Mapping
from typing import Any

from PIL import Image
from torch import Tensor

from lightning_xai.writers.base import check_image, check_step, check_tag, finite_scalars, finite_values

__all__ = ["TensorBoardWriter"]

_REQUIRED = ("add_image", "add_scalar", "add_text")


class TensorBoardWriter:
    """Adapter from the :class:`~lightning_xai.writers.Writer` interface to a ``SummaryWriter``-like object.

    Works with ``torch.utils.tensorboard.SummaryWriter``, tensorboardX's, and Lightning's
    ``TensorBoardLogger.experiment``. Images are passed as ``uint8`` with ``dataformats="CHW"``, so TensorBoard
    stores them as they are (a float image would be multiplied by 255). Non-finite scalars are never written.

    Args:
        summary_writer: an object with ``add_image``, ``add_scalar`` and ``add_text`` (and optionally ``flush``).

    Attributes:
        skipped_counts: per tag, how many non-finite scalar values were skipped so far.

    Example::

        >>> import tempfile, torch
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> with tempfile.TemporaryDirectory() as d:
        ...     sw = SummaryWriter(d)
        ...     writer = TensorBoardWriter(sw)
        ...     writer.add_image("xai/grad_cam/overlay", torch.zeros(3, 8, 8, dtype=torch.uint8), step=0)
        ...     writer.add_scalars({"xai/grad_cam/stability": 0.9, "xai/saliency/stability": float("nan")}, step=0)
        ...     sw.close()
        ['xai/saliency/stability']
    """

    def __init__(self, summary_writer: Any) -> None:
        missing = [name for name in _REQUIRED if not callable(getattr(summary_writer, name, None))]
        if missing:
            raise TypeError(
                f"`summary_writer` must be a SummaryWriter-like object with {', '.join(_REQUIRED)}; "
                f"{type(summary_writer).__name__} lacks {', '.join(missing)} "
                "(for a Lightning TensorBoardLogger pass `logger.experiment`)"
            )
        self.summary_writer = summary_writer
        self.skipped_counts: Counter[str] = Counter()

    def add_image(self, tag: str, img: Tensor, step: int) -> None:
        """Log a ``uint8`` RGB image of shape ``(3, H, W)`` under ``tag`` at ``step``."""
        check_tag(tag)
        step = check_step(step)
        img = check_image(img)
        get_file_writer = getattr(self.summary_writer, "_get_file_writer", None)
        if not callable(get_file_writer):
            self.summary_writer.add_image(tag, img, global_step=step, dataformats="CHW")
            return
        # Same record as add_image, but the PNG is encoded at zlib level 1: encoding is most of the monitor's
        # per-epoch cost after the explanation itself (48 -> 21 ms per grid, files ~6% larger; bench/overhead.py).
        from tensorboard.compat.proto.summary_pb2 import Summary

        height, width = img.shape[1:]
        buffer = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).contiguous().cpu().numpy()).save(buffer, format="PNG", compress_level=1)
        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue())
        get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def add_scalars(self, values: Mapping[str, float], step: int) -> list[str]:
        """Log each finite value as its own scalar (``add_scalar(tag, value, step)``).

        Returns:
            The tags whose value was non-finite and therefore not written (also counted in ``skipped_counts``).
        """
        step = check_step(step)
        kept, skipped = finite_scalars(values)
        for tag, value in kept.items():
            self.summary_writer.add_scalar(tag, value, global_step=step)
        self.skipped_counts.update(skipped)
        return skipped

    def add_histogram(self, tag: str, values: Tensor, step: int) -> None:
        """Log the distribution of the finite entries of ``values`` (nothing if there are none)."""
        check_tag(tag)
        step = check_step(step)
        values = finite_values(values)
        if values.numel():
            self.summary_writer.add_histogram(tag, values, global_step=step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        """Log ``text`` (Markdown) under ``tag`` at ``step``; TensorBoard shows it in the Text tab."""
        check_tag(tag)
        step = check_step(step)
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str, got {type(text).__name__}")
        self.summary_writer.add_text(tag, text, global_step=step)

    def flush(self) -> None:
        """Flush the underlying writer (if it can)."""
        flush = getattr(self.summary_writer, "flush", None)
        if callable(flush):
            flush()
