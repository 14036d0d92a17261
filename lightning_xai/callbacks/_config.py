"""The monitor's arguments: grouping, defaults and every check, in one place (no Lightning import).

The top level holds what users set; the rest comes in plain dicts (LightningCLI/jsonargparse read them from YAML):
``method_options`` (per method), ``metric_options`` (per measure), ``drift``, ``display`` and ``probe_options``.
A bad value raises at ``__init__`` naming it as the user wrote it, e.g.
``method_options['integrated_gradients']['n_steps']=1``.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import torch
from torch import Tensor

from lightning_xai._validation import (
    Option,
    check,
    check_options,
    choice,
    custom,
    flag,
    integer,
    is_int,
    is_number,
    number,
    path,
    seed,
)
from lightning_xai.attribution import METHODS, available_methods
from lightning_xai.drift import DriftDetector
from lightning_xai.drift._detector import STATISTICS
from lightning_xai.metrics.registry import available_measures, get_measure
from lightning_xai.render import COLORMAPS
from lightning_xai.views import END_OF_FIT, check_view_options
from lightning_xai.views import VIEWS as _VIEW_CLASSES

#: Views of what a layer has learnt (:mod:`lightning_xai.views`), each round, then the end-of-fit work.
VIEWS = (*_VIEW_CLASSES, *END_OF_FIT)
DEFAULT_METHODS = METHODS  # the attribution registry's default selection (one definition)
#: Added to the default selection at setup on the models they apply to (each costs one forward per probe):
#: attention rollout on class-token vision transformers (issue 24).
AUTOMATIC_METHODS = ("attention_rollout",)
DEFAULT_METRICS = ("localisation", "agreement", "sanity")


# Typed groups: plain dicts to Python, checked key by key by LightningCLI/jsonargparse (dotted overrides such as
# `--trainer.callbacks.drift.window=4` keep the rest of the group). The checks below apply to every caller.
class DisplayOptions(TypedDict, total=False):
    mean: list[float] | None
    std: list[float] | None
    class_names: list[str] | None
    colormap: Literal[COLORMAPS]  # type: ignore[valid-type]
    alpha: float


class DriftOptions(TypedDict, total=False):
    size: int
    topk: float
    pool_size: int | Literal["auto"]
    pool_from: Literal["both", "validation", "training"]
    warmup_epochs: int
    window: int
    horizon: int
    threshold: float
    slack: float
    cusum_threshold: float
    learn_below: float
    min_spread: float
    event_factor: float
    settle: int
    gap_spread: float
    prior_weight: float
    statistics: list[str]
    probe_sigmas: float


class SegmentationOptions(TypedDict, total=False):
    target: Literal["mask", "predicted"]
    background: int | None
    ignore_index: int | None
    class_index: int | None


class ProbeOptions(TypedDict, total=False):
    input_key: int | str | Callable | None
    label_key: int | str | Callable | None
    mask_key: int | str | Callable | None
    seed: int


def known_methods() -> tuple[str, ...]:
    """The attribution methods the monitor accepts: the attribution registry's."""
    return available_methods()


# --------------------------------------------------------------------------------------------------- the specs
# Every option of every group, declared once (default, type, bounds, meaning, fix) and checked by the one checker
# (`check_options`), so every message has the same form and names the option as the user wrote it. Every size has an
# upper bound; what the sizes imply for this model and input (memory, passes per round) is checked at setup
# (`ProbeSetup.check_budget`).
MAX_PROBES = 1024
MAX_IG_STEPS = 4096
MAX_ROWS = 8192

