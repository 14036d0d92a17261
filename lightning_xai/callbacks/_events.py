"""Known events between two explained epochs that change how fast the maps move without being drift: learning-rate
steps of the schedule (the detector raises its threshold for that epoch)."""

from __future__ import annotations

from typing import Any

from lightning_xai.callbacks._tracker import lr_event

__all__ = ["LearningRates"]


def _learning_rates(trainer: Any) -> list[float]:
    return [float(g["lr"]) for opt in trainer.optimizers for g in opt.param_groups if "lr" in g]


class LearningRates:
    """The learning rates at the last explained round; :meth:`event` describes a step since then."""

    def __init__(self) -> None:
        self.last: list[float] | None = None

    def remember(self, trainer: Any) -> None:
        self.last = _learning_rates(trainer)

    def event(self, trainer: Any) -> str | None:
        """A learning-rate step since the last explained round (described for the drift report), or ``None``;
        remembers the current rates."""
        current = _learning_rates(trainer)
        event = lr_event(self.last, current)
        self.last = current
        return event
