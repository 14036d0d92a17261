"""Every option of every group has a spec (type, bounds, default, meaning) and is refused in ``__init__`` by the one
checker with one message format naming the option as written (issue 20, items 2 and 7).

The fuzz is generated from the specs themselves, so an option added to any group (a new ``drift`` key, a view
option, a method's option) is fuzzed without touching this file.
"""

from __future__ import annotations

import inspect
import math
import re

import pytest
import torch

from lightning_xai import ExplanationMonitor
from lightning_xai._validation import SEED_MAX, Option, check_options, integer, path
from lightning_xai.attribution import available_methods, get_method
from lightning_xai.callbacks._config import _DISPLAY, _PROBE_OPTIONS, _TOP, DRIFT_OPTIONS, method_option_spec
from lightning_xai.drift import DriftDetector
from lightning_xai.metrics.registry import available_measures, get_measure
from lightning_xai.views import END_OF_FIT, VIEWS, view_option_spec

NAN, INF = float("nan"), float("inf")


def _groups():
    """``(path of the group, its spec, kwargs of the monitor with the group's options set to o)``."""
    yield "", _TOP, lambda o: o
    for m in available_methods():
        spec = method_option_spec(m) or get_method(m).options
        yield path("method_options", m), spec, lambda o, m=m: {"methods": (m,), "method_options": {m: o}}
    for name in available_measures():
        if get_measure(name).options:
            yield path("metric_options", name), get_measure(name).options, lambda o, n=name: {"metric_options": {n: o}}
    yield "drift", DRIFT_OPTIONS, lambda o: {"drift": o}
    yield "display", _DISPLAY, lambda o: {"display": o}
    yield "probe_options", _PROBE_OPTIONS, lambda o: {"probe_options": o}
    for view in (*VIEWS, *END_OF_FIT):
        yield path("view_options", view), view_option_spec(view), lambda o, v=view: {"views": (v,),
                                                                                     "view_options": {v: o}}
    yield path("view_options", "pool"), view_option_spec("pool"), lambda o: {"views": ("max_min",),
                                                                              "view_options": {"pool": o}}


# Options whose rule is not a plain type and bounds: their wrong values, by option path.
_OTHER = {
    "target": ["lbl", -1, 2**31, 1.5, None, True],
    "layer": ["", 5, "x" * 1001],
    "on_drift": [5, "print"],
    "output_transform": [5, "out[0]"],
    "display['mean']": [[NAN] * 3, ["a"], [0.5] * 65, [], 5, [1e7]],
    "display['std']": [[0.0] * 3, [-1.0] * 3, [INF] * 3, "0.2"],
    "display['class_names']": [5, [1, 2], ["x" * 1001], "cats"],
    "probe_options['input_key']": [1.5, 2**40, "k" * 1001, [0]],
    "view_options['max_min']['units']": [[-1], ["a"], "01", list(range(65)), [2**31], [True]],
    "drift['pool_size']": ["x", -1, 1025, 2.5, None, True, NAN],
    "drift['statistics']": ["lag", [], ["nope"], ["lag", "lag"], 5],
}


def _bad_values(option_path: str, spec: Option) -> list:
    if option_path in _OTHER:
        return _OTHER[option_path]
    none = [] if spec.nullable else [None]
    if spec.kind == "int":
        huge = [spec.high + 1, 10**30] if spec.high is not None and spec.high < 10**30 else []
        return ["3", 2.5, True, NAN, INF, *none, spec.low - 1, *huge]
    if spec.kind == "float":
        below = spec.low if spec.open_low else spec.low - max(1.0, abs(spec.low))
        above = [] if spec.high is None else [spec.high if spec.open_high else spec.high + max(1.0, abs(spec.high)),
                                              1e308]
        return ["0.5", True, NAN, INF, -INF, *none, below, *above]
    if spec.kind == "choice":
        return ["no-such-choice", 3.5, *none]
    if spec.kind == "bool":
        return ["yes", 1, None]
    return [object()]  # a registry rule (a layer, a window, a baseline...): nothing it accepts