_TOP: dict[str, Option] = {
    "num_probes": integer(16, 1, MAX_PROBES, "probes explained every round",
                          fix="each probe is explained by every method every round: a few dozen show drift"),
    "every_n_epochs": integer(1, 1, 10**6, "explain after every n-th training epoch"),
    "target": custom("label", lambda v: v in ("label", "pred") if isinstance(v, str) else (is_int(v) and 0 <= v < 2**31),
                     "'label', 'pred' or a class index in [0, 2**31)"),
    "layer": custom(None, lambda v: v is None or (isinstance(v, str) and 0 < len(v) <= 1000),
                    "None (automatic) or a dotted module name from model.named_modules()"),
    "log_images": flag(True, "log overlay panels and timelines"),
    "on_drift": custom(None, lambda v: v is None or callable(v), "None or a callable(report)"),
    "on_error": choice("warn", ("warn", "raise")),
    "max_overhead": custom("auto", lambda v: v is None or (isinstance(v, str) and v == "auto") or (is_number(v) and 0.0 < v < 1.0),
                           "'auto' (cheap methods every explained epoch, the others within 5% of the training "
                           "time), None (no budget: every method every explained epoch) or a float in (0, 1): the "
                           "largest share of training time the monitor may take"),
    "output_transform": custom(None, lambda v: v is None or callable(v),
                               "None or a callable mapping the model output to logits (N, num_classes)"),
}

_IG_FIX = "each path node is one forward + backward per probe, and adaptive IG keeps one input gradient per node"
# Options per method, as ``method_options[method][key]``; a method absent here takes its registry options
# (`lightning_xai.attribution`, each with its own bounds).
_METHOD_OPTIONS: dict[str, dict[str, Option]] = {
    "integrated_gradients": {
        "n_steps": integer(16, 2, MAX_IG_STEPS, "path nodes, both ends included; the start when `tolerance` is set",
                           fix=_IG_FIX),
        "tolerance": number(0.02, 0.0, 1e3, "refine probes whose completeness error exceeds it", open_low=True,
                            none="exactly n_steps"),
        "max_steps": integer(128, 2, MAX_IG_STEPS, ">= n_steps; cap of the adaptive refinement", fix=_IG_FIX),
        "baseline": number(None, -1e6, 1e6, "a constant in the model's input space", none="zeros"),
        "internal_batch_size": integer(None, 1, MAX_ROWS, "rows per forward + backward", none="the training batch "
                                       "size, so an explanation pass never needs more memory than a training step"),
    },
}


def method_option_spec(method: str) -> dict[str, Option]:
    """The options ``method`` takes in ``method_options`` (one place to extend when a method gains options)."""
    return _METHOD_OPTIONS.get(method, {})


def _numbers(v: Any) -> bool:
    return (isinstance(v, Sequence) and not isinstance(v, str) and 0 < len(v) <= 64
            and all(is_number(x) and abs(x) <= 1e6 for x in v))


def _names(v: Any) -> bool:
    return (isinstance(v, Sequence) and not isinstance(v, str) and len(v) <= 100_000
            and all(isinstance(c, str) and len(c) <= 1000 for c in v))


_DISPLAY: dict[str, Option] = {
    "mean": custom(None, lambda v: v is None or _numbers(v),
                   "None or a list of 1 to 64 finite numbers in [-1e6, 1e6], one per channel"),
    "std": custom(None, lambda v: v is None or (_numbers(v) and all(s > 0 for s in v)),
                  "None or a list of 1 to 64 positive finite numbers, one per channel"),
    "class_names": custom(None, lambda v: v is None or _names(v),
                          "None (the dataset's `classes`) or a list of at most 100000 str of up to 1000 characters"),
    "colormap": choice("jet", COLORMAPS),
    "alpha": number(0.5, 0.0, 1.0, "heatmap opacity"),
}


def _selector(v: Any) -> bool:
    return v is None or callable(v) or (is_int(v) and abs(v) < 2**31) or (isinstance(v, str) and len(v) <= 1000)


_KEY_ALLOWED = "None (guess), an int index, a str key or a callable(sample)"
_PROBE_OPTIONS: dict[str, Option] = {
    "input_key": custom(None, _selector, _KEY_ALLOWED),
    "label_key": custom(None, _selector, _KEY_ALLOWED),
    "mask_key": custom(None, _selector, _KEY_ALLOWED),
    "seed": seed(0, "probe selection and the sanity check's re-initialisation"),
}

