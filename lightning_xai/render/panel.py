"""Overlay tiles and the captioned panel the monitor logs: sized to read at TensorBoard's default display width.

TensorBoard's image cards show an image at the card's width (about 280-370 px, depending on the window) until "Show
actual image size" is ticked, so a panel is built to be about that wide: a few columns of small tiles, each probe's
id on its tile, the epoch in a title line, flagged probes outlined. Rendering is done at tile size (never enlarged
first and shrunk later) and the captions are cached line bitmaps, so a panel costs a few milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_xai.render.blend import _check_alpha
from lightning_xai.render.colormap import _check_name, _cpu_lut
from lightning_xai.render.normalize import _check_maps, denormalize, normalize_maps
from lightning_xai.render.text import CAPTION_PADDING, _check_font_size, _draw_text, _paste_text, line_height

__all__ = [
    "FLAG_COLOR",
    "PANEL_PROBES",
    "WARN_COLOR",
    "Line",
    "ProbeRenderer",
    "compose_panel",
    "display_order",
    "id_range",
    "overlay_panel",
    "overlay_tiles",
    "tile_shape",
]

#: Outline colour of a flagged probe's tile (orange-red, visible on light and dark themes).
FLAG_COLOR = (255, 80, 16)
#: Text colour for a caption line that needs attention (e.g. a wrong prediction).
WARN_COLOR = (255, 150, 120)
BACKGROUND = (24, 24, 24)
TEXT_COLOR = (235, 235, 235)
GAP = 4  # pixels between tiles; a flagged tile's outline is drawn in it
#: Probes per panel: 4 columns x 2 rows of 64 px tiles (276 x about 210 px) fill TensorBoard's default image card
#: (about 370 x 215 px, the image scaled to fit both) at full size; 16 probes in one panel would show at half size.
PANEL_PROBES = 8

#: A caption line: plain text, or ``(text, (r, g, b))`` to colour it.
Line = str | tuple[str, tuple[int, int, int]]


def display_order(ids: Sequence[int] | Tensor | None, n: int) -> list[int]:
    """Positions of ``n`` probes in the order they are shown: ascending ``ids`` (stable), or as given without ids.

    The panels, their titles and the timeline rows all follow it, so ``#0 #1 #2 ...`` read left to right, top to
    bottom, and a panel's title names the ids it shows.

    Example::

        >>> display_order([1, 2, 3, 0], 4)
        [3, 0, 1, 2]
    """
    if ids is None:
        return list(range(n))
    values = [int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]
    if len(values) != n:
        raise ValueError(f"`ids` must have one entry per probe ({n}), got {len(values)}")
    return sorted(range(n), key=lambda i: values[i])


def id_range(ids: Sequence[int]) -> str:
    """``#3-#10`` (or ``#3`` for one id): how a panel names the probe ids it shows, first to last."""
    ids = [int(i) for i in ids]
    return f"#{ids[0]}" if len(ids) == 1 else f"#{ids[0]}-#{ids[-1]}"


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")
    return value


def tile_shape(height: int, width: int, tile: int) -> tuple[int, int]:
    """``(h, w)`` of a ``height x width`` probe drawn as a tile whose longer side is ``tile`` pixels."""
    _check_int(tile, "tile", 8)
    scale = tile / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize float ``(N, C, h, w)`` to ``size``: bilinear, anti-aliased when shrinking."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


