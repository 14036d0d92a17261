"""Faithfulness of a heatmap's ranking: deletion and insertion curves (Petsiuk et al., 2018, "RISE").

Deletion removes the most relevant pixels first (replacing them with a perturbation baseline) and tracks the
target-class probability: a faithful map makes it fall fast, so a *lower* deletion AUC is better. Insertion starts
from the baseline and inserts the most relevant pixels first: a *higher* insertion AUC is better.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai.metrics._utils import _as_heatmap, _check_tensor, _evaluation

__all__ = ["PERTURBATIONS", "deletion_auc", "deletion_curve", "insertion_auc", "insertion_curve"]

#: Names accepted by ``perturbation=``: how deleted pixels are replaced.
PERTURBATIONS = ("blur", "mean", "zero")
_DEFAULT_BATCH = 128


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with reflect padding; radius ``ceil(2 * sigma)`` capped by the image size."""
    height, width = x.shape[-2:]
    radius = min(math.ceil(2.0 * sigma), height - 1, width - 1)
    if radius < 1:
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(t**2) / (2.0 * sigma**2))
    kernel = (kernel / kernel.sum()).to(device=x.device, dtype=x.dtype)
    channels = x.shape[1]
    out = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _baseline(inputs: Tensor, perturbation: str, blur_sigma: float | None) -> Tensor:
    if perturbation == "zero":
        return torch.zeros_like(inputs)
    if perturbation == "mean":
        return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).clone()
    height, width = inputs.shape[-2:]
    sigma = float(blur_sigma) if blur_sigma is not None else max(1.0, min(height, width) / 16.0)
    source = inputs if inputs.is_floating_point() else inputs.float()
    return _gaussian_blur(source, sigma).to(inputs.dtype)


def _targets(target: int | Tensor, n: int, device: torch.device) -> Tensor:
    if isinstance(target, bool):
        raise TypeError(f"`target` must be an int or an integer tensor of shape (N,), got {target!r}")
    if isinstance(target, int):
        return torch.full((n,), target, dtype=torch.long, device=device)
    if isinstance(target, Tensor) and not target.is_floating_point() and target.dtype != torch.bool:
        if target.ndim == 0:
            return target.detach().reshape(1).expand(n).to(device=device, dtype=torch.long)
        if target.shape == (n,):
            return target.detach().to(device=device, dtype=torch.long)
    raise TypeError(
        f"`target` must be an int or an integer tensor of shape ({n},), got "
        f"{type(target).__name__}{tuple(target.shape) if isinstance(target, Tensor) else ''}"
    )


def _curve(
    mode: str,
    model: nn.Module,
    inputs: Tensor,
    target: int | Tensor,
    heatmaps: Tensor,
    *,
    steps: int,
    perturbation: str,
    output_transform: Callable[[Any], Tensor] | None,
    batch_size: int | None,
    blur_sigma: float | None,
) -> tuple[Tensor, Tensor]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    inputs = _check_tensor(inputs, "inputs")
    if inputs.ndim != 4:
        raise ValueError(f"`inputs` must have shape (N, C, H, W), got {tuple(inputs.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be a positive int, got {steps!r}")
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"`perturbation` must be one of {PERTURBATIONS}, got {perturbation!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"`batch_size` must be None or a positive int, got {batch_size!r}")
    if blur_sigma is not None and (
        isinstance(blur_sigma, bool) or not isinstance(blur_sigma, (int, float)) or not blur_sigma > 0
    ):
        raise ValueError(f"`blur_sigma` must be None or a positive number, got {blur_sigma!r}")
    if output_transform is not None and not callable(output_transform):
        raise TypeError(f"`output_transform` must be callable or None, got {type(output_transform).__name__}")

    n, _, height, width = inputs.shape
    heat = _as_heatmap(heatmaps, "heatmaps").to(inputs.device)
    if heat.shape[0] != n:
        raise ValueError(f"`heatmaps` must hold one map per input ({n}), got {heat.shape[0]}")
    if heat.shape[-2:] != (height, width):
        heat = F.interpolate(heat, size=(height, width), mode="bilinear", align_corners=False)
    targets = _targets(target, n, inputs.device)

    x = inputs.detach()
    # Rank pixels by relevance, most relevant first; ties (and NaN, sent last) keep raster order.
    scores = torch.nan_to_num(heat.flatten(1), nan=-math.inf)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    num_pixels = height * width
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(num_pixels, device=order.device).expand(n, num_pixels).contiguous()
    )
    counts = torch.round(torch.linspace(0, num_pixels, steps + 1, dtype=torch.float64)).to(torch.long)
    counts = counts.to(inputs.device)

    total = n * (steps + 1)
    chunk = batch_size or min(total, max(n, _DEFAULT_BATCH))
    probs = []
    with _evaluation(model, inputs.device):
        base = _baseline(x, perturbation, blur_sigma)
        for start in range(0, total, chunk):
            idx = torch.arange(start, min(start + chunk, total), device=inputs.device)
            sample, step = idx // (steps + 1), idx % (steps + 1)
            chosen = (rank[sample] < counts[step][:, None]).reshape(-1, 1, height, width)
            if mode == "deletion":
                probe = torch.where(chosen, base[sample], x[sample])
            else:
                probe = torch.where(chosen, x[sample], base[sample])
            out = model(probe)
            if output_transform is not None:
                out = output_transform(out)
            if not isinstance(out, Tensor) or out.ndim != 2:
                raise RuntimeError(
                    "the model output must be a (batch, num_classes) tensor of logits; pass `output_transform` to "
                    f"select it, got {type(out).__name__}{tuple(out.shape) if isinstance(out, Tensor) else ''}"
                )
            if out.shape[1] > 1 and start == 0 and not bool(((targets >= 0) & (targets < out.shape[1])).all()):
                raise ValueError(f"`target` must be class indices in [0, {out.shape[1]}), got {targets.tolist()}")
            out = out.float()
            p = (
                torch.sigmoid(out[:, 0])
                if out.shape[1] == 1
                else out.softmax(dim=1).gather(1, targets[sample][:, None])[:, 0]
            )
            probs.append(p)
    curves = torch.cat(probs).reshape(n, steps + 1).detach()
    auc = torch.trapezoid(curves, dx=1.0 / steps, dim=1)
    return curves, auc


