"""What the monitor may spend: a share of the training time, and the measured costs that say what fits in it.

No Lightning import: plain numbers in, decisions out, so every rank decides alike when fed rank 0's broadcast
measurements (the monitor does that) and the rule can be tested with made-up times.

The balance is a token bucket over the whole fit: every second of training earns ``share`` seconds of credit, every
second the monitor takes (in its hooks and on its background thread) spends one. Work the monitor always does (the
cheap methods at every explained epoch) spends without asking; optional work asks :meth:`CostBudget.allow` with its
estimated cost first, which reserves the estimate until the next :meth:`CostBudget.account` replaces it with what
was measured. So an expensive item (Integrated Gradients on 16 probes costs about as much as training 16 x 16
images) runs as often as the run's own length pays for it, and never on a run too short to afford it.
"""

from __future__ import annotations

import math
from collections import Counter

__all__ = ["AUTO_SHARE", "CostBudget"]

#: The share of the training time ``max_overhead="auto"`` (the default) gives the monitor's optional work.
AUTO_SHARE = 0.05


class CostBudget:
    """The monitor's budget: credit earned by training, spent by explaining; measured costs for estimates.

    Args:
        share: the largest share of the training wall time the monitor may take, in ``(0, 1)``; ``None``: no limit
            (:meth:`allow` always says yes; costs are still measured).

    Attributes:
        trained: training seconds so far (wall time without the monitor's).
        spent: the monitor's seconds so far (hooks, background thread).
        allowed, denied: how often each kind of optional work was allowed / refused.

    Example::

        >>> budget = CostBudget(0.1)
        >>> budget.account(train_seconds=10.0, spent_seconds=0.5)   # an epoch of 10 s; 0.5 s of cheap methods
        >>> budget.available()
        0.5
        >>> budget.allow("integrated_gradients", 2.0), budget.allow("pool", 0.3)
        (False, True)
        >>> budget.available()   # the pool's estimate is reserved until the next account()
        0.2
    """

    def __init__(self, share: float | None) -> None:
        if share is not None and not 0.0 < share < 1.0:
            raise ValueError(f"`share` must be None or a float in (0, 1), got {share!r}")
        self.share = share
        self.reset()

    def reset(self) -> None:
        """A new fit: no credit, no measurements."""
        self.trained = 0.0
        self.spent = 0.0
        self._reserved = 0.0
        self._costs: dict[str, float] = {}
        self._row_seconds: float | None = None
        self.allowed: Counter[str] = Counter()
        self.denied: Counter[str] = Counter()

    # ------------------------------------------------------------------ measurements in
    def account(self, train_seconds: float, spent_seconds: float) -> None:
        """A period of the fit: its training seconds and the monitor's seconds in it. Clears the reservations
        (the measured time replaces the estimates)."""
        self.trained += max(0.0, float(train_seconds))
        self.spent += max(0.0, float(spent_seconds))
        self._reserved = 0.0

    def record(self, kind: str, seconds: float, rows: int | None = None) -> None:
        """The measured cost of one ``kind`` of work (``"cheap"``, a method name, ``"views"``, ``"sanity"``, ``"pool"``
        ...) for later estimates; with ``rows`` (forward + input-gradient backward evaluations of one sample) it also
        updates the cost of one such row. Does not touch the balance (:meth:`account` does)."""
        if not math.isfinite(seconds) or seconds < 0:
            return
        self._costs[kind] = float(seconds)
        if rows:
            self._row_seconds = float(seconds) / rows

    # ------------------------------------------------------------------ estimates out
    @property
    def row_seconds(self) -> float | None:
        """Seconds per forward + input-gradient backward of one sample (e.g. one probe through Grad-CAM + saliency,
        which share the pass), measured on the explanation passes; ``None`` before the first one."""
        return self._row_seconds

    def last(self, kind: str) -> float | None:
        """The last measured cost of ``kind``, or ``None``."""
        return self._costs.get(kind)

    def estimate_rows(self, rows: float) -> float | None:
        """Seconds for ``rows`` forward + backward evaluations (e.g. ``n`` extra samples through the cheap methods),
        or ``None`` before the first measurement."""
        return None if self._row_seconds is None else rows * self._row_seconds

    def available(self) -> float:
        """Seconds of credit left now (``inf`` without a share; negative when the monitor is over its share)."""
        if self.share is None:
            return math.inf
        return self.share * self.trained - self.spent - self._reserved

    # ------------------------------------------------------------------ decisions
    def allow(self, kind: str, estimated_seconds: float | None) -> bool:
        """Whether optional work of ``kind`` costing about ``estimated_seconds`` fits now; if so its estimate is
        reserved. ``None`` (nothing measured to estimate from) is allowed only without a share."""
        ok = self.share is None or (estimated_seconds is not None and estimated_seconds <= self.available())
        if ok and estimated_seconds is not None and self.share is not None:
            self._reserved += max(0.0, float(estimated_seconds))
        (self.allowed if ok else self.denied)[kind] += 1
        return ok
