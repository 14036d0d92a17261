"""Reporting on rank 0: the sinks (one per logger, by capability), overlays on a background thread, scalars, drift
text, warnings, the dashboard layout, each method's timeline and the end-of-fit HTML report.

Nothing here is a collective; the monitor calls it inside its rank agreement so a failure never leaves a rank alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from lightning_xai.callbacks._compat import rank_zero_warn
from lightning_xai.probes import ProbeSet
from lightning_xai.render import WARN_COLOR, ProbeRenderer, Timeline, display_order, id_range
from lightning_xai.report import custom_scalars_layout, load_run, save_report
from lightning_xai.writers import BackgroundWrites, MultiSink, SinkError, sinks_for_loggers, write_each

if TYPE_CHECKING:
    import pytorch_lightning as pl


class OverlayWriteError(RuntimeError):
    """Writing an epoch's overlays failed on the background thread; reported at the next write, under its epoch."""

    def __init__(self, epoch: int, step: int, error: BaseException) -> None:
        self.epoch, self.step = epoch, step
        super().__init__(f"writing the overlays of epoch {epoch} (step {step}) failed: {type(error).__name__}: {error}")


def _class_name(index: int, class_names: list[str] | None) -> str:
    if index < 0:
        return "?"
    return class_names[index] if class_names is not None and index < len(class_names) else str(index)


def _true_label(probes: ProbeSet, i: int, class_names: list[str] | None) -> str:
    if probes.label_sets is not None:  # multi-label: every positive label
        positives = probes.label_sets[i].nonzero().flatten().tolist()
        return "+".join(_class_name(int(c), class_names) for c in positives) or "none"
    return _class_name(int(probes.labels[i]), class_names)


def probe_labels(probes: ProbeSet, class_names: list[str] | None) -> list[str]:
    """``#<probe id> <true label(s)>`` per probe: the id the drift text names, on the picture."""
    return [f"#{int(probes.ids[i])} {_true_label(probes, i, class_names)}" for i in range(len(probes))]


def _score(q: float) -> str:
    return "1.0" if q >= 0.995 else f"{q:.2f}"[1:]  # ".87": fits a 64 px tile


