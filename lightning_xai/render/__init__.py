"""Rendering: heatmaps to ``uint8`` RGB images (colormap, normalisation, overlay, caption, grid).

Pure torch + torchvision + Pillow (no Lightning). Every function returns tensors in RGB channel order; images
returned for display are ``uint8`` ``(3, H, W)`` or ``(N, 3, H, W)`` (channels first), ready for
``SummaryWriter.add_image(..., dataformats="CHW")`` without rescaling.
"""

from lightning_xai.render.blend import overlay, to_uint8
from lightning_xai.render.colormap import COLORMAPS, apply_colormap, colormap_lut
from lightning_xai.render.grid import DEGENERATE_MARKER, make_overlay_grid, overlay_grid_size, upscale_factor
from lightning_xai.render.normalize import denormalize, normalize_maps
from lightning_xai.render.panel import (
    FLAG_COLOR,
    WARN_COLOR,
    ProbeRenderer,
    compose_panel,
    display_order,
    id_range,
    overlay_panel,
    overlay_tiles,
    tile_shape,
)
from lightning_xai.render.png import encode_png
from lightning_xai.render.text import caption, caption_height, default_font_size
from lightning_xai.render.timeline import Timeline, select_epochs

__all__ = [
    "COLORMAPS",
    "ProbeRenderer",
    "Timeline",
    "DEGENERATE_MARKER",
    "FLAG_COLOR",
    "WARN_COLOR",
    "apply_colormap",
    "caption",
    "caption_height",
    "colormap_lut",
    "compose_panel",
    "display_order",
    "id_range",
    "default_font_size",
    "denormalize",
    "encode_png",
    "make_overlay_grid",
    "normalize_maps",
    "overlay",
    "overlay_grid_size",
    "overlay_panel",
    "overlay_tiles",
    "select_epochs",
    "tile_shape",
    "to_uint8",
    "upscale_factor",
]
