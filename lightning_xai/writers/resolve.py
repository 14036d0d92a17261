"""Choose a sink for each of a Trainer's loggers by what the logger can do (PITFALLS 23: never by class name)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_xai.writers.base import Sink
from lightning_xai.writers.file import FileSink, next_version_dir
from lightning_xai.writers.loggers import MetricsSink, MlflowSink, WandbSink, is_mlflow_logger, is_wandb_logger
from lightning_xai.writers.multi import MultiSink
from lightning_xai.writers.tensorboard import TensorBoardSink, is_summary_writer

__all__ = ["FALLBACK_DIRNAME", "ResolvedSinks", "register_sink", "sinks_for_loggers"]

#: Files of a run without a logger, or for a logger the monitor does not know, go to ``<root>/<this>/version_<n>``.
FALLBACK_DIRNAME = "lightning_xai"


@dataclass
class ResolvedSinks:
    """What :func:`sinks_for_loggers` chose.

    Attributes:
        sink: one :class:`~lightning_xai.writers.MultiSink` over every logger's sink.
        kinds: per logger (same order), the kind chosen: ``"tensorboard"``, ``"wandb"``, ``"mlflow"``, ``"csv"`` or
            ``"unknown"`` (plus ``"files"`` for the run without a logger).
        notes: messages for the user (one per logger the monitor does not know, naming where its files go).
        errors: ``[(logger description, exception)]`` for loggers whose sink could not be made (e.g. a read-only
            directory); the others work.
    """

    sink: MultiSink
    kinds: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[tuple[str, BaseException]] = field(default_factory=list)


def _experiment(logger: Any) -> Any:
    try:
        return getattr(logger, "experiment", None)
    except Exception:  # a logger whose experiment cannot start is handled as one without
        return None


def _dir_of(logger: Any) -> str | None:
    for name in ("log_dir", "save_dir"):
        try:
            value = getattr(logger, name, None)
        except Exception:
            value = None
        if isinstance(value, (str, os.PathLike)) and str(value):
            return str(value)
    return None


#: ``(kind, factory)`` in the order they are asked: ``factory(logger)`` returns the sinks for a logger of its kind,
#: or ``None`` for another kind. Factories registered from outside the package are asked first.
SinkFactory = Callable[[Any], "list[Sink] | None"]
_FACTORIES: list[tuple[str, SinkFactory]] = []


def register_sink(kind: str, *, first: bool = True) -> Callable[[SinkFactory], SinkFactory]:
    """Decorator: ``factory(logger) -> list[Sink] | None`` makes the sinks of one kind of logger (decided by what
    the logger can do, never by its class name: both Lightning packages' loggers must match). Registered factories
    are asked before the built-in ones (``first=False``: after them); the first that answers decides.

    Example (a logger with a ``print_scalars`` method gets a ``PrintingSink``, a :class:`~.base.BaseSink`)::

        @register_sink("printing")
        def printing_sinks(logger):
            return [PrintingSink(logger)] if callable(getattr(logger, "print_scalars", None)) else None
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"`kind` must be a non-empty string naming the kind of logger, got {kind!r}")

    def add(factory: SinkFactory) -> SinkFactory:
        if not callable(factory):
            raise TypeError(f"register_sink({kind!r}) decorates a function logger -> list of sinks | None")
        entry = (kind, factory)
        _FACTORIES.insert(0, entry) if first else _FACTORIES.append(entry)
        return factory

    return add


@register_sink("csv")
def _csv(logger: Any) -> list[Sink] | None:
    experiment = _experiment(logger)
    log_dir = getattr(logger, "log_dir", None)
    if (callable(getattr(logger, "log_metrics", None)) and isinstance(log_dir, (str, os.PathLike))
            and hasattr(experiment, "metrics_file_path")):
        # a CSV logger: its version directory is this run's own
        return [MetricsSink(logger), FileSink(log_dir, scalars=False)]
    return None


@register_sink("tensorboard")
def _tensorboard(logger: Any) -> list[Sink] | None:
    experiment = _experiment(logger)
    return [TensorBoardSink(experiment)] if is_summary_writer(experiment) else None