def deletion_curve(
    model: nn.Module,
    inputs: Tensor,
    target: int | Tensor,
    heatmaps: Tensor,
    *,
    steps: int = 16,
    perturbation: str = "blur",
    output_transform: Callable[[Any], Tensor] | None = None,
    batch_size: int | None = None,
    blur_sigma: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Target probability while the most relevant pixels are progressively replaced by a baseline.

    Pixels are ranked by the heatmap's magnitude (the ``to_heatmap`` rule: sum of absolute values over channels;
    descending; ties keep raster order, NaN goes last). At step ``s`` of
    ``steps`` the top ``round(s / steps * H * W)`` pixels (all channels) are replaced by the perturbation baseline:

    - ``"blur"``: a Gaussian blur of the input (``sigma = blur_sigma`` or ``max(1, min(H, W) / 16)``), the RISE choice;
    - ``"mean"``: each image's per-channel mean;
    - ``"zero"``: zeros (in normalised input space this is the dataset mean).

    The probability is ``softmax(logits)[target]`` (``sigmoid`` for a single-logit model). The model runs in eval
    mode (every submodule's ``training`` flag is restored afterwards) under ``no_grad``; the global RNG state is
    restored, so training is unaffected.

    Args:
        model: classifier returning logits ``(B, num_classes)`` (or anything ``output_transform`` maps to that).
        inputs: images ``(N, C, H, W)``.
        target: class index, or ``(N,)`` integer tensor of per-sample classes.
        heatmaps: relevance maps ``(N, 1, H', W')`` or attributions ``(N, C, H', W')`` (reduced with the
            ``to_heatmap`` rule); resized bilinearly to ``(H, W)`` if needed.
        steps: number of deletion steps; the curve has ``steps + 1`` points (step 0 is the unperturbed input).
        perturbation: ``"blur"``, ``"mean"`` or ``"zero"``.
        output_transform: maps the model output to logits (for models returning tuples/dicts).
        batch_size: images per forward pass; default ``max(N, 128)`` (capped at ``N * (steps + 1)``).
        blur_sigma: Gaussian sigma in pixels for ``"blur"``.

    Returns:
        ``(curves, auc)``: detached float32 probabilities and their trapezoid area over ``[0, 1]``. Lower deletion AUC
        means a more faithful ranking.

    Shape:
        - inputs: ``(N, C, H, W)``
        - heatmaps: ``(N, 1, H', W')``
        - curves: ``(N, steps + 1)``
        - auc: ``(N,)``

    Cost: ``N * (steps + 1)`` images forward, no backward, in ``ceil(N * (steps + 1) / batch_size)`` passes (16
    probes with the default 16 steps: 272 images in 3 passes); perturbed batches are built chunk by chunk, so peak
    memory is about one batch of inputs plus activations.
    """
    return _curve(
        "deletion",
        model,
        inputs,
        target,
        heatmaps,
        steps=steps,
        perturbation=perturbation,
        output_transform=output_transform,
        batch_size=batch_size,
        blur_sigma=blur_sigma,
    )


def insertion_curve(
    model: nn.Module,
    inputs: Tensor,
    target: int | Tensor,
    heatmaps: Tensor,
    *,
    steps: int = 16,
    perturbation: str = "blur",
    output_transform: Callable[[Any], Tensor] | None = None,
    batch_size: int | None = None,
    blur_sigma: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Target probability while the most relevant pixels are progressively inserted into a baseline.

    The mirror image of :func:`deletion_curve`: step 0 is the fully perturbed baseline, step ``steps`` the
    original input, and at step ``s`` the top ``round(s / steps * H * W)`` pixels come from the input. Higher
    insertion AUC means a more faithful ranking. Arguments, evaluation mode and cost are as for
    :func:`deletion_curve`.

    Returns:
        ``(curves, auc)``: detached float32 probabilities and their trapezoid area over ``[0, 1]``.

    Shape:
        - inputs: ``(N, C, H, W)``
        - heatmaps: ``(N, 1, H', W')``
        - curves: ``(N, steps + 1)``
        - auc: ``(N,)``
    """
    return _curve(
        "insertion",
        model,
        inputs,
        target,
        heatmaps,
        steps=steps,
        perturbation=perturbation,
        output_transform=output_transform,
        batch_size=batch_size,
        blur_sigma=blur_sigma,
    )


def deletion_auc(model: nn.Module, inputs: Tensor, target: int | Tensor, heatmaps: Tensor, **kwargs: Any) -> Tensor:
    """Area under :func:`deletion_curve` (lower is more faithful); keyword arguments as there.

    Shape:
        - output: ``(N,)``
    """
    return deletion_curve(model, inputs, target, heatmaps, **kwargs)[1]


def insertion_auc(model: nn.Module, inputs: Tensor, target: int | Tensor, heatmaps: Tensor, **kwargs: Any) -> Tensor:
    """Area under :func:`insertion_curve` (higher is more faithful); keyword arguments as there.

    Shape:
        - output: ``(N,)``
    """
    return insertion_curve(model, inputs, target, heatmaps, **kwargs)[1]
