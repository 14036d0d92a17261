"""The interface every writer implements, and shared argument checks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Writer", "check_image", "check_step", "check_tag", "finite_scalars"]


@runtime_checkable
class Writer(Protocol):
    """Where explanation results go. Implemented by :class:`TensorBoardWriter` and :class:`FileWriter`.

    Images are ``uint8`` RGB ``(3, H, W)`` (as made by :mod:`lightning_xai.render`); ``step`` is a non-negative int
    (the callback uses ``trainer.global_step``). ``add_scalars`` never writes a non-finite value: it skips it and
    returns the skipped keys.
    """

    def add_image(self, tag: str, img: Tensor, step: int) -> None: ...

    def add_scalars(self, values: Mapping[str, float], step: int) -> list[str]: ...

    def add_histogram(self, tag: str, values: Tensor, step: int) -> None: ...

    def add_text(self, tag: str, text: str, step: int) -> None: ...

    def flush(self) -> None: ...


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
