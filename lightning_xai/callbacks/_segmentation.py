"""Segmentation models, explained like classifiers: one class's region per probe (issue 24).

A model whose output is a map of class logits ``(N, K, H, W)`` (or a dict with ``"out"``, as torchvision's FCN /
DeepLabV3 / LRASPP return) is found at setup by one forward (:meth:`SegmentationTargets.detect`). From then on:

- the monitor's ``output_transform`` becomes :class:`~lightning_xai.attribution.targets.ClassScores` (each class
  over the whole image), so every setup check that wants logits ``(N, K)`` (layer search, memory, batch sizes) runs
  unchanged;
- each round, :meth:`SegmentationTargets.prepare` picks each probe's class and region (the ``segmentation`` options'
  rule) with one forward, and the methods explain
  :class:`~lightning_xai.attribution.targets.RegionScores` (the class's logits summed over the region, as
  pytorch-grad-cam's ``SemanticSegmentationTarget``), probe ``i`` with target ``i``;
- the round's ``target`` is the class, ``pred``/``prob`` what the model predicts in the region; the probes' masks
  (the class's ground-truth region) feed localisation, drift's ``mass`` and the overlays' outline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_xai.attribution import preserved_state
from lightning_xai.attribution.targets import (
    ClassScores,
    RegionScores,
    explained_regions,
    region_outcome,
    segmentation_layer,
    segmentation_logits,
)
from lightning_xai.callbacks._compat import MisconfigurationException, muted_logging
from lightning_xai.probes import ProbeSet


@dataclass
class PreparedTargets:
    """One batch of probes ready to explain: ``targets`` (row ``i`` explains column ``i`` of ``transform``'s
    output), the class and region of each probe, and what the model predicts in the region."""

    targets: Tensor
    transform: RegionScores
    classes: Tensor
    regions: Tensor
    pred: Tensor
    prob: Tensor

    def regions_at(self, size: tuple[int, int] | torch.Size) -> Tensor:
        """The regions ``(N, 1, H, W)`` at the images' size (nearest), e.g. for the overlays' outline."""
        regions = self.regions[:, None].float()
        if regions.shape[-2:] != tuple(size):
            regions = F.interpolate(regions, size=tuple(size), mode="nearest")
        return regions


class SegmentationTargets:
    """The region rule of a segmentation model (see the module docstring).

    Args:
        options: the monitor's ``segmentation`` options (``target``, ``background``, ``ignore_index``,
            ``class_index``).
        transform: the user's ``output_transform`` (applied before the logits are read), or None.
    """

    def __init__(self, options: Mapping[str, Any], transform: Any = None) -> None:
        self.rule = str(options["target"])
        self.background = options["background"]
        self.transform = transform
        self.class_scores = ClassScores(transform)
        self.layer: str | None = None  # the Grad-CAM layer for layer=None: the last feature layer before the classifier

    @staticmethod
    def user_transform(transform: Any) -> Any:
        """The user's own ``output_transform`` (a second fit finds the monitor's :class:`ClassScores` in place)."""
        return transform.transform if isinstance(transform, ClassScores) else transform

    @classmethod
    def detect(cls, model: torch.nn.Module, probes: ProbeSet, options: Mapping[str, Any],
               transform: Any = None, target: Any = "label") -> SegmentationTargets | None:
        """One forward on the first probe: a segmentation model (output rank 4 with a spatial size, or a dict with
        ``"out"``) gets a :class:`SegmentationTargets`; anything else ``None`` (the usual checks apply). Raises when
        the rule needs masks the probes do not have."""
        transform = cls.user_transform(transform)
        device = next((t.device for t in model.parameters()), torch.device("cpu"))
        try:
            with preserved_state(model), muted_logging(model), torch.no_grad():
                output = model(probes.images[:1].to(device))
                value = transform(output) if transform is not None else output
        except Exception:  # the model or transform fails here: the usual validation names it
            return None
        if segmentation_logits(value) is None:
            return None
        if target != "label":
            raise MisconfigurationException(
                f"ExplanationMonitor: target={target!r} applies to classifiers; this is a segmentation model (its "
                f"output is a map of class logits {tuple(segmentation_logits(value).shape)}), whose probes are each "
                "explained for one class region. Leave `target` at 'label' and choose with segmentation={'target': "
                "'mask' | 'predicted', 'class_index': None | int}.")
        if options["target"] == "mask" and probes.masks is None:
            raise MisconfigurationException(
                "ExplanationMonitor: the model is a segmentation model (its output is a map of class logits "
                f"{tuple(segmentation_logits(value).shape)}), and `segmentation['target']='mask'` explains each "
                "probe's ground-truth class region, but the probes have no label masks. Give samples as (image, mask) "
                "with mask (H, W) integer class ids (or a dict with 'mask'), select it with "
                "probe_options={'label_key': ...}, or set segmentation={'target': 'predicted'} to explain the "
                "predicted region of each probe's most frequent predicted class.")
        found = cls(options, transform)
        try:
            found.layer = segmentation_layer(model, probes.images[:1].to(device), transform)
        except Exception:  # no better layer than the usual automatic choice (which names what is wrong)
            found.layer = None
        return found

    @staticmethod
    def configure(config: Any, found: SegmentationTargets | None, chosen_before: str | None = None
                  ) -> tuple[Any, str | None]:
        """The monitor's config for this fit and the layer chosen here: for a segmentation model the
        ``output_transform`` becomes :class:`ClassScores` and ``layer=None`` its :attr:`layer`; for any other model
        the user's own transform and layer come back (``chosen_before``: the layer an earlier fit chose here, which
        is not the user's)."""
        user_layer = None if config.layer == chosen_before else config.layer
        chosen = None if found is None or user_layer is not None else found.layer  # the user's layer wins
        transform = SegmentationTargets.user_transform(config.output_transform)
        return dataclasses.replace(config, output_transform=transform if found is None else found.class_scores,
                                   layer=user_layer if chosen is None else chosen), chosen

    def prepare(self, model: torch.nn.Module, images: Tensor, probes: ProbeSet,
                classes: Tensor | None = None) -> PreparedTargets:
        """Each probe's class (``classes`` if given, e.g. the sanity round's, else its label) and region, from one
        forward of ``model`` (inside the caller's ``preserved_state``)."""
        with torch.no_grad():
            logits = self.class_scores.logits(model(images)).float()
        labels = probes.labels.to(images.device) if classes is None else classes.to(images.device)
        chosen, regions = explained_regions(logits, labels, probes.masks, self.rule, background=self.background)
        pred, prob = region_outcome(logits, regions)
        targets = torch.arange(images.shape[0], device=images.device)
        return PreparedTargets(targets=targets, transform=RegionScores(chosen, regions, self.transform),
                               classes=chosen, regions=regions, pred=pred, prob=prob)
