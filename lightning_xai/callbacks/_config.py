"""The monitor's arguments: grouping, defaults and every check, in one place (no Lightning import).

The top level holds what users set; the rest comes in plain dicts (LightningCLI/jsonargparse read them from YAML):
``method_options`` (per method), ``metric_options`` (per measure), ``drift``, ``display`` and ``probe_options``.
A bad value raises at ``__init__`` naming it as the user wrote it, e.g.
``method_options['integrated_gradients']['n_steps']=1``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import torch
from torch import Tensor

from lightning_xai._validation import Option, check, check_options, is_int, is_number, path
from lightning_xai.attribution import METHODS, available_methods
from lightning_xai.drift import DriftDetector
from lightning_xai.metrics.registry import available_measures, get_measure
from lightning_xai.render import COLORMAPS
from lightning_xai.views import END_OF_FIT, ViewRunner
from lightning_xai.views import VIEWS as _VIEW_CLASSES

#: Views of what a layer has learnt (:mod:`lightning_xai.views`), each round, then the end-of-fit work.
VIEWS = (*_VIEW_CLASSES, *END_OF_FIT)
DEFAULT_METHODS = METHODS  # the attribution registry's default selection (one definition)
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
    warmup_epochs: int
    window: int
    horizon: int
    sigmas: float
    min_spread: float
    mass_drop: float
    probe_sigmas: float
    size: int
    topk: float


class ProbeOptions(TypedDict, total=False):
    input_key: int | str | Callable | None
    label_key: int | str | Callable | None
    mask_key: int | str | Callable | None
    seed: int


def known_methods() -> tuple[str, ...]:
    """The attribution methods the monitor accepts: the attribution registry's."""
    return available_methods()


def _batch(v: Any) -> bool:
    return v is None or (is_int(v) and v >= 1)


# Options per method, as ``method_options[method][key]``; a method absent here takes none.
_METHOD_OPTIONS: dict[str, dict[str, Option]] = {
    "integrated_gradients": {
        "n_steps": Option(16, lambda v: is_int(v) and v >= 2,
                          "an int >= 2 (path nodes, both ends included; the start when `tolerance` is set)"),
        "tolerance": Option(0.02, lambda v: v is None or (is_number(v) and v > 0),
                            "None (exactly n_steps) or a float > 0 (refine probes whose completeness error exceeds it)"),
        "max_steps": Option(128, lambda v: is_int(v) and v >= 2, "an int >= n_steps (cap of the adaptive refinement)"),
        "baseline": Option(None, lambda v: v is None or is_number(v),
                           "None (zeros) or a finite float, in the model's input space"),
        "internal_batch_size": Option(None, _batch, "None (the training batch size) or an int >= 1"),
    },
}


def method_option_spec(method: str) -> dict[str, Option]:
    """The options ``method`` takes in ``method_options`` (one place to extend when a method gains options)."""
    return _METHOD_OPTIONS.get(method, {})


_DISPLAY = {
    "mean": Option(None, lambda v: v is None or _numbers(v), "None or a list of finite numbers, one per channel"),
    "std": Option(None, lambda v: v is None or (_numbers(v) and all(s > 0 for s in v)),
                  "None or a list of positive finite numbers, one per channel"),
    "class_names": Option(None, lambda v: v is None or (isinstance(v, Sequence) and not isinstance(v, str)
                                                        and all(isinstance(c, str) for c in v)),
                          "None (the dataset's `classes`) or a list of str"),
    "colormap": Option("jet", lambda v: v in COLORMAPS, f"one of {COLORMAPS}"),
    "alpha": Option(0.5, lambda v: is_number(v) and 0.0 <= v <= 1.0, "a float in [0, 1] (heatmap opacity)"),
}

_KEY_ALLOWED = "None (guess), an int index, a str key or a callable(sample)"
_PROBE_OPTIONS = {
    "input_key": Option(None, lambda v: _selector(v), _KEY_ALLOWED),
    "label_key": Option(None, lambda v: _selector(v), _KEY_ALLOWED),
    "mask_key": Option(None, lambda v: _selector(v), _KEY_ALLOWED),
    "seed": Option(0, is_int, "an int (probe selection and the sanity check's re-initialisation)"),
}

# The monitor's own drift options; the rest go to DriftDetector, which checks them.
_STABILITY = {
    "size": Option(16, lambda v: is_int(v) and v >= 2, "an int >= 2 (side of the pooled maps compared)"),
    "topk": Option(0.1, lambda v: is_number(v) and 0.0 < v <= 1.0, "a float in (0, 1] (share of pixels in top-k)"),
    "pool_size": Option("auto", lambda v: v == "auto" or (is_int(v) and 0 <= v <= 1024),
                        "'auto' (1/16 of the training set, at most 128) or an int in [0, 1024] (extra samples the "
                        "drift detector watches with the one-pass methods; 0: the display probes only)"),
    "pool_from": Option("both", lambda v: v in ("both", "validation", "training"),
                        "'both', 'validation' or 'training' (where the detection pool's samples come from)"),
}


def _numbers(v: Any) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, str) and len(v) > 0 and all(is_number(x) for x in v)


def _selector(v: Any) -> bool:
    return v is None or callable(v) or (isinstance(v, (int, str)) and not isinstance(v, bool))


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

    @property
    def detector_options(self) -> dict[str, Any]:
        """The ``drift`` options that go to :class:`~lightning_xai.drift.DriftDetector`."""
        return {k: v for k, v in self.drift.items() if k not in _STABILITY}

    def new_detector(self) -> DriftDetector:
        return DriftDetector(**self.detector_options, size=self.size, topk=float(self.drift["topk"]))

    @property
    def size(self) -> int:
        return int(self.drift["size"])


