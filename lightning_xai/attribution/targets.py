"""Segmentation targets: the scalar explained for a model whose output is a map of class logits ``(N, K, H, W)``.

A segmentation model has no single class score to explain. As pytorch-grad-cam's ``SemanticSegmentationTarget``
does, the scalar explained is the sum of one class's logits over a region: ``sum_hw logits[c, h, w] * region[h, w]``.
Both are chosen per sample (:func:`explained_regions`): the class of the probe's label and its ground-truth region
(rule ``"mask"``), or the pixels the model predicts as that class (rule ``"predicted"``).

These scores are ordinary ``output_transform`` callables, so every attribution method and measure works unchanged:
:class:`RegionScores` maps the output to ``(N, R)`` scores, one column per (class, region) pair, and sample ``i`` is
explained with target ``i``. :class:`ClassScores` (each class over the whole image) stands in for logits where a
region is not known yet (checks made once at setup: layer search, memory).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai.attribution._layers import _is_feature, hooked_modules, unwrap_model
from lightning_xai.attribution._state import preserved_state

__all__ = ["ClassScores", "RegionScores", "SEGMENTATION_TARGETS", "explained_regions", "region_outcome",
           "segmentation_layer", "segmentation_logits"]

#: The rules choosing the region explained (see :func:`explained_regions`).
SEGMENTATION_TARGETS = ("mask", "predicted")


def segmentation_logits(output: Any) -> Tensor | None:
    """The ``(N, K, H, W)`` class logits in a model's output: a rank-4 tensor, or a mapping's ``"out"`` entry (the
    torchvision segmentation models return ``{"out": ..., "aux": ...}``; ``aux`` is a training-only head). None
    for anything else."""
    if isinstance(output, Mapping):
        output = output.get("out")
    if isinstance(output, Tensor) and output.ndim == 4 and output.shape[1] >= 1 and output.shape[2] * output.shape[3] > 1:
        return output
    return None


class _Logits:
    """The user's ``output_transform`` (if any), then :func:`segmentation_logits`."""

    def __init__(self, transform: Callable[[Any], Any] | None = None) -> None:
        self.transform = transform

    def logits(self, output: Any) -> Tensor:
        value = self.transform(output) if self.transform is not None else output
        logits = segmentation_logits(value)
        if logits is None:
            got = type(value).__name__ if not isinstance(value, Tensor) else f"a tensor of shape {tuple(value.shape)}"
            raise ValueError(f"a segmentation model must return class logits (N, K, H, W) or a dict with 'out', got "
                             f"{got}")
        return logits


class ClassScores(_Logits):
    """``output_transform``: ``(N, K, H, W)`` logits -> ``(N, K)``, each class's logits summed over the image.

    Shape:
        output ``(N, K, H, W)`` (or ``{"out": ...}``) -> ``(N, K)``.
    """

    def __call__(self, output: Any) -> Tensor:
        return self.logits(output).sum(dim=(2, 3))


class RegionScores(_Logits):
    """``output_transform``: ``(N, K, H, W)`` logits -> ``(N, R)``, column ``r`` the sum of class ``classes[r]``'s
    logits over ``regions[r]`` (pytorch-grad-cam's ``SemanticSegmentationTarget`` for each pair).

    Regions at another resolution than the output are resized (nearest). One matrix product per distinct class, so
    memory stays that of the output plus ``(N, R)``.

    Args:
        classes: ``(R,)`` class index of each region.
        regions: ``(R, H, W)`` 0/1 (or weights).
        transform: the user's ``output_transform``, applied first.
    """

    def __init__(self, classes: Tensor, regions: Tensor, transform: Callable[[Any], Any] | None = None) -> None:
        super().__init__(transform)
        if classes.ndim != 1 or regions.ndim != 3 or regions.shape[0] != classes.shape[0]:
            raise ValueError(f"`classes` (R,) and `regions` (R, H, W) must match, got {tuple(classes.shape)} and "
                             f"{tuple(regions.shape)}")
        self.classes = classes.long()
        self.regions = regions.float()

    def __call__(self, output: Any) -> Tensor:
        logits = self.logits(output)
        regions = self.regions.to(logits.device)
        if regions.shape[-2:] != logits.shape[-2:]:
            regions = F.interpolate(regions[:, None], size=logits.shape[-2:], mode="nearest")[:, 0]
        regions = regions.to(logits.dtype).flatten(1)
        scores = logits.new_zeros(logits.shape[0], regions.shape[0])
        classes = self.classes.to(logits.device)
        for c in classes.unique().tolist():
            columns = (classes == c).nonzero().flatten()
            scores = scores.index_copy(1, columns, logits[:, c].flatten(1) @ regions[columns].T)
        return scores


