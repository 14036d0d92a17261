"""Argument checks shared by every public entry point (pure Python, no Lightning).

One definition of "an int", "a finite number" and of the error message, so every component reports a bad argument
the same way: the argument as the user wrote it (``method_options['integrated_gradients']['n_steps']``), the value,
and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Option", "check", "check_options", "is_int", "is_number", "path"]


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool`` (``True`` is an int to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite ``int``/``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check(ok: bool, name: str, value: Any, allowed: str, *, owner: str = "ExplanationMonitor",
          error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming ``name=value`` and what is ``allowed`` unless ``ok``."""
    if not ok:
        raise error(f"{owner}: `{name}={value!r}` is not valid; expected {allowed}.")


def path(root: str, *keys: str) -> str:
    """``path("drift", "window") == "drift['window']"``: how the user wrote a nested option."""
    return root + "".join(f"[{k!r}]" for k in keys)


@dataclass(frozen=True)
class Option:
    """One named option of a group: its default, a test of a value, and the allowed values in words."""

    default: Any
    ok: Callable[[Any], bool]
    allowed: str


def check_options(given: Any, spec: Mapping[str, Option], name: str, *, owner: str = "ExplanationMonitor"
                  ) -> dict[str, Any]:
    """Validate a group of options (``None`` or a mapping) against ``spec``; return it with defaults filled in.

    Unknown keys are refused with the list of known ones, so a typo never silently falls back to a default.
    """
    if given is None:
        given = {}
    check(isinstance(given, Mapping), name, given, f"None or a dict with keys from {sorted(spec)}", owner=owner,
          error=TypeError)
    unknown = [k for k in given if k not in spec]
    check(not unknown, path(name, *map(str, unknown[:1])), given.get(unknown[0]) if unknown else None,
          f"one of the keys {sorted(spec)}", owner=owner)
    out = {}
    for key, option in spec.items():
        value = given.get(key, option.default)
        check(option.ok(value), path(name, key), value, option.allowed, owner=owner)
        out[key] = value
    return out
