"""``explain``: run any registered methods on a batch, merging what they need into as few batched passes as possible.

Each method is one class in ``lightning_xai/attribution/methods/`` (see :mod:`._registry`). A call

1. checks the inputs and every chosen method's options (flat keywords such as ``n_steps`` or ``layer`` go to every
   chosen method that has that option; ``options={"method": {...}}`` overrides per method);
2. runs the *shared pass* (:func:`._engine.shared_pass`) once for all methods' requests: input gradient, CAM layer
   activations and gradients at the inputs, Integrated Gradients' path nodes -- one stream of batched
   forward/backward chunks in which ``alpha = 1`` (the input) carries everything taken at the inputs;
3. lets each method turn the shared results, or its own batched passes (noise, occlusion, masks, a modified
   backward, mask optimisation), into a map.

With ``errors="collect"`` a method that fails (its layer is not spatial, not called, its own pass raises) is
reported in :attr:`Explanation.errors` and the others are returned; a model that cannot run at all still raises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_xai.attribution._engine import (
    Context,
    OutputTransform,
    _Engine,
    check_inputs,
    check_target,
    shared_pass,
)
from lightning_xai.attribution._layers import unwrap_model
from lightning_xai.attribution._registry import METHODS, Method, available_methods, check_method_options, get_method
from lightning_xai.attribution._state import preserved_state

__all__ = [
    "METHODS",
    "Explanation",
    "explain",
    "explain_detailed",
    "grad_cam",
    "integrated_gradients",
    "saliency",
]

ERRORS = ("raise", "collect")
# Keywords of explain() that are method options: each goes to every chosen method that declares it.
_ROUTED = ("layer", "baseline", "n_steps", "tolerance", "max_steps")


@dataclass
class Explanation:
    """Everything one :func:`explain_detailed` call computed.

    Attributes:
        maps: ``{method: map}`` in the order of ``methods`` (failed methods left out); CAM-family, occlusion, LIME and
            I-GOS maps ``(N, 1, H, W)``, gradient methods like the inputs.
        logits: ``(N, num_classes)`` model outputs (after ``output_transform``) at the real inputs, detached, float.
        ig_delta: ``(N,)`` completeness delta ``sum(attr_i) - (f(x_i) - f(b_i))``, or ``None`` without IG.
        ig_relative_error: ``(N,)`` ``|delta| / max(|f(x) - f(b)|, 1e-4)``, or ``None`` without IG.
        ig_evals: ``(N,)`` long, model evaluations (forward + input-gradient backward at one path point) each sample
            used for IG; ``n_steps`` everywhere unless ``tolerance`` refined some samples. ``None`` without IG.
        layer: the Grad-CAM layer's dotted name (relative to the unwrapped model), else the first CAM-family
            method's layer, or ``None``.
        layers: ``{method: layer name}`` for every CAM-family method that ran.
        errors: ``{method: exception}`` for the methods that failed (only with ``errors="collect"``).
    """

    maps: dict[str, Tensor]
    logits: Tensor
    ig_delta: Tensor | None = None
    ig_relative_error: Tensor | None = None
    ig_evals: Tensor | None = None
    layer: str | None = None
    layers: dict[str, str] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- planning


def _check_methods(methods: Any) -> tuple[str, ...]:
    names = available_methods()
    if isinstance(methods, str):
        methods = (methods,)
    try:
        methods = tuple(methods)
    except TypeError:
        raise TypeError(f"`methods` must be a sequence of method names from {names}, got {methods!r}") from None
    unknown = [m for m in methods if m not in names]
    if not methods or unknown or len(set(methods)) != len(methods):
        raise ValueError(f"`methods` must be a non-empty sequence of distinct names from {names}, got {methods!r}")
    return methods


def _check_engine_options(internal_batch_size: Any, autocast_dtype: Any, output_transform: Any, errors: Any) -> None:
    if internal_batch_size is not None and (
        not isinstance(internal_batch_size, int) or isinstance(internal_batch_size, bool) or internal_batch_size < 1
    ):
        raise ValueError(f"`internal_batch_size` must be None (automatic) or an int >= 1, got {internal_batch_size!r}")
    if autocast_dtype is not None and not (isinstance(autocast_dtype, torch.dtype) and autocast_dtype.is_floating_point):
        raise TypeError(f"`autocast_dtype` must be None or a floating torch.dtype, got {autocast_dtype!r}")
    if output_transform is not None and not callable(output_transform):
        raise TypeError(f"`output_transform` must be None or a callable, got {type(output_transform).__name__}")
    if errors not in ERRORS:
        raise ValueError(f"`errors` must be one of {ERRORS}, got {errors!r}")


def method_options(methods: Sequence[str], routed: Mapping[str, Any] | None = None,
                   options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Each chosen method's complete, checked options: defaults < routed keywords < ``options[method]``.

    Args:
        methods: method names.
        routed: keywords meant for every method that has the option (``explain``'s ``n_steps``, ``layer``, ...).
        options: ``{method: {option: value}}``; a key must be a registered method name.

    Returns:
        ``{method: {option: value}}`` for the chosen methods.
    """
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise TypeError(f"`options` must be a mapping {{method: {{option: value}}}}, got {type(options).__name__}")
    names = available_methods()
    for key, value in options.items():
        if key not in names:
            raise ValueError(f"`options` has an entry for {key!r}, which is not a method; available: {names}")
        if not isinstance(value, Mapping):
            raise TypeError(f"`options[{key!r}]` must be a mapping {{option: value}}, got {type(value).__name__}")
        if key not in methods:
            check_method_options(key, value)  # an entry for a method not chosen now is still checked
    out = {}
    for name in methods:
        cls = get_method(name)
        chosen = {k: v for k, v in (routed or {}).items() if k in cls.options}
        chosen.update(options.get(name, {}))
        out[name] = check_method_options(name, chosen)
        if hasattr(cls, "route"):
            out[name] = cls.route(out[name], routed or {})
    return out