# The `segmentation` group: used when the model's output is a map of class logits (N, K, H, W) (see
# lightning_xai.attribution.targets and lightning_xai.probes.ClassMapRule).
_SEGMENTATION: dict[str, Option] = {
    "target": choice("mask", ("mask", "predicted"), "the region explained: the probe's ground-truth region of its "
                     "class (else the predicted one), or the pixels predicted as that class (else the ground truth)"),
    "background": integer(0, 0, 2**31 - 1, "the class never explained unless named by `class_index`",
                          none="no background class"),
    "ignore_index": integer(255, 0, 2**31 - 1, "the void label, never a class and never in a region",
                            none="no void label"),
    "class_index": integer(None, 0, 2**31 - 1, "explain this class on every probe",
                           none="each probe's most frequent class other than background and void"),
}


def class_map_rule(segmentation: Mapping[str, Any]) -> Any:
    """The ``segmentation`` options' :class:`~lightning_xai.probes.ClassMapRule` (how class maps become probes)."""
    from lightning_xai.probes import ClassMapRule

    return ClassMapRule(background=segmentation["background"], ignore_index=segmentation["ignore_index"],
                        class_index=segmentation["class_index"])


# The `drift` group: the monitor's own keys, then DriftDetector's keywords (defaults read from its signature, so
# they cannot disagree). A new key is one line here; tests check that every DriftDetector keyword has one.
_DETECTOR_DEFAULTS = {name: p.default for name, p in inspect.signature(DriftDetector.__init__).parameters.items()
                      if name != "self" and p.default is not inspect.Parameter.empty}
_STABILITY: dict[str, Option] = {
    "size": integer(16, 2, 128, "side of the pooled maps compared and kept; memory grows with its square"),
    "topk": number(0.1, 0.0, 1.0, "share of pixels in the top-k overlap", open_low=True),
    "pool_size": custom("auto", lambda v: v == "auto" or (is_int(v) and 0 <= v <= 1024),
                        "'auto' (1/16 of the training set, at most 128) or an int in [0, 1024] (extra samples the "
                        "drift detector watches with the one-pass methods; 0: the display probes only)"),
    "pool_from": choice("both", ("both", "validation", "training"), "where the detection pool's samples come from"),
}


def _default(name: str, fallback: Any) -> Any:
    return _DETECTOR_DEFAULTS.get(name, fallback)


def _statistics(v: Any) -> bool:
    return (isinstance(v, Sequence) and not isinstance(v, str) and 0 < len(v) <= len(STATISTICS)
            and all(isinstance(s, str) and s in STATISTICS for s in v) and len(set(v)) == len(v))


_DRIFT: dict[str, Option] = {
    **_STABILITY,
    "warmup_epochs": integer(_default("warmup_epochs", 3), 0, 1000, "explained epochs that only learn"),
    "window": integer(_default("window", 4), 2, 1000, "quiet epochs kept per stream for its floor"),
    "horizon": integer(_default("horizon", 3), 1, 100, "explained epochs kept as frames"),
    "threshold": number(_default("threshold", 5.0), 0.0, 1e6, "z-score of the strongest stream that alarms",
                        open_low=True),
    "slack": number(_default("slack", 1.5), 0.0, 1e6, "CUSUM allowance per epoch, in z units"),
    "cusum_threshold": number(_default("cusum_threshold", 8.0), 0.0, 1e6, "accumulated excess that alarms",
                              open_low=True),
    "learn_below": number(_default("learn_below", 0.5), 0.0, 1e6, "an epoch joins a floor only below this z-score",
                          open_low=True),
    "min_spread": number(_default("min_spread", 0.35), 0.0, 1e6, "smallest spread of a stream, in log units"),
    "event_factor": number(_default("event_factor", 2.0), 1.0, 1e6, "threshold multiplier at a known event"),
    "settle": integer(_default("settle", 1), 0, 1000, "epochs after an event that relearn the floors"),
    "gap_spread": number(_default("gap_spread", 0.12), 0.0, 1e6, "smallest spread of the train/validation gap"),
    "prior_weight": number(_default("prior_weight", 0.0), 0.0, 1e6,
                           "epochs the prior spread weighs against a stream's own (0: the larger of the two)"),
    "statistics": custom(_default("statistics", STATISTICS), _statistics,
                         f"a non-empty list of distinct statistics from {STATISTICS}"),
    "probe_sigmas": number(_default("probe_sigmas", 3.0), 0.0, 1e6, "per-probe flag threshold, in spreads",
                           open_low=True),
}
#: The option specs of the `drift` group (the monitor's `size`/`topk`, then DriftDetector's keywords).
DRIFT_OPTIONS = _DRIFT