@register_sink("mlflow")
def _mlflow(logger: Any) -> list[Sink] | None:
    return [MlflowSink(logger)] if is_mlflow_logger(logger) else None


@register_sink("wandb")
def _wandb(logger: Any) -> list[Sink] | None:
    return [WandbSink(logger)] if is_wandb_logger(logger) else None


def _classify(logger: Any) -> tuple[str, list[Sink]]:
    for kind, factory in list(_FACTORIES):
        sinks = factory(logger)
        if sinks is not None:
            return kind, list(sinks)
    return "unknown", []


def sinks_for_loggers(loggers: Sequence[Any], fallback_root: str | os.PathLike[str]) -> ResolvedSinks:
    """One sink per logger, chosen by capability, each getting each item once.

    - a ``SummaryWriter``-like ``experiment`` (``TensorBoardLogger`` of either Lightning package, or anything
      alike): everything through the writer (images, scalars, text, histograms, projector embeddings, custom-scalars
      layouts);
    - Weights & Biases (``log_image``/``log_text``/``log_table``): images with captions, text tables, histograms and
      scalars through the logger;
    - MLflow (``run_id`` and a client ``experiment``): per-step images, text and histogram artifacts, scalars;
    - a CSV logger (``experiment.metrics_file_path``): scalars into its ``metrics.csv`` through ``log_metrics`` (only
      there), images, text and histograms as files in its version directory;
    - any other logger: scalars through ``log_metrics``, the rest as files in a new
      ``<its log_dir or save_dir, else fallback_root>/lightning_xai/version_<n>``, and a note saying so;
    - no logger: files in a new ``<fallback_root>/lightning_xai/version_<n>``.

    Call it on the process that writes (rank 0): reading ``experiment`` starts a logger's run.

    Args:
        loggers: the Trainer's loggers (``trainer.loggers``).
        fallback_root: where files go when no logger says (the Trainer's ``default_root_dir``).
    """
    sinks: list[Sink] = []
    resolved = ResolvedSinks(sink=MultiSink([]))
    seen: set[Any] = set()

    def add(new: list[Sink]) -> None:
        for sink in new:
            key = ("tb", id(sink.summary_writer)) if isinstance(sink, TensorBoardSink) else (
                ("files", str(Path(sink.log_dir).resolve())) if isinstance(sink, FileSink) else ("obj", id(sink)))
            if key not in seen:
                seen.add(key)
                sinks.append(sink)

    done: dict[int, str] = {}
    for logger in loggers:
        name = type(logger).__name__
        if id(logger) in done:  # the same logger twice still gets each item once
            resolved.kinds.append(done[id(logger)])
            continue
        try:
            kind, new = _classify(logger)
            if kind == "unknown":
                root = _dir_of(logger) or str(fallback_root)
                folder = next_version_dir(Path(root) / FALLBACK_DIRNAME)
                new = ([MetricsSink(logger)] if callable(getattr(logger, "log_metrics", None)) else []) + [
                    FileSink(folder)]
                resolved.notes.append(
                    f"ExplanationMonitor does not know how to send images and text to {name}: it gets the scalars"
                    f"{' (log_metrics)' if len(new) == 2 else ''}; overlays, text and histograms are written as "
                    f"files under {folder}."
                )
            resolved.kinds.append(kind)
            done[id(logger)] = kind
            add(new)
        except Exception as err:
            resolved.kinds.append("error")
            done[id(logger)] = "error"
            resolved.errors.append((name, err))
    if not loggers:
        try:
            folder = next_version_dir(Path(fallback_root) / FALLBACK_DIRNAME)
            add([FileSink(folder)])
            resolved.kinds.append("files")
            resolved.notes.append(f"ExplanationMonitor: no logger; overlays, scalars and text are written as files "
                                  f"under {folder}.")
        except Exception as err:
            resolved.errors.append(("files", err))
    resolved.sink = MultiSink(sinks)
    return resolved
