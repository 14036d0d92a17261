"""Grad-CAM layers: unwrap wrappers, resolve names, pick a layer automatically, make its activation spatial.

CAM-family methods need an ``(N, C, h, w)`` activation. CNNs give one; transformers give tokens ``(N, T, C)``
(torchvision/timm ViT, DeiT) or a channels-last map ``(N, h, w, C)`` (Swin). :func:`as_spatial` is the one place
where such activations (and, alike, their gradients) become ``(N, C, h, w)``; :func:`gradcam_layer` picks or checks a
layer with one traced forward and returns the reshape that fits it.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_xai.attribution._state import preserved_state

__all__ = [
    "ChannelsLast",
    "GradCamLayer",
    "TokenGrid",
    "as_spatial",
    "find_gradcam_layer",
    "gradcam_layer",
    "gradient_blockers",
    "resolve_layer",
    "unwrap_model",
]

Reshape = Callable[[Tensor], Tensor]

# Name components a user may copy from a wrapper's named_modules(): torch.compile and (Distributed)DataParallel.
_WRAPPER_PARTS = ("_orig_mod", "module")
_MAX_LISTED = 25
# Class/register/distillation tokens in front of the patch tokens (timm's num_prefix_tokens): at most this many.
_MAX_PREFIX = 16
# Layers that do not compute features: a map taken there is a pooled, normalised or reordered copy of an earlier one.
_NOT_FEATURES: tuple[type, ...] = (
    nn.LayerNorm, nn.Identity, nn.Flatten, nn.Unflatten, nn.modules.dropout._DropoutNd,
    nn.modules.pooling._AvgPoolNd, nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
)
if hasattr(nn, "RMSNorm"):
    _NOT_FEATURES += (nn.RMSNorm,)
_NOT_FEATURE_NAMES = ("Permute", "Transpose", "Flatten")  # torchvision.ops.misc.Permute and look-alikes
# An element of a block list: timm "blocks.11", torchvision "encoder.layers.encoder_layer_11", Swin "features.7".
_BLOCK_NAME = re.compile(r"(^|\.)(\d+|[A-Za-z]\w*_\d+)$")


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the eager module behind ``torch.compile`` and ``(Distributed)DataParallel`` wrappers.

    Hooks added to a compiled module after compilation are ignored (pytorch #117758), and a forward through the
    DDP wrapper on one rank only can hang (pytorch #54059), so attribution always runs on the wrapped module.
    (A compiled *submodule*, ``self.model = torch.compile(net)``, is run eagerly by :func:`preserved_state`.)
    """
    while True:
        orig = getattr(model, "_orig_mod", None)
        if isinstance(orig, nn.Module):
            model = orig
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def _is_wrapper(module: nn.Module) -> bool:
    return isinstance(getattr(module, "_orig_mod", None), nn.Module) or isinstance(
        module, (nn.DataParallel, nn.parallel.DistributedDataParallel))


