"""A captioned grid of heatmap overlays, as one ``uint8`` RGB image."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid

from lightning_xai.render.blend import _blend, _check_alpha, to_uint8
from lightning_xai.render.colormap import _check_name
from lightning_xai.render.normalize import _check_maps, denormalize
from lightning_xai.render.text import _check_font_size, caption, caption_height, default_font_size

__all__ = ["DEGENERATE_MARKER", "make_overlay_grid", "overlay_grid_size", "upscale_factor"]

#: Caption text added for a probe whose map is degenerate (flat or non-finite); the cell shows the plain image.
DEGENERATE_MARKER = "flat map"


def _check_positive_int(value: object, name: str, *, allow_none: bool = False, minimum: int = 1) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}")


def upscale_factor(height: int, width: int, upscale_to: int | None) -> int:
    """Integer factor ``k = max(1, ceil(upscale_to / min(height, width)))`` (``1`` when ``upscale_to`` is None).

    Probes are enlarged ``k`` times so that their shorter side is at least ``upscale_to`` pixels and the caption is
    readable; they are never shrunk. E.g. 32x32 with ``upscale_to=96`` gives ``k = 3`` (96x96); 28x28 gives ``k = 4``.
    """
    _check_positive_int(upscale_to, "upscale_to", allow_none=True)
    if upscale_to is None or min(height, width) <= 0:
        return 1
    return max(1, math.ceil(upscale_to / min(height, width)))


def overlay_grid_size(
    num_images: int,
    image_size: tuple[int, int],
    *,
    nrow: int = 8,
    upscale_to: int | None = 96,
    padding: int = 2,
    caption_lines: int = 0,
    font_size: int | None = None,
) -> tuple[int, int]:
    """``(height, width)`` of the image :func:`make_overlay_grid` returns for ``num_images`` probes of ``image_size``.

    See :func:`make_overlay_grid` for the formula. ``caption_lines`` is the number of text lines per cell.
    """
    _check_positive_int(num_images, "num_images")
    _check_positive_int(nrow, "nrow")
    _check_positive_int(padding, "padding", minimum=0)
    _check_positive_int(caption_lines, "caption_lines", minimum=0)
    _check_font_size(font_size)
    h, w = int(image_size[0]), int(image_size[1])
    k = upscale_factor(h, w, upscale_to)
    cell_h = k * h + caption_height(k * w, caption_lines, font_size=font_size)
    cell_w = k * w
    ncol = min(nrow, num_images)
    nrows = math.ceil(num_images / ncol)
    return nrows * (cell_h + padding) + padding, ncol * (cell_w + padding) + padding


def _caption_lines(captions: Sequence[str] | Sequence[Sequence[str]] | None, n: int) -> list[list[str]]:
    if captions is None:
        return [[] for _ in range(n)]
    if isinstance(captions, str) or not isinstance(captions, Sequence):
        raise TypeError(f"`captions` must be a list of str, a list of lists of str, or None, got {captions!r}")
    if len(captions) != n:
        raise ValueError(f"`captions` must have one entry per image ({n}), got {len(captions)}")
    out: list[list[str]] = []
    for entry in captions:
        lines = [entry] if isinstance(entry, str) else list(entry)
        if not all(isinstance(line, str) for line in lines):
            raise TypeError(f"`captions` entries must be str or lists of str, got {entry!r}")
        out.append(lines)
    return out


def make_overlay_grid(
    images: Tensor,
    heatmaps: Tensor,
    captions: Sequence[str] | Sequence[Sequence[str]] | None = None,
    *,
    nrow: int = 8,
    alpha: float = 0.5,
    colormap: str = "jet",
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    upscale_to: int | None = 96,
    padding: int = 2,
    pad_value: int = 255,
    caption_lines: int | None = None,
    font_size: int | None = None,
) -> Tensor:
    """Render heatmap overlays of a batch of probes as one captioned grid image (for TensorBoard or a PNG).

    Per probe: the image is de-normalised (``mean``/``std``), enlarged ``k`` times by nearest-neighbour
    (:func:`upscale_factor`), the heatmap is normalised, resized bilinearly to that size, coloured and alpha-blended
    (:func:`overlay`), and a caption strip is added below it (:func:`caption`: white text on black). A degenerate
    (flat or non-finite) map shows the plain image and its caption gets the line :data:`DEGENERATE_MARKER`
    (``"flat map"``). Cells are laid out by ``torchvision.utils.make_grid``, ``nrow`` per row, separated and
    surrounded by ``padding`` pixels of ``pad_value`` (default white); a single probe is padded the same way.

    Image size, for ``N`` probes of ``H x W``::

        k      = max(1, ceil(upscale_to / min(H, W)))      # 1 if upscale_to is None
        L      = caption_lines                              # default: max lines of any caption, marker included
        cell_h = k * H + caption_height(k * W, L)           # 0 if L == 0, else L * line_height + 4
        cell_w = k * W
        ncol   = min(nrow, N);  nrows = ceil(N / ncol)
        height = nrows * (cell_h + padding) + padding
        width  = ncol  * (cell_w + padding) + padding

    With the defaults and 32x32 probes, one caption line each: ``k = 3``, cells ``113 x 96`` (font 10 px, line
    13 px), so 16 probes give ``(3, 232, 786)``. :func:`overlay_grid_size` computes it. Pass ``caption_lines`` to
    keep the size fixed across epochs whether or not a map is degenerate: if a caption has more lines, the extra
    lines are joined onto the last one (the marker first), which is then truncated with an ellipsis if too wide.

    Args:
        images: probe images, float (normalised with ``mean``/``std`` or in ``[0, 1]``) or ``uint8``; C in {1, 3}.
        heatmaps: one map per probe, any real dtype.
        captions: per probe a string (one line) or a list of lines, e.g. ``"y=cat  p=dog 0.87"``; or ``None``.
        nrow: cells per row.
        alpha: weight of the heatmap colour, in ``[0, 1]``.
        colormap: ``"jet"``, ``"inferno"`` or ``"viridis"``.
        mean: per-channel mean used to normalise ``images``, or ``None``.
        std: per-channel std used to normalise ``images``, or ``None``.
        upscale_to: minimum length in pixels of each probe's shorter side (integer enlargement), or ``None``.
        padding: pixels between and around cells.
        pad_value: grey level (0-255) of the padding.
        caption_lines: text lines per cell; ``None`` = the most lines any caption needs.
        font_size: caption font size in pixels; default :func:`default_font_size` of the cell width.

    Returns:
        The grid, ``uint8`` RGB, on the device of ``images``.

    Shape:
        - ``images``: ``(N, C, H, W)``; ``heatmaps``: ``(N, 1, h, w)``.
        - Output: ``(3, height, width)`` as above.

    Example::

        >>> images, heatmaps = torch.rand(16, 3, 32, 32), torch.rand(16, 1, 8, 8)
        >>> make_overlay_grid(images, heatmaps, ["y=cat  p=dog 0.87"] * 16).shape
        torch.Size([3, 232, 786])
    """
    _check_alpha(alpha)
    _check_name(colormap)
    _check_maps(heatmaps, "heatmaps")
    _check_positive_int(nrow, "nrow")
    _check_positive_int(padding, "padding", minimum=0)
    _check_positive_int(upscale_to, "upscale_to", allow_none=True)
    _check_positive_int(caption_lines, "caption_lines", allow_none=True, minimum=0)
    _check_font_size(font_size)
    if isinstance(pad_value, bool) or not isinstance(pad_value, int) or not 0 <= pad_value <= 255:
        raise ValueError(f"`pad_value` must be an int in [0, 255], got {pad_value!r}")
    images01 = denormalize(images, mean, std)
    n, _, h, w = images01.shape
    if n == 0:
        raise ValueError("`images` must contain at least one image, got an empty batch")
    if heatmaps.shape[0] != n:
        raise ValueError(f"`heatmaps` must have one map per image: got {heatmaps.shape[0]} maps for {n} images")
    lines = _caption_lines(captions, n)

    k = upscale_factor(h, w, upscale_to)
    if k > 1:
        images01 = F.interpolate(images01, scale_factor=k, mode="nearest")
    blended, degenerate = _blend(images01, heatmaps, float(alpha), colormap)
    cells = to_uint8(blended)

    flags = degenerate.tolist()
    for i, flag in enumerate(flags):
        if flag:
            lines[i] = [*lines[i], DEGENERATE_MARKER]
    n_lines = max(len(entry) for entry in lines) if caption_lines is None else caption_lines
    size = default_font_size(k * w) if font_size is None else font_size
    captioned = []
    for i in range(n):
        entry = lines[i]
        if len(entry) > n_lines:
            if n_lines == 0:
                entry = []
            else:
                rest = entry[n_lines - 1 :]
                if flags[i]:
                    rest = [DEGENERATE_MARKER, *rest[:-1]]
                entry = [*entry[: n_lines - 1], "  ".join(rest)]
        entry = entry + [""] * (n_lines - len(entry))
        captioned.append(caption(cells[i], entry, font_size=size) if n_lines else cells[i])
    stacked = torch.stack(captioned)
    if n == 1:  # make_grid returns a single image unpadded
        return F.pad(stacked[0], (padding, padding, padding, padding), value=pad_value)
    return make_grid(stacked, nrow=nrow, padding=padding, pad_value=pad_value)
