"""Run the chosen views on a fixed pool each round and write what they produce; one view's failure stays its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from lightning_xai.probes import ProbeSet, select_probes
from lightning_xai.views._common import OutputTransform, ViewContext, capture, check_int
from lightning_xai.views._write import write_view_output
from lightning_xai.views.activation_max import ActivationMaxView
from lightning_xai.views.activations import ActivationsView
from lightning_xai.views.attention_graphs import attention_graphs, render_attention_graphs
from lightning_xai.views.dissection import DissectionView
from lightning_xai.views.max_min import MaxMinView
from lightning_xai.views.projector import ProjectorView

__all__ = ["END_OF_FIT", "VIEWS", "ViewRunner", "concepts_of"]

#: View name -> class, in the order a round runs them.
VIEWS: dict[str, type] = {
    "activations": ActivationsView,
    "max_min": MaxMinView,
    "projector": ProjectorView,
    "activation_max": ActivationMaxView,
    "dissection": DissectionView,
}
#: Offline work run once at the end of fit (expensive), named beside the views: options of
#: :meth:`ViewRunner.attention_graphs`.
END_OF_FIT = ("attention_graphs",)
_GRAPH_OPTIONS = ("num_probes", "grid", "beam", "keep", "max_roots", "max_patches")


def _dataset_of(source: Any) -> Any:
    dataset = getattr(source, "dataset", None)  # a DataLoader over a map-style dataset
    return dataset if dataset is not None and hasattr(dataset, "__getitem__") else source


def concepts_of(source: Any, pool: ProbeSet, class_names: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Concept masks ``{name: (N, 1, H, W)}`` of the pool for dissection.

    A dataset with a ``concept_masks(index) -> {name: (1, H, W)}`` method (e.g. :class:`ShapesDataset`, which gives
    one concept per shape class and the shortcut marker) is asked for each pool sample (ids are dataset indices).
    Otherwise, with ground-truth masks on the pool, one concept per class: the mask on samples of that class, zeros
    elsewhere. Otherwise none.
    """
    dataset = _dataset_of(source)
    method = getattr(dataset, "concept_masks", None)
    if callable(method):
        per_item = [method(int(i)) for i in pool.ids]
        names = list(per_item[0])
        return {k: torch.stack([item[k] for item in per_item]).float() for k in names}
    if pool.masks is None:
        return {}
    labels = pool.labels
    out = {}
    for c in sorted(int(v) for v in torch.unique(labels) if int(v) >= 0):
        name = str(class_names[c]) if class_names is not None and c < len(class_names) else f"class {c}"
        out[name] = pool.masks * (labels == c).view(-1, 1, 1, 1).to(pool.masks.dtype)
    return out


