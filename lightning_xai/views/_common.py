"""What every view shares: its input (:class:`ViewContext`), its output (:class:`ViewOutput`), the side-effect-free
capture of layer activations, and the captioned tile grid the views render into."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.utils import make_grid

from lightning_xai._validation import Option, check_options
from lightning_xai.attribution import preserved_state, resolve_layer, unwrap_model
from lightning_xai.render import caption, denormalize, to_uint8, upscale_factor

__all__ = [
    "VIEWS", "Embedding", "View", "ViewContext", "ViewOutput", "capture", "checked", "display", "register_view",
    "tile_grid", "to_spatial",
]

OutputTransform = Callable[[Any], Tensor]
#: Rows per forward pass when a view runs the model over its pool.
CHUNK_ROWS = 64


@dataclass
class ViewContext:
    """The inputs of one view round.

    Attributes:
        model: the classifier (wrappers are unwrapped by the views).
        layer: dotted name of the spatial layer the views read (the Grad-CAM layer by default).
        images: the probes ``(P, C, H, W)`` (normalised like the training data).
        labels: ``(P,)`` long.
        ids: ``(P,)`` long, stable sample ids used in captions and to compare epochs.
        pool_images: the larger, fixed pool ``(N, C, H, W)`` (probes plus a bounded sample of data); defaults to the
            probes.
        pool_labels: ``(N,)``; pool_ids: ``(N,)``.
        concepts: ``{name: (N, 1, H, W)}`` binary masks on the pool for dissection (may be empty).
        class_names: names of the classes, or ``None`` (then ``"0"``, ``"1"``, ...).
        mean, std: per-channel normalisation of the images (for display and activation maximisation).
        output_transform: maps the model output to logits ``(N, num_classes)``.
        epoch: the epoch; step: the logging step.
    """

    model: nn.Module
    layer: str
    images: Tensor
    labels: Tensor
    ids: Tensor
    pool_images: Tensor | None = None
    pool_labels: Tensor | None = None
    pool_ids: Tensor | None = None
    concepts: Mapping[str, Tensor] = field(default_factory=dict)
    class_names: Sequence[str] | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    output_transform: OutputTransform | None = None
    epoch: int = 0
    step: int = 0
    _outputs: dict[str, tuple[Tensor, Tensor | None, Tensor | None]] = field(default_factory=dict, repr=False)

    def outputs(self, which: str = "pool") -> tuple[Tensor, Tensor, Tensor]:
        """``(logits, layer activations (N, C, h, w), penultimate features (N, D))`` of the pool or the probes.

        One forward pass (:func:`capture`) per set and round, shared by every view that asks.
        """
        if which not in self._outputs:
            images = self.pool_images if which == "pool" else self.images
            self._outputs[which] = capture(self.model, images, layer=self.layer, head_input=True,
                                           output_transform=self.output_transform)
        return self._outputs[which]  # type: ignore[return-value]

    def __post_init__(self) -> None:
        if self.pool_images is None:
            self.pool_images, self.pool_labels, self.pool_ids = self.images, self.labels, self.ids
        if self.pool_labels is None or self.pool_ids is None:
            raise ValueError("`pool_labels` and `pool_ids` are required with `pool_images`")

    def class_name(self, index: int) -> str:
        names = self.class_names
        return str(names[index]) if names is not None and 0 <= index < len(names) else str(index)


@dataclass
class Embedding:
    """One embedding for TensorBoard's projector.

    Attributes:
        tag: the projector tag.
        features: ``(N, D)`` float on the CPU.
        metadata: one row of strings per point (columns named by ``header``).
        header: column names.
        thumbnails: ``(N, 3, h, w)`` ``uint8`` RGB, or ``None``.
    """

    tag: str
    features: Tensor
    metadata: list[list[str]]
    header: list[str]
    thumbnails: Tensor | None = None


@dataclass
class ViewOutput:
    """What one view produced in one round; the monitor writes it (images ``uint8 (3, H, W)``, finite scalars)."""

    images: dict[str, Tensor] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    embeddings: list[Embedding] = field(default_factory=list)


class View:
    """The base of every view: a class with a ``name`` (what ``ExplanationMonitor(views=...)`` accepts), its
    ``options`` (name -> :class:`~lightning_xai._validation.Option`: the keyword arguments of ``__init__``, checked by
    the one checker before the view is made) and ``__call__(ctx) -> ViewOutput``. A view that keeps state across
    rounds adds ``state_dict()`` / ``load_state_dict(state)`` (plain values: it goes into the checkpoint).
    Registered with :func:`register_view`; its docstring says what it costs.
    """

    name: str = ""
    options: Mapping[str, Option] = {}

    def __call__(self, ctx: ViewContext) -> ViewOutput:
        raise NotImplementedError


#: View name -> class, in the order a round runs them (the built-ins, then views registered from outside).
VIEWS: dict[str, type[View]] = {}


def register_view(cls: type[View]) -> type[View]:
    """Class decorator: add a :class:`View` subclass under its ``name`` (a name can be registered once), so
    ``ExplanationMonitor(views=(name,), view_options={name: {...}})`` accepts and runs it."""
    if not (isinstance(cls, type) and issubclass(cls, View)):
        raise TypeError(f"register_view takes a subclass of lightning_xai.views.View, got {cls!r}")
    if not isinstance(cls.name, str) or not cls.name.isidentifier():
        raise ValueError(f"{cls.__name__}.name must be an identifier (the name in `views=`), got {cls.name!r}")
    if VIEWS.get(cls.name, cls) is not cls:
        raise ValueError(f"a view named {cls.name!r} is already registered ({VIEWS[cls.name].__name__})")
    VIEWS[cls.name] = cls
    return cls


def checked(owner: str, spec: Mapping[str, Option], **values: Any) -> dict[str, Any]:
    """A view's (or function's) keyword arguments checked against its option ``spec`` by the one checker
    (:func:`lightning_xai._validation.check_options`): the message names ``owner``, the option and its value."""
    return check_options(values, spec, "", owner=owner)


def to_spatial(act: Tensor) -> Tensor:
    """A layer output as ``(N, C, h, w)``: 4-D passes through; tokens ``(N, T, D)`` become the patch grid.

    For tokens, the largest square number of trailing tokens is the grid (leading class/register tokens dropped).
    """
    if act.ndim == 4:
        return act
    if act.ndim == 3:
        n, t, d = act.shape
        g = math.isqrt(t)
        if g < 1:
            raise ValueError(f"cannot arrange {t} tokens on a grid")
        return act[:, t - g * g :, :].transpose(1, 2).reshape(n, d, g, g)
    if act.ndim == 2:
        return act[:, :, None, None]
    raise ValueError(f"the layer output has shape {tuple(act.shape)}; expected (N, C, h, w) or tokens (N, T, D)")


def _logits(out: Any, output_transform: OutputTransform | None, rows: int) -> Tensor:
    if output_transform is not None:
        out = output_transform(out)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != rows:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the model output (after `output_transform`) must be logits ({rows}, num_classes), got {got}")
    return out.detach().float()


def capture(
    model: nn.Module,
    inputs: Tensor,
    *,
    layer: str | None = None,
    head_input: bool = False,
    output_transform: OutputTransform | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Forward ``inputs`` through ``model`` without side effects and record what the views need.

    Runs in chunks inside :func:`~lightning_xai.attribution.preserved_state` (eval mode, RNG restored) under
    ``no_grad``; the hooks live for this call only. Cost: one forward pass over ``inputs``.

    Args:
        model: the classifier (wrappers unwrapped).
        inputs: ``(N, C, H, W)``.
        layer: dotted name of a layer whose output to record (as ``(N, C, h, w)``, see :func:`to_spatial`), or None.
        head_input: record the input of the last ``nn.Linear`` the forward calls (the penultimate features); if the
            model has none, the global average of ``layer``'s output.
        output_transform: maps the model output to logits.

    Returns:
        ``(logits (N, K), activations (N, C, h, w) | None, features (N, D) | None)``, detached, float32.
    """
    net = unwrap_model(model)
    module = resolve_layer(net, layer)[1] if layer is not None else None
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)] if head_input else []
    logits, acts, feats = [], [], []
    seen: dict[str, Tensor] = {}

    def layer_hook(mod: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, Tensor):
            seen["act"] = output.detach().float().clone()  # clone: a later in-place op would overwrite it

    def linear_hook(mod: nn.Module, args: Any) -> None:
        if args and isinstance(args[0], Tensor):
            seen["feat"] = args[0].detach().float().flatten(1).clone()  # the last Linear called wins

    handles = []
    try:
        with preserved_state(model), torch.no_grad():
            if module is not None:
                handles.append(module.register_forward_hook(layer_hook))
            handles += [m.register_forward_pre_hook(linear_hook) for m in linears]
            for start in range(0, inputs.shape[0], chunk_rows):
                seen.clear()
                chunk = inputs[start : start + chunk_rows].detach().clone()
                logits.append(_logits(net(chunk), output_transform, chunk.shape[0]))
                if module is not None:
                    if "act" not in seen:
                        raise RuntimeError(f"layer {layer!r} produced no tensor output in the forward pass")
                    acts.append(to_spatial(seen["act"]))
                if head_input:
                    if "feat" in seen and seen["feat"].shape[0] == chunk.shape[0]:
                        feats.append(seen["feat"])
                    elif "act" in seen:
                        feats.append(to_spatial(seen["act"]).mean(dim=(2, 3)))
                    else:
                        raise RuntimeError("the model has no nn.Linear head and no layer was given for features")
    finally:
        for handle in handles:
            handle.remove()
    return (
        torch.cat(logits),
        torch.cat(acts) if acts else None,
        torch.cat(feats) if feats else None,
    )


