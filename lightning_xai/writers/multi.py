"""Several sinks behind one: every item goes to each sink that can store it, once; one sink's failure is not the
others'."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from lightning_xai.writers.base import Sink, SinkError

__all__ = ["MultiSink"]


class MultiSink:
    """Fan out to ``sinks``. Each call tries every sink that has the capability (images to those with
    ``supports_images`` ...) and raises one :class:`~lightning_xai.writers.SinkError` afterwards, naming the sinks
    that failed, so a read-only directory of one sink never costs the others their data.

    Args:
        sinks: the sinks (an empty list is allowed: every call is then a no-op).
    """

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)
        for sink in self.sinks:
            if not isinstance(sink, Sink):
                raise TypeError(f"`sinks` must hold Sink objects, got {type(sink).__name__}")

    def __repr__(self) -> str:
        return f"MultiSink({self.sinks!r})"

    def __len__(self) -> int:
        return len(self.sinks)

    def _capable(self, flag: str | None) -> list[Sink]:
        return [s for s in self.sinks if flag is None or getattr(s, flag, False)]

    @property
    def supports_images(self) -> bool:
        return bool(self._capable("supports_images"))

    @property
    def supports_text(self) -> bool:
        return bool(self._capable("supports_text"))

    @property
    def supports_histograms(self) -> bool:
        return bool(self._capable("supports_histograms"))

    @property
    def supports_embedding(self) -> bool:
        return bool(self._capable("supports_embedding"))

    @property
    def supports_custom_scalars(self) -> bool:
        return bool(self._capable("supports_custom_scalars"))

    @property
    def log_dir(self) -> str | None:
        """The first sink's directory that has one."""
        return next((s.log_dir for s in self.sinks if s.log_dir is not None), None)

    def _each(self, what: str, flag: str | None, call: Callable[[Sink], Any]) -> list[Any]:
        results, failures = [], []
        for sink in self._capable(flag):
            try:
                results.append(call(sink))
            except Exception as err:  # one sink's trouble: the others still get the item
                failures.append((repr(sink), err))
        if failures:
            raise SinkError(what, failures)
        return results

    def add_image(self, tag: str, img: Tensor, step: int, caption: str | None = None) -> None:
        self._each(f"image {tag!r} (step {step})", "supports_images", lambda s: s.add_image(tag, img, step, caption))

    def add_scalars(self, values: Mapping[str, float], step: int) -> list[str]:
        """Every sink gets the scalars; returns the tags skipped as non-finite."""
        skipped = self._each(f"scalars (step {step})", None, lambda s: s.add_scalars(values, step))
        return list(dict.fromkeys(tag for tags in skipped for tag in tags))

    def add_histogram(self, tag: str, values: Tensor, step: int) -> None:
        self._each(f"histogram {tag!r} (step {step})", "supports_histograms",
                   lambda s: s.add_histogram(tag, values, step))

    def add_text(self, tag: str, text: str, step: int) -> None:
        self._each(f"text {tag!r} (step {step})", "supports_text", lambda s: s.add_text(tag, text, step))

    def add_embedding(self, features: Tensor, metadata: Sequence[Any] | None = None, label_img: Tensor | None = None,
                      step: int = 0, tag: str = "default", metadata_header: Sequence[str] | None = None) -> None:
        self._each(f"embedding {tag!r} (step {step})", "supports_embedding",
                   lambda s: s.add_embedding(features, metadata, label_img, step, tag, metadata_header))

    def add_custom_scalars_layout(self, layout: Mapping[str, Any]) -> None:
        self._each("custom scalars layout", "supports_custom_scalars", lambda s: s.add_custom_scalars_layout(layout))

    def flush(self) -> None:
        self._each("flush", None, lambda s: s.flush())

    def close(self) -> None:
        self._each("close", None, lambda s: s.close())