def explained_regions(logits: Tensor, labels: Tensor, masks: Tensor | None, rule: str = "mask", *,
                      background: int | None = 0) -> tuple[Tensor, Tensor]:
    """The class and region explained for each sample.

    Class: the sample's label; where unknown (``-1``), the most frequent predicted class other than ``background``
    (the most frequent predicted class if only background is predicted). Region: rule ``"mask"``, the sample's mask
    (its ground truth for that class), else the predicted region; rule ``"predicted"``, the pixels predicted as that
    class (``argmax == class``), else the mask. A region still empty is the whole image (defined, never NaN).

    Args:
        logits: ``(N, K, H, W)`` model output at the samples.
        labels: ``(N,)`` class per sample, ``-1`` unknown.
        masks: ``(N, 1, H', W')`` ground-truth region of each sample's class (any resolution), or None.
        rule: ``"mask"`` or ``"predicted"``.
        background: class id never chosen for an unknown label (unless only it is predicted), or None.

    Returns:
        ``(classes (N,) long, regions (N, H, W) float 0/1)`` at the logits' resolution and device.
    """
    if rule not in SEGMENTATION_TARGETS:
        raise ValueError(f"`rule` must be one of {SEGMENTATION_TARGETS}, got {rule!r}")
    n, k, h, w = logits.shape
    pred = logits.argmax(dim=1)  # (N, H, W)
    counts = F.one_hot(pred.flatten(1), k).sum(dim=1)  # (N, K) predicted pixels per class
    fallback = counts.argmax(dim=1)
    if background is not None and 0 <= background < k:
        others = counts.clone()
        others[:, background] = -1
        fallback = torch.where(others.amax(dim=1) > 0, others.argmax(dim=1), fallback)
    labels = labels.to(logits.device).long()
    classes = torch.where(labels >= 0, labels, fallback)
    predicted = (pred == classes[:, None, None]).float()
    if masks is not None:
        truth = masks.to(logits.device).float()
        if truth.shape[-2:] != (h, w):
            truth = F.interpolate(truth, size=(h, w), mode="nearest")
        truth = (truth[:, 0] > 0.5).float() * (labels >= 0).float()[:, None, None]  # no truth for an unknown label
    else:
        truth = torch.zeros_like(predicted)
    first, second = (truth, predicted) if rule == "mask" else (predicted, truth)
    regions = torch.where(_nonempty(first), first, second)
    regions = torch.where(_nonempty(regions), regions, torch.ones_like(regions))
    return classes, regions


def _nonempty(regions: Tensor) -> Tensor:
    return (regions.flatten(1).sum(dim=1) > 0)[:, None, None]


def region_outcome(logits: Tensor, regions: Tensor) -> tuple[Tensor, Tensor]:
    """What the model predicts in each region: ``(pred, prob)``, the class most pixels of the region are predicted
    as, and the mean softmax probability of that class over the region (the classifier's pred/probability)."""
    n, k = logits.shape[:2]
    if regions.shape[-2:] != logits.shape[-2:]:
        regions = F.interpolate(regions[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0]
    inside = regions.flatten(1) > 0.5  # (N, HW)
    votes = F.one_hot(logits.argmax(dim=1).flatten(1), k) * inside[..., None]
    pred = votes.sum(dim=1).argmax(dim=1)
    probs = logits.float().softmax(dim=1).flatten(2).gather(1, pred[:, None, None].expand(n, 1, inside.shape[1]))
    prob = (probs[:, 0] * inside).sum(dim=1) / inside.sum(dim=1).clamp_min(1)
    return pred, prob


def segmentation_layer(model: nn.Module, example: Tensor, transform: Callable[[Any], Any] | None = None
                       ) -> str | None:
    """The Grad-CAM layer of a segmentation model: the last feature layer before the classifier, i.e. the last
    module (in the order forwards finish) whose output is a spatial map ``(N, C, h, w)`` of more than one position
    with ``C`` other than the number of classes (the classifier's own maps are the logits: Grad-CAM there only
    repeats the class's logits). None when there is none (the usual automatic choice then applies).

    U-Net: the last decoder block; torchvision FCN: ``classifier.2`` (the head's 512-channel features); LRASPP:
    ``classifier.cbr``. One forward without gradients, hooks removed in ``finally``.
    """
    net = unwrap_model(model)
    seen: list[tuple[str, nn.Module, tuple[int, ...]]] = []

    def make_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, Tensor):
                seen.append((name, module, tuple(output.shape)))
        return hook

    with preserved_state(model), torch.no_grad():
        with hooked_modules(net, make_hook):
            output = net(example)
        logits = _Logits(transform).logits(output)
    classes = logits.shape[1]
    for name, module, shape in reversed(seen):
        if len(shape) == 4 and shape[1] != classes and shape[2] * shape[3] > 1 and _is_feature(module):
            return name
    return None
