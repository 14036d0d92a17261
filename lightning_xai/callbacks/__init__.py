"""Lightning orchestration: the only layer that imports Lightning."""

from lightning_xai.callbacks.explanation_monitor import ExplanationMonitor

__all__ = ["ExplanationMonitor"]
