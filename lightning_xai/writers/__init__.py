"""Sinks: where explanation results go, chosen per logger by what the logger can do.

No Lightning import. Every sink implements :class:`Sink`: ``add_image(tag, uint8 (3, H, W), step, caption=None)``,
``add_scalars(dict[str, float], step) -> skipped tags``, ``add_text``, ``add_histogram``, ``add_embedding``,
``add_custom_scalars_layout``, ``flush``, ``close``, the ``supports_*`` capability flags and ``log_dir``.
:func:`sinks_for_loggers` builds one :class:`MultiSink` over a Trainer's loggers, asking the sink factories
(:func:`register_sink`) which sinks each logger gets. A sink from outside the package subclasses :class:`BaseSink`.
"""

import warnings
from typing import Any

from lightning_xai.writers.background import BackgroundWrites
from lightning_xai.writers.base import BaseSink, ItemsError, Sink, SinkError, write_each
from lightning_xai.writers.file import FileSink, next_version_dir
from lightning_xai.writers.loggers import MetricsSink, MlflowSink, WandbSink
from lightning_xai.writers.multi import MultiSink
from lightning_xai.writers.resolve import ResolvedSinks, register_sink, sinks_for_loggers
from lightning_xai.writers.tensorboard import TensorBoardSink

__all__ = [
    "BackgroundWrites",
    "BaseSink",
    "FileSink",
    "ItemsError",
    "MetricsSink",
    "MlflowSink",
    "MultiSink",
    "ResolvedSinks",
    "Sink",
    "SinkError",
    "TensorBoardSink",
    "WandbSink",
    "next_version_dir",
    "register_sink",
    "write_each",
    "sinks_for_loggers",
]

#: lightning_xai 0.1's names, kept for one release with a DeprecationWarning (CHANGELOG.md).
_V01 = {"Writer": ("Sink", Sink), "FileWriter": ("FileSink", FileSink), "TensorBoardWriter": ("TensorBoardSink",
                                                                                            TensorBoardSink)}


def __getattr__(name: str) -> Any:
    if name in _V01:
        new, value = _V01[name]
        warnings.warn(f"lightning_xai 0.2: lightning_xai.writers.{name} is deprecated and goes in 0.3; it is now "
                      f"{new} (the same class).", DeprecationWarning, stacklevel=2)
        return value
    raise AttributeError(f"module 'lightning_xai.writers' has no attribute {name!r}")
