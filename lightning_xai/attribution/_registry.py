"""The method registry: one class per attribution method, and how its options are declared and checked.

A method is a subclass of :class:`Method` in its own file under ``lightning_xai/attribution/methods/``, decorated
with :func:`register`. It declares

- ``name`` and ``kind`` (``"gradient"``, ``"perturbation"``, ``"CAM"`` or ``"optimisation"``);
- ``options``: ``{option: Option(default, ok, allowed)}`` (:class:`lightning_xai._validation.Option`); :func:`check_method_options` validates them without a
  model, so a caller (the monitor) can check a configuration at construction;
- what it needs from the *shared pass* (:meth:`Method.request`): the target's input gradient at the inputs, the
  activation and gradient of a layer at the inputs, or Integrated Gradients' path points. ``explain`` merges these
  requests of all chosen methods into one batched forward/backward stream, so saliency, input x gradient and the
  whole CAM family cost nothing on top of Integrated Gradients;
- :meth:`Method.compute`: how it turns the shared results (and, for perturbation, noise and optimisation methods,
  its own batched passes through :class:`lightning_xai.attribution._engine.Context`) into a map ``(N, c, H, W)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from lightning_xai._validation import SEED_MAX, Option, is_int, is_number

if TYPE_CHECKING:  # pragma: no cover
    from lightning_xai.attribution._engine import Context, Shared

__all__ = [
    "KINDS",
    "METHODS",
    "Method",
    "Option",
    "Request",
    "available_methods",
    "check_method_options",
    "get_method",
    "is_cheap",
    "passes",
    "register",
]

# The default selection of ``explain`` and of the monitor: the three methods that share one pass.
METHODS = ("grad_cam", "saliency", "integrated_gradients")
KINDS = ("gradient", "perturbation", "CAM", "optimisation")

_REGISTRY: dict[str, type[Method]] = {}


# ---------------------------------------------------------------------------------------------- option rules
# A rule is ``(ok, allowed)``: a test of a value and the allowed values in words (the error names option and value).
# An optional third element gives the machine-readable part of the spec (kind, bounds), so the monitor's tests fuzz a
# method's options from the registry alone and see which sizes lack an upper bound.
Rule = tuple[Callable[[Any], bool], str] | tuple[Callable[[Any], bool], str, dict[str, Any]]


def option(default: Any, rule: Rule) -> Option:
    """An option with ``default`` checked by ``rule`` (the shared :class:`lightning_xai._validation.Option`)."""
    ok, allowed, *spec = rule
    return Option(default, ok, allowed, **(spec[0] if spec else {}))


def int_at_least(low: int) -> Rule:
    """An int ``>= low`` without an upper bound: never for a size (use :func:`int_in`)."""
    return (lambda v: is_int(v) and v >= low), f"an int >= {low}", {"kind": "int", "low": low}


def int_in(low: int, high: int) -> Rule:
    """An int in ``[low, high]``: every size-like option has an upper bound (a size without one is a denial of
    service: ``n_steps=10**9`` once asked for 18 GB before the first epoch)."""
    return (lambda v: is_int(v) and low <= v <= high), f"an int in [{low}, {high}]", {"kind": "int", "low": low,
                                                                                       "high": high}


def optional(rule: Rule) -> Rule:
    ok, allowed, *spec = rule
    return (lambda v: v is None or ok(v)), f"None or {allowed}", {**(spec[0] if spec else {}), "nullable": True}


POSITIVE: Rule = (lambda v: is_number(v) and v > 0, "a positive finite number",
                  {"kind": "float", "low": 0.0, "open_low": True})
NON_NEGATIVE: Rule = (lambda v: is_number(v) and v >= 0, "a finite number >= 0", {"kind": "float", "low": 0.0})
WINDOW: Rule = (lambda v: (is_int(v) and 1 <= v <= 4096) or (isinstance(v, tuple) and len(v) == 2 and all(
    is_int(s) and 1 <= s <= 4096 for s in v)), "an int in [1, 4096] or a pair (h, w) of such ints")

# Shared spellings of the options several methods have.
LAYER = Option(None, lambda v: v is None or isinstance(v, (str, nn.Module)),
               "None (automatic), a dotted module name or a module")
RESHAPE = Option(None, lambda v: v is None or callable(v), "None or a callable mapping the layer's output to (N, C, h, w)")
BASELINE = Option(None, lambda v: v is None or is_number(v) or isinstance(v, Tensor),
                  "None (zeros), a number or a tensor shaped like the inputs or one sample")
SEED = option(0, int_in(0, SEED_MAX))


@dataclass
class Request:
    """What a method needs from the shared pass at the inputs (all default to nothing)."""

    input_grad: bool = False  # gradient of the target score w.r.t. the inputs, at the inputs
    layer: str | nn.Module | None | bool = False  # False: none; else the layer (None: automatic) whose
    # activation and gradient at the inputs it needs
    path: dict[str, Any] | None = None  # Integrated Gradients nodes: baseline, n_steps, tolerance, max_steps


class Method:
    """Base class of an attribution method (see the module docstring and DESIGN.md "Adding a method").

    Subclasses set the class attributes and implement :meth:`compute`; :meth:`request` defaults to "nothing from
    the shared pass" (the method runs its own batched passes through the context).
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    options: ClassVar[dict[str, Option]] = {}
    uses_layer: ClassVar[bool] = False
    # Forward + backward passes per probe, in words, for the docs table (e.g. "0 inside IG, else 1").
    cost: ClassVar[str] = ""
    # The kind of model the method needs, in words (e.g. "class-token vision transformer"); None: any classifier.
    # Such a method raises a clear error on other models (the monitor's setup dry run leaves it out with the cause).
    requires: ClassVar[str | None] = None

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.opts = dict(options)

    def request(self) -> Request:
        return Request()

    def passes(self, image_size: tuple[int, int]) -> float:
        """Model evaluations per probe for cost estimates, in forward + input-gradient backward units (a forward
        alone counts 1/3), for images of ``image_size``. 1 (the default): a single pass, shared with the other
        single-pass methods; such a method is *cheap* (:func:`is_cheap`) and the monitor's default budget runs it
        at every explained epoch."""
        return 1.0

    def compute(self, ctx: Context, shared: Shared) -> Tensor:
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.options = dict(cls.options)  # each class its own dict


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add ``cls`` to the registry under ``cls.name`` (names are unique)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} must set a non-empty `name` to be registered")
    if getattr(cls, "kind", None) not in KINDS:
        raise TypeError(f"{cls.__name__}.kind must be one of {KINDS}, got {getattr(cls, 'kind', None)!r}")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"an attribution method named {name!r} is already registered ({_REGISTRY[name].__name__})")
    _REGISTRY[name] = cls
    return cls


