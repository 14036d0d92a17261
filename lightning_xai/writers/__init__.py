"""Writers: where explanation results go. TensorBoard first; PNG/CSV/Markdown files as the fallback.

No Lightning import. Both writers implement :class:`Writer`: ``add_image(tag, uint8 (3, H, W), step)``,
``add_scalars(dict[str, float], step) -> skipped tags``, ``add_text(tag, str, step)``, ``flush()``.
"""

from lightning_xai.writers.base import Writer
from lightning_xai.writers.file import FileWriter
from lightning_xai.writers.tensorboard import TensorBoardWriter

__all__ = ["FileWriter", "TensorBoardWriter", "Writer"]
