"""lightning_xai: see where your image classifier looks while it trains.

The attribution, metrics, render and writer layers are pure torch (no Lightning import), so
``import lightning_xai.attribution`` stays light; the Lightning callback is imported lazily.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["ExplanationMonitor", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "ExplanationMonitor":
        from lightning_xai.callbacks import ExplanationMonitor

        return ExplanationMonitor
    raise AttributeError(f"module 'lightning_xai' has no attribute {name!r}")