def _tuple_of_names(value: Any, name: str, allowed: Sequence[str], *, empty_ok: bool) -> tuple[str, ...]:
    words = f"a list of distinct names from {tuple(allowed)}" + ("" if empty_ok else " (at least one)")
    if isinstance(value, str):
        value = (value,)
    check(isinstance(value, Sequence), name, value, words, error=TypeError)
    names = tuple(value)
    check(all(isinstance(n, str) and n in allowed for n in names) and len(set(names)) == len(names)
          and (empty_ok or len(names) > 0), name, value, words)
    return names


@dataclass(frozen=True)
class MonitorConfig:
    """Every argument of the monitor, checked, with defaults filled in."""

    probes: Any
    num_probes: int
    methods: tuple[str, ...]
    every_n_epochs: int
    target: int | str
    layer: str | None
    metrics: tuple[str, ...]
    log_images: bool
    views: tuple[str, ...]
    view_options: dict[str, dict[str, Any]]
    on_drift: Callable[..., Any] | None
    on_error: str
    max_overhead: float | Literal["auto"] | None
    output_transform: Callable[[Any], Tensor] | None
    method_options: dict[str, dict[str, Any]]
    metric_options: dict[str, dict[str, Any]]
    drift: dict[str, Any]
    display: dict[str, Any]
    probe_options: dict[str, Any]
    segmentation: dict[str, Any] = dataclasses.field(default_factory=lambda: check_options(None, _SEGMENTATION, ""))
    automatic: tuple[str, ...] = ()  # methods added at setup where the model allows them (`methods` left default)

    @property
    def detector_options(self) -> dict[str, Any]:
        """The ``drift`` options that go to :class:`~lightning_xai.drift.DriftDetector`."""
        return {k: v for k, v in self.drift.items() if k in _DETECTOR_DEFAULTS and k not in _STABILITY}

    def new_detector(self) -> DriftDetector:
        return DriftDetector(**self.detector_options, size=self.size, topk=float(self.drift["topk"]))

    @property
    def size(self) -> int:
        return int(self.drift["size"])