class ViewRunner:
    """The views of one monitor: their pool, their state, and one call per round.

    Args:
        names: view names from :data:`VIEWS` (run in that order each round) and :data:`END_OF_FIT`
            (``"attention_graphs"``: structured attention graphs once, at the end of fit).
        options: per name, keyword arguments of its class, e.g. ``{"activation_max": {"steps": 32}}``
            (``"attention_graphs"``: those of :meth:`attention_graphs`); ``"pool": {"size": N}`` sets the pool size.
        pool_size: samples in the fixed pool (class-balanced, from the probes' source, read once at setup), unless
            ``options["pool"]["size"]`` gives it.

    Cost: per round one forward over the probes and one over the pool (shared by the views), plus each view's own
    cost (see the view classes); activation maximisation dominates when it is due.
    """

    def __init__(self, names: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None = None,
                 pool_size: int = 128) -> None:
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"`views` must be a sequence of view names from {tuple(VIEWS)}, got {names!r}")
        allowed = (*VIEWS, *END_OF_FIT)
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise ValueError(f"`views` has unknown names {unknown}; allowed: {allowed}")
        options = dict(options or {})
        extra = [k for k in options if k not in names and k != "pool"]
        if extra:
            raise ValueError(f"`view_options` has keys {extra} that are not in `views`={tuple(names)} (or 'pool')")
        pool = dict(options.get("pool", {}))
        if set(pool) - {"size"}:
            raise ValueError(f"`view_options['pool']` takes only 'size', got {sorted(pool)}")
        pool_size = pool.get("size", pool_size)
        check_int(pool_size, "view_options['pool']['size']")
        graph_options = dict(options.get("attention_graphs", {}))
        bad = [k for k in graph_options if k not in _GRAPH_OPTIONS]
        if bad:
            raise ValueError(f"`view_options['attention_graphs']` has unknown keys {bad}; allowed: {_GRAPH_OPTIONS}")
        self.graph_options: dict[str, Any] | None = graph_options if "attention_graphs" in names else None
        self.views = {}
        for name in VIEWS:
            if name in names:
                try:
                    self.views[name] = VIEWS[name](**dict(options.get(name, {})))
                except (TypeError, ValueError) as err:  # name the option as the user wrote it
                    raise ValueError(f"`view_options[{name!r}]`: {err}") from None
        self.pool_size = pool_size
        self.pool: ProbeSet | None = None
        self.concepts: dict[str, Tensor] = {}
        #: one record per round: ``{"epoch", "step", "scalars": {tag: value}}`` (what the views logged)
        self.history: list[dict[str, Any]] = []

    def __bool__(self) -> bool:
        return bool(self.views) or self.graph_options is not None

    def build_pool(self, source: Any, *, class_names: Sequence[str] | None = None, **select: Any) -> None:
        """Read the pool from ``source`` (as :func:`~lightning_xai.probes.select_probes`, RNG-neutral) and its
        concepts (:func:`concepts_of`)."""
        if not self.views:
            return
        self.pool = select_probes(source, self.pool_size, **select)
        self.concepts = concepts_of(source, self.pool, class_names) if "dissection" in self.views else {}

    def run(
        self,
        model: nn.Module,
        layer: str,
        probes: ProbeSet,
        writer: Any,
        *,
        epoch: int,
        step: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
        output_transform: OutputTransform | None = None,
        device: torch.device | None = None,
        write_scalars: bool = True,
    ) -> dict[str, BaseException]:
        """Run every view once and write its output; returns ``{view name: exception}`` for the views that failed
        (the others ran and were written). The scalars of the round are in ``history[-1]`` (with
        ``write_scalars=False`` the caller writes them, e.g. to several loggers)."""
        pool = self.pool if self.pool is not None else probes
        device = device if device is not None else torch.device("cpu")
        ctx = ViewContext(
            model, layer, probes.images.to(device), probes.labels, probes.ids, pool.images.to(device), pool.labels,
            pool.ids, self.concepts, class_names, mean, std, output_transform, epoch=epoch, step=step,
        )
        failures: dict[str, BaseException] = {}
        scalars: dict[str, float] = {}
        for name, view in self.views.items():
            try:
                output = view(ctx)
                write_view_output(writer, output if write_scalars else replace(output, scalars={}), step)
                scalars.update(output.scalars)
            except Exception as err:  # one view's failure must not take the others or the heatmaps down
                failures[name] = err
        self.history.append({"epoch": epoch, "step": step, "scalars": scalars})
        return failures

    def attention_graphs(self, model: nn.Module, probes: ProbeSet, writer: Any, *, step: int,
                         mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                         class_names: Sequence[str] | None = None, output_transform: OutputTransform | None = None,
                         device: torch.device | None = None, **options: Any) -> tuple[Tensor, str]:
        """Structured attention graphs (:func:`~lightning_xai.views.attention_graphs`) of the first ``num_probes``
        (4) probes for their predicted class, written as image ``xai/attention_graphs/probes`` and Markdown text
        ``xai/attention_graphs/summary``; returns ``(picture, text)``.

        ``options`` (over the ``"attention_graphs"`` view options): ``num_probes`` and the search's ``grid``,
        ``beam``, ``keep``, ``max_roots``, ``max_patches``.
        """
        opts = {"num_probes": 4, **(self.graph_options or {}), **options}
        num_probes = opts.pop("num_probes")
        check_int(num_probes, "view_options['attention_graphs']['num_probes']")
        device = device if device is not None else torch.device("cpu")
        images = probes.images[:num_probes].to(device)
        preds = capture(model, images, output_transform=output_transform)[0].argmax(dim=1)
        graphs = attention_graphs(model, images, preds, output_transform=output_transform, **opts)
        picture, text = render_attention_graphs(images.cpu(), graphs, class_names=class_names, mean=mean, std=std)
        writer.add_image("xai/attention_graphs/probes", picture, step)
        writer.add_text("xai/attention_graphs/summary", text, step)
        return picture, text

    def state_dict(self) -> dict[str, Any]:
        return {name: view.state_dict() for name, view in self.views.items() if hasattr(view, "state_dict")}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, sub in state.items():
            view = self.views.get(name)
            if view is not None and hasattr(view, "load_state_dict"):
                view.load_state_dict(sub)

