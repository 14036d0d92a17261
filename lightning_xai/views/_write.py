"""Hand a :class:`ViewOutput` to a sink (:mod:`lightning_xai.writers`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning_xai.views._common import Embedding, ViewOutput
from lightning_xai.writers.base import write_each

__all__ = ["write_embedding", "write_view_output"]


def write_embedding(writer: Any, embedding: Embedding, step: int) -> bool:
    """Write one embedding through the sink's ``add_embedding``; ``False`` if the sink cannot store embeddings
    (its ``supports_embedding`` capability is false, or it has no ``add_embedding``)."""
    add = getattr(writer, "add_embedding", None)
    if not getattr(writer, "supports_embedding", callable(add)) or not callable(add):
        return False
    add(embedding.features, metadata=embedding.metadata, label_img=embedding.thumbnails, step=step,
        tag=embedding.tag, metadata_header=embedding.header)
    return True


def write_view_output(writer: Any, output: ViewOutput, step: int) -> list[str]:
    """Write every image, scalar, text and embedding of ``output`` at ``step``; one item's failure is not the others'.

    Returns:
        The tags that could not be written (non-finite scalars, embeddings the writer cannot take).

    Raises:
        ItemsError: naming the items that failed, after every other item was written.
    """
    skipped: list[str] = []
    writes: list[tuple[str, Callable[[], Any]]] = []
    for tag, image in output.images.items():
        writes.append((tag, lambda tag=tag, image=image: writer.add_image(tag, image, step)))
    if output.scalars:
        writes.append(("scalars", lambda: skipped.extend(writer.add_scalars(output.scalars, step) or [])))
    for tag, text in output.texts.items():
        writes.append((tag, lambda tag=tag, text=text: writer.add_text(tag, text, step)))
    for embedding in output.embeddings:
        def embed(embedding: Embedding = embedding) -> None:
            if not write_embedding(writer, embedding, step):
                skipped.append(embedding.tag)

        writes.append((embedding.tag, embed))
    write_each(writes, "view items")
    return skipped
