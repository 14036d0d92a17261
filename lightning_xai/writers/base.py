"""The interface every sink implements, its capability flags, and shared argument checks."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "BaseSink",
    "ItemsError",
    "Sink",
    "SinkError",
    "Writer",
    "check_embedding",
    "check_image",
    "check_step",
    "check_tag",
    "check_text",
    "finite_scalars",
    "finite_values",
    "write_each",
]


@runtime_checkable
class Sink(Protocol):
    """Where explanation results go: TensorBoard, Weights & Biases, MLflow, plain files, a logger's scalars.

    Images are ``uint8`` RGB ``(3, H, W)`` (as made by :mod:`lightning_xai.render`); ``step`` is a non-negative int
    (the callback uses ``trainer.global_step``). ``add_scalars`` never writes a non-finite value: it skips it and
    returns the skipped keys. A sink that cannot store a kind of item says so with its capability flags
    (``supports_images``, ``supports_text``, ``supports_histograms``, ``supports_embedding``,
    ``supports_custom_scalars``) and ignores it. ``log_dir`` is where its files go (``None`` if it writes none).
    ``close()`` releases what the sink itself opened; a logger's own writer stays open for the logger.
    """

    supports_images: bool
    supports_text: bool
    supports_histograms: bool
    supports_embedding: bool
    supports_custom_scalars: bool

    @property
    def log_dir(self) -> str | None: ...

    def add_image(self, tag: str, img: Tensor, step: int, caption: str | None = None) -> None: ...

    def add_scalars(self, values: Mapping[str, float], step: int) -> list[str]: ...

    def add_histogram(self, tag: str, values: Tensor, step: int) -> None: ...

    def add_text(self, tag: str, text: str, step: int) -> None: ...

    def add_embedding(self, features: Tensor, metadata: Sequence[Any] | None = None, label_img: Tensor | None = None,
                      step: int = 0, tag: str = "default", metadata_header: Sequence[str] | None = None) -> None:
        """Points ``(N, D)`` for a projector; ``metadata`` one label per row (or one list per row with
        ``metadata_header``); ``label_img`` ``uint8 (N, 3, H, W)`` thumbnails."""

    def add_custom_scalars_layout(self, layout: Mapping[str, Any]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class BaseSink:
    """The base of a sink written outside the package: it stores nothing until a subclass says so. Override the
    ``add_*`` methods of what it stores and set their capability flags (``supports_images = True`` ...); scalars are
    always offered (``add_scalars`` returns the keys it skipped). Pass instances as ``ExplanationMonitor(sinks=[...])``
    (beside the loggers' sinks), or register a factory for a kind of logger with
    :func:`lightning_xai.writers.register_sink`.

    Example::

        >>> class Printed(BaseSink):
        ...     def add_scalars(self, values, step):
        ...         print(step, sorted(values))
        ...         return []
        >>> isinstance(Printed(), Sink), Printed().add_scalars({"xai/grad_cam/stability": 0.9}, step=3)
        3 ['xai/grad_cam/stability']
        (True, [])
    """

    supports_images = False
    supports_text = False
    supports_histograms = False
    supports_embedding = False
    supports_custom_scalars = False

    @property
    def log_dir(self) -> str | None:
        return None

    def add_image(self, tag: str, img: Tensor, step: int, caption: str | None = None) -> None:
        """Called only with ``supports_images``."""

    def add_scalars(self, values: Mapping[str, float], step: int) -> list[str]:
        return []

    def add_histogram(self, tag: str, values: Tensor, step: int) -> None:
        """Called only with ``supports_histograms``."""

    def add_text(self, tag: str, text: str, step: int) -> None:
        """Called only with ``supports_text``."""

    def add_embedding(self, features: Tensor, metadata: Sequence[Any] | None = None, label_img: Tensor | None = None,
                      step: int = 0, tag: str = "default", metadata_header: Sequence[str] | None = None) -> None:
        """Called only with ``supports_embedding``."""

    def add_custom_scalars_layout(self, layout: Mapping[str, Any]) -> None:
        """Called only with ``supports_custom_scalars``."""

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


#: The v0.1 name of :class:`Sink`.
Writer = Sink


class SinkError(RuntimeError):
    """One or more sinks failed to store an item; the others got it.

    Attributes:
        failures: ``[(sink description, exception), ...]``.
    """

    def __init__(self, what: str, failures: Sequence[tuple[str, BaseException]]) -> None:
        self.failures = list(failures)
        details = "; ".join(f"{name}: {type(err).__name__}: {err}" for name, err in self.failures)
        super().__init__(f"writing {what} failed in {details}")


class ItemsError(RuntimeError):
    """Some items of one write failed; every other item of it was written.

    Attributes:
        failures: ``{item (e.g. a scalar's tag): exception}``.
        total: how many items the write had.
    """

    def __init__(self, what: str, failures: Mapping[str, BaseException], total: int) -> None:
        self.failures, self.total = dict(failures), total
        by_cause: dict[str, list[str]] = {}
        for item, err in self.failures.items():
            by_cause.setdefault(f"{type(err).__name__}: {err}", []).append(item)
        causes = "; ".join(f"{', '.join(items)}: {cause}" for cause, items in by_cause.items())
        super().__init__(f"{len(self.failures)} of {total} {what} failed ({causes}); the others were written")


def write_each(items: Sequence[tuple[str, Callable[[], Any]]], what: str) -> None:
    """Run every ``(item, write)`` even when some fail; raise one :class:`ItemsError` naming the failed items
    afterwards, so one bad key (a tag a logger refuses, one image that cannot be uploaded) never costs the others."""
    failures: dict[str, BaseException] = {}
    for item, write in items:
        try:
            write()
        except Exception as err:  # this item's failure is reported below; the next item is still written
            failures[item] = err
    if failures:
        raise ItemsError(what, failures, len(items))


def check_tag(tag: str) -> None:
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"`tag` must be a non-empty str, got {tag!r}")


def check_step(step: int) -> int:
    """Return ``step`` as an int; raise if it is not a non-negative integer (Python int or 0-dim integer tensor)."""
    if isinstance(step, Tensor) and step.numel() == 1 and not step.is_floating_point():
        step = int(step.item())
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"`step` must be a non-negative int, got {step!r}")
    return step


def check_text(text: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a str, got {type(text).__name__}")
    return text


def check_image(img: Tensor) -> Tensor:
    """Return ``img`` detached on the CPU, contiguous; raise unless it is a ``uint8`` tensor of shape ``(3, H, W)``."""
    if not isinstance(img, Tensor):
        raise TypeError(f"`img` must be a torch.Tensor, got {type(img).__name__}")
    if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(
            f"`img` must be a uint8 RGB tensor of shape (3, H, W) (see lightning_xai.render), "
            f"got {tuple(img.shape)} {img.dtype}"
        )
    return img.detach().cpu().contiguous()


def check_embedding(features: Tensor, metadata: Sequence[Any] | None, label_img: Tensor | None,
                    metadata_header: Sequence[str] | None = None
                    ) -> tuple[Tensor, list[Any] | None, Tensor | None, list[str] | None]:
    """``(features (N, D) float32 CPU, metadata list or None, label_img uint8 (N, 3, H, W) CPU or None, header)``.

    ``metadata``: one label per row; with ``metadata_header`` (column names), one list of that many values per row.
    """
    if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[0] == 0:
        got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"`features` must be a tensor of shape (N, D) with N >= 1, got {got}")
    features = features.detach().float().cpu()
    if not bool(torch.isfinite(features).all()):
        raise ValueError("`features` must be finite (no NaN/inf): the projector cannot place such points")
    n = features.shape[0]
    if metadata is not None:
        metadata = list(metadata)
        if len(metadata) != n:
            raise ValueError(f"`metadata` must have one entry per row of `features` ({n}), got {len(metadata)}")
        if metadata_header is not None:
            metadata_header = [str(h) for h in metadata_header]
            bad = [row for row in metadata if not isinstance(row, (list, tuple)) or len(row) != len(metadata_header)]
            if bad:
                raise ValueError(f"with `metadata_header` ({len(metadata_header)} columns) every `metadata` row must "
                                 f"be a list of {len(metadata_header)} values, got {bad[0]!r}")
            metadata = [[str(v) for v in row] for row in metadata]
        else:
            metadata = [str(v) for v in metadata]
    elif metadata_header is not None:
        raise ValueError("`metadata_header` needs `metadata`")
    if label_img is not None:
        if (not isinstance(label_img, Tensor) or label_img.dtype != torch.uint8 or label_img.dim() != 4
                or label_img.shape[0] != n or label_img.shape[1] != 3):
            got = f"{tuple(label_img.shape)} {label_img.dtype}" if isinstance(label_img, Tensor) else label_img
            raise ValueError(f"`label_img` must be None or a uint8 tensor of shape ({n}, 3, H, W), got {got}")
        label_img = label_img.detach().cpu().contiguous()
    return features, metadata, label_img, metadata_header


def finite_scalars(values: Mapping[str, float]) -> tuple[dict[str, float], list[str]]:
    """Split ``values`` into ``({tag: float}, skipped_tags)``: non-finite values are skipped, never written.

    Values may be Python numbers or one-element tensors (moved to the CPU).
    """
    if not isinstance(values, Mapping):
        raise TypeError(f"`values` must be a mapping of tag -> float, got {type(values).__name__}")
    kept: dict[str, float] = {}
    skipped: list[str] = []
    for tag, value in values.items():
        check_tag(tag)
        try:
            number = float(value.detach().cpu().item()) if isinstance(value, Tensor) else float(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"`values[{tag!r}]` must be a number or a one-element tensor, got {value!r}") from err
        if math.isfinite(number):
            kept[tag] = number
        else:
            skipped.append(tag)
    return kept, skipped


def finite_values(values: Tensor) -> Tensor:
    """The finite entries of ``values``, flattened, as float32 on the CPU (histograms never see NaN/inf)."""
    if not isinstance(values, Tensor):
        raise TypeError(f"`values` must be a tensor, got {type(values).__name__}")
    flat = values.detach().reshape(-1).float().cpu()
    return flat[torch.isfinite(flat)]


def png_bytes(img: Tensor) -> bytes:
    """``uint8 (3, H, W)`` -> PNG bytes: one "up" filter and zlib level 1, about twice as fast as Pillow's
    per-row adaptive filtering at the same level (``bench/render.py``)."""
    from lightning_xai.render.png import encode_png

    return encode_png(img)


def hwc(img: Tensor) -> Any:
    """``uint8 (3, H, W)`` tensor -> ``(H, W, 3)`` numpy array, as image libraries want it."""
    return img.permute(1, 2, 0).contiguous().cpu().numpy()