def _attribute(model: nn.Module, inputs: Tensor, target: Any, methods: Any, *, routed: dict[str, Any],
               options: Mapping[str, Mapping[str, Any]] | None, internal_batch_size: int | None,
               output_transform: Any, autocast_dtype: torch.dtype | None, channels_last: bool,
               errors: str) -> Explanation:
    inputs = check_inputs(inputs)
    n = inputs.shape[0]
    target = check_target(target, n)
    methods = _check_methods(methods)
    _check_engine_options(internal_batch_size, autocast_dtype, output_transform, errors)
    plan: dict[str, Method] = {name: get_method(name)(opts)
                               for name, opts in method_options(methods, routed, options).items()}
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    net = unwrap_model(model)
    collect = errors == "collect"
    with preserved_state(model):
        # Clone inside inference_mode(False): inputs / targets made under inference_mode (Lightning's validation
        # loop) cannot be saved for backward (PITFALLS 20).
        x = inputs.detach().clone()
        tgt = target.to(inputs.device).clone()
        engine = _Engine(net, output_transform=output_transform, internal_batch_size=internal_batch_size,
                         autocast_dtype=autocast_dtype, channels_last=channels_last, device=x.device)
        ctx = Context(engine, x, tgt)
        shared, failed = shared_pass(ctx, plan, collect=collect)
        maps: dict[str, Tensor] = {}
        result = Explanation(maps=maps, logits=shared.logits, errors=failed)
        for name, method in plan.items():
            if name in failed:
                continue
            try:
                out = method.compute(ctx, shared)
            except Exception as err:
                if not collect:
                    raise
                failed[name] = err
                continue
            maps[name] = out.detach().to(x.dtype)
            if name in shared.layer_of:
                result.layers[name] = shared.layers[shared.layer_of[name]].name
        if result.layers:
            result.layer = result.layers.get("grad_cam", next(iter(result.layers.values())))
        if shared.ig is not None:
            result.ig_delta, result.ig_relative_error = shared.ig.delta, shared.ig.relative_error
            result.ig_evals = shared.ig.evals
        return result


