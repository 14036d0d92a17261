"""What one monitor keeps across a fit and in the checkpoint: plain tensors, lists and numbers only, so checkpoints
load with ``torch.load(weights_only=True)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightning_xai.callbacks._compat import rank_zero_warn
from lightning_xai.callbacks._failures import FailureLog
from lightning_xai.callbacks._tracker import DriftTracker
from lightning_xai.probes import ProbeSet
from lightning_xai.views import ViewRunner

__all__ = ["STATE_VERSION", "FitState"]

STATE_VERSION = 2


@dataclass
class FitState:
    """The monitor's own state besides its collaborators'.

    Attributes:
        state_key: the checkpoint key, as constructed (the setup dry run may leave methods out; the key must not
            change with it).
        failures: failures warned once per cause, summed up at the end of fit.
        last_explained_epoch: the last epoch a round ran at.
        latest: the last explained epoch's results, on every rank.
    """

    state_key: str
    failures: FailureLog
    last_explained_epoch: int | None = None
    latest: dict[str, Any] | None = None
    segmentation_layer: str | None = None  # the layer a segmentation model's setup chose (kept across fits)
    _loaded_fingerprint: str | None = None

    def reset(self) -> None:
        """A new fit (``setup``)."""
        self.last_explained_epoch, self.latest = None, None
        self.failures.reset()

    def state_dict(self, probes: ProbeSet | None, tracker: DriftTracker, views: ViewRunner) -> dict[str, Any]:
        last = self.last_explained_epoch
        return {"version": STATE_VERSION, "probe_ids": [] if probes is None else probes.ids.tolist(),
                "probe_fingerprint": "" if probes is None else probes.fingerprint,
                "last_explained_epoch": -1 if last is None else last,
                "tracker": tracker.state_dict(), "views": views.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any], tracker: DriftTracker, views: ViewRunner) -> None:
        self._loaded_fingerprint = state_dict["probe_fingerprint"] or None
        last = int(state_dict["last_explained_epoch"])
        self.last_explained_epoch = None if last < 0 else last
        state = state_dict.get("tracker")
        if state is None:  # version 1 (lightning_xai 0.1)
            state = {"history": state_dict["history"], "has_reference": bool(state_dict["reference"]),
                     "drift": {"reference": state_dict["reference"], "reference_pred": state_dict["reference_pred"],
                               "detector": state_dict["drift"]}}
        tracker.load_state_dict(state)
        views.load_state_dict(state_dict.get("views", {}))

    def check_restored_probes(self, probes: ProbeSet | None, tracker: DriftTracker) -> None:
        """Lightning restores callback state after ``setup()`` (DDP) or later (FSDP): compare once both exist; a
        different probe set resets the history and the drift state."""
        if self._loaded_fingerprint is None or probes is None:
            return
        if self._loaded_fingerprint != probes.fingerprint:
            rank_zero_warn(
                "ExplanationMonitor: the probe set differs from the one in the checkpoint (different data, "
                "num_probes or probe_options['seed']); stability history and drift state are reset for the new "
                "probes."
            )
            tracker.reset()
        self._loaded_fingerprint = None
