"""Layer discovery for Grad-CAM: unwrap wrappers, resolve names, pick the last spatial layer automatically."""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import Tensor, nn

from lightning_xai.attribution._state import preserved_state

__all__ = ["as_spatial", "find_gradcam_layer", "resolve_layer", "unwrap_model"]

# Prefixes a user may copy from a wrapper's named_modules(): torch.compile and (Distributed)DataParallel.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")
_MAX_LISTED = 25


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the eager module behind ``torch.compile`` and ``(Distributed)DataParallel`` wrappers.

    Hooks added to a compiled module after compilation are ignored (pytorch #117758), and a forward through the
    DDP wrapper on one rank only can hang (pytorch #54059), so attribution always runs on the wrapped module.
    """
    while True:
        orig = getattr(model, "_orig_mod", None)
        if isinstance(orig, nn.Module):
            model = orig
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def _candidates(names: list[str]) -> str:
    if len(names) > _MAX_LISTED:
        return ", ".join(names[-_MAX_LISTED:]) + f" (and {len(names) - _MAX_LISTED} earlier ones)"
    return ", ".join(names) if names else "(none)"


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Find a submodule of ``model`` by dotted name or by identity.

    Args:
        model: the model (``torch.compile`` / DataParallel wrappers are unwrapped first).
        layer: a dotted name from ``model.named_modules()`` (a ``_orig_mod.`` or ``module.`` prefix is accepted) or
            a submodule instance.

    Returns:
        ``(name, module)`` with ``name`` relative to the unwrapped model.

    Raises:
        ValueError: the name or module is not a submodule of ``model``; the message lists candidate names.
        TypeError: ``layer`` is neither a string nor a module.

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> resolve_layer(net, "0")[0], resolve_layer(net, net[1])[0]
        ('0', '1')
    """
    net = unwrap_model(model)
    named = [(name, module) for name, module in net.named_modules() if name]
    names = [name for name, _ in named]
    if isinstance(layer, nn.Module):
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
    key = layer
    while key not in lookup and key.startswith(_WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    if key in lookup:
        return key, lookup[key]
    close = difflib.get_close_matches(layer, names, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"`layer`={layer!r} is not a submodule name of the model.{hint} Candidates: {_candidates(names)}")


def find_gradcam_layer(model: nn.Module, example_inputs: Tensor, *, output_transform: Any = None) -> str:
    """Pick the Grad-CAM layer: the last module (in the order forwards finish) with a 4-D output before the head.

    One forward pass on ``example_inputs`` (under :func:`preserved_state` and ``no_grad``) records every submodule's
    output. The chosen layer is the last one to *finish* with a 4-D ``(N, C, h, w)`` tensor output whose spatial size
    is larger than 1x1 (a global pooling layer's ``(N, C, 1, 1)`` output carries no location); if every 4-D output
    is 1x1, the last 4-D one. Containers finish after their children, so for torchvision's resnet18 this is
    ``layer4``, for densenet121 and mobilenet_v3_small ``features``.

    Args:
        model: the classifier (wrappers are unwrapped; the name is relative to the unwrapped model).
        example_inputs: one or a few inputs the model accepts; one image is enough.
        output_transform: accepted for signature symmetry with the attribution functions; the output is not used.

    Returns:
        The dotted module name.

    Raises:
        RuntimeError: no submodule produced a 4-D tensor; the message lists the submodules and their outputs.

    Shape:
        - example_inputs: ``(N, C, H, W)``

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> find_gradcam_layer(net, torch.randn(1, 3, 8, 8))
        '1'
    """
    del output_transform  # the choice depends on intermediate outputs only
    if not isinstance(example_inputs, Tensor) or example_inputs.ndim != 4:
        got = tuple(example_inputs.shape) if isinstance(example_inputs, Tensor) else type(example_inputs).__name__
        raise ValueError(f"`example_inputs` must be a tensor of shape (N, C, H, W), got {got}")
    net = unwrap_model(model)
    finished: dict[str, tuple[int, Any]] = {}
    counter = [0]

    def make_hook(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            finished[name] = (counter[0], shape)
            counter[0] += 1

        return hook

    handles = []
    try:
        with preserved_state(model), torch.no_grad():
            for name, module in net.named_modules():
                if name:
                    handles.append(module.register_forward_hook(make_hook(name)))
            net(example_inputs.detach().clone())
    finally:
        for handle in handles:
            handle.remove()
    order = sorted(finished, key=lambda n: finished[n][0])
    four_d = [n for n in order if isinstance(finished[n][1], tuple) and len(finished[n][1]) == 4]
    spatial = [n for n in four_d if finished[n][1][2] * finished[n][1][3] > 1]
    if spatial:
        return spatial[-1]
    if four_d:
        return four_d[-1]
    listed = [f"{n} -> {finished[n][1]}" for n in order]
    raise RuntimeError(
        "find_gradcam_layer: no submodule produced a 4-D (N, C, h, w) output, so Grad-CAM has no spatial layer. "
        f"Pass layer= explicitly. Submodules and their outputs: {_candidates(listed)}"
    )


def as_spatial(activation: Tensor, reshape: Any = None) -> Tensor:
    """A layer's output as a spatial map ``(N, C, h, w)``: the one entry point of every CAM-family method.

    Args:
        activation: the captured layer output (or its gradient, reshaped the same way).
        reshape: ``None``, or a callable mapping ``activation`` to ``(N, C, h, w)`` (e.g. tokens to a patch grid).

    Returns:
        ``activation`` itself when it is already ``(N, C, h, w)``, else ``reshape(activation)``.

    Raises:
        ValueError: the output is not 4-D and no ``reshape`` makes it so; the message names the shape.

    Example::

        >>> tuple(as_spatial(torch.zeros(2, 8, 3, 3)).shape)
        (2, 8, 3, 3)
    """
    out = reshape(activation) if reshape is not None else activation
    if not isinstance(out, Tensor) or out.ndim != 4:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"the layer's output has shape {tuple(activation.shape)}, not a 4-D (N, C, h, w) map"
            + (f" (reshape returned {got})" if reshape is not None else "")
            + "; choose a spatial layer (`layer=`) or pass `reshape=` mapping it to (N, C, h, w)"
        )
    return out
