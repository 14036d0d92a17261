"""One source per option: docs/options.md is generated from the specs, and Integrated Gradients' defaults (explain's
and the monitor's) come from its own file."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from lightning_xai import ExplanationMonitor
from lightning_xai.attribution import explain, explain_detailed, get_method, integrated_gradients
from lightning_xai.attribution.methods import integrated_gradients as ig
from lightning_xai.callbacks._options_table import options_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "options.md"


def test_docs_table_is_generated_from_the_specs():
    assert DOC.read_text() == options_markdown(), "docs/options.md is out of date: run `python tools/options_table.py`"


@pytest.mark.parametrize("function", [explain, explain_detailed, integrated_gradients])
def test_functional_defaults_are_the_method_spec(function):
    parameters = inspect.signature(function).parameters
    spec = get_method("integrated_gradients").options
    for name in ("n_steps", "tolerance", "max_steps"):
        assert parameters[name].default == spec[name].default == ig.DEFAULTS[name], (function.__name__, name)


def test_monitor_defaults_are_the_monitor_profile_of_the_same_spec():
    options = ExplanationMonitor().method_options["integrated_gradients"]
    assert {k: options[k] for k in ig.MONITOR_DEFAULTS} == ig.MONITOR_DEFAULTS
    for name in ("n_steps", "max_steps"):  # same meaning and upper bound in both profiles
        monitor, method = ig.monitor_options(8192)[name], get_method("integrated_gradients").options[name]
        assert monitor.doc == method.doc == ig.DOCS[name] and monitor.high == method.high == ig.MAX_STEPS
