"""The monitor's TensorBoard dashboard: a custom-scalars layout built from the keys it logs (pure data)."""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["CATEGORY", "chart_of", "custom_scalars_layout"]

#: The category (collapsible section) of TensorBoard's Custom Scalars tab.
CATEGORY = "lightning_xai"

# (chart title, key matcher) in display order; the first match wins. Keys are `xai/{method}/{metric}`,
# `xai/agreement/{a}_vs_{b}`, `xai/drift/...`, `xai/overhead`.
_CHARTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("stability (1 = same map as the previous epoch)", re.compile(r"^xai/[^/]+/stability$")),
    ("drift: probes flagged, alarm", re.compile(r"^xai/([^/]+/drift|drift(/.*)?)$")),
    ("top-k overlap with the previous epoch", re.compile(r"^xai/[^/]+/topk_overlap$")),
    ("localisation: pointing game", re.compile(r"^xai/[^/]+/pointing_game$")),
    ("localisation: relevance mass on the object", re.compile(r"^xai/[^/]+/relevance_mass$")),
    ("agreement between methods", re.compile(r"^xai/agreement/")),
    ("IG completeness error (median, p90, max)", re.compile(r"^xai/[^/]+/completeness_error")),
    ("faithfulness: deletion / insertion AUC", re.compile(r"^xai/[^/]+/(deletion|insertion)_auc$")),
    ("sanity: similarity to a randomised model (low is good)", re.compile(r"^xai/[^/]+/sanity_similarity$")),
    ("monitor overhead (share of epoch time)", re.compile(r"^xai/overhead")),
)


def chart_of(key: str) -> str:
    """The chart a scalar key belongs to: a known family, else ``"other: <last part of the key>"``.

    Example::

        >>> chart_of("xai/grad_cam/stability"), chart_of("xai/saliency/drift"), chart_of("xai/x/new_metric")
        ('stability (1 = same map as the previous epoch)', 'drift: probes flagged, alarm', 'other: new_metric')
    """
    for title, pattern in _CHARTS:
        if pattern.search(key):
            return title
    return f"other: {key.rsplit('/', 1)[-1]}"


def custom_scalars_layout(keys: Iterable[str]) -> dict[str, dict[str, list]]:
    """A layout for ``SummaryWriter.add_custom_scalars``: one multi-line chart per family of the monitor's keys.

    Every method's stability in one chart, the drift counts with the alarm in another, then localisation,
    agreement, completeness, faithfulness, sanity and overhead, in that order; only families with keys appear.
    Each chart lists its keys as exact (escaped) tag patterns, so a chart never picks up another family's key.

    Args:
        keys: scalar keys (e.g. the ``xai/...`` keys a run logs); keys outside ``xai/`` are ignored.

    Returns:
        ``{CATEGORY: {chart title: ["Multiline", [tag regex, ...]]}}`` (empty if no key is under ``xai/``).

    Example::

        >>> layout = custom_scalars_layout(["xai/grad_cam/stability", "xai/saliency/stability", "xai/grad_cam/drift"])
        >>> list(layout["lightning_xai"])
        ['stability (1 = same map as the previous epoch)', 'drift: probes flagged, alarm']
        >>> layout["lightning_xai"]["drift: probes flagged, alarm"]
        ['Multiline', ['^xai/grad_cam/drift$']]
    """
    if isinstance(keys, str):
        raise TypeError(f"`keys` must be an iterable of str, got the str {keys!r}")
    charts: dict[str, list[str]] = {}
    for key in sorted(set(keys)):
        if not isinstance(key, str):
            raise TypeError(f"`keys` must be str, got {key!r}")
        if key.startswith("xai/"):
            charts.setdefault(chart_of(key), []).append(key)
    order = {title: i for i, (title, _) in enumerate(_CHARTS)}
    ordered = sorted(charts, key=lambda t: (order.get(t, len(order)), t))
    if not ordered:
        return {}
    return {CATEGORY: {title: ["Multiline", [f"^{re.escape(k)}$" for k in charts[title]]] for title in ordered}}
