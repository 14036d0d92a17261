"""DriftDetector: per-stream noise floors learned on the run, the strongest stream decides, small moves accumulate."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_xai.drift._movement import Movement, movement
from lightning_xai.drift._rule import AlarmRule
from lightning_xai.drift._stats import class_means, normalised, row_spearman
from lightning_xai.metrics._utils import _as_heatmap
from lightning_xai.metrics.degenerate import degenerate_rows
from lightning_xai.metrics.stability import topk_overlap

__all__ = ["PARTS", "STATISTICS", "DriftDetector", "DriftReport"]

#: The per-epoch statistics of each method and part of the pool (see :class:`DriftDetector`).
STATISTICS: tuple[str, ...] = ("lag", "class", "mass", "gap", "common")

_STATE_VERSION = 4

#: Names of the parts of the detection pool, by ``origin`` code: 0 validation (the display probes and the rest of the
#: validation pool), 1 training samples (as the training data is at that epoch).
PARTS: tuple[str, ...] = ("validation", "training")

#: What each statistic measures (used in the reasons of an alarm).
_STAT_TEXT = {
    "lag": "maps changed since the previous epoch",
    "class": "the per-class average map moved since the previous epoch",
    "mass": "the share of evidence on the object fell",
    "gap": "the training samples' maps moved more than the validation samples' (the training data changed)",
    "common": "the maps of all samples moved the same way (towards one place, as a cue at a fixed position does)",
}


def _nan_mean(x: Tensor) -> float:
    finite = x[torch.isfinite(x)]
    return float(finite.double().mean()) if finite.numel() else float("nan")


@dataclass
class DriftReport:
    """Outcome of one :meth:`DriftDetector.update`.

    Per-probe fields cover the **display probes** (the first ``num_display`` rows of the pool); the decision uses
    the whole detection pool.

    Attributes:
        epoch: the epoch passed to ``update``.
        alarm: True when this epoch raises a drift alarm (the epoch-level decision).
        active: True from an alarm until :meth:`DriftDetector.accept` (the explanations differ from before it).
        warmup: True while the detector is still learning its noise floors (no alarm possible).
        stability: method -> ``(P,)`` Spearman similarity of each display probe's map to the previous explained
            epoch (NaN: no previous epoch, or a degenerate map on either side).
        topk_overlap: method -> ``(P,)`` top-k overlap with the previous epoch (NaN likewise).
        shift: method -> ``(P,)`` dissimilarity ``1 - Spearman`` to the long-horizon reference.
        degenerate: method -> ``(P,)`` bool, maps that are non-finite, all zero or constant.
        flags: method -> ``(P,)`` bool: probes that moved beyond their own noise floor (evidence, not alarms).
        num_flagged: method -> number of flagged probes.
        scores: method -> the z-score of each of its streams (``"lag/validation"``, ``"class/training"``,
            ``"mass/validation"``, ...) divided by the alarm threshold, and their maximum ``"score"``.
        statistics: ``"{method}|{stat}/{part}"`` -> this epoch's raw value of every stream.
        evidence: ``"sudden"`` (strongest stream z / threshold) and ``"accumulated"`` (strongest CUSUM / its
            threshold); the epoch alarms when either is >= 1 (after warm-up; during an episode only a fresh sudden
            change alarms again).
        reasons: one line per stream that crossed its threshold.
        movement: method -> :class:`~lightning_xai.drift.Movement` (where the evidence went) for alarmed or active
            methods.
        scalars: full-key scalars for the loggers (``xai/{method}/stability``, ``xai/drift/alarm``, ...); never NaN.
        prediction_changed: ``(P,)`` bool, whether the predicted class of a display probe changed.
        probe_ids: display-probe names used in the text.
        class_names: class names used in the text.
        event: a known non-drift change reported with this epoch (e.g. a learning-rate step).
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
    event: str | None = None
    pool_size: int = 0
    statistics: dict[str, float] = field(default_factory=dict)
    compared: dict[str, bool] = field(default_factory=dict)  # method -> had a previous frame to compare with

    @property
    def any(self) -> bool:
        """Same as :attr:`alarm`."""
        return self.alarm

    @property
    def flagged_probes(self) -> list[int]:
        """Indices of the display probes flagged for at least one method, ascending."""
        if not self.flags:
            return []
        return torch.stack([f.cpu() for f in self.flags.values()]).any(dim=0).nonzero().flatten().tolist()

    def _probe(self, index: int) -> str:
        return self.probe_ids[index] if self.probe_ids is not None and index < len(self.probe_ids) else str(index)

    def strongest(self) -> list[tuple[str, str, float]]:
        """``(method, stream, score)`` of every stream at or above the threshold, strongest first."""
        out = [(m, k, v) for m, sc in self.scores.items() for k, v in sc.items() if k != "score" and v >= 1.0]
        return sorted(out, key=lambda t: -t[2])

    def headline(self) -> str:
        """One line for the warning: when, which evidence, where the evidence went."""
        if self.warmup:
            return f"epoch {self.epoch}: drift detector learning the noise floor"
        if not self.alarm:
            state = "explanations still differ from before the last alarm" if self.active else "no drift"
            return f"epoch {self.epoch}: {state}"
        kinds = [k for k, v in self.evidence.items() if v >= 1.0]
        top = self.strongest()
        order = list(dict.fromkeys(m for m, _, _ in top)) or sorted(
            self.scores, key=lambda m: -self.scores[m].get("score", 0.0))
        text = f"explanation drift at epoch {self.epoch} ({' + '.join(kinds) or 'sudden'} evidence"
        if top:
            m, stream, value = top[0]
            stat, part = (stream.split("/") + [""])[:2]
            text += f"; strongest: {m} on the {part} samples, {_STAT_TEXT.get(stat, stat)}"
        text += ")"
        where = [self.movement[m].describe(self.class_names) for m in order[:1] if m in self.movement]
        if where:
            text += "; " + "; ".join(where)
        n = len(next(iter(self.flags.values()))) if self.flags else 0
        if n:
            text += f"; {len(self.flagged_probes)}/{n} display probes flagged"
        if self.prediction_changed is not None:
            text += f"; predictions changed on {int(self.prediction_changed.sum())}/{n} probes"
        return text

    def details(self) -> str:
        """Markdown: the evidence per method and stream, where it moved (per class), and the probes that moved most."""
        lines = [f"**{self.headline()}**", ""]
        if self.warmup:
            return "\n".join(lines)
        if self.event:
            lines += [f"Known change this epoch (not drift by itself): {self.event}.", ""]
        lines += ["| method | stability | top-k overlap | shift from reference | probes flagged | degenerate | "
                  "strongest stream (score) |", "|---|---|---|---|---|---|---|"]
        for m in self.stability:
            sc = {k: v for k, v in self.scores.get(m, {}).items() if k != "score"}
            best = max(sc.items(), key=lambda kv: kv[1]) if sc else None
            best_text = "-" if best is None else f"{best[0]} ({best[1]:.2f})"
            lines.append(f"| {m} | {_fmt(_nan_mean(self.stability[m]))} | {_fmt(_nan_mean(self.topk_overlap[m]))} | "
                         f"{_fmt(_nan_mean(self.shift[m]))} | {self.num_flagged[m]} | "
                         f"{int(self.degenerate[m].sum())} | {best_text} |")
        if self.evidence:
            lines += ["", "Epoch evidence (>= 1 alarms): " + ", ".join(f"{k} {v:.2f}" for k, v in self.evidence.items())
                      + (f" (detection pool: {self.pool_size} samples)" if self.pool_size else "")]
        if self.reasons:
            lines += ["", "Evidence:"] + [f"- {r}" for r in self.reasons]
        for m, mv in self.movement.items():
            lines += ["", f"Where it moved ({m}, against {mv.reference}): {mv.describe(self.class_names)}."]
            per_class = mv.class_text(self.class_names)
            if per_class:
                lines.append(f"Per class: {per_class}.")
            shown = [i for i in mv.probes if i < len(self.shift.get(m, []))]
            if shown:
                order = sorted(shown, key=lambda i: -_finite(self.shift[m][i]))[:8]
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
    """Per-method state: the previous frame, the long-horizon reference, per-probe floors."""

    def __init__(self) -> None:
        self.prev: Tensor | None = None  # (N, S, S) the last explained epoch (degenerate rows keep their last usable map)
        self.frames: list[Tensor] = []  # (N, S, S) the last `horizon` explained epochs, newest last
        self.ref: Tensor | None = None  # (N, S, S) long-horizon reference (end of warm-up, or before the change)
        self.ref_epoch = -1
        self.updates = 0
        self.probe_lag: list[list[float]] = []  # per display probe lag-1 dissimilarity on quiet epochs (NaN kept)
        self.missed = False  # not explained at the last update (skipped by a cost budget)
        self.gap = False  # this update's previous frame is older than one explained epoch

    def state(self) -> dict[str, Any]:
        return {"frames": [f.clone() for f in self.frames], "ref": self.ref, "ref_epoch": self.ref_epoch,
                "updates": self.updates, "probe_lag": [list(r) for r in self.probe_lag]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> _Method:
        out = cls()
        out.frames = [f.detach().float().cpu().clone() for f in state["frames"]]
        out.prev = out.frames[-1] if out.frames else None
        out.ref = None if state["ref"] is None else state["ref"].detach().float().cpu().clone()
        out.ref_epoch = int(state["ref_epoch"])
        out.updates = int(state["updates"])
        out.probe_lag = [[float(v) for v in row] for row in state["probe_lag"]]
        return out


class DriftDetector:
    r"""Decide, once per explained epoch, whether the model's explanations drifted; say what changed and where.

    Input (:meth:`update`): each method's pooled heatmaps ``(N_m, 1, S, S)`` of a fixed **detection pool**: the
    display probes first, then more validation samples and training samples (``origin`` tells which are which).
    A costly method may cover only the first ``N_m`` rows (Integrated Gradients on the display probes, Grad-CAM and
    saliency on the whole pool). Optionally the predictions, the explained classes and ground-truth masks.

    **Streams.** For each method and each part of the pool (validation, training) the detector measures, per epoch:

    - ``lag``: the mean over samples of ``1 - Spearman`` between a sample's map and its map at the previous epoch
      (a sudden change of many maps; the mean, not the median, so a change of a third of the samples counts);
    - ``class``: the mean over classes of ``1 - Spearman`` between the class's average (sum-normalised) map and the
      same average at the previous epoch: per-sample jitter averages out, a systematic move (a cue at a place, each
      class to its own place) stays;
    - ``mass`` (masks given): the share of the evidence inside the masks; its *fall* is the evidence;
    - ``gap``: the training part's ``lag`` over the validation part's (the training data changed);
    - ``common``: how much the samples' map changes point the same way, ``|mean_i d_i|^2 / mean_i |d_i|^2`` with
      ``d_i`` the change of sample i's sum-normalised map since the previous epoch (about ``1/N`` when the maps move
      independently, as objects at different places make them; towards 1 when every map gains the same place, as a
      cue at a fixed position makes them).

    **Floors that do not learn from suspicious epochs.** Each stream is a z-score against the mean and spread of its
    last ``window`` quiet epochs (spread at least ``rel_spread`` of the mean and ``min_spread``); an epoch joins the
    floor only when its z-score is below ``learn_below`` (a near miss never widens the floor). The first
    ``warmup_epochs`` updates only learn.

    **The strongest stream decides; small moves accumulate.** *Sudden*: the largest z-score over all streams of all
    methods reaches ``threshold`` (one method that sees the change is not outvoted by the others). *Accumulated*:
    each stream keeps a one-sided CUSUM ``C = max(0, C + z - slack)``; the largest reaching ``cusum_threshold``
    alarms (a slide of moderate z-scores, a cue ramped onto more and more training images).

    **Episodes.** An alarm opens an episode: the reference is frozen at the frame before the change (``active``
    stays True until :meth:`accept`); during an episode only a fresh sudden change alarms again.

    **Known events** (``event=``, e.g. a learning-rate step): the sudden threshold is ``event_factor`` times higher
    at that epoch, the CUSUMs are not fed for it and the ``settle`` epochs after it, and those epochs' floors restart
    from the new regime; a change that coincides with the event is still seen when it is strong.

    **Where it moved**: for each method, :class:`~lightning_xai.drift.Movement` against the frame before the change:
    the centre-of-mass shift per sample, the 3x3 region that gained the most mass, convergence of many samples to
    one region, each class's region (a class-coded positional cue moves each class to its own place), mass in masks.

    Args:
        warmup_epochs: updates that only learn (>= 0).
        window: quiet epochs kept per stream for its floor (>= 2).
        horizon: explained epochs kept as frames (the frame before a change is the episode's reference; >= 1).
        threshold: z-score of the strongest stream that alarms (> 0).
        slack: CUSUM allowance per epoch, in z units (>= 0).
        cusum_threshold: accumulated excess that alarms (> 0).
        learn_below: an epoch joins a stream's floor only below this z-score (> 0).
        min_spread: smallest spread of a stream, in log units (0.25: a quarter of an e-fold, about 28 %; >= 0); with
            ``prior_weight`` > 0, the prior spread the window's own spread is shrunk towards.
        prior_weight: how many epochs the prior spread weighs against the window's (0: the spread is the larger of
            the two; >= 0).
        event_factor: threshold multiplier at a known event (>= 1).
        settle: epochs after an event that relearn the floors and do not feed the CUSUMs (>= 0).
        probe_sigmas: per-probe flag: ``1 - s`` above the probe's normal mean by this many of its spreads (> 0).
        topk: fraction of cells for the top-k overlap, in (0, 1].
        size: maps are pooled to ``size x size`` cells (>= 2).

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
        window: int = 4,
        horizon: int = 3,
        threshold: float = 5.5,
        slack: float = 1.5,
        cusum_threshold: float = 12.0,
        learn_below: float = 0.5,
        min_spread: float = 0.35,
        event_factor: float = 2.0,
        settle: int = 1,
        gap_spread: float = 0.12,
        prior_weight: float = 0.0,
        statistics: Sequence[str] = STATISTICS,
        probe_sigmas: float = 3.0,
        topk: float = 0.1,
        size: int = 16,
    ) -> None:
        problems = []
        checks_int = (("warmup_epochs", warmup_epochs, 0, 1000), ("window", window, 2, 1000),
                      ("horizon", horizon, 1, 100), ("settle", settle, 0, 1000), ("size", size, 2, 256))
        for name, value, lo, hi in checks_int:
            if not _is_int(value) or not lo <= value <= hi:
                problems.append(f"`{name}` must be an int in [{lo}, {hi}], got {value!r}")
        positive = (("threshold", threshold), ("cusum_threshold", cusum_threshold), ("learn_below", learn_below),
                    ("probe_sigmas", probe_sigmas))
        for name, value in positive:
            if not _is_number(value) or not 0 < value <= 1e6:
                problems.append(f"`{name}` must be a finite number in (0, 1e6], got {value!r}")
        for name, value in (("slack", slack), ("min_spread", min_spread)):
            if not _is_number(value) or not 0 <= value <= 1e6:
                problems.append(f"`{name}` must be a finite number in [0, 1e6], got {value!r}")
        if not _is_number(event_factor) or not 1 <= event_factor <= 1e6:
            problems.append(f"`event_factor` must be a finite number in [1, 1e6], got {event_factor!r}")
        if not _is_number(prior_weight) or not 0 <= prior_weight <= 1e6:
            problems.append(f"`prior_weight` must be a finite number in [0, 1e6], got {prior_weight!r}")
        if not _is_number(gap_spread) or not 0 <= gap_spread <= 1e6:
            problems.append(f"`gap_spread` must be a finite number in [0, 1e6], got {gap_spread!r}")
        stats_ok = (isinstance(statistics, Sequence) and not isinstance(statistics, str) and len(statistics) > 0
                    and all(s in STATISTICS for s in statistics))
        if not stats_ok:
            problems.append(f"`statistics` must be a non-empty list from {STATISTICS}, got {statistics!r}")
        if not _is_number(topk) or not 0 < topk <= 1:
            problems.append(f"`topk` must be a number in (0, 1], got {topk!r}")
        if problems:
            raise ValueError("DriftDetector: " + "; ".join(problems))
        self.warmup_epochs = int(warmup_epochs)
        self.window = int(window)
        self.horizon = int(horizon)
        self.threshold = float(threshold)
        self.slack = float(slack)
        self.cusum_threshold = float(cusum_threshold)
        self.learn_below = float(learn_below)
        self.min_spread = float(min_spread)
        self.event_factor = float(event_factor)
        self.settle = int(settle)
        self.gap_spread = float(gap_spread)
        self.prior_weight = float(prior_weight)
        self.statistics = tuple(statistics) if stats_ok else STATISTICS
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
        self.rule = AlarmRule(window=self.window, threshold=self.threshold, slack=self.slack,
                              cusum_threshold=self.cusum_threshold, learn_below=self.learn_below,
                              min_spread=self.min_spread, event_factor=self.event_factor, settle=self.settle,
                              gap_spread=self.gap_spread, prior_weight=self.prior_weight)
        self.num_samples: int | None = None
        self.prev_pred: Tensor | None = None
        self.episode_epoch = -1
        self.alarm_epochs: list[int] = []

    @property
    def episode(self) -> bool:
        """True from an alarm until :meth:`accept`."""
        return self.rule.episode

    @property
    def num_probes(self) -> int | None:
        """Rows of the detection pool (v0.2 name)."""
        return self.num_samples

    def accept(self) -> None:
        """Accept the current explanations as the new normal: close the episode, re-baseline the reference on the
        latest maps and learn the floors afresh (a new behaviour has its own noise)."""
        self.rule.accept()
        self.episode_epoch = -1
        for state in self.methods.values():
            if state.prev is not None:
                state.ref = state.prev.clone()
                state.ref_epoch = self.last_epoch if self.last_epoch is not None else -1
            state.probe_lag = []

    def prime(self, maps: Mapping[str, Tensor], *, pred: Tensor | None = None) -> None:
        """Remember ``maps`` as the previous frame without deciding anything (e.g. the maps before training)."""
        pooled = self._check_maps(maps)
        for name, current in pooled.items():
            state = self.methods.setdefault(name, _Method())
            state.prev = _keep_usable(state.prev, current)
            state.frames = [state.prev]
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
        origin: Tensor | None = None,
        num_display: int | None = None,
        probe_ids: Sequence[Any] | None = None,
        class_names: Sequence[str] | None = None,
        event: str | None = None,
    ) -> DriftReport:
        """Measure this epoch's maps against the previous frames and the floors, decide, then learn.

        Args:
            epoch: the epoch of these maps (reported, not interpreted).
            maps: method -> pooled heatmaps ``(N_m, 1, S, S)`` of the first ``N_m`` samples of the pool (the same
                samples in the same order at every update; ``(N, C, H, W)`` is reduced and pooled to ``size``).
            pred: ``(N,)`` predicted classes of the pool.
            labels: ``(N,)`` explained classes of the pool (-1 unknown): the per-class statistics and story.
            masks: ``(N, 1, H, W)`` ground-truth object masks at any resolution: the ``mass`` streams.
            origin: ``(N,)`` 0 for validation samples, 1 for training samples (default: all validation).
            num_display: how many leading samples are the display probes (default: the rows of the smallest map).
            probe_ids: names of the display probes for the text.
            class_names: names for the classes in the text.
            event: a known change of training that is not drift by itself (e.g. ``"learning rate x10"``): see the
                class docstring.

        Returns:
            The :class:`DriftReport`.
        """
        if not _is_int(epoch):
            raise TypeError(f"`epoch` must be an int, got {epoch!r}")
        if event is not None and not isinstance(event, str):
            raise TypeError(f"`event` must be None or a str describing the change, got {event!r}")
        pooled = self._check_maps(maps)
        n = self.num_samples
        assert n is not None
        display = min(v.shape[0] for v in pooled.values()) if num_display is None else int(num_display)
        if not 0 < display <= n:
            raise ValueError(f"`num_display` must be in [1, {n}], got {num_display!r}")
        pred_t = None if pred is None else self._check_vector(pred, "pred").long()
        labels_t = None if labels is None else self._check_vector(labels, "labels").long()
        masks_t = None if masks is None else self._pool_masks(masks)
        origin_t = torch.zeros(n, dtype=torch.long) if origin is None else self._check_vector(origin, "origin").long()
        ids = None
        if probe_ids is not None:
            ids = [str(i) for i in probe_ids]
            if len(ids) != display:
                raise ValueError(f"`probe_ids` must name the {display} display probes, got {len(ids)}")
        changed = None
        if pred_t is not None and self.prev_pred is not None and self.prev_pred.shape == pred_t.shape:
            changed = (pred_t != self.prev_pred)[:display]

        warmup = self.num_updates < self.warmup_epochs
        report = DriftReport(epoch=int(epoch), alarm=False, active=self.episode, warmup=warmup, stability={},
                             topk_overlap={}, shift={}, degenerate={}, flags={}, num_flagged={}, scores={},
                             reasons=[], movement={}, scalars={}, prediction_changed=changed, probe_ids=ids,
                             class_names=None if class_names is None else list(class_names),
                             labels=None if labels_t is None else labels_t[:display], event=event, pool_size=n)
        # ---- measure every stream
        values, per_method = self._measure_streams(pooled, report, display, labels_t, masks_t, origin_t)
        report.statistics = dict(values)
        # ---- decide (the rule learns its floors from this epoch unless it looks suspicious)
        in_event = event is not None
        counted = {k: v for k, v in values.items() if k.split("|", 1)[1].split("/")[0] in self.statistics}
        decision = self.rule.decide(counted, warmup=warmup, event=in_event)
        threshold = decision.threshold
        report.evidence = decision.evidence
        report.alarm = decision.alarm
        self._explain(report, decision, pooled, warmup, event)
        if report.alarm:
            self.episode_epoch = int(epoch)
            self.alarm_epochs.append(int(epoch))
        report.active = self.episode
        # ---- where it moved: against the frame before the change (alarm) or the episode's reference (active)
        self._describe_movement(report, pooled, per_method, labels_t, masks_t)
        sudden = decision.evidence.get("sudden", 0.0) * threshold
        self._learn(pooled, per_method, report, display, quiet=not report.alarm and sudden < self.learn_below)
        self._scalars(report, per_method, masks_t)
        report.reference_epoch = next((s.ref_epoch for s in self.methods.values() if s.ref is not None), None)
        self.num_updates += 1
        self.last_epoch = int(epoch)
        if pred_t is not None:
            self.prev_pred = pred_t
        return report

    def _measure_streams(self, pooled: Mapping[str, Tensor], report: DriftReport, display: int,
                         labels_t: Tensor | None, masks_t: Tensor | None,
                         origin_t: Tensor) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
        """Every stream's value this epoch (``"method|stat/part"`` -> number) and each method's measurements."""
        for name, state in self.methods.items():
            state.gap = name not in pooled or state.missed
            state.missed = name not in pooled
        values: dict[str, float] = {}
        per_method: dict[str, dict[str, Any]] = {}
        for name, current in pooled.items():
            state = self.methods.setdefault(name, _Method())
            rows = current.shape[0]
            report.compared[name] = state.prev is not None
            mm = self._measure(state, current, display)
            per_method[name] = mm
            if state.updates == 0 or state.prev is None or state.gap:
                # the first comparison is with the maps before training, and a method that skipped rounds (a cost
                # budget) would compare over several epochs: neither is a stream value of one epoch's change
                continue
            lab = None if labels_t is None else labels_t[:rows]
            for part, code in (("validation", 0), ("training", 1)):
                in_part = origin_t[:rows] == code
                if int(in_part.sum()) < 2:
                    continue
                for stat, value in self._stream_values(mm, in_part, lab, None if masks_t is None
                                                       else masks_t[:rows]).items():
                    if math.isfinite(value):
                        values[f"{name}|{stat}/{part}"] = value
            # the training samples' maps moving more than the validation samples': the training data changed
            train, val = values.get(f"{name}|lag/training"), values.get(f"{name}|lag/validation")
            if train is not None and val is not None and val > 0:
                values[f"{name}|gap/training"] = train / val
        return values, per_method

    def _explain(self, report: DriftReport, decision: Any, pooled: Mapping[str, Tensor], warmup: bool,
                 event: str | None) -> None:
        """Each method's share of the evidence (``scores``) and the reasons of the decision."""
        z, threshold, in_event = decision.z, decision.threshold, event is not None
        for name in pooled:
            sc = {key.split("|", 1)[1]: v / threshold for key, v in z.items() if key.split("|", 1)[0] == name}
            sc["score"] = max(sc.values(), default=0.0)
            report.scores[name] = sc
        if not warmup:
            for key, value in sorted(z.items(), key=lambda kv: -kv[1]):
                name, stream_name = key.split("|", 1)
                stat, part = stream_name.split("/")
                c = decision.cusum.get(key, 0.0)
                if value >= threshold or c >= self.cusum_threshold:
                    kind = "sudden" if value >= threshold else "accumulated"
                    report.reasons.append(f"{kind}: {name} on the {part} samples: {_STAT_TEXT[stat]} "
                                          f"(z {value:+.1f} against its floor, accumulated {c:.1f})")
        if in_event:
            report.reasons.append(f"known change: {event}; the alarm threshold is x{self.event_factor:g} this epoch "
                                  "and the floors relearn the new pace")

    def _describe_movement(self, report: DriftReport, pooled: Mapping[str, Tensor],
                           per_method: Mapping[str, dict[str, Any]], labels_t: Tensor | None,
                           masks_t: Tensor | None) -> None:
        """Where each method's maps moved: against the frame before the change (an alarm) or the reference."""
        for name, current in pooled.items():
            state, mm = self.methods[name], per_method[name]
            before, what = None, ""
            if report.alarm and state.frames:
                before, what = state.frames[0], f"{len(state.frames)} explained epoch(s) before"
            elif report.active and state.ref is not None:
                before, what = state.ref, f"the reference (epoch {state.ref_epoch})"
            if before is not None:
                valid = ~mm["degenerate_all"] & ~degenerate_rows(before.flatten(1))
                flagged = torch.zeros(current.shape[0], dtype=torch.bool)  # describe the whole pool, not a few
                rows = current.shape[0]
                report.movement[name] = movement(name, before, current, valid, flagged, reference=what,
                                                 labels=None if labels_t is None else labels_t[:rows],
                                                 masks=None if masks_t is None else masks_t[:rows])

    # ------------------------------------------------------------------ measuring
    def _measure(self, state: _Method, current: Tensor, display: int) -> dict[str, Any]:
        n = current.shape[0]
        flat = current.flatten(1)
        degenerate = degenerate_rows(flat)
        nan = torch.full((n,), float("nan"), dtype=torch.float64)
        out: dict[str, Any] = {"degenerate_all": degenerate, "d1": nan, "shift": nan, "current": flat,
                               "prev": None, "topk": nan[:display].float()}
        if state.prev is not None and state.prev.shape == current.shape:
            prev = state.prev.flatten(1)
            bad = degenerate | degenerate_rows(prev)
            rho = row_spearman(prev, flat)
            out["d1"] = torch.where(bad | torch.isnan(rho), nan, 1.0 - rho)
            out["prev"], out["prev_valid"] = prev, ~bad
            top = topk_overlap(state.prev[:display, None], current[:display, None], k=self.topk,
                               size=self.size).float()
            out["topk"] = torch.where(torch.isnan(out["d1"][:display]), nan[:display].float(), top)
        if state.ref is not None and state.ref.shape == current.shape:
            ref = state.ref.flatten(1)
            bad = degenerate | degenerate_rows(ref)
            rho = row_spearman(ref, flat)
            out["shift"] = torch.where(bad | torch.isnan(rho), nan, 1.0 - rho)
        return out

    def _stream_values(self, mm: Mapping[str, Any], in_part: Tensor, labels: Tensor | None,
                       masks: Tensor | None) -> dict[str, float]:
        out: dict[str, float] = {}
        d1 = mm["d1"][in_part]
        finite = d1[torch.isfinite(d1)]
        if finite.numel() >= 2:
            out["lag"] = float(finite.mean())
        if mm["prev"] is not None:
            valid = mm["prev_valid"] & in_part
            lab = labels if labels is not None else torch.zeros(in_part.shape[0], dtype=torch.long)
            classes = torch.unique(lab[valid & (lab >= 0)])
            if classes.numel():
                now, counts = class_means(mm["current"], lab, valid, classes)
                before, _ = class_means(mm["prev"], lab, valid, classes)
                rho = row_spearman(before, now)
                keep = (counts >= 2) & torch.isfinite(rho)
                if bool(keep.any()):
                    out["class"] = float((1.0 - rho[keep]).mean())
            if int(valid.sum()) >= 2:
                change = normalised(mm["current"][valid]) - normalised(mm["prev"][valid])
                spread = float(change.square().sum(1).mean())
                if spread > 0:
                    out["common"] = float(change.mean(0).square().sum()) / spread
        if masks is not None:
            valid = ~mm["degenerate_all"] & in_part
            if int(valid.sum()) >= 2:
                share = (normalised(mm["current"][valid]) * masks.flatten(1)[valid].double()).sum(1)
                out["mass"] = float(share.mean())
        return out

    # ------------------------------------------------------------------ learning
    def _learn(self, pooled: Mapping[str, Tensor], per_method: Mapping[str, dict[str, Any]], report: DriftReport,
               display: int, *, quiet: bool) -> None:
        end_of_warmup = self.num_updates + 1 >= self.warmup_epochs
        for name, current in pooled.items():
            state, mm = self.methods[name], per_method[name]
            d1 = mm["d1"][:display]
            if quiet and state.updates >= 1 and bool(torch.isfinite(d1).any()):
                state.probe_lag = (state.probe_lag + [d1.tolist()])[-self.window:]
            if report.alarm and state.frames:
                # freeze the frame before the change as the reference of the episode
                state.ref, state.ref_epoch = state.frames[0].clone(), report.epoch - len(state.frames)
            elif state.ref is None and end_of_warmup:
                state.ref, state.ref_epoch = current.clone(), report.epoch
            state.prev = _keep_usable(state.prev, current)
            state.frames = (state.frames + [state.prev])[-self.horizon:]
            state.updates += 1

    def _flags(self, state: _Method, d1: Tensor) -> Tensor:
        """Display probes whose own ``1 - s`` is ``probe_sigmas`` spreads above their own quiet level."""
        valid = torch.isfinite(d1)
        if not state.probe_lag or not bool(valid.any()):
            return torch.zeros(d1.shape[0], dtype=torch.bool)
        hist = torch.tensor(state.probe_lag, dtype=torch.float64)  # (W, P)
        if hist.shape[1] != d1.shape[0]:
            return torch.zeros(d1.shape[0], dtype=torch.bool)
        ok = torch.isfinite(hist)
        cnt = ok.sum(0).clamp_min(1)
        mean = torch.where(ok, hist, torch.zeros_like(hist)).sum(0) / cnt
        var = torch.where(ok, (hist - mean) ** 2, torch.zeros_like(hist)).sum(0) / cnt
        pooled_var = var[ok.sum(0) > 0]
        pooled_sd = float(pooled_var.mean().sqrt()) if pooled_var.numel() else float("nan")
        floor = max(0.02, 0.5 * pooled_sd) if math.isfinite(pooled_sd) else 0.02
        sd = var.sqrt().clamp_min(floor)
        return valid & (ok.sum(0) > 0) & (d1.double() > mean + self.probe_sigmas * sd)

    def _scalars(self, report: DriftReport, per_method: Mapping[str, dict[str, Any]], masks: Tensor | None) -> None:
        sc = report.scalars
        for name, mm in per_method.items():
            display = mm["topk"].shape[0]
            d1 = mm["d1"][:display]
            state = self.methods[name]
            report.stability[name] = (1.0 - d1).float()
            report.topk_overlap[name] = mm["topk"]
            report.shift[name] = mm["shift"][:display].float()
            report.degenerate[name] = mm["degenerate_all"][:display]
            flags = self._flags(state, d1) if not report.warmup else torch.zeros(display, dtype=torch.bool)
            report.flags[name] = flags
            report.num_flagged[name] = int(flags.sum())
            for key, values in (("stability", report.stability[name]), ("topk_overlap", mm["topk"]),
                                ("shift", report.shift[name])):
                value = _nan_mean(values)
                if math.isfinite(value):
                    sc[f"xai/{name}/{key}"] = value
            sc[f"xai/{name}/drift"] = float(report.num_flagged[name])
            sc[f"xai/{name}/degenerate"] = float(report.degenerate[name].sum())
            sc[f"xai/{name}/drift_score"] = 0.0 if report.warmup else float(
                max(0.0, report.scores.get(name, {}).get("score", 0.0)))
            stream = self.rule.streams.get(f"{name}|mass/validation")
            current = self._last_mass(mm, masks)
            if stream is not None and stream.history and current is not None:
                level = math.exp(sum(stream.history) / len(stream.history))
                sc[f"xai/{name}/mass_change"] = float(current - level)
        sc["xai/drift/alarm"] = 1.0 if report.alarm else 0.0
        sc["xai/drift/active"] = 1.0 if report.active else 0.0
        sc["xai/drift/score"] = 0.0 if report.warmup else float(max(0.0, max(report.evidence.values(), default=0.0)))

    @staticmethod
    def _last_mass(mm: Mapping[str, Any], masks: Tensor | None) -> float | None:
        if masks is None:
            return None
        rows = mm["current"].shape[0]
        valid = ~mm["degenerate_all"]
        if not bool(valid.any()):
            return None
        share = (normalised(mm["current"][valid]) * masks[:rows].flatten(1)[valid].double()).sum(1)
        return float(share.mean())

    # ------------------------------------------------------------------ input checks
    def _check_maps(self, maps: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if not isinstance(maps, Mapping) or not maps:
            raise TypeError(f"`maps` must be a non-empty mapping of method name to (N, 1, S, S) heatmaps, got "
                            f"{type(maps).__name__}")
        out: dict[str, Tensor] = {}
        for name, value in maps.items():
            if not isinstance(name, str) or "|" in name:
                raise TypeError(f"`maps` keys must be method names (str without '|'), got {name!r}")
            if not isinstance(value, Tensor) or value.ndim not in (3, 4) or value.shape[0] == 0:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"`maps[{name!r}]` must be (N, 1, S, S) heatmaps, got {shape}")
            heat = _as_heatmap(value.detach().cpu(), f"maps[{name!r}]").float()
            if heat.shape[-2:] != (self.size, self.size):
                heat = F.adaptive_avg_pool2d(heat, self.size)
            out[name] = heat[:, 0].clone()
        largest = max(v.shape[0] for v in out.values())
        if self.num_samples is None:
            self.num_samples = largest
        if largest != self.num_samples:
            raise ValueError(f"the maps cover {largest} samples but the detector tracks a pool of {self.num_samples}; "
                             "the pool must stay fixed (call reset() to start over)")
        for name, heat in out.items():
            known = self.methods.get(name)
            if known is not None and known.prev is not None and known.prev.shape[0] != heat.shape[0]:
                raise ValueError(f"`maps[{name!r}]` has {heat.shape[0]} rows but had {known.prev.shape[0]} before; "
                                 "each method must cover the same samples at every update")
        return out

    def _check_vector(self, value: Any, name: str) -> Tensor:
        if not isinstance(value, Tensor) or value.ndim != 1 or value.shape[0] != self.num_samples:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"`{name}` must be a ({self.num_samples},) tensor, got {got}")
        return value.detach().cpu()

    def _pool_masks(self, masks: Any) -> Tensor:
        if not isinstance(masks, Tensor) or masks.ndim not in (3, 4) or masks.shape[0] != self.num_samples:
            got = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
            raise ValueError(f"`masks` must be ({self.num_samples}, 1, H, W) masks, got {got}")
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
            "num_samples": -1 if self.num_samples is None else self.num_samples,
            "prev_pred": self.prev_pred,
            "episode_epoch": self.episode_epoch,
            "alarm_epochs": list(self.alarm_epochs),
            "methods": names,
            "method_states": [self.methods[m].state() for m in names],
            "rule": self.rule.state_dict(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (the rule's parameters stay the constructor's)."""
        if int(state_dict.get("version", 1)) != _STATE_VERSION:
            raise ValueError(f"DriftDetector state_dict version {state_dict.get('version', 1)} is not "
                             f"{_STATE_VERSION}; the drift history restarts (call reset())")
        missing = [k for k in ("num_updates", "last_epoch", "methods", "method_states", "rule") if k not in state_dict]
        if missing:
            raise KeyError(f"DriftDetector state_dict is missing {missing}")
        self.reset()
        self.num_updates = int(state_dict["num_updates"])
        last = int(state_dict["last_epoch"])
        self.last_epoch = None if last < 0 else last
        num = int(state_dict.get("num_samples", -1))
        self.num_samples = None if num < 0 else num
        pred = state_dict.get("prev_pred")
        self.prev_pred = None if pred is None else pred.detach().cpu().long().clone()
        self.episode_epoch = int(state_dict.get("episode_epoch", -1))
        self.rule.load_state_dict(state_dict["rule"])
        self.alarm_epochs = [int(e) for e in state_dict.get("alarm_epochs", [])]
        self.methods = {m: _Method.from_state(s) for m, s in zip(state_dict["methods"], state_dict["method_states"])}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(warmup_epochs={self.warmup_epochs}, window={self.window}, "
                f"horizon={self.horizon}, threshold={self.threshold}, slack={self.slack}, "
                f"cusum_threshold={self.cusum_threshold}, learn_below={self.learn_below}, "
                f"min_spread={self.min_spread}, event_factor={self.event_factor}, "
                f"settle={self.settle}, gap_spread={self.gap_spread}, prior_weight={self.prior_weight}, statistics={self.statistics}, probe_sigmas={self.probe_sigmas}, topk={self.topk}, size={self.size})")


def _keep_usable(previous: Tensor | None, current: Tensor) -> Tensor:
    """The next previous frame: ``current``, except that a degenerate map never replaces a usable one (the probe is
    compared with its last usable map when it recovers)."""
    if previous is None or previous.shape != current.shape:
        return current.clone()
    keep = degenerate_rows(current.flatten(1)) & ~degenerate_rows(previous.flatten(1))
    return torch.where(keep[:, None, None], previous, current).clone()
