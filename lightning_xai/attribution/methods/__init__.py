"""One file per attribution method; each registers itself (``@register``) when this package imports it.

Every module in this package is imported here, so adding a method is adding a file (see DESIGN.md, "Adding a
method"). The order of the files below is the order of :func:`lightning_xai.attribution.available_methods`.
"""

import importlib
import pkgutil

_FIRST = ("grad_cam", "saliency", "integrated_gradients")

for _name in (*_FIRST, *sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _FIRST)):
    importlib.import_module(f"{__name__}.{_name}")
