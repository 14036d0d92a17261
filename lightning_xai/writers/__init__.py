"""Sinks: where explanation results go, chosen per logger by what the logger can do.

No Lightning import. Every sink implements :class:`Sink`: ``add_image(tag, uint8 (3, H, W), step, caption=None)``,
``add_scalars(dict[str, float], step) -> skipped tags``, ``add_text``, ``add_histogram``, ``add_embedding``,
``add_custom_scalars_layout``, ``flush``, ``close``, the ``supports_*`` capability flags and ``log_dir``.
:func:`sinks_for_loggers` builds one :class:`MultiSink` over a Trainer's loggers, asking the sink factories
(:func:`register_sink`) which sinks each logger gets. A sink from outside the package subclasses :class:`BaseSink`.
"""

from lightning_xai.writers.background import BackgroundWrites
from lightning_xai.writers.base import BaseSink, ItemsError, Sink, SinkError, Writer, write_each
from lightning_xai.writers.file import FileSink, FileWriter, next_version_dir
from lightning_xai.writers.loggers import MetricsSink, MlflowSink, WandbSink
from lightning_xai.writers.multi import MultiSink
from lightning_xai.writers.resolve import ResolvedSinks, register_sink, sinks_for_loggers
from lightning_xai.writers.tensorboard import TensorBoardSink, TensorBoardWriter

__all__ = [
    "BackgroundWrites",
    "BaseSink",
    "FileSink",
    "FileWriter",
    "ItemsError",
    "MetricsSink",
    "MlflowSink",
    "MultiSink",
    "ResolvedSinks",
    "Sink",
    "SinkError",
    "TensorBoardSink",
    "TensorBoardWriter",
    "WandbSink",
    "Writer",
    "next_version_dir",
    "register_sink",
    "write_each",
    "sinks_for_loggers",
]
