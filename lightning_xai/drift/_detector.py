"""DriftDetector: per-method noise floors learned on the run itself, an epoch-level alarm, a long-horizon reference."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_xai.drift._movement import Movement, movement
from lightning_xai.metrics._utils import _as_heatmap
from lightning_xai.metrics.degenerate import degenerate_rows
from lightning_xai.metrics.stability import spearman_similarity, topk_overlap

__all__ = ["DriftDetector", "DriftReport"]

_STATE_VERSION = 2
_LEGACY_ARGS = ("threshold", "window", "drop_sigmas", "min_drop")


def _nan_mean(x: Tensor) -> float:
    finite = x[torch.isfinite(x)]
    return float(finite.mean()) if finite.numel() else float("nan")


@dataclass
class DriftReport:
    """Outcome of one :meth:`DriftDetector.update`.

    Attributes:
        epoch: the epoch passed to ``update``.
        alarm: True when this epoch raises a drift alarm (an epoch-level decision on aggregated evidence).
        active: True while the explanations still differ from the reference that preceded the last alarm (set at
            the alarm, cleared by :meth:`DriftDetector.accept` or when the maps return to the reference).
        warmup: True while the detector is still learning the noise floor (no alarm possible).
        stability: method -> ``(N,)`` Spearman similarity to the previous explained epoch (NaN: no previous epoch,
            or a degenerate map on either side).
        topk_overlap: method -> ``(N,)`` top-k overlap with the previous epoch (NaN likewise).
        shift: method -> ``(N,)`` dissimilarity ``1 - Spearman`` to the long-horizon reference (NaN before it
            exists or for degenerate maps).
        degenerate: method -> ``(N,)`` bool, maps that are non-finite, all zero or constant.
        flags: method -> ``(N,)`` bool: probes that moved beyond their own noise floor (evidence, not alarms).
        num_flagged: method -> number of flagged probes.
        scores: method -> evidence score (>= 1 alarms) and its parts, e.g. ``{"lag": .., "long": .., "mass": ..}``.
        reasons: one line per piece of evidence that crossed its threshold.
        movement: method -> :class:`~lightning_xai.drift.Movement` (where the evidence went) for alarmed or active
            methods.
        scalars: full-key scalars for the loggers (``xai/{method}/stability``, ``xai/drift/alarm``, ...); never NaN.
        prediction_changed: ``(N,)`` bool, whether the predicted class changed since the previous epoch (pred given).
        probe_ids: probe names used in the text.
        class_names: class names used in the text (labels given).
    """

    epoch: int
    alarm: bool
    active: bool
    warmup: bool
    stability: dict[str, Tensor]
    topk_overlap: dict[str, Tensor]
    shift: dict[str, Tensor]
    degenerate: dict[str, Tensor]
    flags: dict[str, Tensor]
    num_flagged: dict[str, int]
    scores: dict[str, dict[str, float]]
    reasons: list[str]
    movement: dict[str, Movement]
    scalars: dict[str, float]
    prediction_changed: Tensor | None = None
    probe_ids: list[str] | None = None
    class_names: list[str] | None = None
    reference_epoch: int | None = None
    labels: Tensor | None = field(default=None, repr=False)

    @property
    def any(self) -> bool:
        """Same as :attr:`alarm`."""
        return self.alarm

    @property
    def flagged_probes(self) -> list[int]:
        """Indices of the probes flagged for at least one method, ascending."""
        if not self.flags:
            return []
        return torch.stack([f.cpu() for f in self.flags.values()]).any(dim=0).nonzero().flatten().tolist()

    def _probe(self, index: int) -> str:
        return self.probe_ids[index] if self.probe_ids is not None else str(index)

    def headline(self) -> str:
        """One line for the warning: when, which methods, how strong, where the evidence went."""
        if self.warmup:
            return f"epoch {self.epoch}: drift detector learning the noise floor"
        alarmed = [m for m, s in self.scores.items() if s.get("score", 0.0) >= 1.0]
        if not self.alarm:
            state = "explanations still differ from before the last alarm" if self.active else "no drift"
            return f"epoch {self.epoch}: {state}"
        n = len(next(iter(self.flags.values()))) if self.flags else 0
        text = (f"explanation drift at epoch {self.epoch} ({', '.join(alarmed)}): "
                f"{len(self.flagged_probes)}/{n} probes moved beyond their noise floor")
        where = [mv.describe() for m, mv in self.movement.items() if m in alarmed]
        if where:
            text += "; " + "; ".join(where)
        if self.prediction_changed is not None:
            text += f"; predictions changed on {int(self.prediction_changed.sum())}/{n} probes"
        return text

    def details(self) -> str:
        """Markdown: the evidence per method, where it moved (per class), and the probes that moved most."""
        lines = [f"**{self.headline()}**", ""]
        if self.warmup:
            return "\n".join(lines)
        lines += ["| method | stability | top-k overlap | shift from reference | probes flagged | degenerate | "
                  "score (lag / long / mass) |", "|---|---|---|---|---|---|---|"]
        for m in self.stability:
            sc = self.scores.get(m, {})
            parts = " / ".join(f"{sc[k]:.2f}" if k in sc else "-" for k in ("lag", "long", "mass"))
            lines.append(f"| {m} | {_fmt(_nan_mean(self.stability[m]))} | {_fmt(_nan_mean(self.topk_overlap[m]))} | "
                         f"{_fmt(_nan_mean(self.shift[m]))} | {self.num_flagged[m]} | "
                         f"{int(self.degenerate[m].sum())} | {sc.get('score', 0.0):.2f} ({parts}) |")
        if self.reasons:
            lines += ["", "Evidence:"] + [f"- {r}" for r in self.reasons]
        for m, mv in self.movement.items():
            lines += ["", f"Where it moved ({m}, against {mv.reference}): {mv.describe()}."]
            per_class = mv.class_text(self.class_names)
            if per_class:
                lines.append(f"Per class: {per_class}.")
            if mv.probes:
                order = sorted(mv.probes, key=lambda i: -_finite(self.shift[m][i]))[:8]
                lines += ["", "| probe | shift | stability | gained mass at | centroid dx, dy | prediction changed |",
                          "|---|---|---|---|---|---|"]
                for i in order:
                    dx, dy = (float(v) for v in mv.centroid_shift[i])
                    region = "n/a" if int(mv.gained[i]) < 0 else _region(int(mv.gained[i]))
                    changed = "n/a" if self.prediction_changed is None else (
                        "yes" if bool(self.prediction_changed[i]) else "no")
                    lines.append(f"| {self._probe(i)} | {_fmt(float(self.shift[m][i]))} | "
                                 f"{_fmt(float(self.stability[m][i]))} | {region} | {dx:+.2f}, {dy:+.2f} | {changed} |")
        return "\n".join(lines)

    def summary(self) -> str:
        """Same as :meth:`details`."""
        return self.details()


def _region(index: int) -> str:
    from lightning_xai.drift._movement import REGIONS

    return REGIONS[index]


def _finite(value: Tensor | float) -> float:
    v = float(value)
    return v if math.isfinite(v) else -1.0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Method:
    """Per-method state: the frames compared with, and the run's own normal-epoch statistics."""

    def __init__(self) -> None:
        self.prev: Tensor | None = None  # (N, S, S) previous explained epoch
        self.ref: Tensor | None = None  # (N, S, S) long-horizon reference
        self.ref_epoch = -1
        self.updates = 0
        self.lag: list[float] = []  # aggregate lag-1 dissimilarity on normal epochs
        self.probe_lag: list[list[float]] = []  # per-probe lag-1 dissimilarity on normal epochs (NaN kept)
        self.long: list[float] = []  # aggregate dissimilarity to the reference on normal epochs
        self.mass: list[float] = []  # mean relevance mass inside the masks on normal epochs
        self.cusum = 0.0

    def state(self) -> dict[str, Any]:
        return {"prev": self.prev, "ref": self.ref, "ref_epoch": self.ref_epoch, "updates": self.updates,
                "lag": list(self.lag), "probe_lag": [list(r) for r in self.probe_lag], "long": list(self.long),
                "mass": list(self.mass), "cusum": self.cusum}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> _Method:
        out = cls()
        out.prev = None if state["prev"] is None else state["prev"].detach().float().cpu().clone()
        out.ref = None if state["ref"] is None else state["ref"].detach().float().cpu().clone()
        out.ref_epoch = int(state["ref_epoch"])
        out.updates = int(state["updates"])
        out.lag = [float(v) for v in state["lag"]]
        out.probe_lag = [[float(v) for v in row] for row in state["probe_lag"]]
        out.long = [float(v) for v in state["long"]]
        out.mass = [float(v) for v in state["mass"]]
        out.cusum = float(state["cusum"])
        return out


