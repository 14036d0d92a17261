"""Embedded datasets: generated on the fly, no downloads.

:class:`ShapesDataset` draws coloured shapes on textured backgrounds with ground-truth masks (where the class evidence
is) and an optional class-correlated marker that can be planted as a shortcut mid-training.
"""

from lightning_xai.datasets.folder import export_image_folder
from lightning_xai.datasets.segmentation import SegmentedShapes
from lightning_xai.datasets.shapes import MARKER_COLORS, SHAPE_NAMES, SHAPES_MEAN, SHAPES_STD, ShapesDataset

__all__ = ["MARKER_COLORS", "SHAPES_MEAN", "SHAPES_STD", "SHAPE_NAMES", "SegmentedShapes", "ShapesDataset",
           "export_image_folder"]
