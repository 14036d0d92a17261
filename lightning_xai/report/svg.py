"""Line charts as inline SVG, drawn by hand: no plotting dependency, and the report stays one self-contained file."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from lightning_xai.report.markup import Markup, element

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
    marker_labels: bool = False,
    width: int = 560,
    height: int = 220,
) -> Markup:
    """An SVG line chart with a legend; one polyline (with dots) per series.

    Args:
        series: ``{name: [(x, y), ...]}``; non-finite points are skipped.
        title: shown above the plot.
        x_label: the x axis' name.
        y_range: fixed y limits; default: the data's range (padded; a flat series gets +-0.5).
        markers: ``[(x, label)]`` drawn as dashed vertical lines (e.g. drift alarms); the label is the line's tooltip.
        marker_labels: also write each marker's label next to its line.
        width, height: size in pixels.

    Returns:
        The ``<svg>`` element (:class:`~lightning_xai.report.markup.Markup`: every name and label escaped).

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
    parts: list[Markup] = [element("text", title, x=left, y=15, font_size=13, font_weight="bold")]

    def svg() -> Markup:
        return element("svg", parts, xmlns="http://www.w3.org/2000/svg", width=width, height=total_h,
                       viewBox=f"0 0 {width} {total_h}", font_family="sans-serif", font_size=11)

    if not clean:
        parts.append(element("text", "no data", x=left, y=top + plot_h / 2))
        return svg()
    xs = [x for pts in clean.values() for x, _ in pts] + [float(x) for x, _ in markers]
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

    parts.append(element("rect", x=left, y=top, width=plot_w, height=plot_h, fill="#fafafa", stroke="#bbb"))
    for t in _ticks(y0, y1):
        parts.append(element("line", x1=left, x2=left + plot_w, y1=py(t), y2=py(t), stroke="#e4e4e4"))
        parts.append(element("text", _fmt(t), x=left - 4, y=py(t) + 4, text_anchor="end"))
    integer_x = all(float(x).is_integer() for x in xs)
    for t in _ticks(x0, x1, 8, integer=integer_x):
        parts.append(element("text", _fmt(t), x=px(t), y=top + plot_h + 14, text_anchor="middle"))
    parts.append(element("text", x_label, x=left + plot_w / 2, y=top + plot_h + 28, text_anchor="middle",
                         fill="#555"))
    for x, label in markers:
        parts.append(element("line", element("title", label), x1=px(x), x2=px(x), y1=top, y2=top + plot_h,
                             stroke="#D55E00", stroke_width=1.5, stroke_dasharray="4 3"))
        if marker_labels:
            parts.append(element("text", label, x=px(x) + 3, y=top + 11, fill="#D55E00", font_size=10))
    for i, (name, pts) in enumerate(clean.items()):
        colour = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(element("polyline", points=coords, fill="none", stroke=colour, stroke_width=2))
        for x, y in pts:
            parts.append(element("circle", element("title", f"{name}: {y:.3g} at {x_label} {_fmt(x)}"),
                                 cx=px(x), cy=py(y), r=2.5, fill=colour))
        lx, ly = left + (i % 3) * (plot_w / 3), height + 4 + 16 * (i // 3)
        parts.append(element("rect", x=lx, y=ly, width=12, height=3, fill=colour))
        parts.append(element("text", name, x=lx + 16, y=ly + 5))
    return svg()
