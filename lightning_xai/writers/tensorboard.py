"""TensorBoard: write through a ``SummaryWriter``-like object (torch's, tensorboardX's, a Lightning logger's)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from lightning_xai.writers.base import (
    check_embedding,
    check_image,
    check_step,
    check_tag,
    check_text,
    finite_scalars,
    finite_values,
    png_bytes,
    write_each,
)

__all__ = ["TensorBoardSink", "TensorBoardWriter", "is_summary_writer"]

_REQUIRED = ("add_image", "add_scalar", "add_text")


def is_summary_writer(obj: Any) -> bool:
    """True if ``obj`` can be written like a ``SummaryWriter`` (``add_image``, ``add_scalar``, ``add_text``)."""
    return all(callable(getattr(obj, name, None)) for name in _REQUIRED)


class TensorBoardSink:
    """The :class:`~lightning_xai.writers.Sink` interface on a ``SummaryWriter``-like object.

    Works with ``torch.utils.tensorboard.SummaryWriter``, tensorboardX's, and the ``experiment`` of either Lightning
    package's ``TensorBoardLogger``. Images are stored as ``uint8`` PNGs (a float image would be multiplied by 255);
    captions are already drawn into the overlay grids, so ``caption`` is not stored. Non-finite scalars are never
    written. Embeddings go to the projector plugin, layouts to the custom-scalars plugin.

    Args:
        summary_writer: an object with ``add_image``, ``add_scalar`` and ``add_text`` (optionally ``flush``,
            ``add_histogram``, ``add_embedding``, ``add_custom_scalars``).
        owned: close ``summary_writer`` in :meth:`close` (leave ``False`` for a logger's writer: the logger closes it).

    Attributes:
        skipped_counts: per tag, how many non-finite scalar values were skipped so far.

    Example::

        >>> import tempfile, torch
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> with tempfile.TemporaryDirectory() as d:
        ...     sink = TensorBoardSink(SummaryWriter(d), owned=True)
        ...     sink.add_image("xai/grad_cam/overlay", torch.zeros(3, 8, 8, dtype=torch.uint8), step=0)
        ...     sink.add_scalars({"xai/grad_cam/stability": 0.9, "xai/saliency/stability": float("nan")}, step=0)
        ...     sink.close()
        ['xai/saliency/stability']
    """

    supports_images = True
    supports_text = True
    supports_histograms = True
    supports_embedding = True
    supports_custom_scalars = True

    def __init__(self, summary_writer: Any, *, owned: bool = False) -> None:
        missing = [name for name in _REQUIRED if not callable(getattr(summary_writer, name, None))]
        if missing:
            raise TypeError(
                f"`summary_writer` must be a SummaryWriter-like object with {', '.join(_REQUIRED)}; "
                f"{type(summary_writer).__name__} lacks {', '.join(missing)} "
                "(for a Lightning TensorBoardLogger pass `logger.experiment`)"
            )
        self.summary_writer = summary_writer
        self.owned = bool(owned)
        self.skipped_counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"TensorBoardSink({self.log_dir!r})"

    @property
    def log_dir(self) -> str | None:
        get = getattr(self.summary_writer, "get_logdir", None)
        value = get() if callable(get) else getattr(self.summary_writer, "log_dir", None)
        return None if value is None else str(value)

    def add_image(self, tag: str, img: Tensor, step: int, caption: str | None = None) -> None:
        """Log a ``uint8`` RGB image of shape ``(3, H, W)`` under ``tag`` at ``step``."""
        check_tag(tag)
        step = check_step(step)
        img = check_image(img)
        get_file_writer = getattr(self.summary_writer, "_get_file_writer", None)
        if not callable(get_file_writer):
            self.summary_writer.add_image(tag, img, global_step=step, dataformats="CHW")
            return
        # The record add_image writes, with the PNG encoded at zlib level 1 (encoding is most of the writing cost).
        from tensorboard.compat.proto.summary_pb2 import Summary

        height, width = img.shape[1:]
        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png_bytes(img))
        get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def add_scalars(self, values: Mapping[str, float], step: int) -> list[str]:
        """Log each finite value as a scalar: one event holding them all where the writer exposes its file writer
        (what ``add_scalar`` writes, one value each, without an event per key), else ``add_scalar(tag, value, step)``.

        Returns:
            The tags whose value was non-finite and therefore not written (also counted in ``skipped_counts``).

        Raises:
            ItemsError: some tags could not be written; all the others were.
        """
        step = check_step(step)
        kept, skipped = finite_scalars(values)
        self.skipped_counts.update(skipped)
        # one event for all keys only on torch's own SummaryWriter: a wrapped or customised writer gets every key
        # through its add_scalar (where it may refuse one), each isolated
        from torch.utils.tensorboard import SummaryWriter

        stock = type(self.summary_writer).add_scalar is SummaryWriter.add_scalar
        get_file_writer = getattr(self.summary_writer, "_get_file_writer", None)
        if stock and callable(get_file_writer) and kept:
            try:  # one event for all of them (cheap); any failure: key by key below, so one bad key costs only itself
                from tensorboard.compat.proto.summary_pb2 import Summary

                for tag in kept:
                    check_tag(tag)
                get_file_writer().add_summary(
                    Summary(value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in kept.items()]), step)
                return skipped
            except Exception:  # noqa: BLE001 - isolated per key next
                pass
        write_each([(tag, lambda tag=tag, value=value: self.summary_writer.add_scalar(tag, value, global_step=step))
                    for tag, value in kept.items()], "scalars")
        return skipped

    def add_histogram(self, tag: str, values: Tensor, step: int) -> None:
        """Log the distribution of the finite entries of ``values`` (nothing if there are none)."""
        check_tag(tag)
        step = check_step(step)
        values = finite_values(values)
        if values.numel() and callable(getattr(self.summary_writer, "add_histogram", None)):
            self.summary_writer.add_histogram(tag, values, global_step=step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        """Log ``text`` (Markdown) under ``tag`` at ``step``; TensorBoard shows it in the Text tab."""
        check_tag(tag)
        step = check_step(step)
        self.summary_writer.add_text(tag, check_text(text), global_step=step)

    def add_embedding(self, features: Tensor, metadata: Sequence[Any] | None = None, label_img: Tensor | None = None,
                      step: int = 0, tag: str = "default", metadata_header: Sequence[str] | None = None) -> None:
        """Features ``(N, D)`` for the projector, with per-row ``metadata`` (a label each, or a list of values per
        column of ``metadata_header``) and thumbnails ``label_img`` (``uint8 (N, 3, H, W)``)."""
        check_tag(tag)
        step = check_step(step)
        features, metadata, label_img, header = check_embedding(features, metadata, label_img, metadata_header)
        thumbs = None if label_img is None else label_img.float() / 255.0  # the projector's sprite wants [0, 1]
        self.summary_writer.add_embedding(features, metadata=metadata, label_img=thumbs, global_step=step, tag=tag,
                                          metadata_header=header)

    def add_custom_scalars_layout(self, layout: Mapping[str, Any]) -> None:
        """TensorBoard's custom-scalars layout: ``{category: {chart: ["Multiline" | "Margin", [tags]]}}``."""
        if not isinstance(layout, Mapping):
            raise TypeError(f"`layout` must be a mapping of category -> charts, got {type(layout).__name__}")
        self.summary_writer.add_custom_scalars(dict(layout))

    def flush(self) -> None:
        """Flush the underlying writer (if it can)."""
        flush = getattr(self.summary_writer, "flush", None)
        if callable(flush):
            flush()

    def close(self) -> None:
        """Flush; close the writer only if this sink opened it (``owned``)."""
        self.flush()
        if self.owned and callable(getattr(self.summary_writer, "close", None)):
            self.summary_writer.close()


#: The v0.1 name of :class:`TensorBoardSink`.
TensorBoardWriter = TensorBoardSink
