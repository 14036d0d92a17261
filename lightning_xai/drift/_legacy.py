"""Transitional: v0.1's per-probe rule, kept only while the v0.1 callback still builds it (see DriftDetector.__new__).

Pure torch; the Lightning callback feeds it one similarity vector per method per logging epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["LegacyDriftDetector", "LegacyDriftReport"]

_STATE_VERSION = 1


@dataclass
class LegacyDriftReport:
    """Outcome of one :meth:`DriftDetector.update`.

    Attributes:
        epoch: the epoch passed to ``update``.
        flags: method -> ``(N,)`` bool tensor, True for drifting probes (on the similarities' device).
        num_flagged: method -> number of flagged probes.
        any: whether any probe is flagged for any method.
        reasons: one human-readable line per flag (probe, method, similarity, which rule fired).
        prediction_changed: the ``(N,)`` bool tensor passed to ``update``, if any.
        warmup: True when every method was still warming up (nothing was checked).
        probe_ids: names of the probes used in ``reasons`` and :meth:`summary` (indices when not given).
    """

    epoch: int
    flags: dict[str, Tensor]
    num_flagged: dict[str, int]
    any: bool
    reasons: list[str]
    prediction_changed: Tensor | None = None
    warmup: bool = False
    probe_ids: list[str] | None = None
    _rows: list[tuple[str, str, float, str, str]] = field(default_factory=list, repr=False)

    @property
    def flagged_probes(self) -> list[int]:
        """Indices of the probes flagged for at least one method, ascending."""
        if not self.flags:
            return []
        union = torch.stack([f.cpu() for f in self.flags.values()]).any(dim=0)
        return union.nonzero().flatten().tolist()

    def summary(self) -> str:
        """Markdown description: which probes, which methods, the similarity, the rule and whether the prediction
        changed too."""
        if self.warmup:
            return f"Epoch {self.epoch}: explanation drift detector warming up; nothing checked yet."
        if not self.any:
            methods = ", ".join(self.flags) or "none"
            return f"No explanation drift at epoch {self.epoch} (methods: {methods})."
        probes = self.flagged_probes
        lines = [
            f"**Explanation drift at epoch {self.epoch}**: {len(probes)} probe(s) flagged "
            f"({', '.join(f'{m}: {n}' for m, n in self.num_flagged.items() if n)}).",
            "",
            "| probe | method | similarity | rule | prediction changed |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {p} | {m} | {s:.3f} | {rule} | {changed} |" for p, m, s, rule, changed in self._rows]
        if self.prediction_changed is not None:
            changed = self.prediction_changed.detach().cpu()
            both = sum(bool(changed[i]) for i in probes)
            lines += ["", f"Prediction changed for {both} of the {len(probes)} flagged probe(s)."]
        return "\n".join(lines)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class LegacyDriftDetector:
    """Flag probes whose explanation suddenly changes, per method.

    Input, once per logging epoch: for every method, each probe's similarity between this epoch's map and the
    previous logged epoch's map (e.g. :func:`~lightning_xai.metrics.stability.spearman_similarity`; 1.0 = unchanged).

    Rule, for each method and probe:

    1. **Warm-up**: nothing is flagged during the first ``warmup_epochs`` updates that include the method (early
       training is naturally unstable); the similarities still enter the history.
    2. **Absolute**: flagged when ``similarity < threshold``.
    3. **Relative**: flagged when ``similarity < mean - drop_sigmas * std`` *and* ``similarity <= mean - min_drop``,
       where ``mean`` and ``std`` (population standard deviation) are over the probe's own last ``window``
       similarities (at least one needed). The ``min_drop`` margin stops tiny wobbles of a very steady probe
       (``std`` close to 0) from firing.
    4. The history is updated *after* deciding, so a drop is judged against the epochs before it.
    5. NaN similarities (e.g. from a map containing NaN) are ignored: never flagged, kept out of the statistics.

    Memory stays flat: per method the history holds at most ``window`` rows of ``N`` floats.

    Args:
        threshold: absolute similarity floor.
        warmup_epochs: number of initial updates without flags (>= 0).
        window: number of recent similarities per probe used by the relative rule (>= 1).
        drop_sigmas: how many standard deviations below the recent mean counts as a drop (>= 0).
        min_drop: minimum drop below the recent mean for the relative rule (>= 0).

    Raises:
        ValueError: naming every invalid argument and its value.

    Example::

        >>> detector = LegacyDriftDetector(threshold=0.5, warmup_epochs=1)
        >>> detector.update(0, {"grad_cam": torch.tensor([0.9, 0.9])}).any
        False
        >>> report = detector.update(1, {"grad_cam": torch.tensor([0.95, 0.2])})
        >>> report.flags["grad_cam"].tolist(), report.num_flagged
        ([False, True], {'grad_cam': 1})
    """

    def __init__(
        self,
        threshold: float = 0.5,
        warmup_epochs: int = 3,
        window: int = 5,
        drop_sigmas: float = 3.0,
        min_drop: float = 0.2,
    ) -> None:
        problems = []
        if not _is_number(threshold) or not -1.0 <= float(threshold) <= 1.0:
            # similarities are rank correlations in [-1, 1]: a threshold outside flags always or never
            problems.append(f"`threshold` must be a number in [-1, 1], got {threshold!r}")
        if not _is_int(warmup_epochs) or warmup_epochs < 0:
            problems.append(f"`warmup_epochs` must be an int >= 0, got {warmup_epochs!r}")
        if not _is_int(window) or window < 1:
            problems.append(f"`window` must be an int >= 1, got {window!r}")
        if not _is_number(drop_sigmas) or drop_sigmas < 0:
            problems.append(f"`drop_sigmas` must be a finite number >= 0, got {drop_sigmas!r}")
        if not _is_number(min_drop) or min_drop < 0:
            problems.append(f"`min_drop` must be a finite number >= 0, got {min_drop!r}")
        if problems:
            raise ValueError("; ".join(problems))
        self.threshold = float(threshold)
        self.warmup_epochs = int(warmup_epochs)
        self.window = int(window)
        self.drop_sigmas = float(drop_sigmas)
        self.min_drop = float(min_drop)
        self.reset()

    def reset(self) -> None:
        """Forget all history."""
        self.num_updates = 0
        self.last_epoch: int | None = None
        self.history: dict[str, Tensor] = {}
        self.method_updates: dict[str, int] = {}

    def update(
        self,
        epoch: int,
        similarity: Mapping[str, Tensor],
        prediction_changed: Tensor | None = None,
        *,
        probe_ids: Sequence[Any] | None = None,
    ) -> LegacyDriftReport:
        """Decide which probes drift at ``epoch``, then add the similarities to the history.

        Args:
            epoch: the epoch these similarities belong to (reported, not interpreted).
            similarity: method -> ``(N,)`` per-probe similarity to the previous logged epoch. Every method must have
                the same ``N`` as in earlier updates.
            prediction_changed: optional ``(N,)`` bool, whether each probe's predicted class changed since the
                previous logged epoch; only reported.
            probe_ids: optional ``N`` names for the probes in the report's text.

        Returns:
            The :class:`DriftReport`.

        Shape:
            - each similarity: ``(N,)``
            - prediction_changed: ``(N,)``
        """
        if not _is_int(epoch):
            raise TypeError(f"`epoch` must be an int, got {epoch!r}")
        if not isinstance(similarity, Mapping):
            raise TypeError(f"`similarity` must be a mapping of method name to (N,) tensors, got {type(similarity)}")
        values: dict[str, Tensor] = {}
        num_probes: int | None = None
        for name, sim in similarity.items():
            if not isinstance(name, str):
                raise TypeError(f"`similarity` keys must be method names (str), got {name!r}")
            if not isinstance(sim, Tensor) or sim.ndim != 1:
                shape = tuple(sim.shape) if isinstance(sim, Tensor) else type(sim).__name__
                raise ValueError(f"`similarity[{name!r}]` must be a (N,) tensor, got {shape}")
            if num_probes is not None and sim.shape[0] != num_probes:
                raise ValueError(
                    f"all similarities must have the same length; `similarity[{name!r}]` has "
                    f"{sim.shape[0]}, others {num_probes}"
                )
            num_probes = sim.shape[0]
            known = self.history.get(name)
            if known is not None and known.shape[1] != sim.shape[0]:
                raise ValueError(
                    f"`similarity[{name!r}]` has {sim.shape[0]} probes but the history has {known.shape[1]}; the "
                    "probe set must stay fixed (call reset() to start over)"
                )
            values[name] = sim
        if prediction_changed is not None:
            if (
                not isinstance(prediction_changed, Tensor)
                or prediction_changed.ndim != 1
                or (num_probes is not None and prediction_changed.shape[0] != num_probes)
            ):
                got = tuple(prediction_changed.shape) if isinstance(prediction_changed, Tensor) else prediction_changed
                raise ValueError(f"`prediction_changed` must be a ({num_probes},) bool tensor or None, got {got}")
            prediction_changed = prediction_changed.detach().bool()
        ids: list[str] | None = None
        if probe_ids is not None:
            ids = [str(i) for i in probe_ids]
            if num_probes is not None and len(ids) != num_probes:
                raise ValueError(f"`probe_ids` must name {num_probes} probes, got {len(ids)}")
        changed_cpu = prediction_changed.cpu() if prediction_changed is not None else None

        flags: dict[str, Tensor] = {}
        reasons: list[str] = []
        rows: list[tuple[str, str, float, str, str]] = []
        checked = False
        for name, sim in values.items():
            current = sim.detach().to(device="cpu", dtype=torch.float32)
            history = self.history.get(name, torch.empty(0, current.shape[0]))
            in_warmup = self.method_updates.get(name, 0) < self.warmup_epochs
            checked = checked or not in_warmup
            flag = torch.zeros(current.shape[0], dtype=torch.bool)
            if not in_warmup:
                flag, why = self._decide(current, history)
                for j in flag.nonzero().flatten().tolist():
                    probe = ids[j] if ids is not None else str(j)
                    changed = "n/a" if changed_cpu is None else ("yes" if bool(changed_cpu[j]) else "no")
                    rows.append((probe, name, float(current[j]), why[j], changed))
                    suffix = "" if changed_cpu is None else f"; prediction changed: {changed}"
                    reasons.append(f"probe {probe} ({name}): similarity {float(current[j]):.3f} {why[j]}{suffix}")
            flags[name] = flag.to(sim.device)
            # Update after deciding; NaN stays as a placeholder that the statistics skip.
            with torch.inference_mode(False):  # keep the history a normal tensor even when called in inference mode
                self.history[name] = torch.cat([history, current[None]])[-self.window :].clone()
            self.method_updates[name] = self.method_updates.get(name, 0) + 1
        self.num_updates += 1
        self.last_epoch = int(epoch)
        num_flagged = {name: int(f.sum()) for name, f in flags.items()}
        return LegacyDriftReport(
            epoch=int(epoch),
            flags=flags,
            num_flagged=num_flagged,
            any=any(n > 0 for n in num_flagged.values()),
            reasons=reasons,
            prediction_changed=prediction_changed,
            warmup=bool(values) and not checked,
            probe_ids=ids,
            _rows=rows,
        )

    def _decide(self, current: Tensor, history: Tensor) -> tuple[Tensor, list[str]]:
        """Flags and per-probe reason text for one method (CPU tensors)."""
        valid = ~torch.isnan(current)
        absolute = valid & (current < self.threshold)
        cur = current.double()
        hist = history.double()
        present = ~torch.isnan(hist)
        count = present.sum(dim=0)
        safe_count = count.clamp_min(1).double()
        mean = torch.where(present, hist, torch.zeros_like(hist)).sum(dim=0) / safe_count
        var = torch.where(present, (hist - mean) ** 2, torch.zeros_like(hist)).sum(dim=0) / safe_count
        std = var.sqrt()
        relative = valid & (count > 0) & (cur < mean - self.drop_sigmas * std) & (mean - cur >= self.min_drop)
        why = []
        for j in range(current.shape[0]):
            if absolute[j]:
                why.append(f"< threshold {self.threshold:.3f}")
            elif relative[j]:
                why.append(
                    f"is {float(mean[j] - cur[j]):.3f} below its recent mean {float(mean[j]):.3f} "
                    f"(std {float(std[j]):.3f} over {int(count[j])} epoch(s))"
                )
            else:
                why.append("")
        return absolute | relative, why

    def state_dict(self) -> dict[str, Any]:
        """Plain state (tensors, lists, ints, floats, str keys): loads with ``torch.load(weights_only=True)``."""
        methods = list(self.history)
        return {
            "version": _STATE_VERSION,
            "num_updates": self.num_updates,
            "last_epoch": -1 if self.last_epoch is None else self.last_epoch,
            "methods": methods,
            "method_updates": [self.method_updates.get(m, 0) for m in methods],
            "history": [self.history[m].clone() for m in methods],
            "config": [self.threshold, self.warmup_epochs, self.window, self.drop_sigmas, self.min_drop],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the history and counters from :meth:`state_dict`.

        The rule parameters are the constructor's (the saved ``config`` is informational); a history longer than
        ``window`` is trimmed to the most recent rows.
        """
        required = ("num_updates", "last_epoch", "methods", "method_updates", "history")
        missing = [k for k in required if k not in state_dict]
        if missing:
            raise KeyError(f"DriftDetector state_dict is missing {missing}")
        methods = list(state_dict["methods"])
        updates = list(state_dict["method_updates"])
        history = list(state_dict["history"])
        if not (len(methods) == len(updates) == len(history)):
            raise ValueError("DriftDetector state_dict has inconsistent `methods`, `method_updates` and `history`")
        for name, hist in zip(methods, history):
            if not isinstance(hist, Tensor) or hist.ndim != 2:
                raise ValueError(f"DriftDetector state_dict history for {name!r} must be a 2-D tensor, got {hist!r}")
        self.num_updates = int(state_dict["num_updates"])
        last = int(state_dict["last_epoch"])
        self.last_epoch = None if last < 0 else last
        self.history = {
            m: h.detach().to(device="cpu", dtype=torch.float32)[-self.window :].clone()
            for m, h in zip(methods, history)
        }
        self.method_updates = {m: int(u) for m, u in zip(methods, updates)}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(threshold={self.threshold}, warmup_epochs={self.warmup_epochs}, "
            f"window={self.window}, drop_sigmas={self.drop_sigmas}, min_drop={self.min_drop})"
        )