# ------------------------------------------------------------------------------------------------------ public API


def explain_detailed(
    model: nn.Module,
    inputs: Tensor,
    target: int | Tensor,
    methods: Sequence[str] = METHODS,
    *,
    layer: str | nn.Module | None = None,
    baseline: Tensor | float | None = None,
    n_steps: int = 32,
    internal_batch_size: int | None = None,
    output_transform: OutputTransform | None = None,
    tolerance: float | None = None,
    max_steps: int = 256,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    errors: str = "raise",
) -> Explanation:
    """Several attribution methods in one pass, with logits and IG diagnostics.

    The methods share the work: Integrated Gradients evaluates the model on ``n_steps`` path points per sample, one
    of which (``alpha = 1``) is the input itself; the input gradient (saliency, input x gradient) and the CAM
    family's activations and gradients are taken there. The default bundle costs about what IG alone costs
    (measured in ``bench/attribution.py``). Without IG, one forward and one ``autograd.grad`` at the inputs serve all
    of them together. Methods with passes of their own (smoothgrad, occlusion, guided_backprop, deconvnet, lime,
    igos) run them batched after the shared pass; each method's docstring states its cost.

    Args:
        model: an image classifier; ``torch.compile`` / DataParallel wrappers are unwrapped (hooks need the eager
            module). Runs under :func:`preserved_state`: eval mode, gradients on, nothing about the model or RNG
            changes; parameter ``.grad`` is never touched.
        inputs: a batch of images; may be an inference tensor.
        target: the class to explain: an int for all samples or one per sample.
        methods: names from :func:`available_methods` (a single name is accepted).
        layer: CAM-family layer (dotted name or module); ``None`` picks one with :func:`find_gradcam_layer`.
            Like ``baseline``, ``n_steps``, ``tolerance`` and ``max_steps``, it goes to every chosen method that has
            that option; ``options`` overrides per method.
        baseline: IG (and occlusion / LIME / I-GOS) baseline: ``None`` (zeros), a number, or a tensor shaped like
            ``inputs`` or one sample.
        n_steps: IG nodes per sample (trapezoid rule including both ends; 1 means gradient x (input - baseline)).
        internal_batch_size: path points per forward/backward; ``None`` chooses from available memory (see
            :func:`integrated_gradients`).
        output_transform: maps the model's output to logits ``(N, num_classes)`` (tuple/dict/dataclass outputs).
        tolerance: adaptive IG: refine the samples whose completeness relative error exceeds this (see
            :func:`integrated_gradients`).
        max_steps: adaptive IG: no sample is refined beyond this many nodes.
        autocast_dtype: run the model's forward under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``);
            maps are returned in the inputs' dtype. ``None`` disables any ambient autocast.
        channels_last: feed the model ``channels_last`` inputs (faster convolutions on GPUs).
        options: ``{method: {option: value}}``, e.g. ``{"occlusion": {"window": 4}}``; checked by
            :func:`check_method_options` (which a caller can use without a model).
        errors: ``"raise"`` (default): the first failing method raises. ``"collect"``: a failing method is left out
            of ``maps`` and reported in :attr:`Explanation.errors`; the others are returned. Failures of the model
            itself (bad output, wrong target) raise either way.

    Returns:
        An :class:`Explanation`.

    Raises:
        ValueError: bad shapes or values (the message names the argument); see the single-method functions.
        TypeError: wrong argument types, or a model output that is not a tensor without ``output_transform``.
        RuntimeError: Grad-CAM layer problems, reentrant gradient checkpointing.

    Shape:
        - inputs: ``(N, C, H, W)``
        - target: ``()`` or ``(N,)``
        - maps: CAM family, occlusion, lime, igos ``(N, 1, H, W)``; gradient methods ``(N, C, H, W)``
        - logits: ``(N, num_classes)``; ig_delta, ig_relative_error, ig_evals: ``(N,)``

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(4, 2))
        >>> out = explain_detailed(net, torch.randn(2, 3, 8, 8), target=1, n_steps=8)
        >>> sorted(out.maps), tuple(out.maps["grad_cam"].shape), out.ig_evals.tolist()
        (['grad_cam', 'integrated_gradients', 'saliency'], (2, 1, 8, 8), [8, 8])
    """
    routed = {"layer": layer, "baseline": baseline, "n_steps": n_steps, "tolerance": tolerance, "max_steps": max_steps}
    return _attribute(model, inputs, target, methods, routed=routed, options=options,
                      internal_batch_size=internal_batch_size, output_transform=output_transform,
                      autocast_dtype=autocast_dtype, channels_last=channels_last, errors=errors)


