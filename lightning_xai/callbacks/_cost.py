"""The monitor's cost plan: which methods run every round and which when the budget allows, the monitor's clock, the
budget's accounting (rank 0's broadcast clock, so every rank decides alike) and the one line that says what a round
costs.

No Lightning import and no collective: the monitor feeds it rank 0's broadcast timings.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from lightning_xai.attribution import get_method, passes
from lightning_xai.callbacks._budget import AUTO_SHARE, CostBudget
from lightning_xai.callbacks._compat import rank_zero_info
from lightning_xai.callbacks._config import MonitorConfig
from lightning_xai.distributed import shard_bounds

__all__ = ["CostPlan", "PassTimings"]

#: ``(methods, seconds, rows)`` of each ``explain_detailed`` call of a round (rank 0's, broadcast).
PassTimings = list[tuple[tuple[str, ...], float, int]]


class CostPlan:
    """What the monitor spends and may spend (``max_overhead``).

    Attributes:
        budget: the :class:`~lightning_xai.callbacks._budget.CostBudget` (credit earned by training, measured costs).
        pinned: the methods run at every explained epoch and in the fit-start reference.
        optional: the methods run when the budget allows, each in its own timed pass.
        next_epoch: with an explicit ``max_overhead=b``, the first epoch the next round may run.
        start_cost: seconds of the fit-start reference round.
    """

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.budget = CostBudget(AUTO_SHARE if config.max_overhead == "auto" else config.max_overhead)
        self.pinned: tuple[str, ...] = config.methods
        self.optional: tuple[str, ...] = ()
        self.reset(world_size=1)
        self._period_start: float | None = None  # the budget's clock: since the last accounting
        self._period_spent = 0.0

    def reset(self, world_size: int) -> None:
        """A new fit (``setup``): no credit, no measurements."""
        self.budget.reset()
        self.world_size = max(1, int(world_size))
        self.start_cost = 0.0
        self.next_epoch = 0
        self._cost_said = self._spacing_said = False
        self._epoch_start: float | None = None  # this epoch's clock and the monitor's time in it
        self._spent = 0.0
        self.views_seconds: float | None = None  # rank 0's last views run, broadcast with the next round

    @property
    def spaces_rounds(self) -> bool:
        """Whether whole rounds may be skipped (an explicit ``max_overhead=b``; ``"auto"`` never skips a round)."""
        return isinstance(self.config.max_overhead, float)

    # ------------------------------------------------------------------ the clock
    def start(self, began: float) -> None:
        """The budget's clock starts at ``began`` (the start of setup: setup's own work counts as the monitor's)."""
        self._period_start, self._period_spent = began, time.perf_counter() - began

    def epoch_started(self) -> None:
        self._epoch_start, self._spent = time.perf_counter(), 0.0

    def add(self, seconds: float, *, epoch: bool = True) -> None:
        """Seconds the monitor took (in this epoch's time too unless ``epoch=False``: the views)."""
        if epoch:
            self._spent += seconds
        self._period_spent += seconds

    def timing(self, round_start: float, background: float, timings: PassTimings,
               pool: float | None = None) -> dict[str, Any]:
        """This round's clock, to broadcast (rank 0's decides): the monitor's time this epoch (and so far in this
        round), the last overlay job's time on the background thread, the epoch's and the budget period's time."""
        now = time.perf_counter()
        return {"spent": self._spent + now - round_start, "background": background,
                "elapsed": None if self._epoch_start is None else now - self._epoch_start,
                "period": None if self._period_start is None else now - self._period_start,
                "period_spent": self._period_spent + now - round_start,
                "passes": timings, "views": self.views_seconds, "pool": pool}

    @staticmethod
    def overhead(timing: Mapping[str, Any]) -> float | None:
        """``xai/overhead``: counted as if the background work did not overlap training (an upper bound)."""
        elapsed = timing["elapsed"]
        if elapsed is None or elapsed <= 0:
            return None
        return (timing["spent"] + timing["background"]) / (elapsed + timing["background"])

    # ------------------------------------------------------------------ which methods, when
    def plan(self, watched: set[str], image_size: tuple[int, ...] | None,
             keys_for: Callable[[Sequence[str]], set[str]]) -> None:
        """Which methods run at every explained epoch (the cheap ones, and any whose key in ``watched`` another
        callback monitors) and which when the budget allows (each in its own timed pass)."""
        c = self.config
        if c.max_overhead is None:
            self.pinned, self.optional = c.methods, ()
            return
        size = image_size if image_size is not None else (224, 224)
        every = keys_for(c.methods)
        pinned = tuple(m for m in c.methods if self._passes(m, size) <= 1.0 or watched & (every - keys_for(
            tuple(x for x in c.methods if x != m))))
        # nothing cheap to keep the stability keys going: every method runs every explained epoch
        self.pinned = pinned or c.methods
        self.optional = tuple(m for m in c.methods if m not in self.pinned)

    def _passes(self, method: str, size: tuple[int, ...]) -> float:
        declared = get_method(method).options  # the monitor's own options (internal_batch_size) are not the method's
        return passes(method, {k: v for k, v in self.config.method_options.get(method, {}).items() if k in declared},
                      size)

    def display_rows(self, probes: int, image_size: tuple[int, ...]) -> float:
        """Rows (forward + backward of one sample) of the display probes' pinned pass: what an "auto" detection pool
        is sized after (the pinned methods share one pass; a method of several passes adds its own)."""
        costs = [self._passes(m, image_size) for m in self.pinned]
        return probes * max(1.0, sum(c for c in costs if c > 1.0) + any(c <= 1.0 for c in costs))

    def due(self, epoch: int) -> bool:
        return epoch >= self.next_epoch  # spaced out by max_overhead

    def groups(self, *, reference: bool, probes: int, image_size: tuple[int, ...]) -> list[tuple[str, ...]]:
        """This round's passes: the pinned methods in one, then each optional method the budget allows now."""
        if reference or not self.optional:
            return [self.pinned]
        allowed = [m for m in self.optional if self.budget.allow(m, self.estimate(m, probes, image_size))]
        return [self.pinned, *((m,) for m in allowed)]

    def estimate(self, method: str, probes: int | None, image_size: tuple[int, ...]) -> float | None:
        """Seconds ``method`` takes on rank 0's shard: its last measured pass, else its passes per probe times the
        measured cost of one probe through the cheap methods."""
        last = self.budget.last(method)
        if last is not None or probes is None:
            return last
        start, stop = shard_bounds(probes, self.world_size, 0)
        return self.budget.estimate_rows((stop - start) * self._passes(method, image_size))

    def views_due(self, ran_before: bool) -> bool:
        """The views: at the first explained epoch, then within the budget (their measured cost)."""
        return not ran_before or self.budget.allow("views", self.budget.last("views"))

    # ------------------------------------------------------------------ accounting
    def record_passes(self, timings: Iterable[tuple[Sequence[str], float, int]]) -> float:
        """Rank 0's pass timings into the budget (the pinned pass as ``"cheap"``, per probe; each optional method
        under its name); returns the optional methods' seconds."""
        optional = 0.0
        for methods, seconds, rows in timings:
            if tuple(methods) == self.pinned:
                self.budget.record("cheap", seconds, rows)
            else:
                optional += seconds
                for m in methods:
                    self.budget.record(m, seconds)
        return optional

    def account(self, epoch: int, timing: Mapping[str, Any], *, probes: int, image_size: tuple[int, ...]) -> None:
        """Feed the budget (rank 0's broadcast clock: identical on every rank); say once what the monitor costs;
        with an explicit ``max_overhead=b``, space the rounds to stay within it."""
        spent, background, elapsed = timing["spent"], timing["background"], timing["elapsed"]
        optional = self.record_passes(timing["passes"])
        if timing["views"] is not None:
            self.budget.record("views", timing["views"])
        if timing.get("pool") is not None:  # the pool's rows are spent like the methods' (in "spent"); its cost
            self.budget.record("pool", timing["pool"])
        if timing["period"] is not None:
            self.budget.account(timing["period"] - timing["period_spent"], timing["period_spent"] + background)
        self._period_start, self._period_spent = time.perf_counter(), 0.0
        if elapsed is None or elapsed <= 0:
            return
        train = max(elapsed - spent, 1e-6)  # the epoch without the monitor
        cost = spent + background
        if not self._cost_said:
            self._cost_said = True
            rank_zero_info(self._cost_line(epoch, train, cost, optional, background, probes, image_size))
        if self.spaces_rounds:
            self._space_rounds(epoch, train, cost - optional)

    def _cost_line(self, epoch: int, train: float, cost: float, optional: float, background: float, probes: int,
                   image_size: tuple[int, ...]) -> str:
        c = self.config
        elapsed = train + cost
        every = max(c.every_n_epochs, math.ceil(cost * 0.9 / (0.1 * train)))
        ran = [m for m in c.methods if m in self.pinned or self.budget.last(m) is not None]
        return (
            f"ExplanationMonitor: one explanation round ({probes} probes, {', '.join(ran)}) "
            f"took {cost:.2f} s{' (+ overlays drawn in the background)' if c.log_images and not background else ''}"
            f", {cost / elapsed:.0%} of epoch {epoch} ({elapsed:.1f} s)"
            + (f"; the reference round before training took {self.start_cost:.2f} s" if self.start_cost else "")
            + self._optional_note(probes, image_size)
            + (". To lower it, explain less often "  # only advise a spacing that actually changes something
               f"(every_n_epochs={every} keeps it near 10%) or " if every > c.every_n_epochs else
               ". To lower it, explain ")
            + f"fewer probes (num_probes={max(1, probes // 2)})"
            # the cheap round alone above 10%: a number for max_overhead spaces the rounds themselves
            + ("; max_overhead=0.1 spaces the rounds automatically" if not self.spaces_rounds
               and cost - optional > 0.1 * elapsed else "")
            + ". `xai/overhead` logs the share every round."
        )

    def _space_rounds(self, epoch: int, train: float, cost: float) -> None:
        """The optional methods live within the budget's credit; the pinned round's ``cost`` decides the spacing."""
        b = self.config.max_overhead
        spacing = max(1, math.ceil(cost * (1.0 - b) / (b * train)))  # cost / (spacing * train + cost) <= b
        self.next_epoch = epoch + spacing
        if spacing > self.config.every_n_epochs and not self._spacing_said:
            self._spacing_said = True
            rank_zero_info(
                f"ExplanationMonitor: a round costs {cost:.2f} s against {train:.1f} s of training per epoch; to "
                f"stay within max_overhead={b} it explains every {spacing} epochs from now on (the spacing "
                "follows the measured costs)."
            )

    def _optional_note(self, probes: int, image_size: tuple[int, ...]) -> str:
        """What the budget does with the optional methods, for the one cost line."""
        if not self.optional:
            return ""
        parts = []
        for m in self.optional:
            estimate = self.estimate(m, probes, image_size)
            parts.append(f"{m} (about {estimate:.2f} s a round)" if estimate is not None else m)
        return (f". {', '.join(parts)} run{'s' if len(parts) == 1 else ''} only when the training time has paid for "
                f"{'it' if len(parts) == 1 else 'them'} within max_overhead={self.config.max_overhead!r} "
                f"({self.budget.share:.0%} of the training time; max_overhead=None runs every method every epoch)")
