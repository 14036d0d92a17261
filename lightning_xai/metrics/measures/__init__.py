"""The built-in measures of the registry (:mod:`lightning_xai.metrics.registry`), one file each.

Every measure is a :class:`~lightning_xai.metrics.registry.Measure` subclass registered with
:func:`~lightning_xai.metrics.registry.register_measure`; it computes from a
:class:`~lightning_xai.metrics.registry.MeasureContext` and logs nothing non-finite: probes whose map or value is not
finite are left out, and a measure with no usable probe logs no key. Every module in this package is imported here
(adding a measure is adding a file, as for the methods); the order below is the registry's, the order a round
computes and logs them.
"""

import importlib
import pkgutil

_FIRST = ("completeness", "agreement", "localisation", "faithfulness", "sanity")

for _name in (*_FIRST, *sorted(m.name for m in pkgutil.iter_modules(__path__)
                               if m.name not in _FIRST and not m.name.startswith("_"))):
    importlib.import_module(f"{__name__}.{_name}")

__all__: list[str] = []
