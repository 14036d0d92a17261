"""Reporting on rank 0: which writer, overlays on a background thread, scalars to every logger, drift text, warnings.

Nothing here is a collective; the monitor calls it inside its rank agreement so a failure never leaves a rank alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from lightning_xai.probes import ProbeSet
from lightning_xai.render import make_overlay_grid
from lightning_xai.writers import FileWriter, TensorBoardWriter


def log_dir_no_collective(trainer: pl.Trainer) -> str:
    """``trainer.log_dir`` without its ``strategy.broadcast``: the writer is made on rank 0 only, where a collective
    would hang or abort DDP. On rank 0 this is the value the broadcast would send."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        if isinstance(logger, (pl.loggers.TensorBoardLogger, pl.loggers.CSVLogger)):
            return logger.log_dir or trainer.default_root_dir
        return logger.save_dir or trainer.default_root_dir
    return trainer.default_root_dir


def choose_writer(trainer: pl.Trainer, warn: Callable[[str], None]) -> tuple[Any, list[Any]]:
    """The writer for images, text and histograms, and the loggers that get the scalars through their own API.

    The one place that decides where results go.
    """
    for logger in trainer.loggers:
        if isinstance(logger, pl.loggers.TensorBoardLogger):
            others = [lg for lg in trainer.loggers if lg is not logger]
            return TensorBoardWriter(logger.experiment), others
    log_dir = log_dir_no_collective(trainer)
    warn("ExplanationMonitor: no TensorBoardLogger found; overlays, scalars and drift text are written "
         f"as PNG/CSV/Markdown files under {log_dir} (scalars also go to your loggers).")
    return FileWriter(log_dir), list(trainer.loggers)


def captions(probes: ProbeSet, pred: Tensor, prob: Tensor, class_names: list[str] | None) -> list[list[str]]:
    """Two short lines per probe (they fit a 96-128 px tile): the true label, then the prediction and its
    probability."""

    def name(index: int) -> str:
        if index < 0:
            return "?"
        return class_names[index] if class_names is not None and index < len(class_names) else str(index)

    return [[f"y={name(int(y))}", f"p={name(int(p))} {float(q):.2f}"] for y, p, q in zip(probes.labels, pred, prob)]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def drift_text(epoch: int, step: int, methods: tuple[str, ...], scalars: Mapping[str, float], details: str) -> str:
    """The epoch's stability table and the drift details, in Markdown."""
    lines = [f"**epoch {epoch}, step {step}**", "",
             "| method | stability | top-k overlap | probes flagged |", "|---|---|---|---|"]
    for m in methods:
        flagged = scalars.get(f"xai/{m}/drift")
        lines.append(f"| {m} | {_fmt(scalars.get(f'xai/{m}/stability'))} | "
                     f"{_fmt(scalars.get(f'xai/{m}/topk_overlap'))} | {'n/a' if flagged is None else int(flagged)} |")
    lines += ["", details]
    return "\n".join(lines)


class Reporter:
    """Writes one monitor's results (rank 0 only).

    Args:
        methods: explained methods (overlay and text order).
        display: the ``display`` options (mean, std, colormap, alpha).
        log_images: render overlays.
        text_tag: tag of the drift text.
    """

    def __init__(self, methods: tuple[str, ...], display: Mapping[str, Any], log_images: bool,
                 text_tag: str = "xai/drift") -> None:
        self.methods = methods
        self.display = dict(display)
        self.log_images = log_images
        self.text_tag = text_tag
        self.suffix = ""  # set when several monitors share a Trainer: their tags must differ
        self._writer: Any = None
        self._others: list[Any] = []
        self._warned: set[str] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._job: Future | None = None
        self.background_seconds = 0.0  # duration of the last overlay job (background thread)

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    def tag(self, tag: str) -> str:
        return f"{tag}/{self.suffix}" if self.suffix else tag

    def writer(self, trainer: pl.Trainer) -> Any:
        if self._writer is None:
            self._writer, self._others = choose_writer(trainer, rank_zero_warn)
        return self._writer

    def reset(self) -> None:
        """A later fit may bring other loggers."""
        self._writer, self._others = None, []

    def write_epoch(self, trainer: pl.Trainer, *, probes: ProbeSet, results: Mapping[str, Tensor],
                    scalars: Mapping[str, float], histograms: Mapping[str, Tensor], text: str,
                    class_names: list[str] | None) -> None:
        self.finish_images()  # a failure of the previous epoch's overlays surfaces here, inside the rank agreement
        writer = self.writer(trainer)
        step = trainer.global_step
        if self.log_images:
            # Rendering and PNG encoding overlap with training on a background thread (rank 0 only, no collectives);
            # the inputs are this epoch's own tensors, never modified afterwards.
            maps = {m: results[f"map/{m}"] for m in self.methods}
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lightning_xai")
            self._job = self._executor.submit(self._write_overlays, writer, probes.images, maps,
                                              captions(probes, results["pred"], results["prob"], class_names), step)
        self.write_scalars(trainer, scalars, flush=False)
        for tag, values in histograms.items():
            writer.add_histogram(self.tag(tag), values, step)
        writer.add_text(self.tag(self.text_tag), text, step)
        writer.flush()

    def write_scalars(self, trainer: pl.Trainer, scalars: Mapping[str, float], *, flush: bool = True) -> None:
        writer = self.writer(trainer)
        writer.add_scalars(dict(scalars), trainer.global_step)
        for logger in self._others:  # other loggers (CSV, W&B, ...) get the scalars through their own API
            logger.log_metrics(dict(scalars), trainer.global_step)
        if flush:
            writer.flush()

    def _write_overlays(self, writer: Any, images: Tensor, maps: Mapping[str, Tensor], labels: list[list[str]],
                        step: int) -> None:
        start = time.perf_counter()
        d = self.display
        for m, heatmaps in maps.items():
            grid = make_overlay_grid(images, heatmaps, labels, alpha=d["alpha"], colormap=d["colormap"],
                                     mean=d["mean"], std=d["std"], caption_lines=2)
            writer.add_image(self.tag(f"xai/{m}/overlay"), grid, step)
        writer.flush()
        # it overlaps training but takes a core from it: part of what the monitor costs
        self.background_seconds = time.perf_counter() - start

    def finish_images(self) -> None:
        """Wait for the pending overlay job; re-raises its exception."""
        job, self._job = self._job, None
        if job is not None:
            job.result()

    def shutdown(self) -> None:
        try:
            self.finish_images()
        except Exception as err:  # the run is ending anyway: report, don't mask what ended it
            rank_zero_warn(f"ExplanationMonitor: writing the last overlays failed: {type(err).__name__}: {err}")
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
