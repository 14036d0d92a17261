"""Hand a :class:`ViewOutput` to a writer (the one place that knows how an embedding reaches TensorBoard)."""

from __future__ import annotations

from typing import Any

from lightning_xai.views._common import Embedding, ViewOutput

__all__ = ["write_embedding", "write_view_output"]


def write_embedding(writer: Any, embedding: Embedding, step: int) -> bool:
    """Write one embedding for TensorBoard's projector; ``False`` if ``writer`` cannot store it.

    A sink with the ``supports_embedding`` capability gets ``add_embedding(features, metadata=[header, *rows],
    label_img=uint8 thumbnails, step=, tag=)``. Until every writer has it, a writer wrapping a ``SummaryWriter``
    (``writer.summary_writer``) falls back to ``SummaryWriter.add_embedding`` here, and only here.
    """
    if hasattr(writer, "supports_embedding"):
        if not writer.supports_embedding:
            return False
        writer.add_embedding(embedding.features, metadata=[embedding.header, *embedding.metadata],
                             label_img=embedding.thumbnails, step=step, tag=embedding.tag)
        return True
    summary_writer = getattr(writer, "summary_writer", writer)
    add = getattr(summary_writer, "add_embedding", None)
    if not callable(add):
        return False
    thumbs = None if embedding.thumbnails is None else embedding.thumbnails.float() / 255.0
    add(embedding.features, metadata=embedding.metadata, label_img=thumbs, global_step=step, tag=embedding.tag,
        metadata_header=embedding.header)
    return True


def write_view_output(writer: Any, output: ViewOutput, step: int) -> list[str]:
    """Write every image, scalar, text and embedding of ``output`` at ``step``.

    Returns:
        The tags that could not be written (non-finite scalars, embeddings the writer cannot take).
    """
    skipped: list[str] = []
    for tag, image in output.images.items():
        writer.add_image(tag, image, step)
    if output.scalars:
        skipped += list(writer.add_scalars(output.scalars, step) or [])
    for tag, text in output.texts.items():
        writer.add_text(tag, text, step)
    for embedding in output.embeddings:
        if not write_embedding(writer, embedding, step):
            skipped.append(embedding.tag)
    return skipped
