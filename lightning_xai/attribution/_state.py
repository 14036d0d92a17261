"""The side-effect guard every attribution call runs inside."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["preserved_state"]


def _eager() -> contextlib.AbstractContextManager:
    """Run ``torch.compile``d code eagerly: a compiled module ignores hooks added after compilation (pytorch #117758),
    so a compiled submodule (``self.model = torch.compile(net)``) would hide the Grad-CAM layer from its hook."""
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    if set_stance is None or torch.compiler.is_compiling():  # torch < 2.6, or already inside a compiled region
        return contextlib.nullcontext()
    return set_stance("force_eager")


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[nn.Module]:
    """Run attribution code on ``model`` without leaving a trace on it or on the global torch state.

    Inside the block: ``torch.inference_mode(False)`` and ``torch.enable_grad()`` are active (Lightning runs
    validation hooks under ``inference_mode`` or ``no_grad``), ``torch.compile``d code runs eagerly (so hooks on a
    compiled submodule's layers fire), and every submodule is in eval mode (``model.eval()``, so modules that
    override ``train()`` see the call). On exit, normal or by exception, in a ``finally``:

    - each submodule's own ``training`` flag is restored (not a blanket ``model.train()``, which would unfreeze
      modules the user froze, e.g. a BatchNorm kept in eval mode);
    - each parameter's ``requires_grad`` is restored;
    - the torch CPU RNG state, and the CUDA RNG states when CUDA is initialised, are restored, so a dropout layer
      or anything else drawing random numbers cannot shift the training trajectory.

    Tensors created inside the block are normal (non-inference) tensors; clone inputs inside it.

    Args:
        model: the module to protect (a wrapper such as a ``torch.compile`` module protects what it wraps too).

    Yields:
        ``model`` itself.

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
        >>> with torch.no_grad(), preserved_state(net):
        ...     torch.is_grad_enabled(), net[1].training
        (True, False)
        >>> net[1].training
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    modules = list(model.modules())
    training = [m.training for m in modules]
    params = list(model.parameters())
    requires_grad = [p.requires_grad for p in params]
    cpu_rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        with torch.inference_mode(False), torch.enable_grad(), _eager():
            model.eval()
            yield model
    finally:
        for module, flag in zip(modules, training):
            # Set the attribute, not module.train(flag): train() recurses into children and would overwrite
            # flags restored a moment earlier.
            module.training = flag
        for param, flag in zip(params, requires_grad):
            if param.requires_grad != flag:
                param.requires_grad_(flag)
        torch.random.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
