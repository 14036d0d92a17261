"""One monitor's tag names in its Trainer: the one place a second monitor's suffix is applied.

Alone in a Trainer a monitor logs the keys of :mod:`lightning_xai.keys` as they are. With several monitors, each
writes its text, images, histograms and embeddings (overlays, timelines, the drift text, the views' pictures) under
its own suffix (``xai/drift/monitor_1``), and its scalars too where another monitor logs the same key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning_xai import keys

__all__ = ["SuffixedSink", "TagNames"]


class TagNames:
    """The suffix of one monitor (``""`` when it is alone) and whether its scalars carry it."""

    def __init__(self) -> None:
        self.suffix = ""
        self.suffix_scalars = False

    def assign(self, index: int, mine: set[str], others: Sequence[set[str]]) -> None:
        """This monitor is the ``index``-th of ``1 + len(others)`` in the Trainer; ``mine`` / ``others``: the scalar
        keys each can log (its own scalars get the suffix only where they collide)."""
        if not others:
            self.suffix, self.suffix_scalars = "", False
            return
        self.suffix = f"monitor_{index}"
        self.suffix_scalars = any(mine & theirs for theirs in others)

    def scalar(self, key: str) -> str:
        return keys.with_suffix(key, self.suffix) if self.suffix_scalars else key

    def scalars(self, values: Mapping[str, float]) -> dict[str, float]:
        return {self.scalar(k): v for k, v in values.items()}

    def tag(self, tag: str) -> str:
        """A text, image, histogram or embedding tag."""
        return keys.with_suffix(tag, self.suffix)

    def sink(self, sink: Any) -> Any:
        """``sink`` itself when alone; else a :class:`SuffixedSink` naming everything written through it."""
        return sink if not self.suffix else SuffixedSink(sink, self)


class SuffixedSink:
    """A sink whose every item gets one monitor's suffix (for writers that name their own tags, e.g. the views: their
    keys are nobody's ``monitor``, so they need not stay as they are where they do not collide)."""

    def __init__(self, sink: Any, names: TagNames) -> None:
        self._sink, self._names = sink, names

    def __getattr__(self, name: str) -> Any:  # capabilities, log_dir, flush, close, ...
        return getattr(self._sink, name)

    def add_image(self, tag: str, img: Any, step: int, caption: str | None = None) -> None:
        self._sink.add_image(self._names.tag(tag), img, step, caption=caption)

    def add_text(self, tag: str, text: str, step: int) -> None:
        self._sink.add_text(self._names.tag(tag), text, step)

    def add_histogram(self, tag: str, values: Any, step: int) -> None:
        self._sink.add_histogram(self._names.tag(tag), values, step)

    def add_scalars(self, values: Mapping[str, float], step: int) -> list[str]:
        return self._sink.add_scalars({self._names.tag(k): v for k, v in values.items()}, step)

    def add_embedding(self, features: Any, *args: Any, tag: str = "default", **kwargs: Any) -> None:
        self._sink.add_embedding(features, *args, tag=self._names.tag(tag), **kwargs)