def _load() -> None:
    # The method files register themselves on import; importing the package imports every file in it.
    import lightning_xai.attribution.methods  # noqa: F401


def available_methods() -> tuple[str, ...]:
    """Names of the registered attribution methods, in registration order.

    Example::

        >>> {"grad_cam", "saliency", "integrated_gradients", "occlusion"} <= set(available_methods())
        True
    """
    _load()
    return tuple(_REGISTRY)


def get_method(name: Any) -> type[Method]:
    """The registered class for ``name``; ``ValueError`` listing the names otherwise."""
    _load()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown attribution method {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def is_cheap(name: str, options: Mapping[str, Any] | None = None, image_size: tuple[int, int] = (224, 224)) -> bool:
    """Whether method ``name`` with ``options`` costs at most one forward + backward pass per probe
    (:meth:`Method.passes`): Grad-CAM and its family, saliency, input x gradient, guided backprop, deconvnet.

    Example::

        >>> is_cheap("grad_cam"), is_cheap("integrated_gradients")
        (True, False)
    """
    return passes(name, options, image_size) <= 1.0


def passes(name: str, options: Mapping[str, Any] | None = None, image_size: tuple[int, int] = (224, 224)) -> float:
    """Model evaluations per probe of method ``name`` with ``options`` (checked) on images of ``image_size``, in
    forward + backward units (see :meth:`Method.passes`)."""
    return float(get_method(name)(check_method_options(name, options)).passes(tuple(image_size)))


def check_method_options(name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate one method's options without a model; return them completed with the defaults.

    Args:
        name: a registered method name (:func:`available_methods`).
        options: ``{option: value}``; unknown options are an error (the message lists the method's options).

    Returns:
        ``{option: value}`` for every option of the method.

    Raises:
        ValueError: unknown method or option, or a bad value (the message names the method, the option, the value
            and what is allowed).
        TypeError: ``options`` is not a mapping.

    Example::

        >>> check_method_options("occlusion", {"window": 4})["stride"]
        2
        >>> check_method_options("integrated_gradients", {"n_steps": 0})
        Traceback (most recent call last):
        ...
        ValueError: integrated_gradients option `n_steps` must be an int in [1, 4096], got 0
    """
    cls = get_method(name)
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise TypeError(f"options for {name!r} must be a mapping {{option: value}}, got {type(options).__name__}")
    unknown = [key for key in options if key not in cls.options]
    if unknown:
        allowed = ", ".join(cls.options) or "(none)"
        raise ValueError(f"{name} has no option {unknown[0]!r}; its options: {allowed}")
    merged = {key: opt.default for key, opt in cls.options.items()}
    merged.update(options)
    for key, value in merged.items():
        if not cls.options[key].ok(value):
            raise ValueError(f"{name} option `{key}` must be {cls.options[key].allowed}, got {value!r}")
    check = getattr(cls, "check", None)
    if check is not None:
        check(merged)
    return merged
