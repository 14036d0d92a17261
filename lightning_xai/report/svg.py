"""Line charts as inline SVG, drawn by hand: no plotting dependency, and the report stays one self-contained file."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

__all__ = ["PALETTE", "line_chart"]

#: Series colours (colour-blind friendly, Okabe-Ito).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


def _ticks(lo: float, hi: float, count: int = 5, *, integer: bool = False) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    if integer:
        raw = max(raw, 1.0)
    step = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * step:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 1e-9 else f"{v:.2f}".rstrip("0")


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    x_label: str = "step",
    y_range: tuple[float, float] | None = None,
    markers: Sequence[tuple[float, str]] = (),
    width: int = 560,
    height: int = 220,
) -> str:
    """An SVG line chart with a legend; one polyline (with dots) per series.

    Args:
        series: ``{name: [(x, y), ...]}``; non-finite points are skipped.
        title: shown above the plot.
        x_label: the x axis' name.
        y_range: fixed y limits; default: the data's range (padded; a flat series gets +-0.5).
        markers: ``[(x, label)]`` drawn as dashed vertical lines (e.g. drift alarms).
        width, height: size in pixels.

    Returns:
        The ``<svg>`` element as a string.

    Example::

        >>> svg = line_chart({"grad_cam": [(0, 0.2), (1, 0.9)]}, title="stability", y_range=(0, 1))
        >>> svg.startswith("<svg") and "grad_cam" in svg and "polyline" in svg
        True
    """
    clean = {name: [(float(x), float(y)) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
             for name, pts in series.items()}
    clean = {name: pts for name, pts in clean.items() if pts}
    left, right, top, bottom = 46, 12, 26, 34
    legend_h = 16 * math.ceil(len(clean) / 3) if clean else 0
    total_h = height + legend_h
    plot_w, plot_h = width - left - right, height - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total_h}" '
           f'viewBox="0 0 {width} {total_h}" font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="15" font-size="13" font-weight="bold">{escape(title)}</text>']
    if not clean:
        out.append(f'<text x="{left}" y="{top + plot_h / 2}">no data</text></svg>')
        return "".join(out)
    xs = [x for pts in clean.values() for x, _ in pts] + [x for x, _ in markers]
    ys = [y for pts in clean.values() for _, y in pts]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y_range is not None:
        y0, y1 = float(y_range[0]), float(y_range[1])
        y0, y1 = min(y0, min(ys)), max(y1, max(ys))
    else:
        y0, y1 = min(ys), max(ys)
        pad = (y1 - y0) * 0.08 if y1 > y0 else 0.5
        y0, y1 = y0 - pad, y1 + pad

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * plot_h

    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#bbb"/>')
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#e4e4e4"/>'
                   f'<text x="{left - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    integer_x = all(float(x).is_integer() for x in xs)
    for t in _ticks(x0, x1, 8, integer=integer_x):
        out.append(f'<text x="{px(t):.1f}" y="{top + plot_h + 14}" text-anchor="middle">{_fmt(t)}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 28}" text-anchor="middle" fill="#555">'
               f'{escape(x_label)}</text>')
    for x, label in markers:
        out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top}" y2="{top + plot_h}" stroke="#D55E00" '
                   f'stroke-dasharray="4 3"><title>{escape(label)}</title></line>')
    for i, (name, pts) in enumerate(clean.items()):
        colour = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}">'
                       f'<title>{escape(name)}: {y:.3g} at {escape(x_label)} {_fmt(x)}</title></circle>')
        lx, ly = left + (i % 3) * (plot_w / 3), height + 4 + 16 * (i // 3)
        out.append(f'<rect x="{lx:.1f}" y="{ly}" width="12" height="3" fill="{colour}"/>'
                   f'<text x="{lx + 16:.1f}" y="{ly + 5}">{escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)
