"""The monitor's options as Markdown tables, generated from the option specs (``docs/options.md``; a test checks the
file against this, so the documentation cannot drift from what ``__init__`` accepts)."""

from __future__ import annotations

from collections.abc import Mapping

from lightning_xai._validation import Option
from lightning_xai.attribution import get_method
from lightning_xai.callbacks._config import (
    _DISPLAY,
    _PROBE_OPTIONS,
    _SEGMENTATION,
    _TOP,
    DRIFT_OPTIONS,
    method_option_spec,
)
from lightning_xai.metrics.registry import available_measures, get_measure
from lightning_xai.views import VIEWS, view_option_spec

__all__ = ["options_markdown"]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(value: object) -> str:
    return "`None`" if value is None else f"`{value!r}`" if not callable(value) else "(a function)"


def _table(title: str, spec: Mapping[str, Option], *, extra: Mapping[str, object] | None = None,
           extra_title: str = "") -> list[str]:
    head = "| option | default |" + (f" {extra_title} |" if extra is not None else "") + " allowed |"
    lines = [f"### {title}", "", head, "|---|---|" + ("---|" if extra is not None else "") + "---|"]
    for name, option in spec.items():
        column = f" {_default(extra.get(name))} |" if extra is not None else ""
        lines.append(f"| `{name}` | {_default(option.default)} |{column} {_cell(option.allowed)} |")
    return [*lines, ""]


def options_markdown() -> str:
    """Every option of ``ExplanationMonitor``: name, default, what is allowed (bounds, meaning), per group."""
    ig = method_option_spec("integrated_gradients")
    explain_ig = {k: o.default for k, o in get_method("integrated_gradients").options.items()}
    out = ["# ExplanationMonitor options", "",
           "Generated from the option specs by `python tools/options_table.py` (checked by `tests/test_options_doc.py`)."
           " Every message for a bad value names the option as written here, its value, what is allowed and the fix.",
           ""]
    out += _table("Top level", _TOP)
    out += _table("method_options['integrated_gradients']", ig, extra=explain_ig,
                  extra_title="`explain` default")
    for name in available_measures():
        spec = get_measure(name).options
        if spec:
            out += _table(f"metric_options['{name}']", spec)
    out += _table("drift", DRIFT_OPTIONS)
    out += _table("display", _DISPLAY)
    out += _table("probe_options", _PROBE_OPTIONS)
    out += _table("segmentation", _SEGMENTATION)
    for name in ("pool", *VIEWS):
        spec = view_option_spec(name)
        if spec:
            out += _table(f"view_options['{name}']", spec)
    return "\n".join(out).rstrip("\n") + "\n"
