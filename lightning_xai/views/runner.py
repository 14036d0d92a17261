"""Run the chosen views on a fixed pool each round and write what they produce; one view's failure stays its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from lightning_xai import keys
from lightning_xai._validation import Option, check, check_options, integer, path
from lightning_xai.probes import ProbeSet, select_probes
from lightning_xai.views._common import VIEWS, OutputTransform, ViewContext, capture, register_view
from lightning_xai.views._write import write_view_output
from lightning_xai.views.activation_max import ActivationMaxView
from lightning_xai.views.activations import ActivationsView
from lightning_xai.views.attention_graphs import (
    GRAPH_OPTIONS,
    attention_graphs,
    check_graph_options,
    render_attention_graphs,
)
from lightning_xai.views.dissection import DissectionView
from lightning_xai.views.max_min import MaxMinView
from lightning_xai.views.projector import ProjectorView

__all__ = ["END_OF_FIT", "POOL_OPTIONS", "VIEWS", "ViewRunner", "available_views", "check_view_options", "concepts_of",
           "view_option_spec"]

# the built-ins, in the order a round runs them; views from outside the package follow in registration order
for _view in (ActivationsView, MaxMinView, ProjectorView, ActivationMaxView, DissectionView):
    register_view(_view)
#: Offline work run once at the end of fit (expensive), named beside the views: options of
#: :meth:`ViewRunner.attention_graphs`.
END_OF_FIT = ("attention_graphs",)


def available_views() -> tuple[str, ...]:
    """Every name ``ExplanationMonitor(views=...)`` accepts: the registered views, then the end-of-fit work."""
    return (*VIEWS, *END_OF_FIT)


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


POOL_OPTIONS = {
    "size": integer(128, 1, 8192, "samples in the fixed pool the views read; kept on the model's device with their "
                    "layer activations"),
}


def view_option_spec(name: str) -> dict[str, Option]:
    """The options of view ``name`` (:data:`VIEWS`, :data:`END_OF_FIT`) or of ``"pool"``."""
    if name == "pool":
        return POOL_OPTIONS
    if name in END_OF_FIT:
        return GRAPH_OPTIONS
    return VIEWS[name].options


def check_view_options(names: Sequence[str], options: Any, *, owner: str = "ViewRunner",
                       root: str = "view_options") -> dict[str, dict[str, Any]]:
    """Every chosen view's options (and ``"pool"``) checked by the one checker; returned with defaults filled in.

    Raises:
        ValueError / TypeError naming ``view_options[view][option]``, the value, what is allowed and the fix.
    """
    options = {} if options is None else options
    check(isinstance(options, Mapping), root, options, "None or a dict {view: {option: value}}", owner=owner,
          error=TypeError)
    for key in options:
        check(key in names or key == "pool", path(root, str(key)), options[key],
              f"options of a view named in `views`={tuple(names)} or 'pool'", owner=owner)
    out = {"pool": check_options(options.get("pool"), POOL_OPTIONS, path(root, "pool"), owner=owner)}
    for name in names:
        if name in END_OF_FIT:
            out[name] = check_graph_options(options.get(name), path(root, name), owner=owner)
        else:
            out[name] = check_options(options.get(name), view_option_spec(name), path(root, name), owner=owner)
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
                 pool_size: int = 128, *, owner: str = "ViewRunner") -> None:
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"`views` must be a sequence of view names from {tuple(VIEWS)}, got {names!r}")
        allowed = (*VIEWS, *END_OF_FIT)
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise ValueError(f"`views` has unknown names {unknown}; allowed: {allowed}")
        given_pool = isinstance(options, Mapping) and "pool" in options
        checked = check_view_options(names, options, owner=owner)
        self.graph_options: dict[str, Any] | None = checked[END_OF_FIT[0]] if END_OF_FIT[0] in names else None
        self.views = {name: VIEWS[name](**checked[name]) for name in VIEWS if name in names}
        self.pool_size = checked["pool"]["size"] if given_pool else pool_size
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

    def check_model(self, model: nn.Module, layer: str, example: Tensor, *,
                    output_transform: OutputTransform | None = None, owner: str = "ViewRunner",
                    budget_bytes: int | None = None) -> int:
        """What the options imply for this model, checked before the first round (call after :meth:`build_pool`).

        One forward of ``example`` (one probe) through :func:`capture`: ``max_min``'s ``units`` must be channels of
        ``layer``; ``dissection`` needs concept masks on the pool; the pool, its layer activations and features
        (kept for a round) must fit ``budget_bytes``. Returns that estimate in bytes.

        Raises:
            ValueError naming the option, its value and the fix.
        """
        _, acts, feats = capture(model, example[:1], layer=layer, head_input=True, output_transform=output_transform)
        channels = 0 if acts is None else int(acts.shape[1])
        view = self.views.get("max_min")
        if view is not None and view.units:
            check(max(view.units) < channels, path("view_options", "max_min", "units"), list(view.units),
                  f"channel indices of the views' layer {layer!r}, which has {channels} channels (0..{channels - 1})",
                  owner=owner, fix="pick units in range, or set `layer=` to the layer you mean")
        if "dissection" in self.views and self.pool is not None and not self.concepts:
            raise ValueError(
                f"{owner}: views=('dissection', ...) needs concept masks on the pool, and this data has none: give a "
                "dataset with a `concept_masks(index)` method, or probes with masks (probes=(images, labels, masks) "
                "or probe_options['mask_key']); otherwise leave 'dissection' out of `views`.")
        pool = self.pool
        if pool is None:
            return 0
        per_sample = (pool.images[0].numel() * 4 + (0 if acts is None else acts[0].numel() * 4)
                      + (0 if feats is None else feats[0].numel() * 4)
                      + sum(c[0].numel() * 4 for c in self.concepts.values()))
        estimate = len(pool) * per_sample
        if budget_bytes is not None and estimate > budget_bytes:
            raise ValueError(
                f"{owner}: `view_options['pool']['size']={self.pool_size}`: the pool with its layer activations "
                f"takes about {estimate / 2**20:.0f} MiB ({per_sample / 2**10:.0f} KiB per sample), more than the "
                f"{budget_bytes / 2**20:.0f} MiB allowed; lower the pool size.")
        return estimate

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
        opts = check_graph_options({**(self.graph_options or {}), **options})
        num_probes = opts.pop("num_probes")
        device = device if device is not None else torch.device("cpu")
        images = probes.images[:num_probes].to(device)
        preds = capture(model, images, output_transform=output_transform)[0].argmax(dim=1)
        graphs = attention_graphs(model, images, preds, output_transform=output_transform, **opts)
        picture, text = render_attention_graphs(images.cpu(), graphs, class_names=class_names, mean=mean, std=std)
        writer.add_image(keys.of(keys.ATTENTION_GRAPHS, "probes"), picture, step)
        writer.add_text(keys.of(keys.ATTENTION_GRAPHS, "summary"), text, step)
        return picture, text

    def state_dict(self) -> dict[str, Any]:
        return {name: view.state_dict() for name, view in self.views.items() if hasattr(view, "state_dict")}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, sub in state.items():
            view = self.views.get(name)
            if view is not None and hasattr(view, "load_state_dict"):
                view.load_state_dict(sub)

