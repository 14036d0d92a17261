"""Model-randomisation sanity check (Adebayo et al., 2018, "Sanity Checks for Saliency Maps").

An explanation method that explains the model must produce clearly different maps for a copy of the model whose
weights were re-initialised, cascading from the output layer downwards. A high similarity between the real and the
randomised maps means the method shows the input (edges, contrast), not what the model learned.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from lightning_xai.metrics._utils import _as_heatmap, _check_size
from lightning_xai.metrics.degenerate import degenerate_rows
from lightning_xai.metrics.stability import spearman_similarity

__all__ = ["INPUT_WEIGHTED", "parameterized_layers", "randomized_copy", "sanity_scores", "sanity_similarity"]

#: Methods whose maps are weighted by the input itself (Integrated Gradients in pixel space multiplies by
#: ``x - baseline``). Their maps keep the image's structure whatever the weights, so they are expected to stay
#: similar to a randomised model's (Adebayo et al. 2018 show it for gradient x input): a high similarity is how the
#: method works, not a failure of this run.
INPUT_WEIGHTED = frozenset({"integrated_gradients"})

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def parameterized_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters directly, in ``named_modules`` order (input side first).

    For ordinary CNNs these are the parameterised leaf modules (convolutions, linear and norm layers). The root module
    is reported as ``""`` if it owns parameters itself.

    Args:
        model: any module.

    Returns:
        Dotted module names.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    return [name for name, module in model.named_modules() if any(True for _ in module.parameters(recurse=False))]


def _uniform(param: Tensor, bound: float, generator: torch.Generator) -> None:
    values = torch.empty(param.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
    param.copy_(values.to(device=param.device, dtype=param.dtype))


def _reinitialise(module: nn.Module, generator: torch.Generator) -> None:
    params = list(module.named_parameters(recurse=False))
    matrices = [p for _, p in params if p.ndim >= 2]
    if matrices:
        # PyTorch's default for Linear/Conv: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)), bias likewise.
        fan_in = max(1, matrices[0][0].numel())
        bound = 1.0 / math.sqrt(fan_in)
        for _, p in params:
            _uniform(p, 1.0 / math.sqrt(max(1, p[0].numel())) if p.ndim >= 2 else bound, generator)
        return
    if isinstance(module, _NORM_TYPES):
        # The norm layers' own defaults (weight 1, bias 0, fresh running statistics); no randomness involved.
        for name, p in params:
            p.fill_(1.0 if name == "weight" else 0.0)
        reset_stats = getattr(module, "reset_running_stats", None)
        if callable(reset_stats) and getattr(module, "track_running_stats", False):
            reset_stats()
        return
    for _, p in params:
        _uniform(p, 1.0, generator)


def randomized_copy(model: nn.Module, num_layers: int | None = None, seed: int = 0) -> nn.Module:
    """Deep copy of ``model`` with its top ``num_layers`` parameterised layers re-initialised.

    Layers are the modules listed by :func:`parameterized_layers`; the cascade starts at the output side (the last
    ones in ``named_modules`` order), as in Adebayo et al.'s cascading randomisation. ``num_layers=None`` randomises
    all of them, ``0`` none (a copy for measuring the noise floor). Re-initialisation:

    - modules with a weight of two or more dimensions (Linear, Conv, Embedding, ...): every parameter drawn from
      ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, PyTorch's default for Linear/Conv;
    - norm layers (BatchNorm, LayerNorm, GroupNorm, ...): weight 1, bias 0 and running statistics reset, their
      defaults;
    - any other parameter: ``U(-1, 1)``.

    Random values come from a local ``torch.Generator`` seeded with ``seed``: the global RNG is neither used nor
    advanced, and the original model (parameters, buffers, flags) is untouched. The copy keeps the original's
    devices, dtypes, ``requires_grad`` and ``training`` flags.

    Args:
        model: the model to copy.
        num_layers: how many layers to randomise from the top, or ``None`` for all.
        seed: seed of the local generator.

    Returns:
        The randomised copy.

    Cost: one deep copy of the model (its memory, transiently) and one draw per randomised parameter.
    """
    layers = parameterized_layers(model)
    if num_layers is not None and (
        isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 0 <= num_layers <= len(layers)
    ):
        raise ValueError(
            f"`num_layers` must be None or an int in [0, {len(layers)}] (the model has {len(layers)} parameterised "
            f"layers), got {num_layers!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an int, got {seed!r}")
    count = len(layers) if num_layers is None else num_layers
    chosen = set(layers[len(layers) - count :])
    randomized = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    modules = dict(randomized.named_modules())
    with torch.no_grad():
        for name in reversed(layers):
            if name in chosen:
                _reinitialise(modules[name], generator)
    return randomized


def sanity_scores(real: Tensor, randomized: Tensor, size: int = 16) -> Tensor:
    """Per-probe similarity of the real model's maps to the randomised model's (Spearman of the absolute heatmaps);
    NaN where either map is degenerate (all zero, constant, non-finite: :mod:`lightning_xai.metrics.degenerate`).

    Two empty maps are not "similar": they say nothing, so they never count as a method that "barely changes" when
    the weights are randomised (a rank correlation would call them identical, 1.0). Average with a NaN-skipping mean.

    Shape:
        - real, randomized: ``(N, C, H, W)`` (or heatmaps ``(N, 1, H, W)``)
        - output: ``(N,)``

    Example::

        >>> maps = torch.rand(2, 1, 8, 8)
        >>> sanity_scores(torch.stack([maps[0], torch.zeros(1, 8, 8)]), maps).isnan().tolist()
        [False, True]
    """
    sim = spearman_similarity(real, randomized, size)
    bad = (degenerate_rows(real) | degenerate_rows(randomized)).to(sim.device)
    return torch.where(bad, torch.full_like(sim, float("nan")), sim)


def sanity_similarity(
    model: nn.Module,
    explain_fn: Callable[[nn.Module], Mapping[str, Tensor]],
    num_layers: int | None = None,
    size: int = 16,
    *,
    seed: int = 0,
    reference: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Per-method, per-sample similarity between the real model's maps and a randomised copy's maps.

    Similarity is the Spearman rank correlation of the *absolute* heatmaps (:func:`spearman_similarity`, which applies
    the ``to_heatmap`` rule), since sign flips are common under randomisation and say nothing about relevance. Low
    values are good: the method depends on the learned weights. Compare with the noise floor of recomputing the real
    model's maps (``num_layers=0`` gives exactly that for a deterministic ``explain_fn``).

    Args:
        model: the trained model; never modified.
        explain_fn: ``explain_fn(model) -> {method: maps}`` computing the maps of a fixed probe set, e.g.
            ``lambda m: explain(m, images, labels)``. It must leave the model as it found it.
        num_layers: how many layers to randomise from the top (``None``: all), see :func:`randomized_copy`.
        size: side of the pooled grid for the similarity.
        seed: seed of the local generator used for the re-initialisation.
        reference: the real model's maps if already computed (skips one ``explain_fn(model)`` call).

    Returns:
        ``{method: (N,) tensor}`` for every method of the reference maps (:func:`sanity_scores`: NaN where either
        map is degenerate).

    Shape:
        - each map: ``(N, C, H, W)``
        - each output: ``(N,)``

    Cost: one ``explain_fn`` call on the randomised copy (plus one on ``model`` without ``reference``) and one deep
    copy of the model.
    """
    if not callable(explain_fn):
        raise TypeError(f"`explain_fn` must be callable, got {type(explain_fn).__name__}")
    size = _check_size(size)
    real = explain_fn(model) if reference is None else reference
    randomized = randomized_copy(model, num_layers=num_layers, seed=seed)
    random_maps = explain_fn(randomized)
    del randomized
    missing = [name for name in real if name not in random_maps]
    if missing:
        raise RuntimeError(
            f"`explain_fn` returned no maps for {missing} on the randomised copy; it returned {list(random_maps)}"
        )
    return {
        name: sanity_scores(
            _as_heatmap(maps, f"maps[{name!r}]"), _as_heatmap(random_maps[name], f"random maps[{name!r}]"), size
        )
        for name, maps in real.items()
    }
