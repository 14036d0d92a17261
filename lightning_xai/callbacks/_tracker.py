"""The stability/drift tracker: pooled maps in, stability scalars, drift report and history records out.

No Lightning import: testable with plain tensors. :class:`DriftTracker` speaks the drift detector's interface
(``update(epoch, maps, pred=, labels=, masks=, probe_ids=) -> report`` with ``alarm``, ``stability``, ``flags``,
``num_flagged``, ``scalars``, ``headline()``, ``details()``; ``keys(methods)``; ``state_dict()``). Until
:class:`lightning_xai.drift.DriftDetector` offers it, :class:`_SimilarityDrift` adapts the similarity-based detector
to it here, in this one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lightning_xai.drift import DriftDetector
from lightning_xai.drift import DriftReport as _SimilarityReport
from lightning_xai.metrics.stability import downsample, spearman_similarity, topk_overlap

_STATE_VERSION = 2


def pool(maps: Tensor, size: int) -> Tensor:
    """Heatmaps ``(N, 1, H, W)`` -> pooled ``(N, 1, size, size)``: what stability compares and the checkpoint keeps."""
    return downsample(maps, size=size).reshape(maps.shape[0], 1, size, size)


def finite_rows(maps: Tensor) -> Tensor:
    return torch.isfinite(maps.flatten(1)).all(dim=1)


@dataclass
class Report:
    """One epoch's drift outcome in the detector's interface."""

    epoch: int
    alarm: bool = False
    stability: dict[str, Tensor] = field(default_factory=dict)
    flags: dict[str, Tensor] = field(default_factory=dict)
    num_flagged: dict[str, int] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)
    per_probe: dict[str, dict[str, list]] = field(default_factory=dict)
    detail: _SimilarityReport | None = None

    def headline(self) -> str:
        if not self.alarm:
            return f"No explanation drift at epoch {self.epoch}."
        flagged = ", ".join(f"{m}: {n}" for m, n in self.num_flagged.items() if n)
        return f"Explanation drift at epoch {self.epoch}: probes flagged ({flagged})."

    def details(self) -> str:
        if self.detail is None:
            return self.headline()
        return self.detail.summary() if self.alarm else "No drift flagged."

    # the DriftReport names user code may know (``on_drift(report)``)
    @property
    def any(self) -> bool:
        return self.alarm

    def summary(self) -> str:
        return self.details()


class _SimilarityDrift:
    """The drift interface over the similarity-based :class:`~lightning_xai.drift.DriftDetector`.

    Keeps the previous epoch's pooled maps (the reference) and predictions; the first ``update`` only takes the
    reference (the fit-start round), later ones compare with it, then make the new maps the reference.
    Non-finite maps never become the reference.
    """

    def __init__(self, detector_options: Mapping[str, Any], topk: float) -> None:
        self._options = dict(detector_options)
        self.topk = float(topk)
        self.detector = DriftDetector(**self._options)
        self.reference: dict[str, Tensor] = {}
        self.reference_pred: Tensor | None = None

    @staticmethod
    def keys(methods: Sequence[str]) -> set[str]:
        return {f"xai/{m}/{k}" for m in methods for k in ("stability", "topk_overlap", "drift")}

    def update(self, epoch: int, maps: Mapping[str, Tensor], *, pred: Tensor | None = None,
               labels: Tensor | None = None, masks: Tensor | None = None,
               probe_ids: Sequence[Any] | None = None) -> Report:
        report = Report(epoch)
        if not self.reference:
            self._take_reference(maps, pred)
            return report
        similarity = {}
        for m, current in maps.items():
            previous = self.reference.get(m)
            usable = finite_rows(current)
            if previous is not None and previous.shape == current.shape:
                usable &= finite_rows(previous)
                sim = spearman_similarity(previous, current, size=current.shape[-1])
                top = topk_overlap(previous, current, k=self.topk, size=current.shape[-1])
                nan = torch.full_like(sim, float("nan"))
                sim, top = torch.where(usable, sim, nan), torch.where(usable, top, nan)
            else:
                sim = top = torch.full((current.shape[0],), float("nan"))
            similarity[m] = sim
            report.stability[m] = sim
            report.per_probe.setdefault("stability", {})[m] = sim.tolist()
            report.per_probe.setdefault("topk_overlap", {})[m] = top.tolist()
            if bool(torch.isfinite(sim).any()):
                report.scalars[f"xai/{m}/stability"] = float(sim.nanmean())
                report.scalars[f"xai/{m}/topk_overlap"] = float(top.nanmean())
        changed = None
        if pred is not None and self.reference_pred is not None and self.reference_pred.shape == pred.shape:
            changed = pred != self.reference_pred
        detail = self.detector.update(epoch, similarity, prediction_changed=changed,
                                      probe_ids=None if probe_ids is None else list(probe_ids))
        for m in maps:
            report.flags[m] = detail.flags[m]
            report.num_flagged[m] = int(detail.num_flagged[m])
            report.scalars[f"xai/{m}/drift"] = float(detail.flags[m].sum())
            report.per_probe.setdefault("flags", {})[m] = detail.flags[m].tolist()
        report.alarm, report.detail = bool(detail.any), detail
        self._take_reference(maps, pred)
        return report

    def _take_reference(self, maps: Mapping[str, Tensor], pred: Tensor | None) -> None:
        for m, current in maps.items():
            ok = finite_rows(current)
            previous = self.reference.get(m)
            if previous is not None and previous.shape == current.shape and not bool(ok.all()):
                # a probe whose map is not finite keeps its last finite map as the reference
                current = torch.where(ok[:, None, None, None], current, previous)
            self.reference[m] = current.clone()
        if pred is not None:
            self.reference_pred = pred.clone()

    def state_dict(self) -> dict[str, Any]:
        return {"reference": {m: t.cpu() for m, t in self.reference.items()},
                "reference_pred": None if self.reference_pred is None else self.reference_pred.cpu(),
                "detector": self.detector.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reference = {m: t.clone() for m, t in state["reference"].items()}
        pred = state["reference_pred"]
        self.reference_pred = None if pred is None else pred.clone()
        self.detector.load_state_dict(state["detector"])


def new_drift(detector_options: Mapping[str, Any], topk: float) -> _SimilarityDrift:
    """The drift detector the monitor uses (the one place to switch to :class:`lightning_xai.drift.DriftDetector`)."""
    return _SimilarityDrift(detector_options, topk)


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
        self.drift = new_drift(self._detector_options, self._topk)
        self.history: list[dict[str, Any]] = []
        self.has_reference = False

    def keys(self) -> set[str]:
        return self.drift.keys(self.methods)

    def pooled(self, results: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {m: pool(results[f"map/{m}"], self.size) for m in self.methods}

    def take_reference(self, epoch: int, results: Mapping[str, Tensor]) -> None:
        """The fit-start round: what the model looks at before this fit trains it."""
        self.drift.update(epoch, self.pooled(results), pred=results["pred"])
        self.has_reference = True

    def update(self, epoch: int, step: int, results: Mapping[str, Tensor], *, masks: Tensor | None = None,
               labels: Tensor | None = None, probe_ids: Sequence[Any] | None = None
               ) -> tuple[dict[str, float], Report, dict[str, Any]]:
        """Compare this round with the reference; returns scalars, the report and the history record to keep."""
        report = self.drift.update(epoch, self.pooled(results), pred=results["pred"], labels=labels, masks=masks,
                                   probe_ids=probe_ids)
        self.has_reference = True
        record: dict[str, Any] = {"epoch": epoch, "step": step}
        for key in ("stability", "topk_overlap", "flags"):
            record[key] = report.per_probe.get(key, {m: [] for m in self.methods})
        return dict(report.scalars), report, record

    def state_dict(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "history": self.history, "drift": self.drift.state_dict(),
                "has_reference": self.has_reference}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = list(state["history"])
        self.drift.load_state_dict(state["drift"])
        self.has_reference = bool(state["has_reference"])