CASES = [(f"{root}[{key!r}]" if root else key, root, key, spec, build)
         for root, spec_group, build in _groups() for key, spec in spec_group.items()]


def test_the_fuzz_covers_every_group_and_many_options():
    roots = {root for _, root, *_ in CASES}
    assert {"", "drift", "display", "probe_options", "method_options['integrated_gradients']",
            "metric_options['faithfulness']", "view_options['attention_graphs']", "view_options['pool']"} <= roots
    assert len(CASES) > 60
    # every size-like option (an int: steps, samples, probes, sizes) is bounded above: a size without an upper bound
    # is a denial of service; the monitor's own floats are bounded too
    unbounded = [path for path, root, _, spec, _ in CASES if spec.high is None and (
        spec.kind == "int" or (spec.kind == "float" and not root.startswith("method_options")))]
    assert not unbounded, unbounded
    assert sum(spec.kind == "int" for _, root, _, spec, _ in CASES if root.startswith("method_options['igos'")) == 4


@pytest.mark.parametrize("option_path, root, key, spec, build", CASES, ids=[c[0] for c in CASES])
def test_every_bad_value_of_every_option_is_refused_in_init_naming_it(option_path, root, key, spec, build):
    ExplanationMonitor(**build({key: spec.default} if root else {}))  # the default is valid
    for value in _bad_values(option_path, spec):
        kwargs = build({key: value}) if root else {key: value}
        with pytest.raises((ValueError, TypeError)) as info:
            ExplanationMonitor(**kwargs)
        message = str(info.value)
        assert message.startswith("ExplanationMonitor: "), message
        assert f"`{option_path}=" in message, (value, message)
        assert ": must be " in message, message


@pytest.mark.parametrize("root, build", [(root, build) for root, _, build in _groups() if root],
                         ids=[root for root, _, _ in _groups() if root])
def test_a_wrong_key_in_any_group_is_refused_naming_it(root, build):
    with pytest.raises(ValueError, match=re.escape(f"`{root}['no_such_option']=1`: no such option")):
        ExplanationMonitor(**build({"no_such_option": 1}))


@pytest.mark.parametrize("group", ["method_options", "metric_options", "drift", "display", "probe_options",
                                   "view_options"])
@pytest.mark.parametrize("value", [5, "a", [("a", 1)], 1.5])
def test_a_group_of_the_wrong_type_is_refused_naming_it(group, value):
    with pytest.raises((TypeError, ValueError), match=f"`{group}="):
        ExplanationMonitor(**{group: value})


