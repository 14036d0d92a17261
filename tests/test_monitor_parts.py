"""The monitor's collaborators without a Trainer: argument checks, measure registry, drift tracker, explanation
round, probe setup and reporting helpers."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import pytest
import torch
from lit_models import NUM_CLASSES, TinyCNN, make_images
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_xai._validation import Option, check, check_options, is_int, is_number
from lightning_xai.attribution import METHODS, explain, to_heatmap
from lightning_xai.callbacks._config import build_config, explain_options, known_methods
from lightning_xai.callbacks._probes import ProbeSetup, check_monitors
from lightning_xai.callbacks._reporter import Reporter, captions, drift_text
from lightning_xai.callbacks._round import DistributedRound, ProbeExplainer
from lightning_xai.callbacks._tracker import DriftTracker
from lightning_xai.metrics.registry import (
    Measure,
    MeasureContext,
    MeasureResult,
    active_measures,
    available_measures,
    get_measure,
    measure_keys,
    register_measure,
    run_measures,
)
from lightning_xai.probes import ProbeSet, select_probes
from lightning_xai.render import WARN_COLOR
from lightning_xai.writers import FileWriter

ARGS = dict(probes=None, num_probes=6, methods=METHODS, every_n_epochs=1, target="label", layer=None,
            metrics=("localisation", "agreement", "sanity"), log_images=True, views=(), on_drift=None,
            on_error="warn", max_overhead=None, output_transform=None, method_options=None, metric_options=None,
            drift=None, display=None, probe_options=None)


def config(**overrides):
    return build_config(**{**ARGS, **overrides})


# ------------------------------------------------------------------------------------------------- validation
def test_one_definition_of_int_and_number():
    assert is_int(3) and not is_int(True) and not is_int(3.0)
    assert is_number(0.5) and not is_number(float("nan")) and not is_number(False) and not is_number("1")
    with pytest.raises(ValueError, match=r"^Owner: `x=0`: must be an int >= 1\.$"):
        check(False, "x", 0, "an int >= 1", owner="Owner")


def test_check_options_fills_defaults_and_names_the_path():
    spec = {"steps": Option(8, lambda v: is_int(v) and v >= 1, "an int >= 1")}
    assert check_options(None, spec, "opts") == {"steps": 8}
    assert check_options({"steps": 3}, spec, "opts") == {"steps": 3}
    with pytest.raises(ValueError, match=r"`opts\['steps'\]=0`"):
        check_options({"steps": 0}, spec, "opts")
    with pytest.raises(ValueError, match=r"`opts\['stpes'\]=3`.*\['steps'\]"):
        check_options({"stpes": 3}, spec, "opts")
    with pytest.raises(TypeError, match="opts"):
        check_options(5, spec, "opts")


# ------------------------------------------------------------------------------------------------- config
def test_config_defaults_and_grouped_options():
    c = config()
    assert c.methods == METHODS and set(METHODS) <= set(known_methods())
    ig = c.method_options["integrated_gradients"]
    assert ig == {"n_steps": 16, "tolerance": 0.02, "max_steps": 128, "baseline": None, "internal_batch_size": None}
    assert c.metric_options["faithfulness"] == {"steps": 8, "perturbation": "blur"}
    assert c.metric_options["sanity"] == {"layers": None, "threshold": 0.5}
    assert c.drift["size"] == 16 and c.drift["topk"] == 0.1 and c.detector_options == {}
    assert c.display["colormap"] == "jet" and c.probe_options["seed"] == 0


def test_config_messages_name_the_argument_as_written():
    with pytest.raises(ValueError, match=r"method_options\['integrated_gradients'\]\['n_steps'\]=1"):
        config(method_options={"integrated_gradients": {"n_steps": 1}})
    with pytest.raises(ValueError, match=r"method_options\['integrated_gradients'\]\['max_steps'\]=8.*>= n_steps \(16\)"):
        config(method_options={"integrated_gradients": {"max_steps": 8}})
    with pytest.raises(ValueError, match=r"`drift\['window'\]=0`: must be an int in \[2, 1000\]"):
        config(drift={"window": 0})
    with pytest.raises(ValueError, match=r"drift\['size'\]=1"):
        config(drift={"size": 1})
    with pytest.raises(ValueError, match=r"display\['std'\]"):
        config(display={"mean": [0.5, 0.5], "std": [0.2]})
    with pytest.raises(ValueError, match=r"metric_options\['agreement'\]"):
        config(metric_options={"agreement": {"size": 3}})  # agreement takes no options


def test_list_probes_become_a_tuple_and_bad_shapes_fail():
    images, labels = make_images(4, seed=0)
    assert isinstance(config(probes=[images, labels]).probes, tuple)
    with pytest.raises(ValueError, match="probes"):
        config(probes=[images])


def test_explain_options_map_method_options_to_explain_arguments():
    c = config(method_options={"integrated_gradients": {"n_steps": 8, "tolerance": None, "baseline": 0.5}})
    images = torch.zeros(2, 3, 4, 4)
    options = explain_options(c, images, "features", train_batch_size=32)
    assert options["n_steps"] == 8 and "tolerance" not in options and options["internal_batch_size"] == 32
    assert options["layer"] == "features" and torch.equal(options["baseline"], torch.full_like(images, 0.5))
    options = explain_options(config(methods=("saliency",)), images, None, train_batch_size=None)
    assert "layer" not in options and "n_steps" not in options


# ------------------------------------------------------------------------------------------------- measure registry
def _context(maps, masks=None, extras=None, methods=None):
    n = next(iter(maps.values())).shape[0]
    return MeasureContext(methods=tuple(methods or maps), maps=maps, pred=torch.zeros(n, dtype=torch.long),
                          target=torch.zeros(n, dtype=torch.long), masks=masks, extras=extras or {}, size=4)


def test_registry_lists_the_built_in_measures_and_their_keys():
    assert set(available_measures(selectable=True)) == {"agreement", "localisation", "faithfulness", "sanity"}
    assert "completeness" in available_measures() and "completeness" not in available_measures(selectable=True)
    keys = measure_keys(("agreement",), ("grad_cam", "saliency", "integrated_gradients"))
    assert "xai/agreement/grad_cam_vs_saliency" in keys
    assert "xai/integrated_gradients/completeness_error_p90" in keys  # always on with IG
    assert "xai/grad_cam/pointing_game" not in keys  # localisation not selected
    assert [m.name for m in active_measures(("sanity",), stage="sanity")] == ["sanity"]


def test_every_built_in_measure_logs_only_its_declared_keys_and_no_nan():
    g = torch.Generator().manual_seed(0)
    maps = {"grad_cam": torch.rand(4, 1, 8, 8, generator=g), "saliency": torch.rand(4, 1, 8, 8, generator=g)}
    maps["saliency"][1] = float("nan")
    masks = torch.zeros(4, 1, 8, 8)
    masks[..., :4, :4] = 1
    extras = {"ig_error": torch.tensor([0.01, float("nan"), 0.03, 0.02]),
              **{f"{c}/{m}": torch.rand(4, generator=g) for m in maps for c in ("deletion", "insertion")},
              **{f"random/{m}": torch.rand(4, 1, 8, 8, generator=g) for m in maps}}
    methods = ("grad_cam", "saliency")
    for name in available_measures():
        measure = get_measure(name)
        result = run_measures([measure], _context(maps, masks, extras, methods), {name: {}})
        declared = measure.keys(methods + ("integrated_gradients",))
        assert set(result.scalars) <= declared, (name, set(result.scalars) - declared)
        assert all(math.isfinite(v) for v in result.scalars.values()), name
    ig = run_measures([get_measure("completeness")], _context(maps, extras=extras), {}).scalars
    assert ig["xai/integrated_gradients/completeness_error"] == pytest.approx(0.02)


def test_agreement_and_localisation_values():
    a = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    same = run_measures([get_measure("agreement")], _context({"x": a, "y": a.clone()}), {}).scalars
    assert same["xai/agreement/x_vs_y"] == pytest.approx(1.0)
    heat = torch.zeros(2, 1, 8, 8)
    heat[0, 0, 1, 1] = 1.0  # inside the mask
    heat[1, 0, 6, 6] = 1.0  # outside
    masks = torch.zeros(2, 1, 8, 8)
    masks[..., :4, :4] = 1
    loc = run_measures([get_measure("localisation")], _context({"x": heat}, masks), {}).scalars
    assert loc["xai/x/pointing_game"] == pytest.approx(0.5) and loc["xai/x/relevance_mass"] == pytest.approx(0.5)
    assert run_measures([get_measure("localisation")], _context({"x": heat}), {}).scalars == {}  # no masks


def test_a_new_measure_is_one_function_and_one_registration():
    def peak(ctx: MeasureContext) -> MeasureResult:
        return MeasureResult(scalars={f"xai/{m}/peak": float(ctx.maps[m].amax(dim=(1, 2, 3)).mean())
                                      for m in ctx.methods})

    measure = register_measure(Measure("test_peak", lambda methods: {f"xai/{m}/peak" for m in methods}, peak))
    try:
        assert "test_peak" in available_measures(selectable=True)
        assert "xai/grad_cam/peak" in measure_keys(("test_peak",), ("grad_cam",))
        maps = {"grad_cam": torch.ones(2, 1, 4, 4)}
        assert run_measures(active_measures(("test_peak",)), _context(maps), {}).scalars["xai/grad_cam/peak"] == 1.0
        with pytest.raises(ValueError, match="already registered"):
            register_measure(Measure("test_peak", measure.keys, peak))
    finally:
        from lightning_xai.metrics import registry

        registry._REGISTRY.pop("test_peak")


# ------------------------------------------------------------------------------------------------- drift tracker
def test_tracker_reference_stability_and_state_round_trip():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(5, 1, 16, 16, generator=g)
    results = {"map/grad_cam": maps, "pred": torch.zeros(5, dtype=torch.long)}
    tracker = DriftTracker(("grad_cam",), size=8, detector_options={"warmup_epochs": 0}, topk=0.1)
    assert not tracker.has_reference
    tracker.take_reference(0, results)
    for epoch in range(3):  # unchanged maps: the noise floor is "no change at all"
        scalars, report, record = tracker.update(epoch, 4 * epoch, results)
        assert scalars["xai/grad_cam/stability"] == pytest.approx(1.0) and scalars["xai/grad_cam/drift"] == 0.0
        assert not report.alarm and record["epoch"] == epoch and len(record["stability"]["grad_cam"]) == 5
    assert {"xai/grad_cam/stability", "xai/grad_cam/topk_overlap", "xai/grad_cam/drift", "xai/drift/alarm"} <= \
        tracker.keys()

    buffer = io.BytesIO()
    torch.save(tracker.state_dict(), buffer)
    buffer.seek(0)
    restored = DriftTracker(("grad_cam",), size=8, detector_options={"warmup_epochs": 0}, topk=0.1)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    moved = {"map/grad_cam": maps.flip(-1), "pred": torch.ones(5, dtype=torch.long)}
    expected = tracker.update(3, 12, moved)
    again = restored.update(3, 12, moved)
    assert expected[0] == again[0] and expected[2] == again[2]
    assert again[1].alarm and "explanation drift at epoch 3" in again[1].headline()


def test_non_finite_maps_never_become_the_reference():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 1, 16, 16, generator=g)
    tracker = DriftTracker(("saliency",), size=8, detector_options={}, topk=0.1)
    tracker.take_reference(0, {"map/saliency": maps, "pred": torch.zeros(3, dtype=torch.long)})
    broken = maps.clone()
    broken[1] = float("nan")
    scalars, _, record = tracker.update(0, 1, {"map/saliency": broken, "pred": torch.zeros(3, dtype=torch.long)})
    assert math.isnan(record["stability"]["saliency"][1]) and math.isfinite(scalars["xai/saliency/stability"])
    _, _, record = tracker.update(1, 2, {"map/saliency": maps, "pred": torch.zeros(3, dtype=torch.long)})
    assert record["stability"]["saliency"] == pytest.approx([1.0, 1.0, 1.0])  # compared with the last finite map


# ------------------------------------------------------------------------------------------------- the round
class OneRank:
    """What the round needs of a Trainer, for one process."""

    world_size, global_rank, current_epoch = 1, 0, 2

    def __init__(self):
        self.strategy = SimpleNamespace(reduce_boolean_decision=lambda ok, all=True: ok,
                                        broadcast=lambda obj, src=0: obj)


def _model():
    torch.manual_seed(0)
    return TinyCNN().eval()


def test_round_explains_like_explain_and_empty_shards_have_the_same_keys():
    images, labels = make_images(5, seed=2)
    probes = select_probes((images, labels), 5)
    c = config(method_options={"integrated_gradients": {"n_steps": 4, "tolerance": None}},
               metrics=("faithfulness",), metric_options={"faithfulness": {"steps": 2}})
    explainer = ProbeExplainer(c, layer_name="features")
    model = _model()
    measures = [m for m in active_measures(c.metrics) if m.shard is not None]
    results = DistributedRound("warn").explain(OneRank(), model, probes, explainer, measures=measures)
    expected = explain(model, probes.images, probes.labels, METHODS, layer="features", n_steps=4)
    for m in METHODS:
        assert torch.allclose(results[f"map/{m}"], to_heatmap(expected[m]), atol=1e-6)
    assert results["deletion/grad_cam"].shape == (5,) and results["ig_error"].shape == (5,)
    assert set(explainer.empty(probes, measures)) == set(results)


def test_round_failure_warns_or_raises_on_every_rank():
    calls = []
    warn_round = DistributedRound("warn", warn=calls.append)
    ok, value = warn_round.agreed(OneRank(), lambda: 1 / 0, what="explaining")
    assert not ok and value is None
    assert "failed at epoch 2 (explaining) on rank 0: ZeroDivisionError" in calls[0]
    with pytest.raises(RuntimeError, match="ExplanationMonitor failed at epoch 2"):
        DistributedRound("raise").agreed(OneRank(), lambda: 1 / 0)
    assert DistributedRound("raise").agreed(OneRank(), lambda: 7) == (True, 7)


def test_targets_rule():
    images, labels = make_images(3, seed=2)
    model = _model()
    explainer = ProbeExplainer(config(target=1))
    assert explainer.targets(model, images, labels).tolist() == [1, 1, 1]
    unknown = torch.tensor([0, -1, 2])
    with torch.no_grad():
        pred = model(images).argmax(1)
    targets = ProbeExplainer(config()).targets(model, images, unknown)
    assert targets.tolist() == [0, int(pred[1]), 2]


# ------------------------------------------------------------------------------------------------- probe setup
def test_probe_setup_selects_validates_and_names_the_layer():
    images, labels = make_images(12, seed=1)
    setup = ProbeSetup(config(probes=(images, labels)))
    setup.select(config().probes or (images, labels))
    setup.validate(_model())
    assert len(setup.probe_set) == 6 and setup.layer_name in ("features", "features.5")
    bad = ProbeSetup(config(target=NUM_CLASSES))
    bad.select((images, labels))
    with pytest.raises(MisconfigurationException, match=f"target={NUM_CLASSES}"):
        bad.validate(_model())
    tuple_model = ProbeSetup(config())
    tuple_model.select((images, labels))
    with pytest.raises(MisconfigurationException, match="output_transform"):
        tuple_model.validate(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3), nn.Unflatten(1, (1, 3))))


def test_check_monitors_uses_the_declared_keys():
    keys = {"xai/grad_cam/stability"}
    check_monitors([EarlyStopping(monitor="xai/grad_cam/stability")], keys, every_n_epochs=1)
    with pytest.raises(MisconfigurationException, match="Available"):
        check_monitors([EarlyStopping(monitor="xai/gradcam/stability")], keys, every_n_epochs=1)
    with pytest.raises(MisconfigurationException, match="strict=False"):
        check_monitors([EarlyStopping(monitor="xai/grad_cam/stability")], keys, every_n_epochs=2)


# ------------------------------------------------------------------------------------------------- reporting
def test_reporting_helpers(tmp_path):
    text = drift_text(3, 12, ("grad_cam",), {"xai/grad_cam/stability": 0.91234, "xai/grad_cam/drift": 2.0}, "details")
    assert "**epoch 3, step 12**" in text and "| grad_cam | 0.912 | n/a | 2 |" in text and text.endswith("details")
    probes = ProbeSet(images=torch.zeros(2, 3, 4, 4), labels=torch.tensor([0, -1]), ids=torch.tensor([0, 1]))
    lines = captions(probes, torch.tensor([1, 0]), torch.tensor([0.5, 0.25]), ["cat", "dog"])
    # the probe's id and true label; the prediction, in the warning colour when wrong (an unknown label is wrong)
    assert lines == [["#0 cat", ("p=dog .50", WARN_COLOR)], ["#1 ?", ("p=cat .25", WARN_COLOR)]]
    right = captions(select_probes((torch.zeros(1, 3, 4, 4), torch.tensor([1])), 1), torch.tensor([1]),
                     torch.tensor([0.999]), ["cat", "dog"])
    assert right == [["#0 dog", "p=dog 1.0"]]
    sink = Reporter(("grad_cam",), {}, log_images=False).sink(SimpleNamespace(loggers=[],
                                                                              default_root_dir=str(tmp_path)))
    assert [type(s) for s in sink.sinks] == [FileWriter] and sink.log_dir.startswith(str(tmp_path))


def test_pure_collaborators_do_not_import_lightning():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "lightning_xai"
    files = [root / "_validation.py", root / "keys.py", root / "metrics" / "registry.py",
             *sorted((root / "metrics" / "measures").glob("*.py")), root / "callbacks" / "_results.py",
             root / "callbacks" / "_tags.py",
             root / "callbacks" / "_config.py", root / "callbacks" / "_round.py", root / "callbacks" / "_tracker.py"]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] in ("lightning", "pytorch_lightning")], path


def test_monitor_docstring_example():
    import doctest

    import lightning_xai.callbacks.explanation_monitor as module

    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_the_callback_only_orchestrates():
    """Issue 22: the callback file stays small and holds named collaborators, not their state."""
    from pathlib import Path

    import lightning_xai.callbacks.explanation_monitor as module

    assert len(Path(module.__file__).read_text().splitlines()) <= 350
    monitor = module.ExplanationMonitor(num_probes=2)
    assert len(vars(monitor)) <= 10, sorted(vars(monitor))