def build_config(**args: Any) -> MonitorConfig:
    """Check every argument (each message names the argument as written, its value, what is allowed and the fix)."""
    methods = _tuple_of_names(args["methods"], "methods", known_methods(), empty_ok=False)
    top = check_options({k: args[k] for k in _TOP}, _TOP, "")
    metrics = _tuple_of_names(args["metrics"], "metrics", available_measures(selectable=True), empty_ok=True)
    views = _tuple_of_names(args["views"], "views", VIEWS, empty_ok=True)
    view_options = check_view_options(views, args.get("view_options"), owner="ExplanationMonitor")
    probes = args["probes"]
    if isinstance(probes, list):  # [images, labels] from YAML or by habit: the same as a tuple
        probes = tuple(probes)
    check(probes is None or isinstance(probes, (Tensor, tuple, torch.utils.data.Dataset, torch.utils.data.DataLoader)),
          "probes", type(probes).__name__, "None, a Tensor, (images, labels[, masks]), a Dataset or a DataLoader",
          error=TypeError)
    if isinstance(probes, tuple):
        check(2 <= len(probes) <= 3 and all(isinstance(t, Tensor) for t in probes), "probes",
              f"a {len(probes)}-element sequence", "(images, labels) or (images, labels, masks) of tensors")
        _check_probe_tensors(probes)
    elif isinstance(probes, Tensor):
        _check_probe_tensors((probes,))
    budget = top["max_overhead"]
    return MonitorConfig(
        probes=probes, num_probes=int(top["num_probes"]), methods=methods, every_n_epochs=int(top["every_n_epochs"]),
        target=top["target"], layer=top["layer"], metrics=metrics, log_images=top["log_images"], views=views,
        view_options=view_options, on_drift=top["on_drift"], on_error=top["on_error"],
        max_overhead=budget if budget in (None, "auto") else float(budget), output_transform=top["output_transform"],
        method_options=_method_options(args["method_options"], methods),
        metric_options=_metric_options(args["metric_options"]),
        drift=_drift_options(args["drift"]),
        display=_display_options(args["display"]),
        probe_options=check_options(args["probe_options"], _PROBE_OPTIONS, "probe_options"),
        segmentation=_segmentation_options(args.get("segmentation")),
        automatic=tuple(m for m in AUTOMATIC_METHODS if m not in methods) if methods == DEFAULT_METHODS else (),
    )


def _segmentation_options(given: Any) -> dict[str, Any]:
    out = check_options(given, _SEGMENTATION, "segmentation")
    named = out["class_index"]
    check(named is None or named != out["ignore_index"], path("segmentation", "class_index"), named,
          f"a class other than `segmentation['ignore_index']` ({out['ignore_index']})")
    return out


def _check_probe_tensors(probes: tuple[Tensor, ...]) -> None:
    images = probes[0]
    if images.is_floating_point() and not bool(torch.isfinite(images).all()):
        bad = (~torch.isfinite(images.flatten(1))).any(dim=1).nonzero().flatten().tolist()
        check(False, "probes[0]" if len(probes) > 1 else "probes", f"images with NaN/inf values (samples {bad[:8]})",
              "finite images; clean or drop those samples")
    if len(probes) > 1:
        labels = probes[1]
        integral = not labels.is_floating_point() or bool((labels == labels.round()).all())
        ok = labels.dtype != torch.bool and not labels.is_complex() and integral and bool((labels >= 0).all())
        more = " ..." if labels.numel() > 8 else ""
        check(ok, "probes[1]", f"labels {labels.flatten()[:8].tolist()}{more}",
              "class indices >= 0 (pass the images alone when labels are unknown)")


