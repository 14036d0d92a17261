"""The stability/drift tracker: pooled maps in, stability scalars, drift report and history records out.

No Lightning import: testable with plain tensors. :class:`DriftTracker` keeps the history records and hands the pooled
maps to :class:`lightning_xai.drift.DriftDetector`, which owns the references, the per-probe stability and the alarm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_xai.drift import DriftDetector, DriftReport
from lightning_xai.metrics.stability import downsample

_STATE_VERSION = 3


def pool(maps: Tensor, size: int) -> Tensor:
    """Heatmaps ``(N, 1, H, W)`` -> pooled ``(N, 1, size, size)``: what stability compares and the checkpoint keeps."""
    return downsample(maps, size=size).reshape(maps.shape[0], 1, size, size)


@dataclass
class DetectionRows:
    """The detection pool's rows beyond the display probes, for one round: the cheap methods' heatmaps
    ``(n, 1, H, W)`` (NaN where the pool could not be explained: degenerate, left out), predictions, explained
    classes, origin (0 validation, 1 training) and masks (or None)."""

    heatmaps: dict[str, Tensor]
    pred: Tensor
    target: Tensor
    origin: Tensor
    masks: Tensor | None = None

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.heatmaps)

    def maps(self, method: str, size: int) -> Tensor:
        return pool(self.heatmaps[method], size)


def lr_event(previous: Sequence[float] | None, current: Sequence[float], factor: float = 2.0) -> str | None:
    """A learning-rate step between two explained epochs (any param group changed by ``factor`` or more), described
    for the drift report; None otherwise. Schedule steps change how fast the maps move, which is not drift."""
    if not previous or len(previous) != len(current):
        return None
    ratios = [c / p for p, c in zip(previous, current) if p > 0 and c > 0]
    big = [r for r in ratios if r >= factor or r <= 1.0 / factor]
    if not big:
        return None
    r = max(big, key=lambda v: max(v, 1.0 / v))
    return f"learning rate x{r:.3g} since the previous explained epoch"


def new_drift(detector_options: Mapping[str, Any], size: int, topk: float) -> DriftDetector:
    """The drift detector the monitor uses (pooled maps of side ``size`` in, :class:`DriftReport` out)."""
    return DriftDetector(**{**dict(detector_options), "size": int(size), "topk": float(topk)})


class DriftTracker:
    """History and drift state of one monitor: pooled maps in, scalars, report and one history record out.

    Args:
        methods: the explained methods.
        size: side of the pooled maps.
        detector_options: keyword arguments of the drift detector.
        topk: share of pixels in the top-k overlap.
    """

    def __init__(self, methods: Sequence[str], size: int, detector_options: Mapping[str, Any], topk: float) -> None:
        self.methods = tuple(methods)
        self.size = int(size)
        self._detector_options = dict(detector_options)
        self._topk = float(topk)
        self.reset()

    def reset(self) -> None:
        """A fresh history: the next update takes the reference."""
        self.drift = new_drift(self._detector_options, self.size, self._topk)
        self.history: list[dict[str, Any]] = []
        self.has_reference = False

    def keys(self) -> set[str]:
        return self.drift.keys(self.methods)

    def pooled(self, results: Mapping[str, Tensor], extra: DetectionRows | None = None) -> dict[str, Tensor]:
        """Each method's pooled maps: the display probes, then (cheap methods) the detection pool's other rows. Only
        the methods that ran this round (under a budget the optional ones skip rounds)."""
        out = {m: pool(results[f"map/{m}"], self.size) for m in self.methods if f"map/{m}" in results}
        if extra is not None:
            for m in extra.methods:
                if m in out:
                    out[m] = torch.cat([out[m], extra.maps(m, self.size)])
        return out

    def take_reference(self, epoch: int, results: Mapping[str, Tensor], extra: DetectionRows | None = None) -> None:
        """The fit-start round: what the model looks at before this fit trains it (compared with, never judged)."""
        pred = results["pred"] if extra is None else torch.cat([results["pred"], extra.pred])
        self.drift.prime(self.pooled(results, extra), pred=pred)
        self.has_reference = True

    def update(self, epoch: int, step: int, results: Mapping[str, Tensor], *, masks: Tensor | None = None,
               labels: Tensor | None = None, probe_ids: Sequence[Any] | None = None,
               class_names: Sequence[str] | None = None, event: str | None = None,
               extra: DetectionRows | None = None) -> tuple[dict[str, float], DriftReport, dict[str, Any]]:
        """Compare this round with the references; returns scalars, the report and the history record to keep."""
        if labels is not None and labels.ndim != 1:
            labels = None  # multi-label probes: no single class per probe for the per-class story
        pred, origin, num_display = results["pred"], None, None
        if extra is not None:
            num_display = int(results["pred"].shape[0])
            pred = torch.cat([pred, extra.pred])
            origin = torch.cat([torch.zeros(num_display, dtype=torch.long), extra.origin])
            labels = None if labels is None else torch.cat([labels, extra.target])
            masks = None if masks is None or extra.masks is None else torch.cat(
                [masks.float(), extra.masks.float().to(masks.device)])
        report = self.drift.update(epoch, self.pooled(results, extra), pred=pred, labels=labels, masks=masks,
                                   origin=origin, num_display=num_display, probe_ids=probe_ids,
                                   class_names=class_names, event=event)
        self.has_reference = True
        record: dict[str, Any] = {"epoch": epoch, "step": step, "alarm": report.alarm}
        for key, values in (("stability", report.stability), ("topk_overlap", report.topk_overlap),
                            ("flags", report.flags)):
            record[key] = {m: values[m].tolist() for m in self.methods if m in values}
        return dict(report.scalars), report, record

    def state_dict(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "history": self.history, "drift": self.drift.state_dict(),
                "has_reference": self.has_reference}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = list(state["history"])
        drift = state["drift"]
        self.drift = new_drift(self._detector_options, self.size, self._topk)
        if "method_states" in drift:
            self.drift.load_state_dict(drift)
        elif drift.get("reference"):  # lightning_xai 0.1: the previous maps survive, the noise floor is relearnt
            self.drift.prime(drift["reference"], pred=drift.get("reference_pred"))
        self.has_reference = bool(state["has_reference"])
