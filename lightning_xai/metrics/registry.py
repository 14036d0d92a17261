"""The measure registry: per-epoch explanation-quality measures, their logged keys and options (pure torch).

A *measure* turns one explanation round (maps, predictions, masks, per-probe extras) into scalars. Each declares

- ``keys(methods)``: every scalar key it can log for a method selection, so a monitor can check
  ``EarlyStopping(monitor=...)`` before training (nothing else lists keys);
- ``options``: its options with defaults and checks (:class:`~lightning_xai._validation.Option`);
- ``compute(ctx)``: the scalars (and per-probe values for the history) from a :class:`MeasureContext`;
- optionally ``shard(...)``: per-probe work that needs the model (extra forward passes), run by every rank on its
  own probes while they are explained; its ``(N,)`` outputs reach ``compute`` as ``ctx.extras``.

Adding a measure is one :class:`Measure` subclass with the :func:`register_measure` decorator (the built-in ones:
:mod:`lightning_xai.metrics.measures`, one file each); it then works in ``ExplanationMonitor(metrics=(name,))``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_xai._validation import Option

__all__ = [
    "Measure",
    "MeasureContext",
    "MeasureResult",
    "available_measures",
    "get_measure",
    "measure_keys",
    "register_measure",
    "run_measures",
]

ShardFn = Callable[[nn.Module, Tensor, Tensor, Mapping[str, Tensor], Mapping[str, Any], Any], dict[str, Tensor]]


@dataclass(frozen=True)
class MeasureContext:
    """What a measure sees of one explanation round, in probe order, on the CPU.

    Attributes:
        methods: the explained methods, in order.
        maps: ``{method: (N, 1, H, W)}`` heatmaps (see :func:`~lightning_xai.attribution.to_heatmap`).
        pred: ``(N,)`` predicted classes; target: ``(N,)`` explained classes.
        masks: ``(N, 1, H, W)`` ground-truth masks of the probes, or ``None``.
        extras: per-probe results of the round: ``ig_error`` ``(N,)`` with Integrated Gradients, the outputs of
            the measures' ``shard`` functions, and ``random/{method}`` maps in the sanity stage.
        options: this measure's options, defaults filled in.
        size: side of the pooled maps that rank comparisons use.
    """

    methods: tuple[str, ...]
    maps: Mapping[str, Tensor]
    pred: Tensor
    target: Tensor
    masks: Tensor | None = None
    extras: Mapping[str, Tensor] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    size: int = 16


@dataclass
class MeasureResult:
    """Scalars to log (full keys), per-probe values for the history, per-probe distributions to log as histograms."""

    scalars: dict[str, float] = field(default_factory=dict)
    per_probe: dict[str, list[float]] = field(default_factory=dict)
    histograms: dict[str, Tensor] = field(default_factory=dict)

    def update(self, other: MeasureResult) -> None:
        self.scalars.update(other.scalars)
        self.per_probe.update(other.per_probe)
        self.histograms.update(other.histograms)


class Measure:
    """The base of every measure: subclass it, set ``name`` (and ``options``, ``cost``, ...) and implement ``keys``
    and ``compute``, then register the class with the :func:`register_measure` decorator. The function style
    ``Measure(name, keys, compute, ...)`` makes one from plain functions (each given argument replaces the method or
    attribute of that name).

    Attributes:
        name: the name in ``ExplanationMonitor(metrics=...)`` and ``metric_options``.
        options: option name -> :class:`~lightning_xai._validation.Option`.
        shard: ``None``, or a method ``shard(model, images, targets, maps, options, output_transform) -> {key: (n,)}``
            run on each rank's probes (``maps``: that shard's heatmaps) in eval mode with gradients on.
        stage: ``"epoch"`` (every explained epoch) or ``"sanity"`` (the model-randomisation round: ``ctx.extras``
            holds ``random/{method}`` maps).
        always: on whenever it applies, not chosen in ``metrics=`` (IG completeness).
        cost: one line on what it costs, shown in the monitor's docstring and cost note.
    """

    name: str = ""
    options: Mapping[str, Option] = {}
    shard: ShardFn | None = None
    stage: Literal["epoch", "sanity"] = "epoch"
    always: bool = False
    cost: str = ""

    def __init__(self, name: str | None = None, keys: Callable[[Sequence[str]], set[str]] | None = None,
                 compute: Callable[[MeasureContext], MeasureResult] | None = None, *,
                 options: Mapping[str, Option] | None = None, shard: ShardFn | None = None,
                 shard_keys: Callable[[Sequence[str]], list[str]] | None = None,
                 stage: Literal["epoch", "sanity"] | None = None, always: bool | None = None,
                 cost: str | None = None) -> None:
        given = {"name": name, "keys": keys, "compute": compute, "options": options, "shard": shard,
                 "shard_keys": shard_keys, "stage": stage, "always": always, "cost": cost}
        for attribute, value in given.items():
            if value is not None:
                setattr(self, attribute, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, stage={self.stage!r})"

    def keys(self, methods: Sequence[str]) -> set[str]:
        """Every key ``compute`` may log for these methods (checked against ``EarlyStopping(monitor=...)``)."""
        raise NotImplementedError(f"measure {self.name!r} does not say which keys it logs")

    def compute(self, ctx: MeasureContext) -> MeasureResult:
        """The scalars (never non-finite), per-probe values and histograms of one round."""
        raise NotImplementedError(f"measure {self.name!r} computes nothing")

    def shard_keys(self, methods: Sequence[str]) -> list[str]:
        """The keys ``shard`` returns (an empty shard sends empty tensors under them, so every rank takes part in
        the gather)."""
        return []


_REGISTRY: dict[str, Measure] = {}


def register_measure(measure: Any) -> Any:
    """Add a measure to the registry (a name can be registered once): a :class:`Measure` instance, or, as a class
    decorator, a :class:`Measure` subclass (registered as one instance; the class is returned)."""
    instance = measure() if isinstance(measure, type) and issubclass(measure, Measure) else measure
    if not isinstance(instance, Measure):
        raise TypeError(f"`measure` must be a Measure or a subclass of it, got {type(measure).__name__}")
    if not isinstance(instance.name, str) or not instance.name:
        raise ValueError(f"{type(instance).__name__}.name must be a non-empty string, got {instance.name!r}")
    if instance.name in _REGISTRY and _REGISTRY[instance.name] is not instance:
        raise ValueError(f"a measure named {instance.name!r} is already registered")
    _REGISTRY[instance.name] = instance
    return measure


def _ensure_builtins() -> None:
    import lightning_xai.metrics.measures  # noqa: F401  (registers the built-in measures on import)


def available_measures(*, selectable: bool | None = None) -> tuple[str, ...]:
    """Names of the registered measures; ``selectable=True``: those chosen with ``metrics=`` (not always-on)."""
    _ensure_builtins()
    return tuple(name for name, m in _REGISTRY.items() if selectable is None or (not m.always) == selectable)


def get_measure(name: str) -> Measure:
    _ensure_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown measure {name!r}; registered: {tuple(_REGISTRY)}")
    return _REGISTRY[name]


def active_measures(selected: Sequence[str], *, stage: str = "epoch") -> list[Measure]:
    """The always-on measures plus the ``selected`` ones, of one stage, in registry order."""
    _ensure_builtins()
    return [m for name, m in _REGISTRY.items() if m.stage == stage and (m.always or name in selected)]


def measure_keys(selected: Sequence[str], methods: Sequence[str]) -> set[str]:
    """Every scalar key the always-on and ``selected`` measures (all stages) can log for ``methods``."""
    keys: set[str] = set()
    for stage in ("epoch", "sanity"):
        for m in active_measures(selected, stage=stage):
            keys |= m.keys(tuple(methods))
    return keys


def run_measures(measures: Sequence[Measure], ctx: MeasureContext, options: Mapping[str, Mapping[str, Any]]
                 ) -> MeasureResult:
    """Compute every measure on ``ctx`` (each with its own options); merged result."""
    out = MeasureResult()
    for m in measures:
        result = m.compute(_with_options(ctx, options.get(m.name, {})))
        out.update(result)
    return out


def _with_options(ctx: MeasureContext, options: Mapping[str, Any]) -> MeasureContext:
    return MeasureContext(ctx.methods, ctx.maps, ctx.pred, ctx.target, ctx.masks, ctx.extras, options, ctx.size)


def finite_mean(values: Tensor) -> float | None:
    """Mean of the finite entries, or ``None`` when there is none (a measure then logs nothing, never NaN)."""
    values = values.detach().float().flatten()
    values = values[torch.isfinite(values)]
    return float(values.mean()) if values.numel() else None
