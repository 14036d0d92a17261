"""Every tag lightning_xai logs, named in one place.

Scalars, images, text and histograms all live under ``xai/``: ``xai/{method}/{name}`` for one method's values
(``xai/grad_cam/stability``), ``xai/{group}/{name}`` for the rest (``xai/drift/alarm``, ``xai/agreement/a_vs_b``,
``xai/max_min/grid``). Writers, measures, views, the report and the monitor build their tags with these functions, so
a renamed key is one edit and a second monitor's suffix is applied by :func:`with_suffix` alone.

No imports: every layer may use it. With several monitors in one Trainer each writes its text, images, histograms
and the views' items under ``{tag}/monitor_{i}``, and its scalars too where two monitors log the same key
(:mod:`lightning_xai.callbacks._tags`).

What the monitor logs (step = ``trainer.global_step``):
    - ``xai/{method}/overlay`` (image): one panel per explained epoch (:class:`lightning_xai.render.ProbeRenderer`):
      64 px tiles in rows of 4 (276 px wide: readable at TensorBoard's default card size), a title with the
      method, the epoch and the number of flagged probes, per tile ``#<probe id> <label>`` /
      ``p=<prediction> <probability>`` (orange when wrong), flagged probes outlined.
    - ``xai/{method}/timeline`` (image, at the end of fit and on :meth:`ExplanationMonitor.write_timelines`): each probe (row)
      across the explained epochs (columns).
    - ``xai/{method}/stability``, ``xai/{method}/topk_overlap``, ``xai/{method}/drift`` (scalars): mean
      similarity to the previous explained epoch, mean share of the top-k pixels kept, number of probes flagged;
      0.0 (no similarity shown, never NaN, never "stable") when no probe's map can be compared because the maps are
      flat, e.g. all zero before a zero-initialised head has learnt (``xai/{method}/degenerate`` counts them).
    - the quality measures' keys (see :mod:`lightning_xai.metrics.measures`), e.g.
      ``xai/integrated_gradients/completeness_error`` (median; ``_p90``, ``_max``, and a histogram of all
      probes), ``xai/{method}/pointing_game``, ``xai/agreement/{a}_vs_{b}``, ``xai/{method}/deletion_auc``,
      ``xai/{method}/sanity_similarity`` (at the last step of fit).
    - ``xai/overhead`` (scalar): the monitor's share of the explained epoch's wall time (rank 0's clock).
    - ``xai/drift`` (text): the epoch's stability table and the flagged probes.
    - with ``views``: images ``xai/activations/top_channels``, ``xai/max_min/grid``, ``xai/activation_max/classes``;
      scalars ``xai/activations/dead_fraction``, ``xai/max_min/change``, ``xai/projector/centroid_accuracy``,
      ``xai/projector/silhouette``, ``xai/activation_max/gain``, ``xai/activation_max/probability``,
      ``xai/dissection/units/<concept>``, ``xai/dissection/max_iou/<concept>``; text
      ``xai/dissection/top_units``; the projector's files (``projector_config.pbtxt``) in the log directory;
      at the end of fit image ``xai/attention_graphs/probes`` and text ``xai/attention_graphs/summary``.
    - the custom-scalars layout (TensorBoard's *Custom Scalars* tab), once per run.

Example::

    >>> stability("grad_cam"), overlay("saliency", group=1), with_suffix(DRIFT_TEXT, "monitor_1")
    ('xai/grad_cam/stability', 'xai/saliency/overlay/2', 'xai/drift/monitor_1')
    >>> method_and_name("xai/grad_cam/stability"), method_and_name("xai/overhead")
    (('grad_cam', 'stability'), None)
"""

from __future__ import annotations

import re

PREFIX = "xai/"

# epoch-level values
OVERHEAD = "xai/overhead"  # the monitor's share of the explained epoch's wall time
DRIFT_TEXT = "xai/drift"  # the epoch's stability table and drift details (text)
DRIFT_ALARM = "xai/drift/alarm"  # 1 at an epoch that raised a drift alarm
DRIFT_ACTIVE = "xai/drift/active"  # 1 while the model keeps the behaviour an alarm reported
DRIFT_SCORE = "xai/drift/score"  # the strongest evidence this epoch (>= 1: an alarm's level)

# per-method scalar names (``xai/{method}/{name}``)
STABILITY = "stability"
TOPK_OVERLAP = "topk_overlap"
FLAGGED = "drift"  # the number of display probes the detector flags (evidence, not an alarm)
DEGENERATE = "degenerate"
DRIFT_EVIDENCE = "drift_score"
SHIFT = "shift"
MASS_CHANGE = "mass_change"
POINTING_GAME = "pointing_game"
RELEVANCE_MASS = "relevance_mass"
COMPLETENESS_ERROR = "completeness_error"
SANITY_SIMILARITY = "sanity_similarity"

# per-method images
OVERLAY = "overlay"
TIMELINE = "timeline"

AGREEMENT = "agreement"
ATTENTION_GRAPHS = "attention_graphs"

_METHOD_KEY = re.compile(r"^xai/(?P<method>[^/]+)/(?P<name>[^/]+)$")


def of(group: str, name: str) -> str:
    """``xai/{group}/{name}``: a method's value (group = the method) or a view's / a measure's own group."""
    return f"{PREFIX}{group}/{name}"


def stability(method: str) -> str:
    return of(method, STABILITY)


def topk_overlap(method: str) -> str:
    return of(method, TOPK_OVERLAP)


def flagged(method: str) -> str:
    """The number of display probes flagged for ``method`` (``xai/{method}/drift``)."""
    return of(method, FLAGGED)


def degenerate(method: str) -> str:
    return of(method, DEGENERATE)


def drift_evidence(method: str) -> str:
    """The method's drift evidence (``xai/{method}/drift_score``; >= 1 is an alarm's level)."""
    return of(method, DRIFT_EVIDENCE)


def relevance_mass(method: str) -> str:
    return of(method, RELEVANCE_MASS)


def sanity_similarity(method: str) -> str:
    return of(method, SANITY_SIMILARITY)


def agreement(pair: str) -> str:
    """``xai/agreement/{a}_vs_{b}``."""
    return of(AGREEMENT, pair)


def overlay(method: str, group: int = 0) -> str:
    """The overlay panel of ``method``: ``xai/{method}/overlay``, then ``.../overlay/2``, ... for later groups."""
    return of(method, OVERLAY) if group == 0 else f"{of(method, OVERLAY)}/{group + 1}"


def timeline(method: str) -> str:
    return of(method, TIMELINE)


def with_suffix(tag: str, suffix: str) -> str:
    """A monitor's tag when several share a Trainer (``xai/drift`` -> ``xai/drift/monitor_1``); unchanged without."""
    return f"{tag}/{suffix}" if suffix else tag


def is_xai(tag: str) -> bool:
    return tag.startswith(PREFIX)


def method_and_name(tag: str) -> tuple[str, str] | None:
    """``xai/{method}/{name}`` -> ``(method, name)``; ``None`` for any other shape."""
    match = _METHOD_KEY.match(tag)
    return None if match is None else (match["method"], match["name"])


def per_method_pattern(name: str) -> str:
    """A regular expression matching ``name`` for any method (``^xai/[^/]+/{name}$``), for the dashboard layout."""
    return rf"^{PREFIX}[^/]+/{re.escape(name)}$"