class ProbeRenderer:
    """Overlays of one fixed set of probe images, rendered again and again (every method, every epoch).

    The probes are de-normalised and brought to their blending size once, here. Blending happens at the smallest
    size that gives the tile: an integer enlargement (a 32 px probe on a 64 px tile) is blended at the probe's size
    and the ``uint8`` result repeated (4x less work than blending the enlarged image); anything else is resized to
    the tile first (bilinear, anti-aliased when shrinking). Each heatmap is min-max normalised, resized bilinearly,
    coloured and blended as ``(1 - alpha) * image + alpha * colour``; a degenerate (flat or non-finite) map shows
    the plain image.

    Args:
        images: probe images, float (normalised with ``mean``/``std`` or in ``[0, 1]``) or ``uint8``; C in {1, 3}.
        tile: length in pixels of a tile's longer side (>= 8).
        alpha: weight of the heatmap colour, in ``[0, 1]``.
        colormap: ``"jet"``, ``"inferno"`` or ``"viridis"``.
        mean: per-channel mean used to normalise ``images``, or ``None``.
        std: per-channel std used to normalise ``images``, or ``None``.
        outlines: ``(N, 1, H', W')`` regions (``> 0.5`` inside, any resolution) whose boundary is drawn on each tile
            in :data:`OUTLINE_COLOR` (a segmentation probe's explained class region), or ``None``.

    Shape:
        - ``images``: ``(N, C, H, W)``; tiles are ``(N, 3, th, tw)`` with ``(th, tw) = tile_shape(H, W, tile)``.

    Example::

        >>> renderer = ProbeRenderer(torch.rand(16, 3, 32, 32), tile=64)
        >>> tiles, degenerate = renderer.tiles(torch.rand(16, 1, 8, 8))
        >>> tiles.shape, renderer.panel(torch.rand(16, 1, 8, 8)).shape
        (torch.Size([16, 3, 64, 64]), torch.Size([3, 276, 276]))
    """

    def __init__(
        self,
        images: Tensor,
        *,
        tile: int = 64,
        alpha: float = 0.5,
        colormap: str = "jet",
        mean: Sequence[float] | Tensor | None = None,
        std: Sequence[float] | Tensor | None = None,
        outlines: Tensor | None = None,
    ) -> None:
        _check_alpha(alpha)
        _check_name(colormap)
        _check_int(tile, "tile", 8)
        if not isinstance(images, Tensor):
            raise TypeError(f"`images` must be a torch.Tensor, got {type(images).__name__}")
        images01 = denormalize(images.detach().cpu(), mean, std)
        n, _, h, w = images01.shape
        if n == 0:
            raise ValueError("`images` must contain at least one image, got an empty batch")
        th, tw = tile_shape(h, w, tile)
        self.num_probes, self.tile_size = n, (th, tw)
        self._k = th // h if th % h == 0 and tw % w == 0 and th // h == tw // w else 0
        self._size = (h, w) if self._k else (th, tw)
        self._base = _resize(images01, self._size).permute(0, 2, 3, 1).contiguous()  # (N, h, w, 3)
        self._alpha, self._lut = float(alpha), _cpu_lut(colormap)
        self._edges = None if outlines is None else _region_edges(outlines, n, self._size)

    def set_outlines(self, outlines: Tensor | None) -> None:
        """Outline these regions from now on (``(N, 1, H', W')``, see the class docstring), or none."""
        self._edges = None if outlines is None else _region_edges(outlines, self.num_probes, self._size)

    def _tiles_hwc(self, heatmaps: Tensor) -> tuple[Tensor, Tensor]:
        _check_maps(heatmaps, "heatmaps")
        n = self.num_probes
        if heatmaps.shape[0] != n:
            raise ValueError(f"`heatmaps` must have one map per probe: got {heatmaps.shape[0]} maps for {n} probes")
        maps01, degenerate = normalize_maps(heatmaps.detach().cpu())
        maps01 = _resize(maps01, self._size).clamp_(0.0, 1.0)
        colours = self._lut[maps01[:, 0].mul_(255.0).round_().long()]  # (N, h, w, 3): the gather is channels-last
        blended = torch.lerp(self._base, colours, self._alpha)
        blended = torch.where(degenerate.view(-1, 1, 1, 1), self._base, blended)
        if self._edges is not None:
            blended = torch.where(self._edges[..., None], blended.new_tensor(OUTLINE_COLOR) / 255.0, blended)
        return blended.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8), degenerate

    def tiles(self, heatmaps: Tensor) -> tuple[Tensor, Tensor]:
        """``(tiles, degenerate)``: ``uint8`` RGB ``(N, 3, th, tw)`` and ``(N,)`` bool, on the CPU."""
        tiles, degenerate = self._tiles_hwc(heatmaps)
        tiles = tiles.permute(0, 3, 1, 2)
        if self._k > 1:
            tiles = F.interpolate(tiles, scale_factor=self._k, mode="nearest")
        return tiles, degenerate

    def render(
        self,
        heatmaps: Tensor,
        captions: Sequence[Sequence[Line]] | None = None,
        *,
        title: str | None = None,
        flagged: Sequence[bool] | Tensor | None = None,
        ncol: int = 4,
        caption_lines: int | None = None,
        font_size: int = 10,
    ) -> tuple[Tensor, Tensor]:
        """``(panel, tiles)``: the probes' overlays laid out by :func:`compose_panel` (see there for the
        arguments), and the tiles themselves (``uint8 (N, 3, th, tw)``, e.g. for a :class:`Timeline`)."""
        tiles, degenerate = self.tiles(heatmaps)
        panel = compose_panel(tiles, captions, title=title, flagged=flagged, degenerate=degenerate, ncol=ncol,
                              caption_lines=caption_lines, font_size=font_size)
        return panel, tiles

    def render_groups(
        self,
        heatmaps: Tensor,
        captions: Sequence[Sequence[Line]] | None = None,
        *,
        title: str = "",
        flagged: Sequence[bool] | Tensor | None = None,
        group: int = PANEL_PROBES,
        ncol: int = 4,
        caption_lines: int | None = None,
        font_size: int = 10,
        ids: Sequence[int] | Tensor | None = None,
    ) -> tuple[list[tuple[Tensor, int, int]], Tensor]:
        """Panels of at most ``group`` probes each, and all tiles: ``([(panel, start, stop), ...], tiles)``.

        With ``ids`` the probes are shown in ascending id order (:func:`display_order`) and ``start:stop`` are
        positions in that order; ``tiles`` stay in the probes' own order. Each panel's title is ``title`` followed,
        when there is more than one group, by the probes it shows (``grad_cam | epoch 3 | #8-#15 of 16 | 2 flagged``
        with ids, ``probes 9-16/16`` without), and by how many of them are flagged.
        """
        _check_int(group, "group", 1)
        n = self.num_probes
        lines = _captions(captions, n)
        flags = _mask(flagged, n, "flagged")
        order = display_order(ids, n)
        id_values = None if ids is None else [int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]
        tiles, degenerate = self.tiles(heatmaps)
        panels = []
        for start in range(0, n, group):
            stop = min(n, start + group)
            shown = order[start:stop]
            parts = [title] if title else []
            if n > group:
                parts.append(f"probes {start + 1}-{stop}/{n}" if id_values is None else
                             f"{id_range([id_values[i] for i in shown])} of {n}")
            count = sum(flags[i] for i in shown)
            if count:
                parts.append(f"{count} flagged")
            panel = compose_panel(tiles[shown], [lines[i] for i in shown], title=" | ".join(parts) or None,
                                  flagged=[flags[i] for i in shown], degenerate=degenerate[shown], ncol=ncol,
                                  caption_lines=caption_lines, font_size=font_size)
            panels.append((panel, start, stop))
        return panels, tiles

    def panel(
        self,
        heatmaps: Tensor,
        captions: Sequence[Sequence[Line]] | None = None,
        *,
        title: str | None = None,
        flagged: Sequence[bool] | Tensor | None = None,
        ncol: int = 4,
        caption_lines: int | None = None,
        font_size: int = 10,
    ) -> Tensor:
        """The probes' overlays laid out by :func:`compose_panel` (see there for the arguments)."""
        tiles, degenerate = self._tiles_hwc(heatmaps)  # enlarged while pasting: no enlarged copy is made
        return compose_panel(tiles.permute(0, 3, 1, 2), captions, title=title, flagged=flagged,
                             degenerate=degenerate, ncol=ncol, caption_lines=caption_lines, font_size=font_size,
                             scale=max(1, self._k))