@pytest.mark.parametrize("kwargs, match", [
    ({"method_options": {"integrated_gradients": {"n_steps": 10**9, "max_steps": 10**9}}},
     r"`method_options\['integrated_gradients'\]\['n_steps'\]=1000000000`: must be an int in \[2, 4096\]"),
    ({"drift": {"size": 10**5}}, r"`drift\['size'\]=100000`: must be an int in \[2, 128\]"),
    ({"metric_options": {"faithfulness": {"steps": 10**6}}},
     r"`metric_options\['faithfulness'\]\['steps'\]=1000000`: must be an int in \[1, 256\]"),
    ({"probe_options": {"seed": 2**70}}, r"`probe_options\['seed'\]=1180591620717411303424`: must be an int in "
                                          r"\[0, 2\*\*63 - 1\]"),
    ({"views": ("attention_graphs",), "view_options": {"attention_graphs": {"num_probes": 0}}},
     r"`view_options\['attention_graphs'\]\['num_probes'\]=0`"),
    ({"views": ("attention_graphs",), "view_options": {"attention_graphs": {"beam": -1}}},
     r"`view_options\['attention_graphs'\]\['beam'\]=-1`"),
    ({"views": ("attention_graphs",), "view_options": {"attention_graphs": {"grid": NAN}}},
     r"`view_options\['attention_graphs'\]\['grid'\]=nan`"),
    ({"views": ("attention_graphs",), "view_options": {"attention_graphs": {"grid": 2, "max_patches": 5}}},
     r"`view_options\['attention_graphs'\]\['max_patches'\]=5`: must be an int in \[1, grid\*\*2 = 4\]"),
    ({"views": ("activation_max",), "view_options": {"activation_max": {"seed": "x"}}},
     r"`view_options\['activation_max'\]\['seed'\]='x'`"),
    ({"drift": {"sigmas": 2.0}}, r"`drift\['sigmas'\]=2.0`: no such option; `drift` takes \["),
    ({"methods": ("occlusion",), "method_options": {"occlusion": {"window": 10**6}}},
     r"`method_options\['occlusion'\]\['window'\]=1000000`"),
    ({"methods": ("lime",), "method_options": {"lime": {"n_samples": 10**9}}},
     r"`method_options\['lime'\]\['n_samples'\]=1000000000`: must be an int in \[2, 8192\]"),
])
def test_the_reported_cases_are_refused_in_init(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ExplanationMonitor(**kwargs)


def test_the_largest_seed_works_with_torch_generators():
    torch.Generator().manual_seed(SEED_MAX)  # what every seeded part uses
    monitor = ExplanationMonitor(probe_options={"seed": SEED_MAX}, views=("activation_max",),
                                 view_options={"activation_max": {"seed": SEED_MAX}})
    assert monitor.probe_options["seed"] == SEED_MAX


def test_one_message_format():
    spec = {"n": integer(4, 1, 8, "things", fix="lower it")}
    with pytest.raises(ValueError) as info:
        check_options({"n": 9}, spec, "group", owner="Owner")
    assert str(info.value) == "Owner: `group['n']=9`: must be an int in [1, 8] (things); lower it."
    with pytest.raises(ValueError) as info:
        check_options({"m": 1}, spec, "group", owner="Owner")
    assert str(info.value) == "Owner: `group['m']=1`: no such option; `group` takes ['n']."
    with pytest.raises(ValueError, match=r"^ExplanationMonitor: `n=10{40}`: must be"):
        check_options({"n": 10**40}, spec, "")


# ------------------------------------------------------------------------------------------ the drift group
def test_every_drift_detector_keyword_has_a_spec_with_its_default():
    # read from the detector, not listed here: a keyword added to DriftDetector without a spec line fails this
    keywords = {name: p.default for name, p in inspect.signature(DriftDetector.__init__).parameters.items()
                if name != "self"}
    missing = sorted(set(keywords) - set(DRIFT_OPTIONS))
    assert not missing, f"add a line for {missing} to _DRIFT in lightning_xai/callbacks/_config.py"
    for name, default in keywords.items():
        if name not in ("size", "topk"):  # the monitor's own defaults for these two
            assert DRIFT_OPTIONS[name].default == default, name
        assert DRIFT_OPTIONS[name].ok(default), name


def test_drift_keys_named_in_the_docstring_are_the_accepted_ones():
    doc = inspect.getdoc(ExplanationMonitor)
    paragraph = re.search(r"\n\s+drift(?:_options)?: (.*?)\n\s+display(?:_options)?: ", doc, re.S).group(1)
    named = set(re.findall(r"``(\w+)``", paragraph))
    assert named == set(DRIFT_OPTIONS), (named ^ set(DRIFT_OPTIONS))
    for key in named:  # every documented key is accepted (with its default)
        ExplanationMonitor(drift={key: DRIFT_OPTIONS[key].default})


def test_detector_options_pass_to_the_detector_only_when_given():
    monitor = ExplanationMonitor(drift={"window": 4, "size": 8})
    assert monitor.config.detector_options == {"window": 4}
    assert monitor.drift_detector.window == 4 and monitor.config.size == 8


def test_numbers_too_large_for_a_float_are_no_numbers():
    from lightning_xai._validation import is_number

    assert not is_number(10**400) and not math.isnan(1.0) and is_number(10**300)
