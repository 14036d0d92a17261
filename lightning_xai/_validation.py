"""Argument checks shared by every public entry point (pure Python, no Lightning).

One definition of "an int", "a finite number", of an option's spec and of the error message, so every component
reports a bad argument the same way::

    ExplanationMonitor: `method_options['integrated_gradients']['n_steps']=1000000000`: must be an int in [2, 4096]
    (path nodes per probe ...); lower it: each node is one forward + backward per probe.

An option is declared once, as data (:class:`Option`: default, type, bounds, meaning, fix), with the helpers
:func:`integer`, :func:`number`, :func:`choice`, :func:`flag`, :func:`seed` and :func:`custom`; :func:`check_options`
validates a group of them. Every size-like option has an upper bound (PITFALLS 30: a size without one is a denial of
service), and the bounds are machine-readable (:attr:`Option.kind`, :attr:`Option.low`, :attr:`Option.high`), so a
test can fuzz every option of every group from the specs alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "SEED_MAX",
    "Option",
    "check",
    "check_options",
    "choice",
    "custom",
    "flag",
    "integer",
    "is_int",
    "is_number",
    "number",
    "path",
    "seed",
]

#: The largest seed accepted anywhere: ``torch.Generator.manual_seed`` takes 64-bit values, and a non-negative int64
#: is what every consumer (NumPy included) reads the same way.
SEED_MAX = 2**63 - 1


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool`` (``True`` is an int to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite ``int``/``float`` that is not a ``bool``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float is no finite number to a user
        return False


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...)"


def check(ok: bool, name: str, value: Any, allowed: str, *, owner: str = "ExplanationMonitor",
          error: type[Exception] = ValueError, fix: str = "") -> None:
    """Raise ``error`` naming ``name=value``, what is ``allowed`` and the ``fix`` unless ``ok``."""
    if not ok:
        raise error(f"{owner}: `{name}={_show(value)}`: must be {allowed}" + (f"; {fix}" if fix else "") + ".")


def path(root: str, *keys: Any) -> str:
    """``path("drift", "window") == "drift['window']"``: how the user wrote a nested option (``root=""``: the key)."""
    if not root and keys:
        root, keys = str(keys[0]), keys[1:]
    return root + "".join(f"[{k!r}]" for k in keys)


@dataclass(frozen=True)
class Option:
    """One named option of a group: its default, a test of a value and the allowed values in words.

    The helpers below fill in the machine-readable part: ``kind`` (``"int"``, ``"float"``, ``"choice"``, ``"bool"``
    or ``"other"``), the bounds ``low``/``high`` (inclusive unless ``open_low``/``open_high``), whether ``None`` is
    allowed (``nullable``), the ``choices``, and ``fix``: what to do about a bad value.
    """

    default: Any
    ok: Callable[[Any], bool]
    allowed: str
    kind: str = "other"
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    nullable: bool = False
    choices: tuple[Any, ...] = ()
    fix: str = ""
    doc: str = ""


def _interval(low: float, high: float, open_low: bool, open_high: bool) -> str:
    def show(x: float) -> str:
        return str(x) if isinstance(x, int) else f"{x:g}"

    return f"{'(' if open_low else '['}{show(low)}, {show(high)}{')' if open_high else ']'}"


def _nullable(ok: Callable[[Any], bool], allowed: str, none: str | None) -> tuple[Callable[[Any], bool], str]:
    if none is None:
        return ok, allowed
    return (lambda v: v is None or ok(v)), f"None ({none}) or {allowed}"


def integer(default: Any, low: int, high: int, doc: str = "", *, none: str | None = None, fix: str = "") -> Option:
    """An int in ``[low, high]`` (``none``: ``None`` is allowed too, meaning that)."""

    def ok(v: Any) -> bool:
        return is_int(v) and low <= v <= high

    words = f"an int in [{low}, {high}]" + (f" ({doc})" if doc else "")
    test, allowed = _nullable(ok, words, none)
    return Option(default, test, allowed, "int", low, high, nullable=none is not None, fix=fix, doc=doc)


def number(default: Any, low: float, high: float, doc: str = "", *, open_low: bool = False,
           open_high: bool = False, none: str | None = None, fix: str = "") -> Option:
    """A finite number in ``[low, high]`` (``open_low``/``open_high``: that end excluded)."""

    def ok(v: Any) -> bool:
        if not is_number(v):
            return False
        above = v > low if open_low else v >= low
        below = v < high if open_high else v <= high
        return above and below

    words = f"a finite number in {_interval(low, high, open_low, open_high)}" + (f" ({doc})" if doc else "")
    test, allowed = _nullable(ok, words, none)
    return Option(default, test, allowed, "float", low, high, open_low, open_high, none is not None, fix=fix, doc=doc)


def choice(default: Any, choices: Sequence[Any], doc: str = "", *, none: str | None = None) -> Option:
    """One of ``choices`` (compared by equality and type, so ``True`` is not ``1``)."""
    options = tuple(choices)

    def ok(v: Any) -> bool:
        return any(type(v) is type(c) and v == c for c in options)

    words = f"one of {options}" + (f" ({doc})" if doc else "")
    test, allowed = _nullable(ok, words, none)
    return Option(default, test, allowed, "choice", nullable=none is not None, choices=options, doc=doc)


def flag(default: bool, doc: str = "") -> Option:
    """``True`` or ``False``."""
    return Option(default, lambda v: isinstance(v, bool), "True or False" + (f" ({doc})" if doc else ""), "bool",
                  doc=doc)


def seed(default: int = 0, doc: str = "") -> Option:
    """A seed: an int in ``[0, SEED_MAX]`` (what ``torch.Generator.manual_seed`` takes)."""
    spec = integer(default, 0, SEED_MAX)
    return replace(spec, allowed="an int in [0, 2**63 - 1]" + (f" ({doc})" if doc else ""), doc=doc)


def custom(default: Any, ok: Callable[[Any], bool], allowed: str, *, fix: str = "") -> Option:
    """Any other rule: a test and the allowed values in words (a container's length must be bounded in ``ok``)."""
    return Option(default, ok, allowed, fix=fix)


def check_options(given: Any, spec: Mapping[str, Option], name: str, *, owner: str = "ExplanationMonitor"
                  ) -> dict[str, Any]:
    """Validate a group of options (``None`` or a mapping) against ``spec``; return it with defaults filled in.

    Unknown keys are refused with the list of known ones, so a typo never silently falls back to a default. The
    message names the option as the user wrote it (``name['key']``), its value, what is allowed and the fix.
    """
    if given is None:
        given = {}
    check(isinstance(given, Mapping), name or "options", given, f"None or a dict with keys from {sorted(spec)}",
          owner=owner, error=TypeError)
    unknown = [k for k in given if k not in spec]
    if unknown:
        where = f"`{name}`" if name else owner
        raise ValueError(f"{owner}: `{path(name, str(unknown[0]))}={_show(given[unknown[0]])}`: no such option; "
                         f"{where} takes {sorted(spec)}.")
    out = {}
    for key, option in spec.items():
        value = given.get(key, option.default)
        try:
            ok = bool(option.ok(value))
        except Exception:  # a rule that cannot even look at the value refuses it
            ok = False
        check(ok, path(name, key), value, option.allowed, owner=owner, fix=option.fix)
        out[key] = value
    return out
