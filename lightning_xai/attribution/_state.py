"""The side-effect guard every attribution call runs inside."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = ["preserved_state"]


def _eager() -> contextlib.AbstractContextManager:
    """Run ``torch.compile``d code eagerly: a compiled module ignores hooks added after compilation (pytorch #117758),
    so a compiled submodule (``self.model = torch.compile(net)``) would hide the Grad-CAM layer from its hook."""
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    if set_stance is None or torch.compiler.is_compiling():  # torch < 2.6, or already inside a compiled region
        return contextlib.nullcontext()
    return set_stance("force_eager")


def _version(tensor: Tensor) -> int | None:
    """The in-place version counter (``None`` for inference tensors, which have none)."""
    return None if torch.is_inference(tensor) else tensor._version


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
    - every buffer is restored, not only BatchNorm's: a value changed in place (a counter ``self.calls += 1`` in
      ``forward``) is copied back, a reassigned buffer (``self.total = self.total + x.sum()``) is put back as the
      very tensor it was, and a buffer registered inside the block is removed, so an explanation forward leaves
      the model's state bitwise as it found it;
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
    buffers = _BufferSnapshot(modules)
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
        buffers.restore()
        torch.random.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


class _BufferSnapshot:
    """Every module's buffers: the tensor objects, a copy of their values and their in-place version counters."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.entries = [(m, dict(m._buffers)) for m in modules if m._buffers]
        self.values: dict[int, tuple[Tensor, int | None]] = {}
        for _, buffers in self.entries:
            for tensor in buffers.values():
                if tensor is not None and id(tensor) not in self.values:
                    self.values[id(tensor)] = (tensor.detach().clone(), _version(tensor))

    def restore(self) -> None:
        with torch.no_grad():
            for module, buffers in self.entries:
                current = module._buffers
                if current.keys() != buffers.keys() or any(current[k] is not v for k, v in buffers.items()):
                    current.clear()  # reassigned or added inside the block: the original objects come back
                    current.update(buffers)
                for tensor in buffers.values():
                    if tensor is None:
                        continue
                    saved, version = self.values[id(tensor)]
                    if version is None or _version(tensor) != version:  # changed in place (or cannot tell)
                        if torch.is_inference(tensor):
                            with torch.inference_mode():
                                tensor.copy_(saved)
                        else:
                            tensor.copy_(saved)
                        self.values[id(tensor)] = (saved, _version(tensor))  # shared buffers: copy once
