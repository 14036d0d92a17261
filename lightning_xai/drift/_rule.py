"""The alarm rule: per-stream floors learned on quiet epochs, the strongest stream decides, small moves accumulate.

Pure Python over one number per stream and epoch, separate from how the numbers are measured, so the rule can be
replayed on recorded statistics (``bench/drift.py`` chooses its constants on the tuning part of the scenario suite).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AlarmRule", "Decision"]

_TINY = 1e-4  # statistics are compared in log space; this is the smallest value told apart from zero


@dataclass
class Decision:
    """One epoch's outcome: z-score and CUSUM per stream (streams with a floor), the evidence, the alarm."""

    alarm: bool
    z: dict[str, float] = field(default_factory=dict)
    cusum: dict[str, float] = field(default_factory=dict)
    evidence: dict[str, float] = field(default_factory=dict)
    threshold: float = 0.0


class _Stream:
    def __init__(self) -> None:
        self.history: list[float] = []  # log values of quiet epochs, newest last
        self.cusum = 0.0

    def state(self) -> dict[str, Any]:
        return {"history": list(self.history), "cusum": self.cusum}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> _Stream:
        out = cls()
        out.history = [float(v) for v in state["history"]]
        out.cusum = float(state["cusum"])
        return out


def falls(key: str) -> bool:
    """Streams whose *fall* is the evidence (the share of relevance on the object)."""
    return "mass/" in key


class AlarmRule:
    """Decide on one epoch's stream values (positive numbers; a larger dissimilarity, a smaller mass is evidence).

    Each stream is compared in log space (its changes are multiplicative: a map that moves twice as much is the same
    news at any scale) with the mean and spread of its last ``window`` quiet epochs (the spread at least
    ``min_spread``; ``gap_spread`` for the training/validation ratio, which moves far less; with ``prior_weight``
    > 0 the window's spread is instead shrunk towards that prior spread, weighing it as ``prior_weight`` epochs); an epoch joins a floor only when its z-score is below ``learn_below``. *Sudden*: the largest z
    reaches ``threshold``. *Accumulated*: a per-stream CUSUM ``C = max(0, C + z - slack)`` reaches
    ``cusum_threshold``. After an alarm, an *episode*: only a fresh sudden change (after a calm epoch) alarms again,
    and the floors relearn the new behaviour's own noise (as after an event).
    A known event (learning-rate step): the threshold is ``event_factor`` higher that epoch, and that epoch and the
    next ``settle`` ones relearn the floors and feed no CUSUM.
    """

    def __init__(self, *, window: int, threshold: float, slack: float, cusum_threshold: float, learn_below: float,
                 min_spread: float, event_factor: float, settle: int, gap_spread: float = 0.08,
                 prior_weight: float = 0.0) -> None:
        self.window = window
        self.prior_weight = prior_weight
        self.threshold = threshold
        self.slack = slack
        self.cusum_threshold = cusum_threshold
        self.learn_below = learn_below
        self.min_spread = min_spread
        self.gap_spread = gap_spread
        self.event_factor = event_factor
        self.settle = settle
        self.reset()

    def reset(self) -> None:
        self.streams: dict[str, _Stream] = {}
        self.episode = False
        self.sudden_high = False
        self.settling = 0

    def accept(self) -> None:
        """Close the episode and relearn every floor (a new behaviour has its own noise)."""
        self.reset()

    def _z(self, key: str, log_value: float, stream: _Stream) -> float:
        hist = stream.history
        mu = sum(hist) / len(hist)
        sd = math.sqrt(sum((v - mu) ** 2 for v in hist) / len(hist))
        prior = self.gap_spread if "|gap/" in key else self.min_spread
        if self.prior_weight > 0:
            # the window's spread shrunk towards the prior spread: a few calm epochs make a stream more sensitive,
            # never as sensitive as four noisy numbers alone would claim
            n, n0 = len(hist), self.prior_weight
            spread = math.sqrt((n * sd * sd + n0 * prior * prior) / (n + n0))
        else:
            spread = max(sd, prior)
        z = (log_value - mu) / spread
        return -z if falls(key) else z

    def decide(self, values: Mapping[str, float], *, warmup: bool, event: bool = False) -> Decision:
        """Score this epoch's ``values`` (stream -> positive number), decide, then learn."""
        logs = {k: math.log(max(v, _TINY)) for k, v in values.items() if math.isfinite(v)}
        z: dict[str, float] = {}
        for key, value in logs.items():
            stream = self.streams.setdefault(key, _Stream())
            if len(stream.history) >= 2:
                z[key] = self._z(key, value, stream)
        settling = self.settling > 0 or event
        threshold = self.threshold * (self.event_factor if event else 1.0)
        sudden = max(z.values(), default=0.0)
        cusum = {}
        for key, value in z.items():
            stream = self.streams[key]
            if not warmup and not settling:
                stream.cusum = max(0.0, stream.cusum + value - self.slack)
            cusum[key] = stream.cusum
        top_cusum = max(cusum.values(), default=0.0)
        if warmup:
            sudden, top_cusum = 0.0, 0.0
        evidence = {"sudden": sudden / threshold, "accumulated": top_cusum / self.cusum_threshold}
        fresh = evidence["sudden"] >= 1.0 and not self.sudden_high
        alarm = not warmup and (fresh if self.episode else max(evidence.values()) >= 1.0)
        self.sudden_high = evidence["sudden"] >= 1.0
        if alarm:
            self.episode = True
            for stream in self.streams.values():
                stream.cusum = 0.0
        for key, value in logs.items():
            stream = self.streams[key]
            quiet = key not in z or z[key] < self.learn_below
            if warmup or settling or (quiet and not alarm):
                stream.history = (stream.history + [value])[-self.window:]
        if event or alarm:  # a new regime (a learning-rate step, or the behaviour that alarmed): new floors
            for stream in self.streams.values():
                stream.history = stream.history[-1:]
                stream.cusum = 0.0
            self.settling = self.settle + 1
        self.settling = max(0, self.settling - 1)
        return Decision(alarm=alarm, z=z, cusum=cusum, evidence=evidence, threshold=threshold)

    def state_dict(self) -> dict[str, Any]:
        keys = list(self.streams)
        return {"episode": self.episode, "sudden_high": self.sudden_high, "settling": self.settling,
                "streams": keys, "stream_states": [self.streams[k].state() for k in keys]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reset()
        self.episode = bool(state["episode"])
        self.sudden_high = bool(state["sudden_high"])
        self.settling = int(state["settling"])
        self.streams = {k: _Stream.from_state(s) for k, s in zip(state["streams"], state["stream_states"])}