def tile_grid(
    tiles: Tensor,
    captions: Sequence[Sequence[str]],
    *,
    nrow: int,
    upscale_to: int | None = 64,
    padding: int = 2,
) -> Tensor:
    """Captioned tiles as one ``uint8`` RGB grid (each tile enlarged by nearest neighbour, text strip below).

    Args:
        tiles: float RGB in ``[0, 1]`` ``(N, 3, h, w)``.
        captions: lines of text per tile (every tile gets as many lines as the longest caption).
        nrow: tiles per row.

    Returns:
        ``uint8`` ``(3, H, W)`` on the CPU.
    """
    n, _, h, w = tiles.shape
    k = upscale_factor(h, w, upscale_to)
    big = F.interpolate(tiles.detach().float().cpu(), scale_factor=k, mode="nearest") if k > 1 else tiles.cpu()
    cells = to_uint8(big)
    lines = max((len(c) for c in captions), default=0)
    out = []
    for i in range(n):
        entry = list(captions[i]) + [""] * (lines - len(captions[i]))
        out.append(caption(cells[i], entry) if lines else cells[i])
    stacked = torch.stack(out)
    return make_grid(stacked, nrow=nrow, padding=padding, pad_value=255)


def display(images: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    """Images as displayable RGB in ``[0, 1]`` on the CPU."""
    return denormalize(images.detach().cpu(), mean, std)
