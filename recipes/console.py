"""What the recipes print while they wait, and what they keep out of the console.

- :func:`around_monitor`: two small callbacks placed before and after the ``ExplanationMonitor`` that say what it
  is doing during its waits (the reference round before training, the end-of-fit sanity check and report) and time
  every explanation round, so a slow round on a CPU never looks like a frozen progress bar.
- :func:`quiet_third_party`: hides two messages every Lightning run prints that say nothing about the recipe (a
  "Tip" advertising a cloud logger, a deprecation inside Lightning's own code under recent PyTorch). Only in the
  recipes' own processes; the library changes no filter.
- :func:`print_table_legend`: the words the tables use (flagged vs alarm), the same in every recipe.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import pytorch_lightning as pl

__all__ = ["around_monitor", "print_table_legend", "quiet_third_party", "say"]

LEGEND = ("flagged: probes whose map moved beyond their own noise floor (evidence, not an alarm); "
          "alarm: the epoch-level drift decision (xai/drift/alarm)")


def say(message: str) -> None:
    """One line on stdout that does not break a progress bar."""
    try:
        from tqdm.auto import tqdm

        tqdm.write(message)
    except ImportError:  # pragma: no cover - Lightning's progress bar brings tqdm
        print(message, flush=True)


class _Before(pl.Callback):
    def __init__(self, clock: dict[str, Any], monitor: Any, slow: float) -> None:
        self.clock, self.monitor, self.slow = clock, monitor, slow

    def on_train_start(self, trainer, pl_module):
        self.clock["start"] = time.perf_counter()
        if trainer.is_global_zero:
            say(f"ExplanationMonitor: explaining {self.monitor.num_probes} probes with "
                f"{', '.join(self.monitor.methods)} on the untrained model (the reference round) ...")

    def _round(self, trainer) -> None:
        self.clock["start"] = time.perf_counter()
        self.clock["rounds"] = len(self.monitor.history)
        history = self.monitor.history
        if history and history[-1]["epoch"] == trainer.current_epoch:
            return  # explained at this epoch's validation already: nothing happens at its train-epoch end
        last = self.clock.get("last", 0.0)
        if trainer.is_global_zero and last >= self.slow and not trainer.sanity_checking:
            say(f"ExplanationMonitor: epoch {trainer.current_epoch}: explaining the probes (the last round took "
                f"{last:.0f} s) ...")

    def on_validation_epoch_end(self, trainer, pl_module):
        self._round(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self._round(trainer)

    def on_train_end(self, trainer, pl_module):
        self.clock["start"] = time.perf_counter()
        if trainer.is_global_zero:
            say("ExplanationMonitor: end of fit: sanity check, timelines and the report ...")


class _After(pl.Callback):
    def __init__(self, clock: dict[str, Any], monitor: Any, slow: float) -> None:
        self.clock, self.monitor, self.slow = clock, monitor, slow

    def _elapsed(self) -> float:
        return time.perf_counter() - self.clock.get("start", time.perf_counter())

    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            say(f"ExplanationMonitor: reference round done in {self._elapsed():.1f} s.")

    def _round(self, trainer) -> None:
        if len(self.monitor.history) == self.clock.get("rounds", len(self.monitor.history)):
            return  # the monitor did not explain at this hook
        self.clock["rounds"] = len(self.monitor.history)
        self.clock["last"] = elapsed = self._elapsed()
        if trainer.is_global_zero and elapsed >= self.slow:
            say(f"ExplanationMonitor: epoch {trainer.current_epoch} explained in {elapsed:.0f} s.")

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._round(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self._round(trainer)

    def on_train_end(self, trainer, pl_module):
        elapsed = self._elapsed()
        if trainer.is_global_zero and elapsed >= self.slow:
            say(f"ExplanationMonitor: end of fit done in {elapsed:.0f} s.")


def around_monitor(monitor: Any, *, slow: float = 3.0) -> list[pl.Callback]:
    """``[before, monitor, after]`` for ``Trainer(callbacks=...)`` (Lightning calls callbacks in list order).

    The reference round and the end of fit are always announced; an epoch's round is announced when the previous
    one took ``slow`` seconds or more, and its duration printed when it did.
    """
    clock: dict[str, Any] = {}
    return [_Before(clock, monitor, slow), monitor, _After(clock, monitor, slow)]


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


def quiet_third_party() -> None:
    """Hide Lightning's cloud-logger tips and the ``LeafSpec`` deprecation Lightning triggers under recent PyTorch
    (neither is caused by the recipe or the monitor; both show on every plain Lightning run)."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric", "lightning"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _NoTips) for f in handler.filters):
                handler.addFilter(_NoTips())


def print_table_legend() -> None:
    print(LEGEND)
