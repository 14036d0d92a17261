"""A segmentation view of :class:`~lightning_xai.datasets.ShapesDataset`: each pixel labelled with its class.

``SegmentedShapes(shapes)[i]`` is ``(image, class_map)``: ``class_map`` ``(H, W)`` long, 0 on the background and
``label + 1`` on the shape's pixels, so a model with ``shapes.num_classes + 1`` outputs per pixel segments it (class
names in ``classes``: ``"background"`` first). Everything else (the planted marker, ``set_shortcut``, corruptions)
is the wrapped dataset's: the marker is not part of any class region, so a model that learns to read it for the
shape's class moves its evidence out of the region.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.utils.data import Dataset

from lightning_xai.datasets.shapes import ShapesDataset

__all__ = ["SegmentedShapes"]


class SegmentedShapes(Dataset):
    """Pixel-wise labels for a :class:`ShapesDataset` (see the module docstring).

    Example::

        >>> ds = SegmentedShapes(ShapesDataset(4, image_size=32, seed=1))
        >>> image, class_map = ds[0]
        >>> tuple(class_map.shape), class_map.dtype, ds.classes[0], ds.num_classes
        ((32, 32), torch.int64, 'background', 5)
    """

    def __init__(self, shapes: ShapesDataset) -> None:
        if not isinstance(shapes, ShapesDataset):
            raise TypeError(f"`shapes` must be a ShapesDataset, got {type(shapes).__name__}")
        self.shapes = shapes
        self.classes = ["background", *shapes.classes]
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label, mask = self.shapes[index]
        return image, (mask[0] > 0.5).long() * (int(label) + 1)

    def set_shortcut(self, strength: float, marker: str | None = None) -> None:
        self.shapes.set_shortcut(strength, marker)

    def __getattr__(self, name: str) -> Any:  # marker_mask, denormalize, ...: the wrapped dataset's
        if name == "shapes":
            raise AttributeError(name)
        return getattr(self.shapes, name)
