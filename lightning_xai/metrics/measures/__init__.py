"""The built-in measures of the registry (:mod:`lightning_xai.metrics.registry`), one file each.

Every measure is a :class:`~lightning_xai.metrics.registry.Measure` subclass registered with
:func:`~lightning_xai.metrics.registry.register_measure`; it computes from a
:class:`~lightning_xai.metrics.registry.MeasureContext` and logs nothing non-finite: probes whose map or value is not
finite are left out, and a measure with no usable probe logs no key. Imported in the order a round runs them.
"""

# ruff: noqa: I001  (the import order is the registry's, so the order a round computes and logs them)
from lightning_xai.metrics.measures import completeness, agreement, localisation, faithfulness, sanity

__all__: list[str] = []
del completeness, agreement, localisation, faithfulness, sanity
