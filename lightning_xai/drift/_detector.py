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

_STATE_VERSION = 3


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
        scores: method -> that method's z-scores divided by ``sigmas`` (``"lag"``, ``"horizon"``, ``"mass"``) and
            their maximum ``"score"``.
        evidence: the epoch-level evidence (the per-method values averaged over methods); the epoch alarms when the
            largest is >= 1 (after warm-up, outside an episode or on a fresh sudden change).
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
    evidence: dict[str, float] = field(default_factory=dict)
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
        """One line for the warning: when, which evidence, which methods, where the evidence went."""
        if self.warmup:
            return f"epoch {self.epoch}: drift detector learning the noise floor"
        if not self.alarm:
            state = "explanations still differ from before the last alarm" if self.active else "no drift"
            return f"epoch {self.epoch}: {state}"
        n = len(next(iter(self.flags.values()))) if self.flags else 0
        kinds = [k for k, v in sorted(self.evidence.items(), key=lambda kv: -kv[1]) if v >= 1.0]
        order = sorted(self.scores, key=lambda m: -self.scores[m].get("score", 0.0))
        text = (f"explanation drift at epoch {self.epoch} ({' + '.join(kinds)} evidence; strongest in "
                f"{', '.join(order[:2])}): {len(self.flagged_probes)}/{n} probes beyond their own noise floor")
        where = [self.movement[m].describe() for m in order[:1] if m in self.movement]
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
                  "evidence lag / horizon / mass |", "|---|---|---|---|---|---|---|"]
        for m in self.stability:
            sc = self.scores.get(m, {})
            parts = " / ".join(f"{sc[k]:.2f}" if k in sc else "-" for k in ("lag", "horizon", "mass"))
            lines.append(f"| {m} | {_fmt(_nan_mean(self.stability[m]))} | {_fmt(_nan_mean(self.topk_overlap[m]))} | "
                         f"{_fmt(_nan_mean(self.shift[m]))} | {self.num_flagged[m]} | "
                         f"{int(self.degenerate[m].sum())} | {parts} |")
        if self.evidence:
            lines += ["", "Epoch evidence (>= 1 alarms): " + ", ".join(f"{k} {v:.2f}" for k, v in self.evidence.items())]
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
        self.frames: list[Tensor] = []  # (N, S, S) last explained epochs, newest last (at most horizon of them)
        self.ref: Tensor | None = None  # (N, S, S) long-horizon reference (end of warm-up, or before the change)
        self.ref_epoch = -1
        self.updates = 0
        self.lag: list[float] = []  # median lag-1 dissimilarity on normal epochs
        self.far: list[float] = []  # median lag-`horizon` dissimilarity on normal epochs
        self.probe_lag: list[list[float]] = []  # per-probe lag-1 dissimilarity on normal epochs (NaN kept)
        self.mass: list[float] = []  # mean relevance mass inside the masks on normal epochs

    @property
    def prev(self) -> Tensor | None:
        return self.frames[-1] if self.frames else None

    def state(self) -> dict[str, Any]:
        return {"frames": [f.clone() for f in self.frames], "ref": self.ref, "ref_epoch": self.ref_epoch,
                "updates": self.updates, "lag": list(self.lag), "far": list(self.far),
                "probe_lag": [list(r) for r in self.probe_lag], "mass": list(self.mass)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> _Method:
        out = cls()
        out.frames = [f.detach().float().cpu().clone() for f in state["frames"]]
        out.ref = None if state["ref"] is None else state["ref"].detach().float().cpu().clone()
        out.ref_epoch = int(state["ref_epoch"])
        out.updates = int(state["updates"])
        out.lag = [float(v) for v in state["lag"]]
        out.far = [float(v) for v in state["far"]]
        out.probe_lag = [[float(v) for v in row] for row in state["probe_lag"]]
        out.mass = [float(v) for v in state["mass"]]
        return out


class DriftDetector:
    r"""Decide, once per explained epoch, whether the model's explanations drifted; say what changed and where.

    Input (:meth:`update`): each method's pooled heatmaps ``(N, 1, S, S)`` of a fixed probe set, optionally the
    predictions, labels and ground-truth masks. The detector keeps the last ``horizon`` epochs' maps and a
    long-horizon reference, and computes everything else itself.

    **Per probe**, for each method: stability ``s`` = Spearman correlation with the previous epoch's map (as in
    :func:`~lightning_xai.metrics.stability.spearman_similarity`), top-k overlap, the dissimilarity ``1 - Spearman``
    to the map of ``horizon`` epochs ago, and the *shift* ``1 - Spearman`` to the long-horizon reference.
    Degenerate maps (non-finite, all zero, constant: :func:`~lightning_xai.metrics.degenerate.degenerate_rows`) get
    NaN, never "stable", and never replace the last usable map a probe is compared with.

    **Noise floor, per method, learned on the run.** Two statistics summarise an epoch: the *median* over probes of
    ``1 - s`` (lag 1) and of the dissimilarity to ``horizon`` epochs ago (lag ``horizon``). The median ignores the
    few probes whose maps are always jumpy (Grad-CAM on a coarse layer). The first ``warmup_epochs`` updates only
    learn; afterwards every *normal* epoch (no evidence beyond the floor) joins a rolling window of the last
    ``window`` normal epochs, whose mean and spread (at least ``min_spread``) are the floor. Each method's statistic
    becomes a z-score against its floor; each probe is *flagged* when its own ``1 - s`` is ``probe_sigmas`` spreads
    above its own normal level (evidence in the report, not an alarm).

    **Alarm: aggregated evidence.** Per epoch, the z-scores are averaged over the methods (one jumpy method does not
    alarm alone, a change every method sees does):

    - *lag*: mean lag-1 z; a sudden change of most maps;
    - *horizon*: mean lag-``horizon`` z; a change spread over a few epochs (a shortcut learnt gradually, a cue
      only in training data) that each single step hides;
    - *mass* (masks given): mean z of the fall of the share of relevance inside the masks below its normal level,
      counted only when it fell by at least ``mass_drop`` (relative): evidence leaving the object.

    The epoch's score is the largest of the three divided by ``sigmas``; 1 or more alarms. The alarm opens an
    *episode*: the reference is frozen at the maps of ``horizon`` epochs before, so a model that settled on a new
    behaviour stays ``active`` ("different from before") until :meth:`accept` re-baselines it. During an episode a
    new alarm needs a fresh sudden change (lag evidence that had calmed down first).

    **Where it moved**: for each method, :class:`~lightning_xai.drift.Movement` against the frame before the
    change: the centre-of-mass shift per probe, the 3x3 region that gained the most mass, whether many probes
    converged on the same region (a positional shortcut's signature), per class, and the mass inside the masks.

    Args:
        warmup_epochs: updates that only learn the noise floor (>= 0; no evidence counts anyway before a floor has
            two values, and the first update's comparison with the maps before training never enters it).
        window: normal epochs kept for the floor (>= 2).
        horizon: the older frame compared with, in explained epochs (>= 2).
        sigmas: evidence (mean z-score over methods) that alarms (> 0).
        min_spread: smallest spread assumed for the median dissimilarity, so a very steady run does not alarm on a
            wobble (>= 0).
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

    def __init__(
        self,
        warmup_epochs: int = 3,
        *,
        window: int = 8,
        horizon: int = 3,
        sigmas: float = 2.5,
        min_spread: float = 0.02,
        mass_drop: float = 0.25,
        probe_sigmas: float = 3.0,
        topk: float = 0.1,
        size: int = 16,
    ) -> None:
        problems = []
        if not _is_int(warmup_epochs) or warmup_epochs < 0:
            problems.append(f"`warmup_epochs` must be an int >= 0, got {warmup_epochs!r}")
        for name, value in (("window", window), ("horizon", horizon)):
            if not _is_int(value) or value < 2:
                problems.append(f"`{name}` must be an int >= 2, got {value!r}")
        for name, value in (("sigmas", sigmas), ("probe_sigmas", probe_sigmas)):
            if not _is_number(value) or value <= 0:
                problems.append(f"`{name}` must be a finite number > 0, got {value!r}")
        if not _is_number(min_spread) or min_spread < 0:
            problems.append(f"`min_spread` must be a finite number >= 0, got {min_spread!r}")
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
        self.horizon = int(horizon)
        self.sigmas = float(sigmas)
        self.min_spread = float(min_spread)
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
        """Accept the current explanations as the new normal: close the drift episode, re-baseline the long-horizon
        reference on the latest maps and learn the noise floors afresh (a new behaviour has its own noise)."""
        self.episode = False
        self.episode_epoch = -1
        self.lag_high = False
        for state in self.methods.values():
            if state.prev is not None:
                state.ref = state.prev.clone()
                state.ref_epoch = self.last_epoch if self.last_epoch is not None else -1
            state.lag, state.far, state.probe_lag, state.mass = [], [], [], []

    def prime(self, maps: Mapping[str, Tensor], *, pred: Tensor | None = None) -> None:
        """Remember ``maps`` as the previous frame without deciding anything (e.g. the maps before training)."""
        pooled = self._check_maps(maps)
        for name, current in pooled.items():
            state = self.methods.setdefault(name, _Method())
            state.frames = [_keep_usable(state.prev, current)]
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
        event: str | None = None,
    ) -> DriftReport:
        """Measure this epoch's maps against the earlier frames and the reference, decide, then learn.

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
            event: a known change of training that is not drift (e.g. ``"learning rate x10"``, reported by the monitor
                when the optimiser's learning rate stepped): the maps are measured and reported, but the noise
                floors start afresh from this epoch (the new regime has its own pace), so it raises no alarm.

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

        if event is not None and not isinstance(event, str):
            raise TypeError(f"`event` must be None or a str describing the change, got {event!r}")
        warmup = self.num_updates < self.warmup_epochs
        report = DriftReport(epoch=int(epoch), alarm=False, active=self.episode, warmup=warmup, stability={},
                             topk_overlap={}, shift={}, degenerate={}, flags={}, num_flagged={}, scores={},
                             reasons=[], movement={}, scalars={}, prediction_changed=changed, probe_ids=ids,
                             class_names=None if class_names is None else list(class_names), labels=labels_t)
        measured: dict[str, dict[str, Any]] = {}
        for name, current in pooled.items():
            state = self.methods.setdefault(name, _Method())
            measured[name] = self._measure(state, current, masks_t)
            self._score(name, state, measured[name], report)
        evidence = {}
        for kind in ("lag", "horizon", "mass"):
            zs = [mm[f"z_{kind}"] for mm in measured.values() if f"z_{kind}" in mm]
            if zs:
                evidence[kind] = sum(zs) / len(pooled) / self.sigmas  # methods without the evidence count as 0
        report.evidence = evidence
        top = max(evidence.values(), default=0.0)
        if event is not None:
            report.reasons.append(f"not drift: {event}; the noise floors start afresh")
            evidence.clear()
            top = 0.0
        if warmup:
            top = 0.0
        sudden = evidence.get("lag", 0.0) >= 1.0 and not warmup
        # during an episode only a fresh sudden change alarms again (the lag evidence must have calmed down first)
        report.alarm = top >= 1.0 and (not self.episode or (sudden and not self.lag_high))
        self.lag_high = sudden
        for kind, value in evidence.items():
            if value >= 1.0 and not warmup:
                report.reasons.append(_REASONS[kind].format(
                    value=value * self.sigmas, methods=", ".join(
                        f"{m} {mm[f'z_{kind}']:+.1f}" for m, mm in measured.items() if f"z_{kind}" in mm)))
        if report.alarm:
            self.episode, self.episode_epoch = True, int(epoch)
            self.alarm_epochs.append(int(epoch))
        report.active = self.episode
        # where it moved: against the frame before the change (alarm) or the episode's reference (active)
        for name, current in pooled.items():
            state, mm = self.methods[name], measured[name]
            before, what = None, ""
            if report.alarm and state.frames:
                before = state.frames[0]
                what = f"{len(state.frames)} explained epoch(s) before"
            elif report.active and state.ref is not None:
                before, what = state.ref, f"the reference (epoch {state.ref_epoch})"
            if before is not None:
                valid = ~mm["degenerate"] & ~degenerate_rows(before.flatten(1))
                report.movement[name] = movement(name, before, current, valid, report.flags[name],
                                                 reference=what, labels=labels_t, masks=masks_t)
        self._learn(pooled, measured, report, warmup, normal=top < 1.0)
        if event is not None:  # a new regime: floors and older frames (which span the event) are dropped
            for state in self.methods.values():
                state.lag, state.far, state.probe_lag = [], [], []
                state.frames = state.frames[-1:]
        self._scalars(report, measured)
        report.reference_epoch = next((s.ref_epoch for s in self.methods.values() if s.ref is not None), None)
        self.num_updates += 1
        self.last_epoch = int(epoch)
        if pred_t is not None:
            self.prev_pred = pred_t
        return report

    # ------------------------------------------------------------------ measuring
    def _dissimilarity(self, before: Tensor, current: Tensor, degenerate: Tensor) -> Tensor:
        bad = degenerate | degenerate_rows(before.flatten(1))
        sim = spearman_similarity(before[:, None], current[:, None], size=self.size).float()
        return torch.where(bad, torch.full_like(sim, float("nan")), 1.0 - sim)

    def _measure(self, state: _Method, current: Tensor, masks: Tensor | None) -> dict[str, Any]:
        n = current.shape[0]
        nan = torch.full((n,), float("nan"))
        degenerate = degenerate_rows(current.flatten(1))
        out: dict[str, Any] = {"degenerate": degenerate, "stability": nan, "topk": nan, "shift": nan, "far": nan}
        if state.prev is not None:
            d1 = self._dissimilarity(state.prev, current, degenerate)
            top = topk_overlap(state.prev[:, None], current[:, None], k=self.topk, size=self.size).float()
            out["stability"] = 1.0 - d1
            out["topk"] = torch.where(torch.isnan(d1), nan, top)
        if len(state.frames) >= self.horizon:
            out["far"] = self._dissimilarity(state.frames[0], current, degenerate)
        if state.ref is not None:
            out["shift"] = self._dissimilarity(state.ref, current, degenerate)
        if masks is not None:
            flat = current.flatten(1).clamp_min(0).double()
            total = flat.sum(1)
            share = (flat * masks.flatten(1)).sum(1) / torch.where(total > 0, total, torch.ones_like(total))
            out["mass"] = _nan_mean(torch.where(degenerate, nan.double(), share))
        return out

    def _score(self, name: str, state: _Method, mm: dict[str, Any], report: DriftReport) -> None:
        d1 = 1.0 - mm["stability"]
        valid = torch.isfinite(d1)
        # per-probe floors: each probe's own normal mean and spread of 1 - s (half the pooled spread at least)
        flags = torch.zeros(d1.shape[0], dtype=torch.bool)
        if state.probe_lag and bool(valid.any()):
            hist = torch.tensor(state.probe_lag, dtype=torch.float64)  # (W, N)
            ok = torch.isfinite(hist)
            cnt = ok.sum(0).clamp_min(1)
            mean = torch.where(ok, hist, torch.zeros_like(hist)).sum(0) / cnt
            var = torch.where(ok, (hist - mean) ** 2, torch.zeros_like(hist)).sum(0) / cnt
            pooled_sd = float(torch.nanmean(torch.where(ok.sum(0) > 0, var, torch.full_like(var, float("nan")))).sqrt())
            floor = max(self.min_spread, 0.5 * pooled_sd) if math.isfinite(pooled_sd) else self.min_spread
            sd = var.sqrt().clamp_min(floor)
            flags = valid & (ok.sum(0) > 0) & (d1.double() > mean + self.probe_sigmas * sd)
        report.flags[name] = flags
        report.num_flagged[name] = int(flags.sum())
        scores: dict[str, float] = {}
        for kind, key, hist in (("lag", "stability", state.lag), ("horizon", "far", state.far)):
            value = _nan_median(1.0 - mm[key] if key == "stability" else mm[key])
            mm[f"med_{kind}"] = value
            if len(hist) >= 2 and math.isfinite(value):
                mu, sd = _mean_sd(hist)
                mm[f"z_{kind}"] = (value - mu) / max(sd, self.min_spread)
                scores[kind] = mm[f"z_{kind}"] / self.sigmas
        mass = mm.get("mass")
        if mass is not None and len(state.mass) >= 2 and math.isfinite(mass):
            mu, sd = _mean_sd(state.mass)
            z = (mu - mass) / max(sd, 0.5 * self.min_spread)
            mm["z_mass"] = z if mu > 0 and mu - mass >= self.mass_drop * mu else min(z, 0.0)
            scores["mass"] = mm["z_mass"] / self.sigmas
        scores["score"] = max(scores.values(), default=0.0)
        report.scores[name] = scores

    # ------------------------------------------------------------------ learning
    def _learn(self, pooled: Mapping[str, Tensor], measured: Mapping[str, dict[str, Any]], report: DriftReport,
               warmup: bool, *, normal: bool) -> None:
        end_of_warmup = self.num_updates + 1 >= self.warmup_epochs
        for name, current in pooled.items():
            state, mm = self.methods[name], measured[name]
            d1 = 1.0 - mm["stability"]
            # the first update's comparison is with the maps before training: never part of the floor
            if normal and state.updates >= 1:
                for hist, key in ((state.lag, "med_lag"), (state.far, "med_horizon")):
                    value = mm.get(key, float("nan"))
                    if math.isfinite(value):
                        hist.append(value)
                        del hist[:-self.window]
                if bool(torch.isfinite(d1).any()):
                    state.probe_lag = (state.probe_lag + [d1.tolist()])[-self.window:]
            mass = mm.get("mass")
            if (mass is not None and math.isfinite(mass) and normal and not self.episode and end_of_warmup
                    and state.updates >= 1):
                state.mass = (state.mass + [mass])[-self.window:]
            if report.alarm and state.frames:
                # freeze the frame before the change as the reference of the episode
                state.ref, state.ref_epoch = state.frames[0].clone(), report.epoch - len(state.frames)
            elif state.ref is None and end_of_warmup:
                state.ref, state.ref_epoch = current.clone(), report.epoch
            state.frames = (state.frames + [_keep_usable(state.prev, current)])[-self.horizon:]
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
            sc[f"xai/{name}/drift_score"] = 0.0 if report.warmup else float(
                max(0.0, report.scores.get(name, {}).get("score", 0.0)))
            state = self.methods[name]
            mass = mm.get("mass")
            if mass is not None and math.isfinite(mass) and state.mass:
                sc[f"xai/{name}/mass_change"] = float(mass - sum(state.mass) / len(state.mass))
        sc["xai/drift/alarm"] = 1.0 if report.alarm else 0.0
        sc["xai/drift/active"] = 1.0 if report.active else 0.0
        sc["xai/drift/score"] = 0.0 if report.warmup else float(max(0.0, max(report.evidence.values(), default=0.0)))

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
                f"horizon={self.horizon}, sigmas={self.sigmas}, min_spread={self.min_spread}, "
                f"mass_drop={self.mass_drop}, probe_sigmas={self.probe_sigmas}, topk={self.topk}, size={self.size})")


def _keep_usable(previous: Tensor | None, current: Tensor) -> Tensor:
    """The next previous frame: ``current``, except that a degenerate map never replaces a usable one (the probe is
    compared with its last usable map when it recovers)."""
    if previous is None or previous.shape != current.shape:
        return current.clone()
    keep = degenerate_rows(current.flatten(1)) & ~degenerate_rows(previous.flatten(1))
    return torch.where(keep[:, None, None], previous, current).clone()


_REASONS = {
    "lag": "sudden: the median epoch-to-epoch change is {value:.1f} normal spreads above its floor (per method z: "
           "{methods})",
    "horizon": "spread over epochs: the median change since a few epochs ago is {value:.1f} normal spreads above "
               "its floor (per method z: {methods})",
    "mass": "evidence left the masks: the share of relevance inside them fell {value:.1f} normal spreads below "
            "its level (per method z: {methods})",
}


def _nan_median(x: Tensor) -> float:
    finite = x[torch.isfinite(x)]
    return float(finite.median()) if finite.numel() else float("nan")


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 0.0
    mu = sum(finite) / len(finite)
    return mu, math.sqrt(sum((v - mu) ** 2 for v in finite) / len(finite))