#: Colour of a region's boundary on a tile (:class:`ProbeRenderer`'s ``outlines``).
OUTLINE_COLOR = (255, 255, 255)


def _region_edges(outlines: Tensor, n: int, size: tuple[int, int]) -> Tensor:
    """``(N, h, w)`` bool: the boundary of each region at blending size, two pixels wide (one each side)."""
    if not isinstance(outlines, Tensor) or outlines.dim() != 4 or outlines.shape[:2] != (n, 1):
        raise ValueError(f"`outlines` must be None or a tensor of shape ({n}, 1, H, W), got "
                         f"{tuple(outlines.shape) if isinstance(outlines, Tensor) else type(outlines).__name__}")
    inside = F.interpolate((outlines.detach().cpu().float() > 0.5).float(), size=size, mode="nearest")
    grown = F.max_pool2d(inside, 3, stride=1, padding=1)
    shrunk = -F.max_pool2d(-inside, 3, stride=1, padding=1)
    return ((grown - shrunk) > 0.5)[:, 0] & (grown.amax(dim=(2, 3)) > 0.5)[:, :, None]


def overlay_tiles(
    images: Tensor,
    heatmaps: Tensor,
    *,
    tile: int = 64,
    alpha: float = 0.5,
    colormap: str = "jet",
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Heatmap overlays drawn directly at tile size: ``ProbeRenderer(images, ...).tiles(heatmaps)``.

    Returns:
        ``(tiles, degenerate)``: ``uint8`` RGB tiles and a bool tensor marking flat/non-finite maps, on the CPU.

    Shape:
        - ``images``: ``(N, C, H, W)``; ``heatmaps``: ``(N, 1, h, w)``.
        - ``tiles``: ``(N, 3, th, tw)`` with ``(th, tw) = tile_shape(H, W, tile)``; ``degenerate``: ``(N,)``.

    Example::

        >>> tiles, degenerate = overlay_tiles(torch.rand(2, 3, 32, 32), torch.rand(2, 1, 8, 8), tile=64)
        >>> tiles.shape, tiles.dtype, degenerate.tolist()
        (torch.Size([2, 3, 64, 64]), torch.uint8, [False, False])
    """
    return ProbeRenderer(images, tile=tile, alpha=alpha, colormap=colormap, mean=mean, std=std).tiles(heatmaps)


def _line(entry: Line) -> tuple[str, tuple[int, int, int]]:
    if isinstance(entry, str):
        return entry, TEXT_COLOR
    if (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)
            and isinstance(entry[1], tuple) and len(entry[1]) == 3):
        return entry[0], tuple(int(c) for c in entry[1])  # type: ignore[return-value]
    raise TypeError(f"a caption line must be a str or (str, (r, g, b)), got {entry!r}")


def _captions(captions: Sequence[Sequence[Line]] | None, n: int) -> list[list[tuple[str, tuple[int, int, int]]]]:
    if captions is None:
        return [[] for _ in range(n)]
    if isinstance(captions, str) or not isinstance(captions, Sequence) or len(captions) != n:
        raise ValueError(f"`captions` must be a list with one list of lines per tile ({n}), got {captions!r}")
    out = []
    for entry in captions:
        if isinstance(entry, (str, tuple)):
            entry = [entry]
        out.append([_line(line) for line in entry])
    return out


def _mask(values: Sequence[bool] | Tensor | None, n: int, name: str) -> list[bool]:
    if values is None:
        return [False] * n
    flags = values.tolist() if isinstance(values, Tensor) else list(values)
    if len(flags) != n:
        raise ValueError(f"`{name}` must have one entry per tile ({n}), got {len(flags)}")
    return [bool(f) for f in flags]


@lru_cache(maxsize=16)
def _background(height: int, width: int) -> np.ndarray:
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    canvas.setflags(write=False)
    return canvas


def compose_panel(
    tiles: Tensor,
    captions: Sequence[Sequence[Line]] | None = None,
    *,
    title: str | None = None,
    flagged: Sequence[bool] | Tensor | None = None,
    degenerate: Sequence[bool] | Tensor | None = None,
    ncol: int = 4,
    caption_lines: int | None = None,
    font_size: int = 10,
    scale: int = 1,
) -> Tensor:
    """Lay tiles out in a grid on a dark background, with captions below each tile and an optional title line.

    A flagged tile gets a 3 px :data:`FLAG_COLOR` outline (drawn in the gap around it, the picture is not covered);
    a degenerate one gets "flat map" written on it. Text that does not fit is truncated with an ellipsis.

    Args:
        tiles: ``uint8`` RGB tiles, all the same size (e.g. from :func:`overlay_tiles`).
        captions: per tile a list of lines (``str`` or ``(str, (r, g, b))``), or ``None``.
        title: one line above the grid (e.g. ``"grad_cam  epoch 6  3/16 flagged"``), or ``None``.
        flagged: per tile, whether to outline it.
        degenerate: per tile, whether its map was flat (marked on the tile).
        ncol: tiles per row.
        caption_lines: text lines below each tile; ``None`` = the most lines any caption has.
        font_size: caption font size in pixels (the title is one pixel larger).
        scale: integer enlargement of the tiles (nearest neighbour), done while pasting them.

    Returns:
        ``uint8`` RGB image ``(3, H, W)`` (a channels-first view of channels-last memory, which is what PNG encoders
        read) with ``W = ncol' * (tw + 4) + 4`` where ``ncol' = min(ncol, N)``.
    """
    if not isinstance(tiles, Tensor) or tiles.dtype != torch.uint8 or tiles.dim() != 4 or tiles.shape[1] != 3:
        raise ValueError(f"`tiles` must be uint8 of shape (N, 3, h, w), got {getattr(tiles, 'shape', tiles)!r}")
    n, _, h, w = tiles.shape
    if n == 0:
        raise ValueError("`tiles` must contain at least one tile, got an empty batch")
    _check_int(ncol, "ncol", 1)
    k = _check_int(scale, "scale", 1)
    th, tw = h * k, w * k
    _check_font_size(font_size)
    lines = _captions(captions, n)
    flags = _mask(flagged, n, "flagged")
    flat = _mask(degenerate, n, "degenerate")
    n_lines = max(len(e) for e in lines) if caption_lines is None else _check_int(caption_lines, "caption_lines", 0)
    lh = line_height(font_size)
    cap_h = n_lines * lh + (CAPTION_PADDING if n_lines else 0)
    title_size = font_size + 1
    title_h = line_height(title_size) + 2 * CAPTION_PADDING if title else 0
    cols = min(ncol, n)
    rows = math.ceil(n / cols)
    cell_w, cell_h = tw + GAP, th + cap_h + GAP
    width, height = cols * cell_w + GAP, title_h + rows * cell_h + GAP
    canvas = _background(height, width).copy()
    if title:
        _paste_text(canvas, GAP, CAPTION_PADDING, title, max_width=width - 2 * GAP, size=title_size, color=TEXT_COLOR,
                    background=BACKGROUND)
    hwc = tiles.permute(0, 2, 3, 1).numpy()
    for i in range(n):
        y = title_h + (i // cols) * cell_h + GAP
        x = (i % cols) * cell_w + GAP
        if flags[i]:
            o = min(3, GAP)
            canvas[y - o : y + th + o, x - o : x + tw + o] = FLAG_COLOR
        for dy in range(k):  # nearest-neighbour enlargement: k * k strided copies
            for dx in range(k):
                canvas[y + dy : y + th : k, x + dx : x + tw : k] = hwc[i]
        if flat[i]:
            band = canvas[y + th - lh - 2 : y + th, x : x + tw]
            band //= 3
            _draw_text(canvas, x + 2, y + th - lh - 1, "flat map", max_width=tw - 4, size=font_size)
        for j, (text, colour) in enumerate(lines[i][:n_lines]):
            _paste_text(canvas, x, y + th + CAPTION_PADDING // 2 + j * lh, text, max_width=tw, size=font_size,
                        color=colour, background=BACKGROUND)
    return torch.from_numpy(canvas).permute(2, 0, 1)  # channels-first view of channels-last memory: no copy


def overlay_panel(
    images: Tensor,
    heatmaps: Tensor,
    captions: Sequence[Sequence[Line]] | None = None,
    *,
    title: str | None = None,
    flagged: Sequence[bool] | Tensor | None = None,
    ncol: int = 4,
    tile: int = 64,
    alpha: float = 0.5,
    colormap: str = "jet",
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    caption_lines: int | None = None,
    font_size: int = 10,
) -> Tensor:
    """Overlays of a batch of probes as one panel: :func:`overlay_tiles` laid out by :func:`compose_panel`.

    With the defaults (4 columns of 64 px tiles) the panel is 276 px wide, about TensorBoard's default card width,
    so it reads without "Show actual image size".

    Example::

        >>> panel = overlay_panel(torch.rand(16, 3, 32, 32), torch.rand(16, 1, 8, 8),
        ...                       [["#3 cat", "p=dog 0.87"]] * 16, title="grad_cam  epoch 2")
        >>> panel.shape[0], panel.shape[2], panel.dtype
        (3, 276, torch.uint8)
    """
    renderer = ProbeRenderer(images, tile=tile, alpha=alpha, colormap=colormap, mean=mean, std=std)
    return renderer.panel(heatmaps, captions, title=title, flagged=flagged, ncol=ncol, caption_lines=caption_lines,
                          font_size=font_size)
