"""A probe's timeline: the same probe's overlay across the explained epochs, one row per probe, one image per method."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from lightning_xai.render.panel import BACKGROUND, FLAG_COLOR, GAP, TEXT_COLOR, _check_int, display_order
from lightning_xai.render.text import CAPTION_PADDING, _paste_text, line_height

__all__ = ["Timeline", "select_epochs"]


def select_epochs(epochs: Sequence[int], flagged: Sequence[int], max_columns: int) -> list[int]:
    """At most ``max_columns`` of ``epochs`` (sorted): the first and last, those in ``flagged`` (in its order: alarm
    epochs first, then epochs with flagged probes), then evenly spread.

    Example::

        >>> select_epochs(list(range(20)), flagged=[7], max_columns=5)
        [0, 6, 7, 13, 19]
    """
    _check_int(max_columns, "max_columns", 2)
    epochs = sorted(set(epochs))
    if len(epochs) <= max_columns:
        return epochs
    chosen = {epochs[0], epochs[-1]}
    for e in dict.fromkeys(flagged):
        if e in epochs and len(chosen) < max_columns:
            chosen.add(e)
    rest = [e for e in epochs if e not in chosen]
    free = max_columns - len(chosen)
    if free > 0 and rest:  # evenly spaced among the others
        picks = np.linspace(0, len(rest) - 1, free + 2)[1:-1] if free < len(rest) else np.arange(len(rest))
        chosen.update(rest[int(round(p))] for p in picks)
    return sorted(chosen)


def _densest(ordered: list[int], store: dict[int, tuple[np.ndarray, list[bool]]], alarms: set[int]) -> int:
    """The epoch to drop: never the first or the latest, epochs without an alarm or flags first, where the kept
    epochs are densest (the smallest span its neighbours would leave), the older on ties."""
    inner = ordered[1:-1]
    quiet = [e for e in inner if e not in alarms and not any(store[e][1])] or inner
    position = {e: i for i, e in enumerate(ordered)}
    return min(quiet, key=lambda e: (ordered[position[e] + 1] - ordered[position[e] - 1], e))


class Timeline:
    """Collects each explained epoch's overlay tiles per method and draws them as a probe x epoch strip.

    Tiles are kept as ``uint8`` NumPy arrays (for 16 probes at 64 px about 200 KB per method and epoch; NumPy's
    allocations are visible to ``tracemalloc``); at most ``keep_epochs`` epochs are kept per method, so the memory is
    flat after that many explained epochs (16 by default: about 9.4 MB for 16 probes and 3 methods). Past the cap
    one epoch is dropped where the kept ones are densest (never the first or the latest; alarm epochs and epochs with
    flags last), so a long run keeps its start, its changes and epochs spread over the whole run.

    Args:
        max_columns: epochs shown in one image (the first, the last, those with flags, then evenly spread).
        keep_epochs: epochs kept in memory per method (>= ``max_columns``; default ``max_columns + 4``).

    Example::

        >>> timeline = Timeline()
        >>> for epoch in range(3):
        ...     timeline.add("grad_cam", epoch, torch.zeros(4, 3, 64, 64, dtype=torch.uint8), flagged=[0, 1, 0, 0])
        >>> timeline.image("grad_cam", ["#0", "#1", "#2", "#3"]).shape[0]
        3
    """

    def __init__(self, max_columns: int = 12, keep_epochs: int | None = None) -> None:
        _check_int(max_columns, "max_columns", 2)
        keep_epochs = max_columns + 4 if keep_epochs is None else keep_epochs
        _check_int(keep_epochs, "keep_epochs", max_columns)
        self.max_columns, self.keep_epochs = max_columns, keep_epochs
        self._tiles: dict[str, dict[int, tuple[np.ndarray, list[bool]]]] = {}
        self._alarms: set[int] = set()

    @property
    def methods(self) -> list[str]:
        return list(self._tiles)

    @property
    def nbytes(self) -> int:
        """Bytes of tiles held (bounded: at most ``keep_epochs`` epochs per method)."""
        return sum(tiles.nbytes for store in self._tiles.values() for tiles, _ in store.values())

    def epochs(self, method: str) -> list[int]:
        return sorted(self._tiles.get(method, {}))

    def add(self, method: str, epoch: int, tiles: Tensor, flagged: Sequence[bool] | Tensor | None = None, *,
            alarm: bool = False) -> None:
        """Keep ``tiles`` (``uint8 (N, 3, h, w)``, e.g. ``ProbeRenderer.tiles``) of ``method`` at ``epoch``; ``flagged``
        probes are outlined, an ``alarm`` epoch's column is headed ``ep E alarm``."""
        if not isinstance(tiles, Tensor) or tiles.dtype != torch.uint8 or tiles.dim() != 4 or tiles.shape[1] != 3:
            raise ValueError(f"`tiles` must be uint8 of shape (N, 3, h, w), got {getattr(tiles, 'shape', tiles)!r}")
        n = tiles.shape[0]
        flags = [False] * n if flagged is None else [bool(f) for f in (
            flagged.tolist() if isinstance(flagged, Tensor) else flagged)]
        if len(flags) != n:
            raise ValueError(f"`flagged` must have one entry per tile ({n}), got {len(flags)}")
        # an owned copy: a view would keep the caller's whole tensor (and its base) alive
        hwc = np.ascontiguousarray(tiles.detach().cpu().permute(0, 2, 3, 1).numpy()).copy()
        store = self._tiles.setdefault(method, {})
        if store:
            first = next(iter(store.values()))[0]
            if first.shape != hwc.shape:
                raise ValueError(f"tiles of {method!r} changed shape: {tuple(first.shape)} -> {tuple(hwc.shape)}")
        store[int(epoch)] = (hwc, flags)
        if alarm:
            self._alarms.add(int(epoch))
        while len(store) > self.keep_epochs:
            del store[_densest(sorted(store), store, self._alarms)]

    def image(self, method: str, probe_labels: Sequence[str] | None = None, *, font_size: int = 10,
              ids: Sequence[int] | Tensor | None = None) -> Tensor:
        """The strip of ``method``: a row per probe (labelled with ``probe_labels``), a column per shown epoch; with
        ``ids`` the rows are in ascending id order, as in the panels (:func:`~lightning_xai.render.display_order`).

        A tile flagged at its epoch is outlined in :data:`~lightning_xai.render.FLAG_COLOR`; the column of an alarm
        epoch is headed ``ep E alarm`` in that colour (flags are evidence; only alarms mark a column).

        Returns:
            ``uint8`` RGB ``(3, H, W)``.
        """
        store = self._tiles.get(method)
        if not store:
            raise ValueError(f"no tiles for method {method!r}; methods with tiles: {self.methods}")
        alarms = sorted(self._alarms & set(store))
        flagged_epochs = [e for e, (_, flags) in store.items() if any(flags) and e not in self._alarms]
        shown = select_epochs(list(store), alarms + flagged_epochs, self.max_columns)
        n, th, tw, _ = store[shown[0]][0].shape
        labels = [f"#{i}" for i in range(n)] if probe_labels is None else [str(x) for x in probe_labels]
        if len(labels) != n:
            raise ValueError(f"`probe_labels` must have one entry per probe ({n}), got {len(labels)}")
        order = display_order(ids, n)
        labels = [labels[i] for i in order]
        lh, title_size = line_height(font_size), font_size + 1
        title_h = line_height(title_size) + 2 * CAPTION_PADDING
        head_h = lh + CAPTION_PADDING
        label_w = max(48, tw)
        width = label_w + len(shown) * (tw + GAP) + GAP
        height = title_h + head_h + n * (th + GAP) + GAP
        canvas = np.empty((height, width, 3), dtype=np.uint8)
        canvas[:] = BACKGROUND
        title = f"{method}: each probe across epochs" + (" (some epochs omitted)" if len(shown) < len(store) else "")
        _paste_text(canvas, GAP, CAPTION_PADDING, title, max_width=width - 2 * GAP, size=title_size,
                    color=TEXT_COLOR, background=BACKGROUND)
        for c, epoch in enumerate(shown):
            x = label_w + c * (tw + GAP) + GAP
            alarm = epoch in self._alarms
            _paste_text(canvas, x, title_h, f"ep {epoch} alarm" if alarm else f"ep {epoch}", max_width=tw,
                        size=font_size, color=FLAG_COLOR if alarm else TEXT_COLOR, background=BACKGROUND)
            tiles, flags = store[epoch]
            for r, i in enumerate(order):
                y = title_h + head_h + r * (th + GAP) + GAP
                if flags[i]:
                    canvas[y - 3 : y + th + 3, x - 3 : x + tw + 3] = FLAG_COLOR
                canvas[y : y + th, x : x + tw] = tiles[i]
        for r, label in enumerate(labels):
            y = title_h + head_h + r * (th + GAP) + GAP
            for j, part in enumerate(label.split("\n")[: max(1, th // lh)]):
                _paste_text(canvas, GAP, y + j * lh, part, max_width=label_w - GAP, size=font_size, color=TEXT_COLOR,
                            background=BACKGROUND)
        return torch.from_numpy(canvas).permute(2, 0, 1)