def explain(
    model: nn.Module,
    inputs: Tensor,
    target: int | Tensor,
    methods: Sequence[str] = METHODS,
    *,
    layer: str | nn.Module | None = None,
    baseline: Tensor | float | None = None,
    n_steps: int = 32,
    internal_batch_size: int | None = None,
    output_transform: OutputTransform | None = None,
    tolerance: float | None = None,
    max_steps: int = 256,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    errors: str = "raise",
) -> dict[str, Tensor]:
    """Several attribution methods at once, sharing work; only the maps of :func:`explain_detailed`.

    Each map equals what the single-method function returns for the same arguments.

    Args:
        model, inputs, target, methods, layer, baseline, n_steps, internal_batch_size, output_transform, tolerance,
        max_steps, autocast_dtype, channels_last, options, errors: as in :func:`explain_detailed`.

    Returns:
        ``{method: map}`` in the order of ``methods``; detached, on the inputs' device.

    Shape:
        - inputs: ``(N, C, H, W)``
        - output: CAM family, occlusion, lime, igos ``(N, 1, H, W)``; gradient methods ``(N, C, H, W)``

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(4, 2))
        >>> maps = explain(net, torch.randn(2, 3, 8, 8), target=torch.tensor([0, 1]), n_steps=4)
        >>> {k: tuple(v.shape) for k, v in maps.items()}
        {'grad_cam': (2, 1, 8, 8), 'saliency': (2, 3, 8, 8), 'integrated_gradients': (2, 3, 8, 8)}
    """
    return explain_detailed(model, inputs, target, methods, layer=layer, baseline=baseline, n_steps=n_steps,
                            internal_batch_size=internal_batch_size, output_transform=output_transform,
                            tolerance=tolerance, max_steps=max_steps, autocast_dtype=autocast_dtype,
                            channels_last=channels_last, options=options, errors=errors).maps