def _method_options(given: Any, methods: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    from lightning_xai.attribution import check_method_options, get_method

    given = {} if given is None else given
    check(isinstance(given, Mapping), "method_options", given, "None or a dict {method: {option: value}}",
          error=TypeError)
    for method in given:
        check(method in methods, path("method_options", str(method)), given[method],
              f"options of a method in `methods` {methods}")
    out = {}
    for method in methods:
        root = path("method_options", method)
        spec = method_option_spec(method)
        if not spec:
            # Any other registered method: its registry options (same specs, same checker); only what the user gave
            # is kept (the method's defaults apply in explain, and `layer` comes from the monitor's).
            mine = given.get(method) or {}
            check_options(mine, get_method(method).options, root)
            try:
                check_method_options(method, mine)  # the method's own cross-option rules
            except ValueError as err:
                raise ValueError(f"ExplanationMonitor: `{root}`: {err}") from None
            out[method] = dict(mine)
            continue
        options = check_options(given.get(method), spec, root)
        if method == "integrated_gradients":
            check(options["max_steps"] >= options["n_steps"], path(root, "max_steps"), options["max_steps"],
                  f"an int >= n_steps ({options['n_steps']})")
        out[method] = options
    return out


def _metric_options(given: Any) -> dict[str, dict[str, Any]]:
    given = {} if given is None else given
    names = available_measures()
    check(isinstance(given, Mapping), "metric_options", given, "None or a dict {metric: {option: value}}",
          error=TypeError)
    for name in given:
        check(name in names and bool(get_measure(name).options), path("metric_options", str(name)), given[name],
              f"options of one of {tuple(n for n in names if get_measure(n).options)}")
    return {name: check_options(given.get(name), get_measure(name).options, path("metric_options", name))
            for name in names}


def _drift_options(given: Any) -> dict[str, Any]:
    # Only the keys given are kept for the detector (its own defaults apply), the monitor's own get their defaults.
    checked = check_options(given, _DRIFT, "drift")
    given = {} if given is None else given
    out = {k: checked[k] for k in _DRIFT if k in given or k in _STABILITY}
    detector = {k: v for k, v in out.items() if k in _DETECTOR_DEFAULTS and k not in _STABILITY}
    try:  # rules across keys the detector may have: named as the user wrote them
        DriftDetector(**detector)
    except (TypeError, ValueError) as err:
        message = re.sub(r"`(\w+)`", lambda m: f"`{path('drift', m.group(1))}`" if m.group(1) in _DETECTOR_DEFAULTS
                         else m.group(0), str(err))
        raise type(err)(f"ExplanationMonitor: {message}") from None
    return out


def _display_options(given: Any) -> dict[str, Any]:
    out = check_options(given, _DISPLAY, "display")
    mean, std = out["mean"], out["std"]
    check((mean is None) == (std is None), "display['mean']/display['std']", (mean, std), "both given or both None")
    if mean is not None:
        check(len(mean) == len(std), "display['std']", std, f"as many values as display['mean'] ({len(mean)})")
        out["mean"], out["std"] = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if out["class_names"] is not None:
        out["class_names"] = list(out["class_names"])
    out["alpha"] = float(out["alpha"])
    return out


def uses_layer(methods: Sequence[str]) -> bool:
    """Whether any of ``methods`` reads a layer (the CAM family): the monitor then resolves one at setup."""
    from lightning_xai.attribution import get_method

    return any(get_method(m).uses_layer for m in methods)


def explain_options(config: MonitorConfig, images: Tensor, layer_name: str | None,
                    train_batch_size: int | None, layer_reshape: Any = None, *, adaptive: bool = True
                    ) -> dict[str, Any]:
    """``method_options`` turned into the keyword arguments of :func:`~lightning_xai.attribution.explain_detailed`.

    ``layer_reshape``: how the Grad-CAM layer's output becomes ``(N, C, h, w)`` (found with the layer at setup).
    ``adaptive=False``: Integrated Gradients with exactly ``n_steps`` (no refinement), for the fit-start reference,
    whose untrained model would refine most probes up to ``max_steps``.
    """
    options: dict[str, Any] = {"output_transform": config.output_transform}
    if uses_layer(config.methods):
        options["layer"] = layer_name
    ig = config.method_options.get("integrated_gradients")
    if ig is not None:
        options["n_steps"] = ig["n_steps"]
        options["internal_batch_size"] = ig["internal_batch_size"] or train_batch_size
        if ig["baseline"] is not None:
            options["baseline"] = torch.full_like(images, float(ig["baseline"]))
        if ig["tolerance"] is not None and adaptive:
            options["tolerance"] = ig["tolerance"]
            options["max_steps"] = ig["max_steps"]
    else:
        options["internal_batch_size"] = train_batch_size
    others = {m: dict(opts) for m, opts in config.method_options.items() if not method_option_spec(m) and opts}
    if layer_reshape is not None:
        from lightning_xai.attribution import get_method

        for m in config.methods:
            if get_method(m).uses_layer and "reshape" in get_method(m).options:
                others.setdefault(m, {}).setdefault("reshape", layer_reshape)
    if others:
        options["options"] = others
    return options
