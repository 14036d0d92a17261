"""A one-thread queue for slow writes (rendering and encoding overlays) whose failures are reported later, each
with the label (e.g. the epoch) it was submitted under."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["BackgroundWrites"]


class BackgroundWrites:
    """Run write jobs on one background thread, in submission order; :meth:`collect` waits for them and returns
    the failures as ``(label, exception)``, so a failed job is reported under its own label and never takes later
    writes with it.

    The thread starts on the first :meth:`submit`; :meth:`close` waits for the pending jobs and stops it.

    Example::

        >>> jobs = BackgroundWrites()
        >>> jobs.submit("epoch 0", lambda: 1 / 0)
        >>> jobs.submit("epoch 1", lambda: None)
        >>> [(label, type(err).__name__) for label, err in jobs.collect()]
        [('epoch 0', 'ZeroDivisionError')]
        >>> jobs.close()
        []
    """

    def __init__(self, name: str = "lightning_xai") -> None:
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[tuple[Any, Future]] = []

    @property
    def pending(self) -> int:
        """Jobs submitted and not collected yet."""
        return len(self._pending)

    def submit(self, label: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        self._pending.append((label, self._executor.submit(fn, *args, **kwargs)))

    def collect(self) -> list[tuple[Any, BaseException]]:
        """Wait for every pending job; return the failed ones' ``(label, exception)`` in submission order."""
        pending, self._pending = self._pending, []
        failures = []
        for label, future in pending:
            err = future.exception()
            if err is not None:
                failures.append((label, err))
        return failures

    def close(self) -> list[tuple[Any, BaseException]]:
        """:meth:`collect`, then stop the thread (a later :meth:`submit` starts a new one)."""
        try:
            return self.collect()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