@contextlib.contextmanager
def hooked_modules(net: nn.Module, make_hook: Callable[[str], Callable[..., Any]]) -> Iterator[None]:
    """A forward hook ``make_hook(name)`` on every named submodule but wrappers, for one ``with`` block (removed in
    ``finally``)."""
    handles = []
    try:
        for name, module in net.named_modules():
            if name and not _is_wrapper(module):
                handles.append(module.register_forward_hook(make_hook(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _plain_name(name: str) -> str:
    """``model._orig_mod.layer4`` -> ``model.layer4``: the name a user writes for a layer inside a wrapper."""
    return ".".join(p for p in name.split(".") if p not in _WRAPPER_PARTS)


def _candidates(names: list[str]) -> str:
    if len(names) > _MAX_LISTED:
        return ", ".join(names[-_MAX_LISTED:]) + f" (and {len(names) - _MAX_LISTED} earlier ones)"
    return ", ".join(names) if names else "(none)"


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Find a submodule of ``model`` by dotted name or by identity.

    Args:
        model: the model (``torch.compile`` / DataParallel wrappers are unwrapped first).
        layer: a dotted name from ``model.named_modules()`` or a submodule instance. Wrapper components
            (``_orig_mod`` of ``torch.compile``, ``module`` of DataParallel) may be left out or written, anywhere in
            the name: for ``self.model = torch.compile(net)``, ``"model.layer4"`` and ``"model._orig_mod.layer4"``
            are the same layer.

    Returns:
        ``(name, module)`` with ``name`` as ``named_modules()`` of the unwrapped model spells it.

    Raises:
        ValueError: the name or module is not a submodule of ``model``; the message lists candidate names.
        TypeError: ``layer`` is neither a string nor a module.

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> resolve_layer(net, "0")[0], resolve_layer(net, net[1])[0]
        ('0', '1')
    """
    net = unwrap_model(model)
    named = [(name, module) for name, module in net.named_modules() if name and not _is_wrapper(module)]
    names = [name for name, _ in named]
    if isinstance(layer, nn.Module):
        layer = unwrap_model(layer)
        for name, module in named:
            if module is layer:
                return name, module
        raise ValueError(
            f"`layer` ({type(layer).__name__} instance) is not a submodule of the model; "
            f"candidates: {_candidates(names)}"
        )
    if not isinstance(layer, str):
        raise TypeError(f"`layer` must be a dotted module name or an nn.Module, got {type(layer).__name__}")
    lookup = dict(named)
    if layer in lookup:
        return layer, lookup[layer]
    plain = {_plain_name(name): name for name in names}
    key = _plain_name(layer)
    if key in plain:
        return plain[key], lookup[plain[key]]
    close = difflib.get_close_matches(layer, names, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"`layer`={layer!r} is not a submodule name of the model.{hint} Candidates: {_candidates(names)}")


# ------------------------------------------------------------------------------------------- spatial activations


@dataclass(frozen=True)
class TokenGrid:
    """Reshape tokens ``(N, prefix + height * width, C)`` to ``(N, C, height, width)``, dropping the prefix tokens.

    ``prefix`` counts the class, distillation and register tokens in front of the patch tokens (timm's
    ``num_prefix_tokens``: 1 for ViT, 2 for distilled DeiT, 0 for a model without a class token).

    Example::

        >>> TokenGrid(2, 3, prefix=1)(torch.zeros(4, 7, 5)).shape
        torch.Size([4, 5, 2, 3])
    """

    height: int
    width: int
    prefix: int = 0

    def __call__(self, tokens: Tensor) -> Tensor:
        expected = self.prefix + self.height * self.width
        if tokens.ndim != 3 or tokens.shape[1] != expected:
            raise ValueError(
                f"{self!r} expects tokens of shape (N, {expected}, C), got {tuple(tokens.shape)}; pass a matching "
                "`reshape=` (e.g. TokenGrid(h, w, prefix=...)) for this layer"
            )
        patches = tokens[:, self.prefix:]
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], self.height, self.width)


@dataclass(frozen=True)
class ChannelsLast:
    """Permute a channels-last map ``(N, h, w, C)`` (Swin) to ``(N, C, h, w)``.

    Example::

        >>> ChannelsLast()(torch.zeros(2, 3, 4, 5)).shape
        torch.Size([2, 5, 3, 4])
    """

    def __call__(self, activation: Tensor) -> Tensor:
        if activation.ndim != 4:
            raise ValueError(f"ChannelsLast expects (N, h, w, C), got {tuple(activation.shape)}")
        return activation.permute(0, 3, 1, 2)


def _grid_fits(h: int, w: int, size: tuple[int, int] | None, *, exact: bool = False) -> bool:
    """Could ``(h, w)`` be the input ``size`` downsampled by one common factor?

    ``exact``: a patch grid (the factor divides both sides). Otherwise borders may be lost or padded (valid or
    strided convolutions round), so each side may miss ``size / factor`` by ``2 + side / 8``; what must hold is
    one factor for both sides, which a channels-last map read as ``(N, C, h, w)`` (its ``w, C``) or attention
    internals ``(B, heads, tokens, dim)`` do not have.
    """
    if size is None:
        return True
    big_h, big_w = size
    if not (1 <= h <= big_h and 1 <= w <= big_w):
        return False
    if exact:
        return big_h % h == 0 and big_w % w == 0 and big_h // h == big_w // w
    lo_h, hi_h = big_h / (h + 2 + h / 8), big_h / max(h - 2 - h / 8, 0.5)
    lo_w, hi_w = big_w / (w + 2 + w / 8), big_w / max(w - 2 - w / 8, 0.5)
    return max(lo_h, lo_w, 1.0) <= min(hi_h, hi_w)


def _token_grids(tokens: int, size: tuple[int, int] | None) -> list[TokenGrid]:
    """Every ``TokenGrid`` for ``tokens`` tokens: a patch grid of the input's aspect (square without a size)."""
    found = []
    for prefix in range(min(_MAX_PREFIX, tokens - 1) + 1):
        n = tokens - prefix
        if n <= max(prefix, 1):  # more class/register tokens than patches: not a patch grid
            break
        for h in range(1, math.isqrt(n) * 2 + 2):
            if n % h:
                continue
            w = n // h
            ok = _grid_fits(h, w, size, exact=True) if size is not None else h == w
            if ok:
                found.append(TokenGrid(h, w, prefix))
    return found


def _layout(shape: tuple[int, ...], size: tuple[int, int] | None, last_dim_op: bool = False) -> str | None:
    """``"nchw"``, ``"nhwc"`` or None (not a spatial map) for a 4-D shape, judged against the input size.

    When both readings fit, ``last_dim_op`` (the layer's last operation acts on the last dimension: a Linear or a
    LayerNorm, as in a Swin block) decides for channels-last; otherwise ``(N, C, h, w)``.
    """
    nchw = _grid_fits(shape[2], shape[3], size)
    nhwc = _grid_fits(shape[1], shape[2], size)
    if nchw and nhwc:
        return "nhwc" if last_dim_op else "nchw"
    if nchw:
        return "nchw"
    return "nhwc" if nhwc else None


def as_spatial(activation: Tensor, reshape: Reshape | None = None, *,
               input_size: tuple[int, int] | None = None) -> Tensor:
    """Return a layer's activation (or its gradient) as a spatial map ``(N, C, h, w)``.

    - ``reshape`` given: ``reshape(activation)``, which must be 4-D. :func:`gradcam_layer` returns the right one for
      a layer (:class:`TokenGrid`, :class:`ChannelsLast`, or None); a user may pass any callable.
    - ``(N, C, h, w)``: returned as is; with ``input_size`` a channels-last ``(N, h, w, C)`` map (Swin) is
      recognised (its ``h, w`` fit the input's size, its last dimension does not) and permuted.
    - tokens ``(N, T, C)``: ``T = prefix + h * w`` with ``h, w`` of the input's aspect ratio dividing ``input_size``
      (a square grid without it) and the leading class/register tokens dropped; an error when no split or more
      than one fits.

    Apply the same ``reshape`` to an activation and to its gradient.

    Args:
        activation: the layer's output (or the gradient with respect to it).
        reshape: a callable ``Tensor -> (N, C, h, w)`` or None.
        input_size: the model input's ``(H, W)``, used to recognise layouts when ``reshape`` is None.

    Returns:
        The ``(N, C, h, w)`` view of ``activation`` (no copy where a view suffices).

    Raises:
        ValueError: the activation cannot be made spatial, or the token count is ambiguous; the message names
            ``reshape=``.

    Shape:
        - activation: ``(N, C, h, w)``, ``(N, h, w, C)`` or ``(N, T, C)``
        - output: ``(N, C, h, w)``

    Example::

        >>> as_spatial(torch.zeros(2, 1 + 3 * 3, 8)).shape
        torch.Size([2, 8, 3, 3])
        >>> as_spatial(torch.zeros(2, 4, 4, 96), input_size=(32, 32)).shape
        torch.Size([2, 96, 4, 4])
    """
    if not isinstance(activation, Tensor):
        raise TypeError(f"the Grad-CAM layer must output a tensor, got {type(activation).__name__}")
    shape = tuple(activation.shape)
    if reshape is not None:
        if not callable(reshape):
            raise TypeError(f"`reshape` must be a callable Tensor -> (N, C, h, w), got {type(reshape).__name__}")
        out = reshape(activation)
        if not isinstance(out, Tensor) or out.ndim != 4 or out.shape[0] != shape[0]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"`reshape`={reshape!r} must return ({shape[0]}, C, h, w) for an input of shape "
                             f"{shape}, got {got}")
        return out
    if activation.ndim == 4:
        if input_size is not None and _layout(shape, input_size) == "nhwc":
            return ChannelsLast()(activation)
        return activation
    if activation.ndim == 3:
        grids = _token_grids(shape[1], input_size)
        if len(grids) == 1:
            return grids[0](activation)
        seen = "no" if not grids else f"{len(grids)} ({', '.join(map(repr, grids[:4]))})"
        raise ValueError(
            f"cannot reshape tokens of shape {shape} to a patch grid: {seen} ways to split {shape[1]} tokens into "
            f"class/register tokens + a patch grid{'' if input_size is None else f' for a {input_size} input'}. "
            "Pass `reshape=`, e.g. TokenGrid(h, w, prefix=1) or a callable returning (N, C, h, w)"
        )
    raise ValueError(
        f"a Grad-CAM layer's output must be (N, C, h, w), (N, h, w, C) or tokens (N, T, C), got shape {shape}; "
        "pick another layer or pass `reshape=` (a callable returning (N, C, h, w))"
    )


# ------------------------------------------------------------------------------------------------ layer discovery


@dataclass(frozen=True)
class GradCamLayer:
    """A Grad-CAM layer and how to read its activation as ``(N, C, h, w)``.

    Attributes:
        name: dotted name in the unwrapped model (as its ``named_modules()`` spells it).
        module: the submodule to hook.
        reshape: what :func:`as_spatial` needs for this layer (:class:`TokenGrid`, :class:`ChannelsLast`, the user's
            callable), or None for an ``(N, C, h, w)`` output.
        shape: the layer's output shape on the example input.
        warning: why this layer's maps may be empty (e.g. the score does not depend on its positions), or None.
    """

    name: str
    module: nn.Module = field(repr=False)
    reshape: Reshape | None
    shape: tuple[int, ...]
    warning: str | None = None


@dataclass(eq=False)
class _Record:
    name: str
    module: nn.Module
    output: Tensor
    grad_enabled: bool
    producer: int = -1  # index of the first record holding the same tensor (an in-place op or a container)
    index: int = -1
    inputs: Any = None
    grad: Tensor | None = None


class _Trace:
    """One forward (and one backward of the top score) on an example, with every submodule's output recorded."""

    def __init__(self, model: nn.Module, example_inputs: Tensor, output_transform: Any) -> None:
        if not isinstance(example_inputs, Tensor) or example_inputs.ndim != 4:
            got = tuple(example_inputs.shape) if isinstance(example_inputs, Tensor) else type(example_inputs).__name__
            raise ValueError(f"`example_inputs` must be a tensor of shape (N, C, H, W), got {got}")
        net = unwrap_model(model)
        self.size = (int(example_inputs.shape[-2]), int(example_inputs.shape[-1]))
        self.records: list[_Record] = []
        self.input_grad: Tensor | None = None
        self.scored = False
        by_id: dict[int, int] = {}

        def make_hook(name: str):
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                if isinstance(output, Tensor):
                    rec = _Record(name, module, output, torch.is_grad_enabled(), index=len(self.records))
                    rec.producer = by_id.setdefault(id(output), rec.index)
                    rec.inputs = args[0] if args and isinstance(args[0], Tensor) else None
                    self.records.append(rec)  # keeps the tensor alive, so ids are not reused

            return hook

        with preserved_state(model):
            x = example_inputs.detach().clone().requires_grad_(True)
            with hooked_modules(net, make_hook):
                out = net(x)
            if output_transform is not None:
                out = output_transform(out)
            if isinstance(out, Tensor) and out.ndim == 2 and out.requires_grad:
                # Which positions reach the output: a fixed random projection of the head's input (the features the
                # last layer reads), so a head initialised to zero (torchvision's ViT) does not hide the structure;
                # of the logits when the head is not a module. A private generator leaves the global RNG alone.
                head = next((r for r in reversed(self.records)
                             if r.output is out and next(r.module.children(), None) is None), None)
                feats = head.inputs if head is not None and head.inputs is not None else out
                if not feats.requires_grad:
                    feats = out
                gen = torch.Generator().manual_seed(0)
                proj = torch.randn(feats.shape, generator=gen).to(device=feats.device)
                score = (feats.float() * proj).sum()
                wrt, index = [x], {}
                for i, rec in enumerate(self.records):
                    if rec.producer == i and rec.output.requires_grad:
                        index[i] = len(wrt)
                        wrt.append(rec.output)
                grads = torch.autograd.grad(score, wrt, allow_unused=True)
                self.scored = True
                self.input_grad = grads[0]
                for rec in self.records:
                    j = index.get(rec.producer)
                    rec.grad = None if j is None else grads[j]
        self.grids = [(int(r.output.shape[2]), int(r.output.shape[3]), int(r.output.shape[1]))
                      for r in self.records if r.output.ndim == 4 and _layout(tuple(r.output.shape), self.size) == "nchw"]

    def no_grad_modules(self) -> list[str]:
        """The outermost modules whose forward ran with gradients disabled (``torch.no_grad()`` inside forward)."""
        found = {id(r.module): r for r in self.records if not r.grad_enabled}
        inner = {id(sub) for r in found.values() for sub in r.module.modules() if sub is not r.module}
        # By identity, not by name: a block registered twice (``self.backbone = self.net[:4]``) lists its layers
        # under the first name only.
        return [r.name for key, r in found.items() if key not in inner]

    def _last_dim_op(self, rec: _Record | None) -> bool:
        """Was the last leaf module finishing at or before ``rec``'s producer a Linear/LayerNorm on the last dim?"""
        if rec is None:
            return False
        for prior in reversed(self.records[: rec.producer + 1]):
            if next(prior.module.children(), None) is None:  # a leaf
                return (isinstance(prior.module, (nn.Linear, nn.LayerNorm))
                        and prior.output.ndim == 4 and prior.output.shape[-1] == rec.output.shape[-1])
        return False

    def reshape_for(self, output: Tensor, rec: _Record | None = None) -> tuple[str | None, Reshape | None]:
        """``(layout, reshape)``: layout ``"nchw"``, ``"nhwc"``, ``"tokens"`` or None (not spatial)."""
        shape = tuple(output.shape)
        if output.ndim == 4:
            if self.heads_tokens_dim(shape):
                return None, None
            layout = _layout(shape, self.size, self._last_dim_op(rec))
            return layout, ChannelsLast() if layout == "nhwc" else None
        if output.ndim == 3:
            grids = {TokenGrid(h, w, shape[1] - h * w): c for h, w, c in self.grids
                     if 0 <= shape[1] - h * w <= _MAX_PREFIX and h * w > 1}
            same_width = [g for g, c in grids.items() if c == shape[2]]
            for found in (same_width, list(grids), _token_grids(shape[1], self.size)):
                if len(found) == 1:
                    return "tokens", found[0]
                if len(found) > 1:
                    break
        return None, None

    def heads_tokens_dim(self, shape: tuple[int, ...]) -> bool:
        """Is a 4-D shape attention internals ``(B, heads, T, dim)`` of tokens ``(B, T, heads * dim)`` seen here?"""
        return any(r.output.ndim == 3 and r.output.shape[1] == shape[2] and r.output.shape[2] == shape[1] * shape[3]
                   for r in self.records)

    def attention_internal(self, name: str) -> bool:
        parts = name.split(".")
        for i in range(1, len(parts)):
            if parts[i - 1].lower() in ("attn", "attention", "self_attention", "self_attn"):
                return True
        ancestors = {".".join(parts[:i]) for i in range(1, len(parts))}
        return any(r.name in ancestors and "attention" in type(r.module).__name__.lower() for r in self.records)


def _is_feature(module: nn.Module) -> bool:
    return not isinstance(module, _NOT_FEATURES) and type(module).__name__ not in _NOT_FEATURE_NAMES


def _spatial_grad_nonzero(grad: Tensor | None, reshape: Reshape | None) -> bool:
    if grad is None:
        return False
    spatial = reshape(grad) if reshape is not None else grad
    return bool((spatial != 0).any())


def _no_grad_message(trace: _Trace, what: str) -> str:
    blockers = trace.no_grad_modules()
    where = f" ({', '.join(repr(n) for n in blockers[:5])})" if blockers else ""
    return (f"{what} was computed under torch.no_grad() inside the model's forward{where}, e.g. a frozen backbone, "
            "so no gradient reaches it. Grad-CAM needs a layer computed with gradients (one after the no_grad "
            "block, if it is spatial); saliency and Integrated Gradients need the input's gradient, which the "
            "no_grad block cuts.")


def _choose(trace: _Trace) -> tuple[str, nn.Module, Reshape | None, tuple[int, ...], str | None]:
    groups: dict[int, list[_Record]] = {}
    for rec in trace.records:
        groups.setdefault(rec.producer, []).append(rec)
    spatial, any_4d = [], []
    for producer, members in groups.items():
        first = trace.records[producer]
        out = first.output
        if out.ndim == 4:
            any_4d.append(members)
        if not _is_feature(first.module) or trace.attention_internal(first.name):
            continue
        layout, reshape = trace.reshape_for(out, first)
        if layout is None:
            continue
        grid = as_spatial(out[:1], reshape)
        if grid.shape[2] * grid.shape[3] <= 1:
            continue
        spatial.append((members, layout, reshape))
    # The group's position is where its outermost member finishes (containers finish after their children).
    spatial.sort(key=lambda s: s[0][-1].index)

    def pick(members: list[_Record], layout: str, reshape: Reshape | None, warning: str | None = None):
        members = [m for m in members if _is_feature(m.module)] or members
        rec = members[-1]
        if layout in ("tokens", "nhwc"):
            blocks = [m for m in members if _BLOCK_NAME.search(m.name)]
            rec = blocks[-1] if blocks else rec
        return rec.name, rec.module, reshape, tuple(rec.output.shape), warning

    with_grad = [s for s in spatial if s[0][0].output.requires_grad]
    if trace.scored:
        # Where the score reaches the positions: for a class-token ViT the last block's patch tokens never reach
        # the head (only the class token does), so the block before it is the last useful one.
        reached = [s for s in with_grad if _spatial_grad_nonzero(s[0][0].grad, s[2])]
        if reached:
            return pick(*reached[-1])
    if with_grad:
        return pick(*with_grad[-1], warning="the output does not depend on this layer's positions for the example "
                                            "input")
    if spatial:
        raise RuntimeError("find_gradcam_layer: " + _no_grad_message(trace, f"every spatial layer's output "
                                                                            f"(the last: {spatial[-1][0][-1].name!r})"))
    if any_4d:
        members = max(any_4d, key=lambda m: m[-1].index)
        return pick(members, "nchw", None, warning="only a 1x1 map is available: Grad-CAM cannot localise")
    listed = [f"{r.name} -> {tuple(r.output.shape)}" for r in trace.records]
    raise RuntimeError(
        "find_gradcam_layer: no submodule produced a 4-D (N, C, h, w) output or patch tokens (N, T, C), so Grad-CAM "
        f"has no spatial layer. Pass layer= (and reshape= for a non-spatial output). Submodules and their outputs: "
        f"{_candidates(listed)}"
    )


def gradcam_layer(model: nn.Module, example_inputs: Tensor, layer: str | nn.Module | None = None, *,
                  reshape: Reshape | None = None, output_transform: Any = None) -> GradCamLayer:
    """Pick (``layer=None``) or check a Grad-CAM layer with one traced forward, and find its reshape.

    Automatic choice: the last layer (in the order forwards finish) whose output is a spatial map of more than one
    position (``(N, C, h, w)``, channels-last ``(N, h, w, C)`` or patch tokens ``(N, T, C)``) and whose positions
    the top class's score depends on. Skipped: normalisation (LayerNorm), pooling, identity/dropout/flatten/permute
    layers (and containers whose output is theirs), attention internals, layers computed without gradients.
    Containers finish after their children, so for torchvision's resnet18 this is ``layer4``; for transformers the
    block is named (timm ``blocks.N``, torchvision ``encoder.layers.encoder_layer_N``, Swin ``features.N``). For a
    class-token ViT the last block's patch tokens do not reach the head, so the block before the last is chosen.

    Args:
        model: the classifier (wrappers unwrapped; names relative to the unwrapped model).
        example_inputs: one or a few inputs the model accepts; one image is enough.
        layer: a dotted name or a submodule to check instead of choosing.
        reshape: a callable turning the layer's output into ``(N, C, h, w)``; None infers one.
        output_transform: turns the model's output into logits ``(N, num_classes)``.

    Returns:
        A :class:`GradCamLayer`.

    Raises:
        ValueError: ``layer`` unknown, not called, or with an output that is not spatial and no ``reshape``
            (attention internals ``(B, heads, tokens, dim)`` included); ``reshape`` fails on it.
        RuntimeError: no spatial layer; the layer (or every spatial layer) computed under ``torch.no_grad()``.

    Shape:
        - example_inputs: ``(N, C, H, W)``

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> gradcam_layer(net, torch.randn(1, 3, 8, 8)).name
        '1'
    """
    if reshape is not None and not callable(reshape):
        raise TypeError(f"`reshape` must be None or a callable Tensor -> (N, C, h, w), got {type(reshape).__name__}")
    if layer is not None:
        name, module = resolve_layer(model, layer)  # before the forward: an unknown name fails fast
    trace = _Trace(model, example_inputs, output_transform)
    if layer is None:
        name, module, found, shape, warning = _choose(trace)
        return GradCamLayer(name, module, reshape if reshape is not None else found, shape, warning)
    calls = [r for r in trace.records if r.module is module]
    if not calls:
        raise ValueError(f"`layer`={name!r} is not called during the model's forward pass (or returns no tensor)")
    rec = calls[-1]  # a module called several times: its last call, as the attribution hook sees it
    out = rec.output
    shape = tuple(out.shape)
    if reshape is None:
        layout, reshape = trace.reshape_for(out, rec)
        if layout is None:
            hint = (" It looks like an attention internal (batch, heads, tokens, dim); pick a block's output."
                    if out.ndim == 4 and trace.heads_tokens_dim(shape) else "")
            try:
                _choice = f" The automatic choice is {_choose(trace)[0]!r}."
            except RuntimeError:
                _choice = ""
            raise ValueError(
                f"`layer`={name!r} outputs shape {shape}, which is not a spatial map (N, C, h, w), a channels-last "
                f"map (N, h, w, C) or patch tokens (N, prefix + h*w, C) of a {trace.size} input.{hint}{_choice} "
                "Pass `reshape=` (e.g. lightning_xai.attribution.TokenGrid(h, w, prefix=1), or a callable returning "
                "(N, C, h, w)) for this layer, or pick another layer"
            )
    else:
        try:
            as_spatial(out.detach(), reshape)
        except Exception as err:
            raise ValueError(f"`reshape` fails on `layer`={name!r}'s output of shape {shape}: {err}") from err
    if not out.requires_grad:
        if not rec.grad_enabled:
            raise RuntimeError(_no_grad_message(trace, f"`layer`={name!r}'s output"))
        raise RuntimeError(f"`layer`={name!r}'s output does not depend on the input through autograd (detached?)")
    warning = None
    if trace.scored and not _spatial_grad_nonzero(rec.grad if rec.producer >= 0 else None, reshape):
        warning = (f"the model's output does not depend on `layer`={name!r}'s positions for the example input, "
                   "so its Grad-CAM maps are all zero")
        if out.ndim == 3:
            warning += " (a class-token ViT reads only the class token after the last block: use an earlier block)"
    return GradCamLayer(name, module, reshape, shape, warning)


def find_gradcam_layer(model: nn.Module, example_inputs: Tensor, *, output_transform: Any = None) -> str:
    """The automatic Grad-CAM layer's name: ``gradcam_layer(model, example_inputs).name``.

    See :func:`gradcam_layer` for the rule (the last spatial block the score depends on; pooling, norms and
    attention internals skipped; tokens and channels-last maps recognised).

    Args:
        model: the classifier (wrappers are unwrapped; the name is relative to the unwrapped model).
        example_inputs: one or a few inputs the model accepts; one image is enough.
        output_transform: turns the model's output into logits ``(N, num_classes)``.

    Returns:
        The dotted module name.

    Raises:
        RuntimeError: no spatial layer (the message lists the submodules and their outputs), or every spatial layer
            is computed under ``torch.no_grad()``.

    Shape:
        - example_inputs: ``(N, C, H, W)``

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> find_gradcam_layer(net, torch.randn(1, 3, 8, 8))
        '1'
    """
    return gradcam_layer(model, example_inputs, output_transform=output_transform).name


def gradient_blockers(model: nn.Module, example_inputs: Tensor, *, output_transform: Any = None) -> list[str]:
    """The outermost submodules whose forward runs under ``torch.no_grad()`` (empty when none).

    A frozen backbone run as ``with torch.no_grad(): feats = self.backbone(x)`` cuts the input's gradient: saliency
    and Integrated Gradients are then zero and Grad-CAM works only on layers after the block.

    Shape:
        - example_inputs: ``(N, C, H, W)``
    """
    return _Trace(model, example_inputs, output_transform).no_grad_modules()
