"""The monitor's TensorBoard dashboard: a custom-scalars layout built from the keys it logs (pure data).

One table, :data:`KEYS`, says for every key family which chart it belongs to and what it means; the dashboard, the
report's curves and the report's table of metrics (in the same order, with these descriptions) are built from it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from lightning_xai import keys as xai_keys

__all__ = ["CATEGORY", "KEYS", "chart_of", "custom_scalars_layout", "describe", "key_order"]

#: The category (collapsible section) of TensorBoard's Custom Scalars tab.
CATEGORY = "lightning_xai"

ALARM_CHART = "drift alarm (1 = alarm epoch), active, evidence (>= 1 alarms)"
STABILITY_CHART = "stability (1 = same map as the previous epoch)"
FLAGGED_CHART = "probes flagged per method (evidence, not an alarm)"


def _exact(key: str) -> str:
    return f"^{re.escape(key)}$"


def _under(prefix: str) -> str:
    return f"^{re.escape(prefix)}"


#: ``(key pattern, chart title, description)`` in display order; the first match wins. Keys are
#: ``xai/{method}/{metric}``, ``xai/agreement/{a}_vs_{b}``, ``xai/drift/...``, ``xai/overhead`` and the views' keys.
#: One-point series (the sanity check, logged once at the end of fit) get no chart: TensorBoard's "ignore outliers"
#: scaling hides a lone failing value there; the report and the console give them in words.
KEYS: tuple[tuple[re.Pattern[str], str | None, str], ...] = tuple((re.compile(p), chart, text) for p, chart, text in (
    (_exact(xai_keys.DRIFT_ALARM), ALARM_CHART, "1 at an epoch that raised a drift alarm (the epoch-level decision), else 0"),
    (_exact(xai_keys.DRIFT_ACTIVE), ALARM_CHART,
     "1 while the explanations still differ from before the last alarm (until accept() or they return), else 0"),
    (_exact(xai_keys.DRIFT_SCORE), ALARM_CHART,
     "the epoch's drift evidence, averaged over methods, in units of the alarm threshold (>= 1 alarms)"),
    (xai_keys.per_method_pattern(xai_keys.STABILITY), STABILITY_CHART,
     "mean rank correlation (Spearman) with the previous explained epoch's map (1 = unchanged)"),
    (xai_keys.per_method_pattern(xai_keys.FLAGGED), FLAGGED_CHART,
     "probes whose map moved beyond their own noise floor this epoch (evidence for the alarm, not an alarm)"),
    (xai_keys.per_method_pattern(xai_keys.DRIFT_EVIDENCE), "evidence per method (>= 1 is an alarm's level)",
     "this method's drift evidence in units of the alarm threshold (the epoch alarms on the average over methods)"),
    (xai_keys.per_method_pattern(xai_keys.SHIFT), "shift from the reference (0 = the reference maps)",
     "mean 1 - Spearman to the long-horizon reference maps (end of warm-up, or the maps before the last alarm)"),
    (xai_keys.per_method_pattern(xai_keys.TOPK_OVERLAP), "top-k overlap with the previous epoch",
     "share of the top-10% pixels kept from the previous explained epoch (1 = the same pixels)"),
    (xai_keys.per_method_pattern(xai_keys.POINTING_GAME), "localisation: pointing game",
     "share of maps whose peak falls inside the object's mask"),
    (xai_keys.per_method_pattern(xai_keys.RELEVANCE_MASS), "localisation: relevance mass on the object",
     "share of the map's mass inside the object's mask"),
    (xai_keys.per_method_pattern(xai_keys.MASS_CHANGE), "localisation: mass on the object vs its normal level",
     "share of the map inside the masks minus its normal level (negative: the evidence left the object)"),
    (xai_keys.per_method_pattern(xai_keys.DEGENERATE), "degenerate maps (all zero, constant or non-finite)",
     "probes whose map is all zero, constant or non-finite (never counted as stable)"),
    (_under(xai_keys.of(xai_keys.AGREEMENT, "")), "agreement between methods", "mean rank correlation between the two methods' maps"),
    (xai_keys.per_method_pattern(xai_keys.COMPLETENESS_ERROR), "IG completeness error (median, p90, max)",
     "median |sum(attr) - (f(x) - f(baseline))| / |f(x) - f(baseline)| over the probes (0 = exact)"),
    (xai_keys.per_method_pattern("completeness_error_p90"), "IG completeness error (median, p90, max)",
     "90th percentile of the completeness error over the probes"),
    (xai_keys.per_method_pattern("completeness_error_max"), "IG completeness error (median, p90, max)",
     "largest completeness error over the probes"),
    (xai_keys.per_method_pattern("deletion_auc"), "faithfulness: deletion / insertion AUC",
     "target probability as the most relevant pixels are removed (low = faithful)"),
    (xai_keys.per_method_pattern("insertion_auc"), "faithfulness: deletion / insertion AUC",
     "target probability as the most relevant pixels are inserted (high = faithful)"),
    (xai_keys.per_method_pattern(xai_keys.SANITY_SIMILARITY), None,
     "similarity to the maps of a weight-randomised copy, at the end of fit (low = the maps depend on the weights)"),
    (_under(xai_keys.OVERHEAD), "monitor overhead (share of epoch time)",
     "the monitor's share of the epoch's wall time (rank 0's clock)"),
    (_under(xai_keys.of("dissection", "units/")), "dissection: units detecting each concept",
     "units of the layer whose top activations overlap the concept's masks (IoU > 0.04)"),
    (_under(xai_keys.of("dissection", "max_iou/")), "dissection: best IoU per concept", "the best unit's IoU with the concept's masks"),
    (_exact(xai_keys.of("projector", "centroid_accuracy")), "projector: class separation of the pool",
     "nearest-class-centroid accuracy of the penultimate features on the pool"),
    (_exact(xai_keys.of("projector", "silhouette")), "projector: class separation of the pool",
     "silhouette of the classes in the penultimate features (1 = well separated)"),
    (_exact(xai_keys.of("activations", "dead_fraction")), "activations: dead units",
     "share of the layer's channels that never activate on the pool"),
    (_exact(xai_keys.of("max_min", "change")), "max/min images: change",
     "Jaccard distance of the per-class top/bottom pool samples to the previous epoch's"),
    (_exact(xai_keys.of("activation_max", "gain")), "activation maximisation",
     "logit gained by the optimised input over its starting point"),
    (_exact(xai_keys.of("activation_max", "probability")), "activation maximisation",
     "softmax probability of the class for its optimised input"),
))


def _entry(key: str) -> int | None:
    for i, (pattern, _, _) in enumerate(KEYS):
        if pattern.search(key):
            return i
    return None


def chart_of(key: str) -> str | None:
    """The chart a scalar key belongs to: a known family, ``None`` for keys charted nowhere (one-point series), else
    ``"other: <last part of the key>"``.

    Example::

        >>> chart_of("xai/grad_cam/stability"), chart_of("xai/saliency/drift"), chart_of("xai/x/new_metric")
        ('stability (1 = same map as the previous epoch)', 'probes flagged per method (evidence, not an alarm)', 'other: new_metric')
    """
    i = _entry(key)
    if i is None:
        return f"other: {key.rsplit('/', 1)[-1]}"
    return KEYS[i][1]


def describe(key: str) -> str:
    """What a logged key means, in one line (``""`` for a key the monitor does not log)."""
    i = _entry(key)
    if i is None:
        return ""
    text = KEYS[i][2]
    if key.startswith(xai_keys.of(xai_keys.AGREEMENT, "")):
        pair = key.rsplit("/", 1)[-1].replace("_vs_", " and ")
        text = f"mean rank correlation between the maps of {pair}"
    return text


def key_order(key: str, methods: Iterable[str] = ()) -> tuple:
    """Sort key: the family's place in :data:`KEYS`, then the method's place in ``methods``, then the key."""
    i = _entry(key)
    parts = key.split("/")
    methods = list(methods)
    m = methods.index(parts[1]) if len(parts) > 2 and parts[1] in methods else len(methods)
    return (len(KEYS) if i is None else i, m, key)


def custom_scalars_layout(keys: Iterable[str]) -> dict[str, dict[str, list]]:
    """A layout for ``SummaryWriter.add_custom_scalars``: one multi-line chart per family of the monitor's keys.

    The alarm (with ``active`` and the evidence) first, every method's stability in one chart, the flagged probes per
    method in another, then the evidence per method, localisation, agreement, completeness, faithfulness, overhead and
    the views' scalars, in the order of :data:`KEYS`; only families with keys appear. Each chart lists its keys as
    exact (escaped) tag patterns, so a chart never picks up another family's key.

    Args:
        keys: scalar keys (e.g. the ``xai/...`` keys a run logs); keys outside ``xai/`` are ignored.

    Returns:
        ``{CATEGORY: {chart title: ["Multiline", [tag regex, ...]]}}`` (empty if no key is under ``xai/``).

    Example::

        >>> layout = custom_scalars_layout(["xai/grad_cam/stability", "xai/drift/alarm", "xai/grad_cam/drift"])
        >>> list(layout["lightning_xai"])  # doctest: +NORMALIZE_WHITESPACE
        ['drift alarm (1 = alarm epoch), active, evidence (>= 1 alarms)', 'stability (1 = same map as the previous
        epoch)', 'probes flagged per method (evidence, not an alarm)']
        >>> layout["lightning_xai"]["probes flagged per method (evidence, not an alarm)"]
        ['Multiline', ['^xai/grad_cam/drift$']]
    """
    if isinstance(keys, str):
        raise TypeError(f"`keys` must be an iterable of str, got the str {keys!r}")
    charts: dict[str, list[str]] = {}
    for key in sorted(set(keys)):
        if not isinstance(key, str):
            raise TypeError(f"`keys` must be str, got {key!r}")
        chart = chart_of(key) if xai_keys.is_xai(key) else None
        if chart is not None:
            charts.setdefault(chart, []).append(key)
    order: dict[str, int] = {}
    for _, title, _ in KEYS:
        if title is not None:
            order.setdefault(title, len(order))
    ordered = sorted(charts, key=lambda t: (order.get(t, len(order)), t))
    if not ordered:
        return {}
    return {CATEGORY: {title: ["Multiline", [f"^{re.escape(k)}$" for k in charts[title]]] for title in ordered}}