def build_config(**args: Any) -> MonitorConfig:
    """Check every argument (each message names the argument as written, its value and the fix)."""
    methods = _tuple_of_names(args["methods"], "methods", known_methods(), empty_ok=False)
    num_probes, every = args["num_probes"], args["every_n_epochs"]
    check(is_int(num_probes) and num_probes >= 1, "num_probes", num_probes, "an int >= 1")
    check(is_int(every) and every >= 1, "every_n_epochs", every, "an int >= 1")
    target = args["target"]
    check(target in ("label", "pred") or (is_int(target) and target >= 0), "target", target,
          "'label', 'pred' or a class index >= 0")
    layer = args["layer"]
    check(layer is None or (isinstance(layer, str) and layer != ""), "layer", layer,
          "None (automatic) or a dotted module name from model.named_modules()")
    metrics = _tuple_of_names(args["metrics"], "metrics", available_measures(selectable=True), empty_ok=True)
    log_images = args["log_images"]
    check(isinstance(log_images, bool), "log_images", log_images, "True or False", error=TypeError)
    views = _tuple_of_names(args["views"], "views", VIEWS, empty_ok=True)
    view_options = {} if args.get("view_options") is None else args["view_options"]
    check(isinstance(view_options, Mapping) and all(isinstance(v, Mapping) for v in view_options.values()),
          "view_options", view_options, "None or a dict {view: {option: value}}", error=TypeError)
    view_options = {str(k): dict(v) for k, v in view_options.items()}
    try:
        ViewRunner(views, view_options)  # checks every view's options now, not at the first epoch
    except ValueError as err:
        raise ValueError(f"ExplanationMonitor: {err}") from None
    on_drift, on_error = args["on_drift"], args["on_error"]
    check(on_drift is None or callable(on_drift), "on_drift", on_drift, "None or a callable(report)")
    check(on_error in ("warn", "raise"), "on_error", on_error, "'warn' or 'raise'")
    budget = args["max_overhead"]
    check(budget is None or budget == "auto" or (is_number(budget) and 0.0 < budget < 1.0), "max_overhead", budget,
          "'auto' (cheap methods every explained epoch, the others within 5% of the training time), None (no budget: "
          "every method every explained epoch) or a float in (0, 1): the largest share of training time the monitor "
          "may take")
    transform = args["output_transform"]
    check(transform is None or callable(transform), "output_transform", transform,
          "None or a callable mapping the model output to logits (N, num_classes)")
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

    return MonitorConfig(
        probes=probes, num_probes=int(num_probes), methods=methods, every_n_epochs=int(every), target=target,
        layer=layer, metrics=metrics, log_images=log_images, views=views, view_options=view_options,
        on_drift=on_drift, on_error=on_error, max_overhead=budget if budget in (None, "auto") else float(budget), output_transform=transform,
        method_options=_method_options(args["method_options"], methods),
        metric_options=_metric_options(args["metric_options"]),
        drift=_drift_options(args["drift"]),
        display=_display_options(args["display"]),
        probe_options=check_options(args["probe_options"], _PROBE_OPTIONS, "probe_options"),
    )


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
    from lightning_xai.attribution import check_method_options

    given = {} if given is None else given
    check(isinstance(given, Mapping), "method_options", given, "None or a dict {method: {option: value}}",
          error=TypeError)
    for method in given:
        check(method in methods, path("method_options", str(method)), given[method],
              f"options of a method in `methods` {methods}")
    out = {}
    for method in methods:
        spec = method_option_spec(method)
        if not spec:
            # Any other registered method: its own options, checked by the attribution registry; only what the user
            # gave is kept (the method's defaults apply in explain, and `layer` comes from the monitor's).
            mine = given.get(method) or {}
            check(isinstance(mine, Mapping), path("method_options", method), mine,
                  "None or a dict {option: value}", error=TypeError)
            try:
                check_method_options(method, mine)
            except ValueError as err:
                raise ValueError(f"ExplanationMonitor: `{path('method_options', method)}`: {err}") from None
            out[method] = dict(mine)
            continue
        options = check_options(given.get(method), spec, path("method_options", method))
        if method == "integrated_gradients":
            check(options["max_steps"] >= options["n_steps"], path("method_options", method, "max_steps"),
                  options["max_steps"], f"an int >= n_steps ({options['n_steps']})")
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
    given = {} if given is None else given
    detector_keys = [p for p in inspect.signature(DriftDetector.__init__).parameters if p != "self"]
    allowed = list(dict.fromkeys([*detector_keys, *_STABILITY]))
    check(isinstance(given, Mapping), "drift", given, f"None or a dict with keys from {allowed}", error=TypeError)
    for key in given:
        check(key in allowed, path("drift", str(key)), given[key], f"one of the keys {allowed}")
    out = check_options({k: v for k, v in given.items() if k in _STABILITY}, _STABILITY, "drift")
    detector = {k: v for k, v in given.items() if k not in _STABILITY}
    try:
        DriftDetector(**detector)
    except (TypeError, ValueError) as err:  # its message names its own parameters: name them as the user wrote them
        message = re.sub(r"`(\w+)`", lambda m: f"`{path('drift', m.group(1))}`" if m.group(1) in detector_keys
                         else m.group(0), str(err))
        raise type(err)(f"ExplanationMonitor: {message}") from None
    return {**detector, **out}


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
