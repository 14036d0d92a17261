"""Reporting on rank 0: the sinks (one per logger, by capability), overlays on a background thread, scalars, drift
text, warnings.

Nothing here is a collective; the monitor calls it inside its rank agreement so a failure never leaves a rank alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from lightning_xai.callbacks._compat import rank_zero_warn
from lightning_xai.probes import ProbeSet
from lightning_xai.render import make_overlay_grid
from lightning_xai.writers import BackgroundWrites, MultiSink, SinkError, sinks_for_loggers

if TYPE_CHECKING:
    import pytorch_lightning as pl


class OverlayWriteError(RuntimeError):
    """Writing an epoch's overlays failed on the background thread; reported at the next write, under its epoch."""

    def __init__(self, epoch: int, step: int, error: BaseException) -> None:
        self.epoch, self.step = epoch, step
        super().__init__(f"writing the overlays of epoch {epoch} (step {step}) failed: {type(error).__name__}: {error}")


def captions(probes: ProbeSet, pred: Tensor, prob: Tensor, class_names: list[str] | None,
             target: Tensor | None = None) -> list[list[str]]:
    """Two short lines per probe (they fit a 96-128 px tile): the true label, then the prediction and its
    probability. Multi-label probes: every positive label (``y=a+b``), then the explained class and its sigmoid
    score (``a sig=0.83``; ``prob`` holds that score)."""

    def name(index: int) -> str:
        if index < 0:
            return "?"
        return class_names[index] if class_names is not None and index < len(class_names) else str(index)

    if probes.label_sets is not None:
        explained = probes.labels if target is None else target
        return [["y=" + ("+".join(name(int(c)) for c in row.nonzero().flatten()) or "none"),
                 f"{name(int(t))} sig={float(q):.2f}"] for row, t, q in zip(probes.label_sets, explained, prob)]
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
    """Writes one monitor's results (rank 0 only) to every logger of the Trainer, each through the sink that fits it
    (:func:`lightning_xai.writers.sinks_for_loggers`).

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
        self.background_seconds = 0.0  # duration of the last overlay job (background thread)
        self._sink: MultiSink | None = None
        self._warned: set[str] = set()
        self._jobs = BackgroundWrites()

    def tag(self, tag: str) -> str:
        return f"{tag}/{self.suffix}" if self.suffix else tag

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    def sink(self, trainer: pl.Trainer) -> MultiSink:
        """The sinks of this fit's loggers, made on first use. A logger whose sink cannot be made (e.g. its directory
        cannot be created) raises once; the other loggers keep getting everything."""
        if self._sink is None:
            resolved = sinks_for_loggers(trainer.loggers, trainer.default_root_dir)
            self._sink = resolved.sink
            for note in resolved.notes:
                self.warn_once(note, note)
            if resolved.errors:
                raise SinkError("setting up the loggers' sinks", resolved.errors)
        return self._sink

    def reset(self) -> None:
        """A later fit may bring other loggers."""
        self._sink = None

    def write_epoch(self, trainer: pl.Trainer, *, probes: ProbeSet, results: Mapping[str, Tensor],
                    scalars: Mapping[str, float], histograms: Mapping[str, Tensor], text: str,
                    class_names: list[str] | None) -> None:
        """This epoch's scalars, histograms and text now; its overlays on the background thread.

        An earlier epoch's overlay failure is raised (as :class:`OverlayWriteError`, naming that epoch) only after
        this epoch's items are written, so it never costs this epoch its scalars.
        """
        earlier = self._jobs.collect()
        sink = self.sink(trainer)
        step = trainer.global_step
        if self.log_images and sink.supports_images:
            # Rendering and PNG encoding overlap with training on a background thread (rank 0 only, no collectives);
            # the inputs are this epoch's own tensors, never modified afterwards.
            maps = {m: results[f"map/{m}"] for m in self.methods}
            labels = captions(probes, results["pred"], results["prob"], class_names, results.get("target"))
            self._jobs.submit((trainer.current_epoch, step), self._write_overlays, sink, probes.images, maps, labels,
                              step, trainer.current_epoch)
        errors: list[tuple[str, BaseException]] = []
        for write in (lambda: sink.add_scalars(dict(scalars), step),
                      *(lambda t=t, v=v: sink.add_histogram(self.tag(t), v, step) for t, v in histograms.items()),
                      lambda: sink.add_text(self.tag(self.text_tag), text, step),
                      sink.flush):
            try:
                write()
            except SinkError as err:  # one item's failure: the others are still written
                errors.extend(err.failures)
        if errors:
            raise SinkError(f"epoch {trainer.current_epoch}'s results", errors)
        self._raise_earlier(earlier)

    def write_scalars(self, trainer: pl.Trainer, scalars: Mapping[str, float], *, flush: bool = True) -> None:
        sink = self.sink(trainer)
        sink.add_scalars(dict(scalars), trainer.global_step)
        if flush:
            sink.flush()

    def _write_overlays(self, sink: MultiSink, images: Tensor, maps: Mapping[str, Tensor], labels: list[list[str]],
                        step: int, epoch: int) -> None:
        start = time.perf_counter()
        d = self.display
        for m, heatmaps in maps.items():
            grid = make_overlay_grid(images, heatmaps, labels, alpha=d["alpha"], colormap=d["colormap"],
                                     mean=d["mean"], std=d["std"], caption_lines=2)
            sink.add_image(self.tag(f"xai/{m}/overlay"), grid, step, caption=f"{m}, epoch {epoch}, step {step}")
        sink.flush()
        # it overlaps training but takes a core from it: part of what the monitor costs
        self.background_seconds = time.perf_counter() - start

    @staticmethod
    def _raise_earlier(failures: list[tuple[Any, BaseException]]) -> None:
        if failures:
            (epoch, step), error = failures[0]
            raise OverlayWriteError(epoch, step, error) from error

    def finish_images(self) -> None:
        """Wait for the pending overlay jobs; raises an :class:`OverlayWriteError` naming a failed job's epoch."""
        self._raise_earlier(self._jobs.collect())

    def shutdown(self) -> None:
        try:
            self._raise_earlier(self._jobs.close())
        except Exception as err:  # the run is ending anyway: report, don't mask what ended it
            rank_zero_warn(f"ExplanationMonitor: {err}")