def captions(probes: ProbeSet, pred: Tensor, prob: Tensor, class_names: list[str] | None,
             target: Tensor | None = None) -> list[list[Any]]:
    """Two short lines per probe (they fit a 64 px tile): the probe's id and true label, then the prediction and its
    probability, in a warning colour when the prediction is wrong. Multi-label probes: every positive label
    (``#3 a+b``), then the explained class and its sigmoid score (``a sig=.83``; ``prob`` holds that score)."""
    labels = probe_labels(probes, class_names)
    if probes.label_sets is not None:
        explained = probes.labels if target is None else target
        return [[label, f"{_class_name(int(t), class_names)} sig={_score(float(q))}"]
                for label, t, q in zip(labels, explained, prob)]
    out = []
    for label, y, p, q in zip(labels, probes.labels, pred, prob):
        line = f"p={_class_name(int(p), class_names)} {_score(float(q))}"
        out.append([label, (line, WARN_COLOR) if int(p) != int(y) else line])
    return out


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
        self._renderer: ProbeRenderer | None = None  # made on the background thread at the first overlay
        self.timeline = Timeline()
        self._layout_written = False

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
        """A later fit may bring other loggers (and is a new run: new timelines, a layout in its own events)."""
        self._sink = None
        self._renderer, self.timeline, self._layout_written = None, Timeline(), False

    def write_epoch(self, trainer: pl.Trainer, *, probes: ProbeSet, results: Mapping[str, Tensor],
                    scalars: Mapping[str, float], histograms: Mapping[str, Tensor], text: str,
                    class_names: list[str] | None, flags: Mapping[str, list[bool]] | None = None,
                    layout_keys: set[str] | None = None) -> None:
        """This epoch's scalars, histograms and text now; its overlays on the background thread; the dashboard's
        custom-scalars layout once per run (from ``layout_keys``).

        An earlier epoch's overlay failure is raised (as :class:`OverlayWriteError`, naming that epoch) only after
        this epoch's items are written, so it never costs this epoch its scalars.
        """
        earlier = self._jobs.collect()
        sink = self.sink(trainer)
        step = trainer.global_step
        overlays = self.log_images and sink.supports_images
        errors: list[tuple[str, BaseException]] = []
        if layout_keys is not None and not self._layout_written and sink.supports_custom_scalars:
            self._layout_written = True  # once per run, even if a sink refuses it (reported below)
            try:
                sink.add_custom_scalars_layout(custom_scalars_layout(layout_keys))
            except SinkError as err:
                errors.extend(err.failures)
        for write in (lambda: sink.add_scalars(dict(scalars), step),
                      *(lambda t=t, v=v: sink.add_histogram(self.tag(t), v, step) for t, v in histograms.items()),
                      lambda: sink.add_text(self.tag(self.text_tag), text, step),
                      # with overlays, their job flushes after them, off this thread: no wait here for the writer
                      # thread (which may be busy with the previous images)
                      *(() if overlays else (sink.flush,))):
            try:
                write()
            except SinkError as err:  # one item's failure: the others are still written
                errors.extend(err.failures)
        if overlays:
            # Rendering and PNG encoding overlap with training on a background thread (rank 0 only, no collectives);
            # the inputs are this epoch's own tensors, never modified afterwards. Submitted after this epoch's
            # scalars and text, so the job's final flush writes them too.
            maps = {m: results[f"map/{m}"] for m in self.methods if f"map/{m}" in results}  # the methods that ran
            labels = captions(probes, results["pred"], results["prob"], class_names, results.get("target"))
            flagged = {m: list((flags or {}).get(m) or [False] * len(probes)) for m in maps}
            self._jobs.submit((trainer.current_epoch, step), self._write_overlays, sink, probes.images, maps, labels,
                              step, trainer.current_epoch, flagged, probes.ids.tolist(),
                              any(v > 0.5 for k, v in scalars.items() if k.startswith("xai/drift/alarm")),
                              results.get("region"))
        if errors:  # an earlier epoch's overlay failure is named too, never dropped
            errors += [(f"overlays of epoch {epoch}", err) for (epoch, _), err in earlier]
            raise SinkError(f"epoch {trainer.current_epoch}'s results", errors)
        self._raise_earlier(earlier)

    def write_scalars(self, trainer: pl.Trainer, scalars: Mapping[str, float], *, flush: bool = True) -> None:
        sink = self.sink(trainer)
        sink.add_scalars(dict(scalars), trainer.global_step)
        if flush:
            sink.flush()

    def _write_overlays(self, sink: MultiSink, images: Tensor, maps: Mapping[str, Tensor], labels: list[list[Any]],
                        step: int, epoch: int, flagged: Mapping[str, list[bool]], ids: list[int],
                        alarm: bool = False, regions: Tensor | None = None) -> None:
        began = time.perf_counter()
        if self._renderer is None:  # the probes never change within a fit: de-normalise and size them once
            d = self.display
            self._renderer = ProbeRenderer(images, alpha=d["alpha"], colormap=d["colormap"], mean=d["mean"],
                                           std=d["std"])
        if regions is not None:  # a segmentation model's explained regions, outlined on the tiles
            self._renderer.set_outlines(regions)
        writes = []
        for m, heatmaps in maps.items():
            # groups of 8 probes: each panel fills TensorBoard's default image card at full size
            # tiles in ascending probe id, as the titles and timeline rows name them
            panels, tiles = self._renderer.render_groups(heatmaps, labels, title=f"{m} | epoch {epoch}",
                                                         flagged=flagged[m], caption_lines=2, ids=ids)
            self.timeline.add(m, epoch, tiles, flagged[m], alarm=alarm)
            order = display_order(ids, len(ids))
            for group, (panel, start, stop) in enumerate(panels):
                tag = self.tag(f"xai/{m}/overlay" if group == 0 else f"xai/{m}/overlay/{group + 1}")
                shown = id_range([ids[i] for i in order[start:stop]])
                caption = f"{m}, epoch {epoch}, step {step}, probes {shown}"
                writes.append((tag, lambda tag=tag, panel=panel, caption=caption:
                               sink.add_image(tag, panel, step, caption=caption)))
        # one image's failure (an upload refused) is not the other images': each is tried, failures raised after
        write_each([*writes, ("flush", sink.flush)], "overlay images")
        # it overlaps training but takes a core from it: part of what the monitor costs
        self.background_seconds = time.perf_counter() - began

    def write_timelines(self, trainer: pl.Trainer, probes: ProbeSet, class_names: list[str] | None) -> list[str]:
        """Log ``xai/{method}/timeline`` (each probe across the explained epochs) at the current step; returns the
        tags written. Waits for the pending overlays first (they feed the timelines)."""
        self.finish_images()
        sink = self.sink(trainer)
        if not sink.supports_images:
            return []
        labels = [label.replace(" ", "\n", 1) for label in probe_labels(probes, class_names)]
        tags, writes = [], []
        for m in self.timeline.methods:
            tag = f"xai/{m}/timeline"
            writes.append((tag, lambda tag=tag, m=m: sink.add_image(
                tag, self.timeline.image(m, labels, ids=probes.ids.tolist()), trainer.global_step,
                caption=f"{m}: each probe across the explained epochs")))
            tags.append(tag)
        write_each([*writes, ("flush", sink.flush)], "timeline images")
        return tags

    def write_report(self, trainer: pl.Trainer, *, sanity_threshold: float = 0.5) -> str | None:
        """Write ``<log dir>/xai_report.html`` from what this run logged, read back from the first sink directory
        holding TensorBoard events or the file sink's files; returns its path, or ``None`` (with one warning) when no
        sink keeps logs the report can read (e.g. only W&B or MLflow)."""
        sink = self.sink(trainer)
        sink.flush()
        for part in getattr(sink, "sinks", [sink]):
            log_dir = getattr(part, "log_dir", None)
            if not log_dir:
                continue
            try:
                data = load_run(log_dir)
            except (FileNotFoundError, NotADirectoryError):
                continue
            return str(save_report(data, sanity_threshold=sanity_threshold))
        self.warn_once("report", "ExplanationMonitor: no TensorBoard or file logs to build xai_report.html from; "
                       "`python -m lightning_xai.report LOGDIR` builds it from any run that has them.")
        return None

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
