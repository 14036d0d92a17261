"""The stale-metric policy: this round's values into ``trainer.callback_metrics``, and what a watching callback sees
for a key the round could not measure."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from lightning_xai.callbacks._compat import EARLY_STOPPING, MODEL_CHECKPOINT

__all__ = ["publish"]


def publish(trainer: Any, scalars: Mapping[str, float], keys: set[str], warn_once: Callable[[str, str], None]) -> None:
    """This round's values into ``trainer.callback_metrics``; a key this round could not measure (skipped round,
    no finite value) never keeps an earlier round's number without saying so.

    What a watching callback then sees: nothing, when every watcher is ``EarlyStopping(strict=False)`` (it skips
    the epoch) or nobody watches; NaN, when every watcher is a ``ModelCheckpoint`` (it ranks NaN last, so no
    checkpoint becomes "best" on it) or an ``EarlyStopping(check_finite=False)``; otherwise (a strict or
    NaN-stopping ``EarlyStopping``, which would stop training on either) the last measured value, with one
    warning: that epoch counts as one without improvement.
    """
    for key, value in scalars.items():
        trainer.callback_metrics[key] = torch.tensor(value)
    for key in keys - set(scalars):
        if key not in trainer.callback_metrics:
            continue
        watchers = [cb for cb in trainer.callbacks if getattr(cb, "monitor", None) == key]
        if all(isinstance(cb, EARLY_STOPPING) and not cb.strict for cb in watchers):
            del trainer.callback_metrics[key]
        elif all(isinstance(cb, MODEL_CHECKPOINT)
                 or (isinstance(cb, EARLY_STOPPING) and not cb.check_finite) for cb in watchers):
            trainer.callback_metrics[key] = torch.tensor(float("nan"))
        else:
            warn_once(
                f"stale/{key}", f"ExplanationMonitor could not measure {key!r} at epoch {trainer.current_epoch}; "
                f"{', '.join(type(cb).__name__ for cb in watchers)} watching it sees its last measured value "
                "(an epoch without improvement). EarlyStopping(..., strict=False) skips such epochs instead.")
