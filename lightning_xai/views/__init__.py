"""What the network learned, per epoch: views of a layer and of the whole model beside the heatmaps.

Pure torch (no Lightning). Each view is a small class ``View(**options)`` called with a :class:`ViewContext`
(model, layer, probes, a fixed pool, concept masks) that returns a :class:`ViewOutput` (``uint8`` images, finite
scalars, texts, embeddings) for a writer. Every forward runs inside
:func:`~lightning_xai.attribution.preserved_state` with hooks that live for one call; activation maximisation
works on a copy of the model. :data:`VIEWS` maps the names accepted by ``ExplanationMonitor(views=...)`` to the
classes (subclasses of :class:`View`, added with :func:`register_view`: a view from outside the package is one class
and one decorator); :class:`ViewRunner` holds the chosen views, their pool and concepts, and runs them in a round.
Structured attention graphs (:func:`attention_graphs`) are offline work for the end of fit.
"""

from lightning_xai.views._common import Embedding, View, ViewContext, ViewOutput, capture, register_view, to_spatial
from lightning_xai.views.activation_max import ActivationMaxView, maximize_class
from lightning_xai.views.activations import ActivationsView, strongest_channels
from lightning_xai.views.attention_graphs import AttentionGraph, attention_graphs, render_attention_graphs
from lightning_xai.views.dissection import Dissection, DissectionView, dissect
from lightning_xai.views.max_min import MaxMinView, extremes, set_change
from lightning_xai.views.projector import ProjectorView, nearest_centroid_accuracy, silhouette
from lightning_xai.views.runner import (
    END_OF_FIT,
    POOL_OPTIONS,
    VIEWS,
    ViewRunner,
    available_views,
    check_view_options,
    concepts_of,
    view_option_spec,
)

__all__ = [
    "END_OF_FIT",
    "POOL_OPTIONS",
    "VIEWS",
    "ActivationMaxView",
    "ActivationsView",
    "AttentionGraph",
    "Dissection",
    "DissectionView",
    "Embedding",
    "MaxMinView",
    "ProjectorView",
    "View",
    "ViewContext",
    "ViewOutput",
    "ViewRunner",
    "attention_graphs",
    "available_views",
    "capture",
    "check_view_options",
    "concepts_of",
    "dissect",
    "extremes",
    "maximize_class",
    "nearest_centroid_accuracy",
    "register_view",
    "render_attention_graphs",
    "set_change",
    "silhouette",
    "strongest_channels",
    "to_spatial",
    "view_option_spec",
]
