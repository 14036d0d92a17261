"""Explanation drift: an epoch-level alarm, calibrated on the run's own noise, with the story of where evidence moved.

Pure torch; the Lightning callback feeds :class:`DriftDetector` the pooled heatmaps of every explained epoch.
"""

from lightning_xai.drift._detector import DriftDetector, DriftReport
from lightning_xai.drift._movement import REGIONS, Movement

__all__ = ["REGIONS", "DriftDetector", "DriftReport", "Movement"]
