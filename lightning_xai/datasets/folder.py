"""Write a dataset to disk as an ``ImageFolder`` tree (``root/<class>/<index>.png``).

Used to try the "explain your own images" recipe without any data of one's own: export the embedded
:class:`~lightning_xai.datasets.ShapesDataset` and point ``torchvision.datasets.ImageFolder`` at it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

__all__ = ["export_image_folder"]


def export_image_folder(
    dataset: Any,
    root: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    num_samples: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Save ``dataset[i]`` as ``root/<class name>/<i:05d>.png`` for every sample; return ``root``.

    Items are ``(image, label, ...)`` with ``image`` a ``(3, H, W)`` or ``(1, H, W)`` tensor, float in ``[0, 1]`` or
    ``uint8``. A dataset whose ``normalize`` attribute is true and that has a ``denormalize`` method (as
    :class:`~lightning_xai.datasets.ShapesDataset` does) is de-normalised first, so the PNGs show the real colours.
    Every class gets a folder, even one without samples, so ``ImageFolder`` finds the same class indices.

    Args:
        dataset: a map-style dataset returning ``(image, label, ...)``.
        root: target directory; created if needed.
        class_names: folder name of each class index; default ``dataset.classes``, else ``"0"``, ``"1"``, ...
        num_samples: export only the first ``num_samples`` items; default all.
        overwrite: allow writing into a non-empty ``root``.

    Returns:
        ``Path(root)``.

    Raises:
        FileExistsError: ``root`` exists, is not empty and ``overwrite`` is false.
        ValueError: a label has no class name, or an image is not ``(1|3, H, W)``.

    Example::

        >>> import tempfile
        >>> from lightning_xai.datasets import ShapesDataset
        >>> from torchvision.datasets import ImageFolder
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     root = export_image_folder(ShapesDataset(8, image_size=16), tmp)
        ...     folder = ImageFolder(root)
        ...     folder.classes, len(folder)
        (['circle', 'cross', 'square', 'triangle'], 8)
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"export_image_folder: `root={str(root)!r}` exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(
            f"export_image_folder: `root={str(root)!r}` is not empty; pass overwrite=True or choose a new directory"
        )
    total = len(dataset)
    if num_samples is not None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
            raise ValueError(f"export_image_folder: `num_samples` must be None or an int >= 0, got {num_samples!r}")
        total = min(total, num_samples)
    names = list(class_names) if class_names is not None else list(getattr(dataset, "classes", None) or [])
    denormalize = getattr(dataset, "denormalize", None) if getattr(dataset, "normalize", False) else None

    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).mkdir(exist_ok=True)
    for index in range(total):
        item = dataset[index]
        image, label = item[0], int(item[1])
        if names and not 0 <= label < len(names):
            raise ValueError(f"export_image_folder: label {label} of sample {index} has no name in {names}")
        folder = root / (names[label] if names else str(label))
        folder.mkdir(exist_ok=True)
        _to_pil(image if denormalize is None else denormalize(image), index).save(folder / f"{index:05d}.png")
    return root


def _to_pil(image: Tensor, index: int) -> Image.Image:
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] not in (1, 3):
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"export_image_folder: sample {index} image must be a (1|3, H, W) tensor, got {got}")
    if image.dtype != torch.uint8:
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = image.cpu().permute(1, 2, 0).contiguous()
    return Image.fromarray((pixels if pixels.shape[2] == 3 else pixels[:, :, 0]).numpy())  # RGB or L from shape
