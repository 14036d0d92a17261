"""Text captions drawn below an image with Pillow's default font."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = ["caption", "caption_height", "default_font_size"]

#: Pixels of background above the first and below the last line of text, and left of the text.
CAPTION_PADDING = 2
_MIN_FONT, _MAX_FONT = 8, 16


def default_font_size(width: int) -> int:
    """Font size (pixels) used for an image ``width`` pixels wide: ``clamp(width // 9, 8, 16)``.

    With Pillow's default font (Aileron) this fits about 17 characters, e.g. ``"y=cat  p=dog 0.87"``, in 96 px.
    """
    return max(_MIN_FONT, min(_MAX_FONT, int(width) // 9))


@lru_cache(maxsize=32)
def _font(size: int) -> tuple[Any, int, bool]:
    """Return ``(font, line_height, unicode_ok)`` for Pillow's default font at ``size`` pixels.

    Pillow >= 10.1 with FreeType gives a scalable font; older Pillow (or no FreeType) gives the fixed bitmap font.
    """
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError, AttributeError):  # Pillow < 10.1 or no FreeType
        font = ImageFont.load_default()
    if hasattr(font, "getmetrics"):
        ascent, descent = font.getmetrics()
        return font, int(ascent + descent), True
    bbox = font.getbbox("Agy|")
    return font, int(bbox[3]) + 1, False


def _check_font_size(font_size: int | None) -> None:
    if font_size is not None and (isinstance(font_size, bool) or not isinstance(font_size, int) or font_size < 1):
        raise ValueError(f"`font_size` must be a positive int or None, got {font_size!r}")


def caption_height(width: int, n_lines: int, *, font_size: int | None = None) -> int:
    """Height in pixels of the caption strip that :func:`caption` adds for ``n_lines`` lines.

    ``0`` when ``n_lines == 0``, else ``n_lines * line_height + 2 * CAPTION_PADDING``, where ``line_height`` is the
    font's ascent + descent at ``font_size`` (default :func:`default_font_size(width) <default_font_size>`). With
    Pillow's default font that is 13 px at size 10 (a 96 px wide image: one line gives a 17 px strip).
    """
    _check_font_size(font_size)
    if n_lines <= 0:
        return 0
    size = default_font_size(width) if font_size is None else font_size
    return n_lines * _font(size)[1] + 2 * CAPTION_PADDING


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, max_width: float, ellipsis: str) -> str:
    if draw.textlength(text, font=font) <= max_width:
        return text
    lo, hi = 0, len(text)  # longest prefix such that prefix + ellipsis fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if draw.textlength(text[:mid].rstrip() + ellipsis, font=font) <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return (
        text[:lo].rstrip() + ellipsis
        if lo > 0
        else (ellipsis if draw.textlength(ellipsis, font=font) <= max_width else "")
    )


def _strip(lines: tuple[str, ...], width: int, size: int, background: int, foreground: int) -> Tensor:
    """The drawn caption strip ``(3, h, W)``."""
    font, line_height, unicode_ok = _font(size)
    height = caption_height(width, len(lines), font_size=size)
    strip = Image.new("RGB", (width, height), (background,) * 3)
    draw = ImageDraw.Draw(strip)
    ellipsis = "\u2026" if unicode_ok else "..."
    max_width = width - 2 * CAPTION_PADDING
    for i, line in enumerate(lines):
        text = " ".join(line.splitlines())
        if not unicode_ok:
            text = text.encode("latin-1", errors="replace").decode("latin-1")
        text = _fit(draw, text, font, max_width, ellipsis)
        if text:
            draw.text((CAPTION_PADDING, CAPTION_PADDING + i * line_height), text, font=font, fill=(foreground,) * 3)
    return torch.frombuffer(bytearray(strip.tobytes()), dtype=torch.uint8).view(height, width, 3).permute(2, 0, 1)


def caption(
    image: Tensor,
    lines: Sequence[str],
    *,
    font_size: int | None = None,
    background: int = 0,
    foreground: int = 255,
) -> Tensor:
    """Add a strip of text below an image.

    Each entry of ``lines`` is one line of text, drawn left-aligned with Pillow's default font; a line too wide for
    the image is truncated with an ellipsis. Only the strip is drawn on the CPU; the result is on the image's device.

    Args:
        image: ``uint8`` RGB image.
        lines: the lines of text (e.g. ``["y=cat  p=dog 0.87", "flat map"]``); an empty list returns a copy of the
            image.
        font_size: font size in pixels; default :func:`default_font_size` of the image width.
        background: grey level (0-255) of the strip, default black.
        foreground: grey level (0-255) of the text, default white.

    Returns:
        The captioned ``uint8`` image, ``h = caption_height(W, len(lines), font_size=font_size)`` pixels taller.

    Shape:
        - ``image``: ``(3, H, W)``.
        - Output: ``(3, H + h, W)``.

    Example::

        >>> img = torch.zeros(3, 96, 96, dtype=torch.uint8)
        >>> caption(img, ["y=cat  p=dog 0.87"]).shape
        torch.Size([3, 113, 96])
    """
    if not isinstance(image, Tensor) or image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        desc = f"{tuple(image.shape)} {image.dtype}" if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"`image` must be a uint8 tensor of shape (3, H, W), got {desc}")
    if isinstance(lines, str) or not all(isinstance(line, str) for line in lines):
        raise TypeError(f"`lines` must be a list of str, got {lines!r}")
    _check_font_size(font_size)
    for name, value in (("background", background), ("foreground", foreground)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
            raise ValueError(f"`{name}` must be an int in [0, 255], got {value!r}")
    lines = list(lines)
    if not lines:
        return image.clone()
    width = int(image.shape[2])
    size = default_font_size(width) if font_size is None else font_size
    strip_t = _strip(tuple(lines), width, size, background, foreground).to(image.device)
    return torch.cat([image, strip_t], dim=1)



#: Lines of text kept drawn (each cache): enough for every caption of a round, bounded so that lines seen once (a
#: title with the epoch, a probability) do not pile up over a long run (4096 lines grew the monitor ~0.5 MB/epoch).
TEXT_CACHE_LINES = 256
_SHORT_TAIL = 6  # a last word this short (a score: ".98", "1.0") is kept when a line is shortened


def _fit_line(text: str, max_width: int, size: int) -> tuple[str, int]:
    """``(text, size)`` that fits ``max_width``: the line as it is; else the same line one font size smaller (it
    still fits the line's slot); else, when the line ends in a short word such as a score, the words before it
    shortened with an ellipsis (``p=hexag… .98``: the number stays readable); else the line cut with an ellipsis."""
    font, _, unicode_ok = _font(size)
    ellipsis = "\u2026" if unicode_ok else "..."
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    if probe.textlength(text, font=font) <= max_width:
        return text, size
    if size - 1 >= _MIN_FONT and probe.textlength(text, font=_font(size - 1)[0]) <= max_width:
        return text, size - 1
    head, _, tail = text.rpartition(" ")
    if head.strip() and 0 < len(tail) <= _SHORT_TAIL:
        room = max_width - probe.textlength(" " + tail, font=font)
        short = _fit(probe, head, font, room, ellipsis) if room > 0 else ""
        if short and short != ellipsis:
            return f"{short} {tail}", size
    return _fit(probe, text, font, max_width, ellipsis), size


@lru_cache(maxsize=TEXT_CACHE_LINES)
def _line_mask(text: str, max_width: int, size: int) -> np.ndarray:
    """Coverage mask ``(line_height, w, 1)`` (uint8, 0-255) of one line of text, fitted to ``max_width`` pixels by
    :func:`_fit_line` (drawn at most one size smaller, on the same baseline).

    Cached (:data:`TEXT_CACHE_LINES` lines): probe ids, labels and titles repeat from epoch to epoch and across
    methods, so most lines are drawn once per run.
    """
    _, line_height, unicode_ok = _font(size)
    text = " ".join(text.splitlines())
    if not unicode_ok:
        text = text.encode("latin-1", errors="replace").decode("latin-1")
    text, drawn = _fit_line(text, max_width, size)
    if not text:
        return np.zeros((line_height, 0, 1), dtype=np.uint8)
    font = _font(drawn)[0]
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    width = max(1, min(max_width, int(probe.textlength(text, font=font)) + 1))
    mask = Image.new("L", (width, line_height), 0)
    offset = 0
    if drawn != size and hasattr(font, "getmetrics"):  # the smaller font on the line's baseline
        offset = max(0, _font(size)[0].getmetrics()[0] - font.getmetrics()[0])
    ImageDraw.Draw(mask).text((0, offset), text, font=font, fill=255)
    out = np.asarray(mask, dtype=np.uint8)[:, :, None]
    out.setflags(write=False)
    return out


def line_height(size: int) -> int:
    """Height in pixels of one line of text at font ``size`` (Pillow's default font: ascent + descent)."""
    _check_font_size(size)
    return _font(size)[1]


def _draw_text(canvas: np.ndarray, x: int, y: int, text: str, *, max_width: int, size: int,
               color: tuple[int, int, int] = (255, 255, 255)) -> None:
    """Draw one line of ``text`` into an ``(H, W, 3)`` ``uint8`` array in place, anti-aliased over what is there.

    The line starts at ``(x, y)`` (top left), is at most ``max_width`` pixels wide (truncated with an ellipsis) and
    is clipped to the canvas.
    """
    if max_width <= 0 or not text:
        return
    mask = _line_mask(text, int(max_width), int(size))
    h = min(mask.shape[0], canvas.shape[0] - y)
    w = min(mask.shape[1], canvas.shape[1] - x)
    if h <= 0 or w <= 0:
        return
    cover = mask[:h, :w].astype(np.int32)
    region = canvas[y : y + h, x : x + w]
    fg = np.asarray(color, dtype=np.int32)
    region[...] = (region * (255 - cover) + fg * cover + 127) // 255


@lru_cache(maxsize=TEXT_CACHE_LINES)
def _text_patch(text: str, max_width: int, size: int, color: tuple[int, int, int],
                background: tuple[int, int, int]) -> np.ndarray:
    """One line of text composited on a solid ``background``: ``uint8 (line_height, w, 3)``, cached."""
    cover = _line_mask(text, max_width, size).astype(np.int32)
    bg = np.asarray(background, dtype=np.int32)
    fg = np.asarray(color, dtype=np.int32)
    patch = ((bg * (255 - cover) + fg * cover + 127) // 255).astype(np.uint8)
    patch.setflags(write=False)
    return patch


def _paste_text(canvas: np.ndarray, x: int, y: int, text: str, *, max_width: int, size: int,
                color: tuple[int, int, int], background: tuple[int, int, int]) -> None:
    """Like :func:`_draw_text` where the canvas under the text is the solid ``background``: one copy, no blending."""
    if max_width <= 0 or not text:
        return
    patch = _text_patch(text, int(max_width), int(size), color, background)
    h = min(patch.shape[0], canvas.shape[0] - y)
    w = min(patch.shape[1], canvas.shape[1] - x)
    if h > 0 and w > 0:
        canvas[y : y + h, x : x + w] = patch[:h, :w]