def saliency(
    model: nn.Module,
    inputs: Tensor,
    target: int | Tensor,
    *,
    output_transform: OutputTransform | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Tensor:
    """Vanilla gradient: the raw, signed gradient of the target score w.r.t. the input.

    Equal to Captum's ``Saliency(model).attribute(inputs, target, abs=False)``.

    Args:
        model: the classifier (see :func:`explain_detailed` for wrappers and side effects).
        inputs: a batch of images; may be an inference tensor.
        target: class index for all samples (int or 0-d tensor) or one per sample.
        output_transform: maps the model's output to logits ``(N, num_classes)``.
        autocast_dtype: forward under ``torch.autocast`` with this dtype; ``None`` disables ambient autocast.
        channels_last: feed the model ``channels_last`` inputs.

    Returns:
        The gradient, detached, in the inputs' dtype and device.

    Raises:
        ValueError: ``inputs`` not rank 4, ``target`` of the wrong length or out of range.

    Shape:
        - inputs: ``(N, C, H, W)``
        - target: ``()`` or ``(N,)``
        - output: ``(N, C, H, W)``

    Example::

        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> sal = saliency(net, torch.randn(1, 1, 2, 2), target=1)
        >>> torch.equal(sal.flatten(), net[1].weight[1])
        True
    """
    return explain_detailed(model, inputs, target, ("saliency",), output_transform=output_transform,
                            autocast_dtype=autocast_dtype, channels_last=channels_last).maps["saliency"]


def grad_cam(
    model: nn.Module,
    inputs: Tensor,
    target: int | Tensor,
    *,
    layer: str | nn.Module | None = None,
    output_transform: OutputTransform | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Tensor:
    """Grad-CAM: ``relu(sum_k alpha_k A_k)``, bilinearly upsampled to the input size, not normalised.

    ``A`` is the output of ``layer`` at the input and ``alpha_k`` the spatial mean of the gradient of the target
    score w.r.t. channel ``k`` of ``A``. The activation is captured by a forward hook that lives for this call only
    (removed in ``finally``); the rest of the network receives a clone of it, so an in-place op after the layer
    cannot corrupt it. The gradient comes from ``torch.autograd.grad`` w.r.t. that activation. Equal to Captum's
    ``LayerGradCam(..., relu_attributions=True)`` followed by ``LayerAttribution.interpolate(..., "bilinear")``.

    Args:
        model: the classifier (see :func:`explain_detailed` for wrappers and side effects).
        inputs: a batch of images; may be an inference tensor.
        target: class index for all samples (int or 0-d tensor) or one per sample.
        layer: a dotted module name or a module; ``None`` picks the last 4-D output before the head
            (:func:`find_gradcam_layer`). For a module called several times, its last call is used.
        output_transform: maps the model's output to logits ``(N, num_classes)``.
        autocast_dtype: forward under ``torch.autocast`` with this dtype; the map is computed in fp32.
        channels_last: feed the model ``channels_last`` inputs.

    Returns:
        The non-negative map, detached, in the inputs' dtype and device.

    Raises:
        ValueError: bad inputs/target, an unknown layer name (candidates listed), a layer without a 4-D output.
        RuntimeError: no 4-D layer to pick automatically; a layer that is not called or not on the target's path.

    Shape:
        - inputs: ``(N, C, H, W)``
        - target: ``()`` or ``(N,)``
        - output: ``(N, 1, H, W)``

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(4, 2))
        >>> tuple(grad_cam(net, torch.randn(2, 3, 8, 8), target=0, layer="1").shape)
        (2, 1, 8, 8)
    """
    return explain_detailed(model, inputs, target, ("grad_cam",), layer=layer, output_transform=output_transform,
                            autocast_dtype=autocast_dtype, channels_last=channels_last).maps["grad_cam"]


def integrated_gradients(
    model: nn.Module,
    inputs: Tensor,
    target: int | Tensor,
    *,
    baseline: Tensor | float | None = None,
    n_steps: int = 32,
    internal_batch_size: int | None = None,
    return_delta: bool = False,
    output_transform: OutputTransform | None = None,
    tolerance: float | None = None,
    max_steps: int = 256,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Integrated Gradients ``(x - b) * integral_0^1 grad f(b + alpha (x - b)) d alpha``.

    Quadrature: the trapezoid rule on ``n_steps`` equally spaced nodes ``alpha = 0, 1/(n-1), ..., 1`` (both ends
    included, weights ``1/(n-1)``, halved at the ends). It is exact for linear models, second-order accurate for
    smooth ones, has ``alpha = 1`` as a node (so :func:`explain` gets saliency and Grad-CAM for free) and ``alpha =
    0`` (so ``f(b)`` for the delta costs nothing), and bisecting an interval reuses its end nodes (adaptive mode).
    ``n_steps = 1`` is the single node ``alpha = 1``: gradient x (input - baseline). Note: Captum's
    ``method="riemann_trapezoid"`` uses the same nodes but weights ``1/n`` instead of ``1/(n-1)``, so its
    attributions are ours times ``(n-1)/n`` and miss completeness by that factor.

    Adaptive mode (``tolerance`` set): after the first ``n_steps`` nodes, every sample whose completeness relative
    error ``|delta| / max(|f(x) - f(b)|, 1e-4)`` exceeds ``tolerance`` is refined where its error is: on each interval
    ``[a_j, a_{j+1}]`` of its path, ``r_j = (f(a_{j+1}) - f(a_j)) - (a_{j+1} - a_j) (g_j + g_{j+1}) / 2`` (with
    ``g = grad f . (x - b)``) is the part of the completeness error made there (``sum_j r_j = -delta``; free, since
    ``f`` is known at every node), and each round bisects the intervals with ``|r_j| >= 0.5 max |r|``, until the
    sample meets the tolerance or has ``max_steps`` nodes. A ReLU network is piecewise linear along the path, so
    ``r_j`` is zero where there is no kink and the new nodes go where the kinks are. The result is the trapezoid rule
    on each sample's final, non-uniform nodes (sum rule as above); a sample within tolerance after the first pass
    keeps exactly the fixed-step result. :attr:`Explanation.ig_evals` reports the nodes per sample. Measured in
    ``bench/adaptive_ig.py``: the worst-case error of fixed 65 steps at 0.20x its evaluations (from 9 nodes). The
    criterion is completeness, a scalar: a map can still differ from the converged one more than that of a fixed
    run with the same worst-case completeness error (the bench prints both). Memory: the node gradients are kept
    (one image per evaluation) until a sample is done, and count against ``internal_batch_size`` (below).

    ``internal_batch_size=None`` (automatic): the first forward pass (16 path points at most) measures the bytes
    autograd saves per point; then ``rows = budget // (3 * bytes_per_point)``, with budget half of the free CUDA
    memory, or on CPU a quarter of the available RAM capped at 2 GiB; clamped to at most 2048 rows on CUDA and 64 on
    CPU (where larger batches are not faster). Given or automatic, ``internal_batch_size`` rows of saved activations
    are the memory budget of one chunk, and the explanation's own buffers (inputs, maps, stored node gradients) take
    their share of it, so at ``internal_batch_size=B`` the peak stays that of a training step at batch ``B``
    (``bench/memory.py``); the first chunk holds at most 16 rows to measure the bytes per row.

    Args:
        model: the classifier (see :func:`explain_detailed` for wrappers and side effects).
        inputs: a batch of images; may be an inference tensor.
        target: class index for all samples (int or 0-d tensor) or one per sample.
        baseline: ``None`` (zeros), a number, or a tensor shaped like ``inputs`` or like one sample.
        n_steps: nodes per sample, >= 1 (>= 2 with ``tolerance``).
        internal_batch_size: path points per forward/backward at most (a memory budget, see above); ``None``:
            automatic. Results do not depend on it beyond float rounding.
        return_delta: also return the completeness delta.
        output_transform: maps the model's output to logits ``(N, num_classes)``.
        tolerance: adaptive mode's target relative completeness error (e.g. ``0.02``); ``None`` for fixed steps.
        max_steps: adaptive mode's cap on nodes per sample.
        autocast_dtype: forward under ``torch.autocast`` with this dtype; attributions in the inputs' dtype.
        channels_last: feed the model ``channels_last`` inputs.

    Returns:
        The attributions, or ``(attributions, delta)`` with ``delta[i] = attributions[i].sum() - (f(x_i) - f(b_i))``.

    Raises:
        ValueError: bad inputs/target/baseline shape, ``n_steps < 1``, bad ``tolerance`` / ``max_steps``.

    Shape:
        - inputs: ``(N, C, H, W)``; baseline: ``(N, C, H, W)``, ``(C, H, W)`` or ``(1, C, H, W)``
        - target: ``()`` or ``(N,)``
        - output: ``(N, C, H, W)``; delta ``(N,)``

    Example::

        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> attr, delta = integrated_gradients(net, torch.randn(3, 1, 2, 2), 0, n_steps=4, return_delta=True)
        >>> bool(delta.abs().max() < 1e-5)
        True
    """
    out = explain_detailed(model, inputs, target, ("integrated_gradients",), baseline=baseline, n_steps=n_steps,
                           internal_batch_size=internal_batch_size, output_transform=output_transform,
                           tolerance=tolerance, max_steps=max_steps, autocast_dtype=autocast_dtype,
                           channels_last=channels_last)
    attr = out.maps["integrated_gradients"]
    if return_delta:
        assert out.ig_delta is not None
        return attr, out.ig_delta
    return attr
