"""Failures reported once per cause: a persistent failure (a sink that refuses every image, a read-only directory, a
view that fails on this model) warns once, then is counted; the end of fit sums up what repeated."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from lightning_xai import keys

# What changes between two occurrences of one cause: numbers (epoch, step, rank, version_3, sizes), addresses, and the
# tags of the items that failed (a full disk fails every tag).
_VARYING = re.compile(r"0x[0-9a-fA-F]+|\d+")
_TAG = re.compile(re.escape(keys.PREFIX) + r"[\w./-]*")
_EPOCH = re.compile(r"\bepoch (\d+)")
# "OSError: No space left on device": an exception named in the message, with its text up to a bracket or ';'
_ERROR = re.compile(r"\b([A-Z]\w*(?:Error|Exception)): ([^;()\n]*)")
# exceptions that only wrap others (the writers' and the reporter's): their roots are the cause
_WRAPPERS = {"SinkError", "ItemsError", "OverlayWriteError"}


def cause_of(message: str) -> str:
    """The cause of a failure message: the root exceptions it names (wrappers skipped), with numbers and tags masked,
    so a full disk failing epoch 3's scalars and epoch 4's overlays is one cause; the masked message when it names
    none."""
    roots = sorted({f"{kind}: {_VARYING.sub('#', _TAG.sub('<tag>', text)).strip()}"
                    for kind, text in _ERROR.findall(message) if kind not in _WRAPPERS})
    return " | ".join(roots) if roots else _VARYING.sub("#", _TAG.sub("<tag>", message))


@dataclass
class _Cause:
    first: str
    count: int = 0
    epochs: list[int] = field(default_factory=list)


class FailureLog:
    """Warn about each cause of failure once; count the repeats.

    Args:
        warn: how to warn (the monitor's rank-zero warning).

    Example::

        >>> seen = []
        >>> log = FailureLog(seen.append)
        >>> for epoch in range(3):
        ...     log.warn(f"writing failed at epoch {epoch}: disk full")
        >>> len(seen), log.summary().splitlines()[1]
        (1, '- writing failed at epoch 0: disk full: 3 times (epochs 0, 1, 2)')
    """

    def __init__(self, warn: Callable[[str], None]) -> None:
        self._warn = warn
        self.causes: dict[str, _Cause] = {}

    def warn(self, message: str) -> None:
        """Warn with ``message`` if its cause is new (saying that repeats are counted); otherwise count it."""
        key = cause_of(message)
        cause = self.causes.get(key)
        if cause is None:
            cause = self.causes[key] = _Cause(message)
            self._warn(f"{message} (Warned once: repeats of this failure are counted and summed up at the end of "
                       "fit.)")
        cause.count += 1
        found = _EPOCH.search(message)
        if found is not None:
            cause.epochs.append(int(found.group(1)))

    def summary(self) -> str | None:
        """One message listing the causes that occurred more than once, with their counts and epochs; ``None`` if
        none repeated (everything was already said)."""
        repeated = [c for c in self.causes.values() if c.count > 1]
        if not repeated:
            return None
        lines = ["ExplanationMonitor: failures that repeated during this fit (each was warned about once):"]
        for c in repeated:
            epochs = f" (epochs {', '.join(map(str, _shorten(c.epochs)))})" if c.epochs else ""
            first = c.first if len(c.first) <= 600 else c.first[:597] + "..."
            lines.append(f"- {first}: {c.count} times{epochs}")
        return "\n".join(lines)

    def reset(self) -> None:
        self.causes.clear()


def _shorten(epochs: list[int], limit: int = 12) -> list[int | str]:
    if len(epochs) <= limit:
        return list(epochs)
    return [*epochs[: limit // 2], "...", *epochs[-limit // 2:]]
