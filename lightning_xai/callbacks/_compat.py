"""Both Lightning packages: ``lightning.pytorch`` (``import lightning as L``) and ``pytorch_lightning``.

They ship the same classes twice, so ``isinstance(x, pytorch_lightning.X)`` is False for ``lightning.pytorch.X`` and
vice versa. Here every class the monitor checks against or derives from is the tuple of both packages' (whichever are
installed), and the errors it raises are instances of both packages' ``MisconfigurationException``, so a user's
``except`` works with either import. Loggers are never checked by class (:mod:`lightning_xai.writers` duck-types).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from torch import nn

__all__ = [
    "CALLBACK_BASES",
    "EARLY_STOPPING",
    "LIGHTNING_MODULES",
    "MODEL_CHECKPOINT",
    "PACKAGES",
    "MisconfigurationException",
    "MonitorWarning",
    "muted_logging",
    "rank_zero_info",
    "rank_zero_warn",
]

_NAMES = ("lightning.pytorch", "pytorch_lightning")


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


#: The installed Lightning packages, ``lightning.pytorch`` first.
PACKAGES: tuple[ModuleType, ...] = tuple(m for m in (_load(n) for n in _NAMES) if m is not None)
if not PACKAGES:  # pragma: no cover - the package depends on one of them
    raise ImportError("ExplanationMonitor needs Lightning: `pip install lightning` (or `pip install pytorch-lightning`)")


def _both(module: str, name: str) -> tuple[type, ...]:
    return tuple(getattr(importlib.import_module(f"{p.__name__}.{module}"), name) for p in PACKAGES)


CALLBACK_BASES: tuple[type, ...] = _both("callbacks", "Callback")
EARLY_STOPPING: tuple[type, ...] = _both("callbacks", "EarlyStopping")
MODEL_CHECKPOINT: tuple[type, ...] = _both("callbacks", "ModelCheckpoint")
LIGHTNING_MODULES: tuple[type, ...] = _both("core", "LightningModule")


class MisconfigurationException(*_both("utilities.exceptions", "MisconfigurationException")):  # type: ignore[misc]
    """A bad monitor setup found in ``setup()``; catchable as either package's ``MisconfigurationException``."""


# Both packages set the process rank on this one object (lightning_utilities), so it warns on global rank 0 only.
from lightning_utilities.core.rank_zero import rank_zero_only  # noqa: E402
from lightning_utilities.core.rank_zero import rank_zero_warn as _rank_zero_warn  # noqa: E402


class MonitorWarning(UserWarning):
    """A warning of the ExplanationMonitor. Printed as its message alone: no source-file path and line in front
    (the line that raised it is the monitor's, not the user's). Filter it with
    ``warnings.filterwarnings("ignore", category=MonitorWarning)``."""


def rank_zero_warn(message: str, stacklevel: int = 5, **kwargs: Any) -> None:
    """Warn on global rank 0 with :class:`MonitorWarning` (unless ``category`` is given)."""
    kwargs.setdefault("category", MonitorWarning)
    _rank_zero_warn(message, stacklevel=stacklevel, **kwargs)


def _format_warning(message: Any, category: type[Warning], filename: str, lineno: int, line: str | None = None
                    ) -> str:
    if isinstance(category, type) and issubclass(category, MonitorWarning):
        return f"{message}\n"
    return _previous_format_warning(message, category, filename, lineno, line)


# Only the monitor's own warnings change format; every other warning goes to the formatter that was installed
# (Python's, or the one Lightning installs for its own messages).
_previous_format_warning = warnings.formatwarning
if not getattr(warnings.formatwarning, "_lightning_xai", False):
    _format_warning._lightning_xai = True  # type: ignore[attr-defined]
    warnings.formatwarning = _format_warning


def rank_zero_info(message: str) -> None:
    """An information line on global rank 0, through the console logger a Lightning package set up (so it is shown
    like Lightning's own "GPU available" lines; lightning_utilities' own logger has no handler)."""
    if getattr(rank_zero_only, "rank", 0) != 0:
        return
    loggers = [logging.getLogger(p.__name__) for p in PACKAGES]
    logger = next((lg for lg in loggers if lg.handlers), logging.getLogger("lightning_xai"))
    logger.info(message)


def _silent(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def muted_logging(model: nn.Module) -> Iterator[None]:
    """Inside the block, ``self.log``/``self.log_dict`` of every LightningModule in ``model`` do nothing.

    A user's ``forward`` may call ``self.log()``: from the monitor's extra forwards that would fail in ``setup()``
    ("You can't `self.log()` inside `setup`") or add the monitor's calls to the user's epoch means. Instance
    attributes shadow the methods for the block only; what was there before comes back in ``finally``.
    """
    patched: list[tuple[nn.Module, str, Any]] = []
    try:
        for module in model.modules():
            if isinstance(module, LIGHTNING_MODULES):
                for name in ("log", "log_dict"):
                    patched.append((module, name, module.__dict__.get(name, _MISSING)))
                    object.__setattr__(module, name, _silent)
        yield
    finally:
        for module, name, before in reversed(patched):
            if before is _MISSING:
                module.__dict__.pop(name, None)
            else:
                object.__setattr__(module, name, before)


_MISSING = object()
