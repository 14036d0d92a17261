"""lightning_xai.keys (every logged tag in one place) and callbacks/_tags.py (a second monitor's suffix)."""

from __future__ import annotations

import ast
import doctest
from pathlib import Path

import torch

import lightning_xai.keys as keys
from lightning_xai.callbacks._tags import SuffixedSink, TagNames
from lightning_xai.drift import DriftDetector
from lightning_xai.metrics.registry import available_measures, get_measure
from lightning_xai.report.layout import chart_of
from lightning_xai.writers import FileSink

ROOT = Path(__file__).resolve().parents[1] / "lightning_xai"


def test_doctests():
    result = doctest.testmod(keys)
    assert result.attempted > 0 and result.failed == 0


def test_no_tag_literal_outside_the_keys_module():
    """A tag is built with lightning_xai.keys, never spelt out (docstrings and messages may quote them). The drift
    detector (lightning_xai/drift/) names its own keys; test_drift_keys_match checks them against this module."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.name == "keys.py" or "drift" in path.relative_to(ROOT).parts:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and node.value.startswith(keys.PREFIX) and " " not in node.value):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not found, found


def test_drift_keys_match():
    methods = ("grad_cam", "saliency")
    per_method = {keys.stability, keys.topk_overlap, keys.flagged, keys.degenerate, keys.drift_evidence,
                  lambda m: keys.of(m, keys.SHIFT), lambda m: keys.of(m, keys.MASS_CHANGE)}
    known = {make(m) for make in per_method for m in methods} | {keys.DRIFT_ALARM, keys.DRIFT_ACTIVE, keys.DRIFT_SCORE}
    drift = DriftDetector.keys(methods)
    assert drift <= known
    assert {keys.stability("grad_cam"), keys.flagged("saliency"), keys.DRIFT_ALARM} <= drift


def test_measure_keys_are_charted():
    methods = ("grad_cam", "saliency", "integrated_gradients")
    for name in available_measures():
        for key in get_measure(name).keys(methods):
            assert keys.is_xai(key), (name, key)
            chart = chart_of(key)
            assert chart is None or not chart.startswith("other:"), (name, key, chart)


def test_tag_names_alone_and_with_several_monitors():
    names = TagNames()
    names.assign(0, {"xai/a/stability"}, [])
    assert (names.tag(keys.DRIFT_TEXT), names.scalar("xai/a/stability")) == ("xai/drift", "xai/a/stability")
    names.assign(1, {"xai/a/stability"}, [{"xai/b/stability"}])  # no shared scalar: only text and images
    assert names.tag(keys.timeline("a")) == "xai/a/timeline/monitor_1"
    assert names.scalar("xai/a/stability") == "xai/a/stability"
    names.assign(1, {"xai/a/stability"}, [{"xai/a/stability"}])
    assert names.scalars({"xai/a/stability": 1.0}) == {"xai/a/stability/monitor_1": 1.0}


def test_suffixed_sink_names_every_item(tmp_path):
    names = TagNames()
    sink = FileSink(str(tmp_path))
    assert names.sink(sink) is sink  # alone: the sink itself
    names.assign(2, set(), [set(), set()])
    wrapped = names.sink(sink)
    assert isinstance(wrapped, SuffixedSink) and wrapped.supports_images == sink.supports_images
    wrapped.add_image("xai/max_min/grid", torch.zeros(3, 4, 4, dtype=torch.uint8), step=1)
    wrapped.add_scalars({"xai/max_min/change": 0.5}, step=1)
    wrapped.add_text("xai/dissection/top_units", "| unit |", step=1)
    wrapped.flush()
    written = "\n".join(str(p.relative_to(tmp_path)) + p.read_text(errors="ignore") if p.suffix != ".png"
                        else str(p.name) for p in tmp_path.rglob("*") if p.is_file())
    assert "monitor_2" in written and "xai/max_min/change/monitor_2" in written