class DriftDetector:
    r"""Decide, once per explained epoch, whether the model's explanations drifted; say what changed and where.

    Input (:meth:`update`): each method's pooled heatmaps ``(N, 1, S, S)`` of a fixed probe set, optionally the
    predictions, labels and ground-truth masks. The detector keeps the previous epoch's maps and a long-horizon
    reference, and computes everything else itself.

    **Per probe**, for each method: stability ``s`` = Spearman correlation with the previous epoch's map (as in
    :func:`~lightning_xai.metrics.stability.spearman_similarity`), top-k overlap, and the *shift* ``1 - Spearman``
    to the long-horizon reference. Degenerate maps (non-finite, all zero, constant:
    :func:`~lightning_xai.metrics.degenerate.degenerate_rows`) get NaN, never "stable".

    **Noise floor.** The first ``warmup_epochs`` updates only learn; afterwards every epoch without an alarm
    (a *normal* epoch) adds to a rolling window of the last ``window`` normal epochs. From it the detector knows,
    per method, the usual epoch-to-epoch dissimilarity ``1 - s`` (mean over probes) and its spread, the usual
    per-epoch growth of the shift from the reference, the usual relevance mass inside the masks, and per probe its
    own usual ``1 - s`` (the per-probe *flags*: evidence shown in the report, not alarms by themselves).

    **Alarm** (epoch-level): per method three scores, each >= 1 when its evidence is beyond the floor:

    - *lag*: the mean ``1 - s`` exceeds its normal mean by ``sigmas`` normal spreads (the spread is at least
      ``min_spread``), and at least ``min_probes`` probes are flagged: a sudden change of many maps;
    - *long*: a one-sided CUSUM (Page's test) over the per-epoch growth of the mean shift from the reference,
      beyond its normal growth: a slow slide that each single epoch hides;
    - *mass* (masks given): the mean share of relevance inside the masks fell by at least ``mass_drop`` (relative)
      and by ``sigmas`` normal spreads below its normal level: evidence leaving the object.

    An alarm is raised when any method's score reaches 1 and no drift episode is active. The alarm opens an
    episode: the reference is frozen at the maps before the change, so a model that settled on a new behaviour
    stays ``active`` ("different from before") until :meth:`accept` re-baselines on the current maps (or the maps
    come back). A further *sudden* change during an episode raises a new alarm.

    **Where it moved**: for each alarmed method, :class:`~lightning_xai.drift.Movement` against the frame before
    the change: the centre-of-mass shift per probe, the 3x3 region that gained the most mass, whether many probes
    converged on the same region (a positional shortcut's signature), per class, and the mass inside the masks.

    Learning-rate steps and other non-drift events move maps little and briefly; the noise floor is the run's own,
    so scale changes of the maps do not matter (rank correlations).

    Args:
        warmup_epochs: updates that only learn the noise floor (>= 2: a floor needs two epoch-to-epoch values).
        window: normal epochs kept for the floor (>= 2).
        sigmas: how many normal spreads above the normal level count as beyond the floor (> 0).
        min_spread: smallest spread assumed for the mean dissimilarity, so a very steady run does not alarm on a
            wobble (>= 0).
        min_probes: probes that must be flagged for the lag evidence (>= 1; capped at the number of probes).
        cusum_slack: allowance of the CUSUM in normal spreads (>= 0).
        cusum_limit: CUSUM level that alarms, in normal spreads (> 0).
        mass_drop: relative fall of the mass inside the masks that counts (in (0, 1]).
        probe_sigmas: per-probe flag: ``1 - s`` above the probe's normal mean by this many of its spreads (> 0).
        topk: fraction of cells for the top-k overlap, in (0, 1].
        size: maps are pooled to ``size x size`` cells (no-op for maps of that size; >= 2).

    Raises:
        ValueError: naming every invalid argument and its value.

    Example::

        >>> det = DriftDetector(warmup_epochs=2)
        >>> maps = torch.rand(8, 1, 16, 16)
        >>> [det.update(e, {"grad_cam": maps + 0.01 * torch.rand_like(maps)}).alarm for e in range(4)]
        [False, False, False, False]
        >>> sorted(DriftDetector.keys(["grad_cam"]))[:3]
        ['xai/drift/active', 'xai/drift/alarm', 'xai/drift/score']
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # Transitional: the callback of v0.1 builds the per-probe rule with these arguments; it is rewired to this
        # detector by the redesign, after which this branch goes away.
        if any(k in kwargs for k in _LEGACY_ARGS):
            from lightning_xai.drift._legacy import LegacyDriftDetector

            return LegacyDriftDetector(*args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        warmup_epochs: int = 3,
        *,
        window: int = 8,
        sigmas: float = 4.0,
        min_spread: float = 0.02,
        min_probes: int = 3,
        cusum_slack: float = 0.5,
        cusum_limit: float = 5.0,
        mass_drop: float = 0.25,
        probe_sigmas: float = 3.0,
        topk: float = 0.1,
        size: int = 16,
    ) -> None:
        problems = []
        if not _is_int(warmup_epochs) or warmup_epochs < 2:
            problems.append(f"`warmup_epochs` must be an int >= 2, got {warmup_epochs!r}")
        if not _is_int(window) or window < 2:
            problems.append(f"`window` must be an int >= 2, got {window!r}")
        for name, value in (("sigmas", sigmas), ("cusum_limit", cusum_limit), ("probe_sigmas", probe_sigmas)):
            if not _is_number(value) or value <= 0:
                problems.append(f"`{name}` must be a finite number > 0, got {value!r}")
        for name, value in (("min_spread", min_spread), ("cusum_slack", cusum_slack)):
            if not _is_number(value) or value < 0:
                problems.append(f"`{name}` must be a finite number >= 0, got {value!r}")
        if not _is_int(min_probes) or min_probes < 1:
            problems.append(f"`min_probes` must be an int >= 1, got {min_probes!r}")
        if not _is_number(mass_drop) or not 0 < mass_drop <= 1:
            problems.append(f"`mass_drop` must be a number in (0, 1], got {mass_drop!r}")
        if not _is_number(topk) or not 0 < topk <= 1:
            problems.append(f"`topk` must be a number in (0, 1], got {topk!r}")
        if not _is_int(size) or size < 2:
            problems.append(f"`size` must be an int >= 2, got {size!r}")
        if problems:
            raise ValueError("DriftDetector: " + "; ".join(problems))
        self.warmup_epochs = int(warmup_epochs)
        self.window = int(window)
        self.sigmas = float(sigmas)
        self.min_spread = float(min_spread)
        self.min_probes = int(min_probes)
        self.cusum_slack = float(cusum_slack)
        self.cusum_limit = float(cusum_limit)
        self.mass_drop = float(mass_drop)
        self.probe_sigmas = float(probe_sigmas)
        self.topk = float(topk)
        self.size = int(size)
        self.reset()

    # ------------------------------------------------------------------ public API
    @staticmethod
    def keys(methods: Sequence[str]) -> set[str]:
        """Every scalar key :meth:`update` can put in :attr:`DriftReport.scalars` for these methods."""
        keys = {"xai/drift/alarm", "xai/drift/active", "xai/drift/score"}
        for m in methods:
            keys |= {f"xai/{m}/{k}" for k in ("stability", "topk_overlap", "drift", "shift", "drift_score",
                                               "degenerate", "mass_change")}
        return keys

    def reset(self) -> None:
        """Forget everything (history, references, episode)."""
        self.num_updates = 0
        self.last_epoch: int | None = None
        self.methods: dict[str, _Method] = {}
        self.num_probes: int | None = None
        self.prev_pred: Tensor | None = None
        self.episode = False
        self.episode_epoch = -1
        self.lag_high = False
        self.alarm_epochs: list[int] = []

    def accept(self) -> None:
        """Accept the current explanations as the new normal: close the drift episode and re-baseline the
        long-horizon reference (and the relevance-mass level) on the latest maps."""
        self.episode = False
        self.episode_epoch = -1
        for state in self.methods.values():
            if state.prev is not None:
                state.ref = state.prev.clone()
                state.ref_epoch = self.last_epoch if self.last_epoch is not None else -1
            state.long, state.mass, state.cusum = [], [], 0.0

    def prime(self, maps: Mapping[str, Tensor], *, pred: Tensor | None = None) -> None:
        """Remember ``maps`` as the previous frame without deciding anything (e.g. the maps before training)."""
        pooled = self._check_maps(maps)
        for name, current in pooled.items():
            self.methods.setdefault(name, _Method()).prev = current
        if pred is not None:
            self.prev_pred = self._check_vector(pred, "pred").long()

    def update(
        self,
        epoch: int,
        maps: Mapping[str, Tensor],
        *,
        pred: Tensor | None = None,
        labels: Tensor | None = None,
        masks: Tensor | None = None,
        probe_ids: Sequence[Any] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> DriftReport:
        """Measure this epoch's maps against the previous epoch and the reference, decide, then learn.

        Args:
            epoch: the epoch of these maps (reported, not interpreted).
            maps: method -> pooled heatmaps ``(N, 1, S, S)`` (``(N, C, H, W)`` is reduced and pooled to ``size``).
                Every method has the same ``N`` probes, in the same order at every update.
            pred: ``(N,)`` predicted classes; the report says on which probes the prediction changed.
            labels: ``(N,)`` classes of the probes (-1 unknown), for the per-class story.
            masks: ``(N, 1, H, W)`` ground-truth evidence masks at any resolution; the mass inside them enters the
                decision.
            probe_ids: ``N`` names for the text (dataset indices, say).
            class_names: names for the classes in the text.

        Returns:
            The :class:`DriftReport`.
        """
        if not _is_int(epoch):
            raise TypeError(f"`epoch` must be an int, got {epoch!r}")
        pooled = self._check_maps(maps)
        n = self.num_probes
        pred_t = None if pred is None else self._check_vector(pred, "pred").long()
        labels_t = None if labels is None else self._check_vector(labels, "labels").long()
        masks_t = None if masks is None else self._pool_masks(masks)
        ids = None
        if probe_ids is not None:
            ids = [str(i) for i in probe_ids]
            if len(ids) != n:
                raise ValueError(f"`probe_ids` must name {n} probes, got {len(ids)}")
        changed = None
        if pred_t is not None and self.prev_pred is not None and self.prev_pred.shape == pred_t.shape:
            changed = pred_t != self.prev_pred

        warmup = self.num_updates < self.warmup_epochs
        report = DriftReport(epoch=int(epoch), alarm=False, active=self.episode, warmup=warmup, stability={},
                             topk_overlap={}, shift={}, degenerate={}, flags={}, num_flagged={}, scores={},
                             reasons=[], movement={}, scalars={}, prediction_changed=changed, probe_ids=ids,
                             class_names=None if class_names is None else list(class_names), labels=labels_t)
        measured: dict[str, dict[str, Any]] = {}
        for name, current in pooled.items():
            state = self.methods.setdefault(name, _Method())
            measured[name] = self._measure(state, current, masks_t)
            if not warmup:
                self._score(name, state, measured[name], report)
        sudden = any(s.get("lag", 0.0) >= 1.0 for s in report.scores.values())
        top = max((s.get("score", 0.0) for s in report.scores.values()), default=0.0)
        # during an episode only a fresh sudden change alarms again (the lag evidence must have calmed down first)
        report.alarm = top >= 1.0 and (not self.episode or (sudden and not self.lag_high))
        self.lag_high = sudden
        if report.alarm:
            self.episode, self.episode_epoch = True, int(epoch)
            self.alarm_epochs.append(int(epoch))
        report.active = self.episode
        # where it moved: alarmed methods against the frame before the change; active episodes against the reference
        for name, current in pooled.items():
            state, mm = self.methods[name], measured[name]
            if report.scores.get(name, {}).get("score", 0.0) >= 1.0 or (report.active and state.ref is not None):
                before = state.prev if (report.alarm and state.prev is not None and
                                        report.scores[name].get("lag", 0.0) >= 1.0) else state.ref
                what = f"epoch {self.last_epoch}" if before is state.prev else f"the reference (epoch {state.ref_epoch})"
                if before is not None:
                    valid = ~mm["degenerate"] & ~degenerate_rows(before.flatten(1))
                    report.movement[name] = movement(name, before, current, valid, report.flags[name],
                                                     reference=what, labels=labels_t, masks=masks_t)
        self._learn(pooled, measured, report, warmup)
        self._scalars(report, measured)
        report.reference_epoch = next((s.ref_epoch for s in self.methods.values() if s.ref is not None), None)
        self.num_updates += 1
        self.last_epoch = int(epoch)
        if pred_t is not None:
            self.prev_pred = pred_t
        return report

    # ------------------------------------------------------------------ measuring
    def _measure(self, state: _Method, current: Tensor, masks: Tensor | None) -> dict[str, Any]:
        n = current.shape[0]
        nan = torch.full((n,), float("nan"))
        degenerate = degenerate_rows(current.flatten(1))
        out: dict[str, Any] = {"degenerate": degenerate, "stability": nan, "topk": nan, "shift": nan}
        if state.prev is not None:
            bad = degenerate | degenerate_rows(state.prev.flatten(1))
            sim = spearman_similarity(state.prev[:, None], current[:, None], size=self.size)
            top = topk_overlap(state.prev[:, None], current[:, None], k=self.topk, size=self.size)
            out["stability"] = torch.where(bad, nan, sim.float())
            out["topk"] = torch.where(bad, nan, top.float())
        if state.ref is not None:
            bad = degenerate | degenerate_rows(state.ref.flatten(1))
            sim = spearman_similarity(state.ref[:, None], current[:, None], size=self.size)
            out["shift"] = torch.where(bad, nan, 1.0 - sim.float())
        if masks is not None:
            flat = current.flatten(1).clamp_min(0).double()
            total = flat.sum(1)
            share = (flat * masks.flatten(1)).sum(1) / torch.where(total > 0, total, torch.ones_like(total))
            out["mass"] = _nan_mean(torch.where(degenerate, nan.double(), share))
        return out

    def _score(self, name: str, state: _Method, mm: dict[str, Any], report: DriftReport) -> None:
        d1 = 1.0 - mm["stability"]
        valid = torch.isfinite(d1)
        scores: dict[str, float] = {}
        # per-probe floors: each probe's own normal mean and spread of 1 - s (pooled spread when short of history)
        flags = torch.zeros(d1.shape[0], dtype=torch.bool)
        if state.probe_lag and bool(valid.any()):
            hist = torch.tensor(state.probe_lag, dtype=torch.float64)  # (W, N)
            ok = torch.isfinite(hist)
            cnt = ok.sum(0).clamp_min(1)
            mean = torch.where(ok, hist, torch.zeros_like(hist)).sum(0) / cnt
            var = torch.where(ok, (hist - mean) ** 2, torch.zeros_like(hist)).sum(0) / cnt
            pooled_sd = float(torch.nanmean(torch.where(cnt > 0, var, torch.full_like(var, float("nan")))).sqrt())
            sd = torch.maximum(var.sqrt(), torch.full_like(var, max(self.min_spread, 0.5 * pooled_sd)))
            flags = valid & (ok.sum(0) > 0) & (d1.double() > mean + self.probe_sigmas * sd)
        report.flags[name] = flags
        report.num_flagged[name] = int(flags.sum())
        # lag: a sudden change of many maps
        lag = _nan_mean(d1)
        if len(state.lag) >= 2 and math.isfinite(lag):
            mu, sd = _mean_sd(state.lag)
            excess = (lag - mu) / (self.sigmas * max(sd, self.min_spread))
            need = min(self.min_probes, int(valid.sum()))
            scores["lag"] = excess if int(flags.sum()) >= need else min(excess, 0.99)
            if scores["lag"] >= 1.0:
                report.reasons.append(f"{name}: mean epoch-to-epoch dissimilarity {lag:.3f} vs normal {mu:.3f} "
                                      f"+- {sd:.3f}; {int(flags.sum())} probes beyond their own floor")
        # long: CUSUM over the growth of the shift from the reference
        shift = _nan_mean(mm["shift"])
        # (the first step after the reference is the lag-1 noise itself, not growth: it is skipped)
        # the normal growth is learned on the first epochs after the reference and then frozen, so that a slide
        # cannot teach the detector that sliding is normal
        calib = state.long[1:2 + self.window]
        incs = [b - a for a, b in zip(calib, calib[1:])]
        if len(incs) >= 3 and math.isfinite(shift):
            growth = shift - state.long[-1]
            mu, sd = _mean_sd(incs)
            sd = max(sd, 0.25 * self.min_spread)
            cusum = max(0.0, state.cusum + (growth - max(mu, 0.0)) / sd - self.cusum_slack)
            mm["cusum"] = cusum
            scores["long"] = cusum / self.cusum_limit
            if scores["long"] >= 1.0:
                report.reasons.append(f"{name}: shift from the reference (epoch {state.ref_epoch}) grew to "
                                      f"{shift:.3f}, faster than its normal {max(mu, 0.0):.3f} per epoch")
        # mass: evidence leaving the ground-truth masks
        mass = mm.get("mass")
        if mass is not None and len(state.mass) >= 2 and math.isfinite(mass):
            mu, sd = _mean_sd(state.mass)
            drop = mu - mass
            if mu > 0:
                rel = drop / (self.mass_drop * mu)
                sig = drop / (self.sigmas * max(sd, 0.01))
                scores["mass"] = min(rel, sig)
                if scores["mass"] >= 1.0:
                    report.reasons.append(f"{name}: share of the map inside the masks fell to {mass:.3f} from a "
                                          f"normal {mu:.3f} +- {sd:.3f}")
        scores["score"] = max(scores.values(), default=0.0)
        report.scores[name] = scores

    # ------------------------------------------------------------------ learning
    def _learn(self, pooled: Mapping[str, Tensor], measured: Mapping[str, dict[str, Any]], report: DriftReport,
               warmup: bool) -> None:
        end_of_warmup = self.num_updates + 1 == self.warmup_epochs
        for name, current in pooled.items():
            state, mm = self.methods[name], measured[name]
            normal = not report.alarm
            d1 = 1.0 - mm["stability"]
            if normal and bool(torch.isfinite(d1).any()) and state.updates >= 1:
                state.lag = (state.lag + [_nan_mean(d1)])[-self.window:]
                state.probe_lag = (state.probe_lag + [d1.tolist()])[-self.window:]
            shift = _nan_mean(mm["shift"])
            if state.ref is not None and math.isfinite(shift):
                if normal:
                    state.cusum = mm.get("cusum", state.cusum)
                else:
                    state.cusum = 0.0  # a new episode: the slide is reported, start watching afresh
                state.long = (state.long + [shift])[:2 + self.window] + [shift] if len(state.long) >= 2 + self.window \
                    else state.long + [shift]
            mass = mm.get("mass")
            if mass is not None and math.isfinite(mass) and normal and not self.episode and (
                    not warmup or end_of_warmup):
                state.mass = (state.mass + [mass])[-self.window:]
            if report.alarm and state.prev is not None:
                # freeze the frame before the change as the reference of the episode
                state.ref, state.ref_epoch = state.prev.clone(), self.last_epoch if self.last_epoch is not None else -1
                state.long = []
            elif end_of_warmup or (state.ref is None and not warmup):
                state.ref, state.ref_epoch = current.clone(), report.epoch
                state.long = [0.0]
            state.prev = current.clone()
            state.updates += 1

    def _scalars(self, report: DriftReport, measured: Mapping[str, dict[str, Any]]) -> None:
        sc = report.scalars
        for name, mm in measured.items():
            report.stability[name] = mm["stability"]
            report.topk_overlap[name] = mm["topk"]
            report.shift[name] = mm["shift"]
            report.degenerate[name] = mm["degenerate"]
            report.flags.setdefault(name, torch.zeros(mm["degenerate"].shape[0], dtype=torch.bool))
            report.num_flagged.setdefault(name, 0)
            for key, values in (("stability", mm["stability"]), ("topk_overlap", mm["topk"]),
                                ("shift", mm["shift"])):
                value = _nan_mean(values)
                if math.isfinite(value):
                    sc[f"xai/{name}/{key}"] = value
            sc[f"xai/{name}/drift"] = float(report.num_flagged[name])
            sc[f"xai/{name}/degenerate"] = float(mm["degenerate"].sum())
            sc[f"xai/{name}/drift_score"] = float(max(0.0, report.scores.get(name, {}).get("score", 0.0)))
            state = self.methods[name]
            mass = mm.get("mass")
            if mass is not None and math.isfinite(mass) and state.mass:
                sc[f"xai/{name}/mass_change"] = float(mass - sum(state.mass) / len(state.mass))
        sc["xai/drift/alarm"] = 1.0 if report.alarm else 0.0
        sc["xai/drift/active"] = 1.0 if report.active else 0.0
        sc["xai/drift/score"] = float(max((v for k, v in sc.items() if k.endswith("/drift_score")), default=0.0))

    # ------------------------------------------------------------------ input checks
    def _check_maps(self, maps: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if not isinstance(maps, Mapping) or not maps:
            raise TypeError(f"`maps` must be a non-empty mapping of method name to (N, 1, S, S) heatmaps, got "
                            f"{type(maps).__name__}")
        out: dict[str, Tensor] = {}
        for name, value in maps.items():
            if not isinstance(name, str):
                raise TypeError(f"`maps` keys must be method names (str), got {name!r}")
            if not isinstance(value, Tensor) or value.ndim not in (3, 4) or value.shape[0] == 0:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"`maps[{name!r}]` must be (N, 1, S, S) heatmaps, got {shape}")
            heat = _as_heatmap(value.detach().cpu(), f"maps[{name!r}]").float()
            if heat.shape[-2:] != (self.size, self.size):
                heat = F.adaptive_avg_pool2d(heat, self.size)
            n = heat.shape[0]
            if self.num_probes is None:
                self.num_probes = n
            if n != self.num_probes:
                raise ValueError(f"`maps[{name!r}]` has {n} probes but the detector tracks {self.num_probes}; the "
                                 "probe set must stay fixed (call reset() to start over)")
            out[name] = heat[:, 0].clone()
        return out

    def _check_vector(self, value: Any, name: str) -> Tensor:
        if not isinstance(value, Tensor) or value.ndim != 1 or value.shape[0] != self.num_probes:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"`{name}` must be a ({self.num_probes},) tensor, got {got}")
        return value.detach().cpu()

    def _pool_masks(self, masks: Any) -> Tensor:
        if not isinstance(masks, Tensor) or masks.ndim not in (3, 4) or masks.shape[0] != self.num_probes:
            got = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
            raise ValueError(f"`masks` must be ({self.num_probes}, 1, H, W) masks, got {got}")
        m = masks.detach().cpu().float()
        if m.ndim == 3:
            m = m[:, None]
        m = (m > 0.5).float() if m.shape[1] == 1 else (m.amax(1, keepdim=True) > 0.5).float()
        return F.adaptive_avg_pool2d(m, self.size)[:, 0]  # share of each cell inside the mask

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Plain state (tensors, lists, numbers, str keys): loads with ``torch.load(weights_only=True)``."""
        names = list(self.methods)
        return {
            "version": _STATE_VERSION,
            "num_updates": self.num_updates,
            "last_epoch": -1 if self.last_epoch is None else self.last_epoch,
            "num_probes": -1 if self.num_probes is None else self.num_probes,
            "prev_pred": self.prev_pred,
            "episode": self.episode,
            "episode_epoch": self.episode_epoch,
            "lag_high": self.lag_high,
            "alarm_epochs": list(self.alarm_epochs),
            "methods": names,
            "method_states": [self.methods[m].state() for m in names],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (the rule's parameters stay the constructor's)."""
        if int(state_dict.get("version", 1)) != _STATE_VERSION:
            raise ValueError(f"DriftDetector state_dict version {state_dict.get('version', 1)} is not "
                             f"{_STATE_VERSION}; the drift history restarts (call reset())")
        missing = [k for k in ("num_updates", "last_epoch", "methods", "method_states") if k not in state_dict]
        if missing:
            raise KeyError(f"DriftDetector state_dict is missing {missing}")
        self.reset()
        self.num_updates = int(state_dict["num_updates"])
        last = int(state_dict["last_epoch"])
        self.last_epoch = None if last < 0 else last
        num_probes = int(state_dict.get("num_probes", -1))
        self.num_probes = None if num_probes < 0 else num_probes
        pred = state_dict.get("prev_pred")
        self.prev_pred = None if pred is None else pred.detach().cpu().long().clone()
        self.episode = bool(state_dict.get("episode", False))
        self.episode_epoch = int(state_dict.get("episode_epoch", -1))
        self.lag_high = bool(state_dict.get("lag_high", False))
        self.alarm_epochs = [int(e) for e in state_dict.get("alarm_epochs", [])]
        self.methods = {m: _Method.from_state(s) for m, s in zip(state_dict["methods"], state_dict["method_states"])}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(warmup_epochs={self.warmup_epochs}, window={self.window}, "
                f"sigmas={self.sigmas}, min_spread={self.min_spread}, min_probes={self.min_probes}, "
                f"cusum_slack={self.cusum_slack}, cusum_limit={self.cusum_limit}, mass_drop={self.mass_drop}, "
                f"probe_sigmas={self.probe_sigmas}, topk={self.topk}, size={self.size})")


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 0.0
    mu = sum(finite) / len(finite)
    return mu, math.sqrt(sum((v - mu) ** 2 for v in finite) / len(finite))
