"""ExplanationMonitor: explain a fixed probe set at epoch ends, log overlays and stability, raise drift alarms.

This module is orchestration only: *when* to explain, *which rank* does what, *what* goes into the checkpoint. The
work is done by named collaborators, each testable without a Trainer:

- :mod:`._config`: the arguments, grouped and checked (``MonitorConfig``);
- :mod:`._probes`: where the probes come from and the setup checks (``ProbeSetup``);
- :mod:`._round`: one explanation round over the ranks (``ProbeExplainer``, ``DistributedRound``);
- :mod:`lightning_xai.metrics.registry`: the quality measures and their keys;
- :mod:`._tracker`: stability, drift and the history (``DriftTracker``);
- :mod:`._reporter`: the sinks (one per logger), overlays, drift text and warnings on rank 0 (``Reporter``);
- :mod:`lightning_xai.views`: what a layer has learnt, on a fixed pool, rank 0 only (``ViewRunner``);
- :mod:`._compat`: both Lightning packages (base classes, exceptions, muted ``self.log``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from lightning_xai.attribution import find_gradcam_layer, get_method, passes, resolve_layer
from lightning_xai.callbacks._budget import AUTO_SHARE, CostBudget
from lightning_xai.callbacks._compat import (
    CALLBACK_BASES,
    EARLY_STOPPING,
    MODEL_CHECKPOINT,
    MisconfigurationException,
    muted_logging,
    rank_zero_info,
    rank_zero_warn,
)
from lightning_xai.callbacks._config import (
    DEFAULT_METHODS,
    DEFAULT_METRICS,
    DisplayOptions,
    DriftOptions,
    MonitorConfig,
    ProbeOptions,
    SegmentationOptions,
    build_config,
)
from lightning_xai.callbacks._failures import FailureLog
from lightning_xai.callbacks._pool import DetectionPool
from lightning_xai.callbacks._probes import (
    ProbeSetup,
    check_monitors,
    check_strategy,
    train_batch_size,
    train_samples,
)
from lightning_xai.callbacks._reporter import Reporter, drift_text
from lightning_xai.callbacks._round import DistributedRound, ProbeExplainer, module_device
from lightning_xai.callbacks._segmentation import SegmentationTargets
from lightning_xai.callbacks._tracker import DetectionRows, DriftTracker, lr_event
from lightning_xai.distributed import shard_bounds
from lightning_xai.drift import DriftDetector, DriftReport
from lightning_xai.metrics.registry import (
    MeasureContext,
    active_measures,
    get_measure,
    measure_keys,
    run_measures,
)
from lightning_xai.metrics.sanity import INPUT_WEIGHTED, randomized_copy
from lightning_xai.probes import ProbeSet
from lightning_xai.views import ViewRunner

if TYPE_CHECKING:  # either package's classes; only for the annotations
    import pytorch_lightning as pl

_STATE_VERSION = 2
_OVERHEAD = "xai/overhead"


def undefined_similarity(scalars: dict[str, float], maps: Mapping[str, Tensor]) -> list[str]:
    """Methods whose maps are all finite but no probe had a defined similarity this round (every map, or the one it
    is compared with, is flat: all zero or constant, e.g. a head initialised to zero): their ``stability`` and
    ``topk_overlap`` are set to 0.0 in ``scalars`` (no similarity shown, never "stable", never NaN), so a key others
    monitor exists from the first epoch. A round with non-finite maps measured nothing and logs nothing for them.
    Returns those methods."""
    out = []
    for m, values in maps.items():
        if f"xai/{m}/stability" not in scalars and bool(torch.isfinite(values).all()):
            scalars[f"xai/{m}/stability"] = 0.0
            scalars.setdefault(f"xai/{m}/topk_overlap", 0.0)
            out.append(m)
    return out


class ExplanationMonitor(*CALLBACK_BASES):  # a Callback of every installed Lightning package
    r"""Explain a fixed probe set while the model trains; log overlays, stability, quality measures and drift.

    At the end of every ``every_n_epochs``-th training epoch (at the end-of-epoch validation run when there is one,
    so the results belong to the checkpoint ``ModelCheckpoint`` writes for that epoch; never during the sanity check),
    the monitor explains each probe with the chosen ``methods`` on the unwrapped model, in eval mode, with gradients
    taken by ``torch.autograd.grad`` w.r.t. inputs and activations only. Training is not affected: parameter
    ``.grad``, buffers, train/eval flags, ``requires_grad`` and the RNG state are restored, so a seeded run gives
    bitwise the same weights with and without the monitor.

    Before the first training step it explains the probes once more to take a *reference* (the untrained or
    pre-trained model; Integrated Gradients with exactly ``n_steps``, so this costs at most one regular round), so
    the first logged epoch already has a stability value and monitors such as
    ``EarlyStopping(monitor="xai/grad_cam/stability")`` find their key. Every ``fit`` starts its own history (new
    probes from its data, a new reference) unless it resumes from a checkpoint. After the first explained epoch one
    log line says what the monitor costs and how to lower it.

    **Stability** of a probe under a method is the Spearman rank correlation between its heatmap and the one of the
    previous explained epoch (both average-pooled to ``drift['size']`` squared); 1.0 means unchanged. **Drift**: see
    :class:`~lightning_xai.drift.DriftDetector`, configured by ``drift``. Each drift alarm triggers one warning, a
    text entry and ``on_drift(report)`` if given.

    Args:
        probes: The fixed probe set. ``None`` takes ``num_probes`` samples, class-balanced and deterministically, from
            the validation data (training data if there is none). Otherwise a tensor of images ``(N, C, H, W)``, a
            pair ``(images, labels)`` or triple ``(images, labels, masks)`` (tuple or list), a map-style ``Dataset``
            or a ``DataLoader``.
        num_probes: Number of probes taken from ``probes`` or the validation data.
        methods: Attribution methods, names from :func:`lightning_xai.attribution.available_methods` (or
            ``METHODS``). Left at the default, ``attention_rollout`` joins them at setup on a class-token ViT.
        every_n_epochs: Explain after every n-th training epoch.
        target: Class explained: ``"label"`` (the probe's true label; its prediction where the label is unknown),
            ``"pred"`` (the current prediction) or a fixed class index.
        layer: Grad-CAM layer, a dotted name from ``model.named_modules()``; ``None`` picks the last module with a 4-D
            output before the head.
        metrics: Quality measures besides stability and IG completeness (always on with IG), names from
            :func:`lightning_xai.metrics.registry.available_measures`: ``"localisation"`` (pointing game and relevance
            mass, when the probes have masks; negligible cost), ``"agreement"`` (rank correlation between methods;
            negligible), ``"faithfulness"`` (deletion and insertion AUC; about as much as Integrated Gradients
            itself: off by default), ``"sanity"`` (model-randomisation check; one explanation round on a randomised
            copy at the end of fit).
        log_images: Log overlay panels and timelines (scalars and text are always logged).
        views: Views of what the network has learnt (:mod:`lightning_xai.views`), computed on rank 0 after each
            explained epoch, on the Grad-CAM layer (``layer``, automatic by default) and a fixed pool of
            ``view_options['pool']['size']`` (128) samples from the probes' source: ``"activations"`` (strongest
            channels of a few probes), ``"max_min"`` (per class the pool samples scoring highest and lowest, and how
            much that set changed), ``"projector"`` (penultimate features to TensorBoard's projector, class
            separation scalars), ``"activation_max"`` (an input optimised per class, on a copy of the model),
            ``"dissection"`` (units whose top activations match concept masks: the dataset's ``concept_masks(i)``,
            else the probes' masks per class), and ``"attention_graphs"`` (structured attention graphs of a few
            probes, once at the end of fit). Each view's cost is in its class's docstring; a failing view warns
            (or raises with ``on_error="raise"``) without stopping the others or the heatmaps.
        view_options: Options per view, ``{view: {option: value}}``, the keyword arguments of its class in
            :data:`lightning_xai.views.VIEWS` (e.g. ``{"activation_max": {"steps": 32, "every_n_epochs": 2}}``),
            plus ``"pool": {"size": N}``.
        on_drift: Called as ``on_drift(report)`` on every rank at every drift alarm.
        on_error: ``"warn"`` skips an epoch whose explanation fails (on every rank, so DDP never hangs);
            ``"raise"`` stops training.
        max_overhead: What the monitor may cost, measured on the run (rank 0's clock). ``"auto"`` (default): the
            *cheap* methods (one forward + backward per probe: Grad-CAM and its family, saliency, input x gradient,
            guided backprop, deconvnet) run at every explained epoch, so their keys exist from the first one; each
            other method (Integrated Gradients, occlusion, LIME, SmoothGrad, I-GOS) and the views run only when
            the run has earned their measured cost within 5% of its training time (a token bucket: every training
            second earns 0.05 s, everything the monitor does spends), so a short run on a small dataset may never
            run them; a method whose key another callback ``monitor``\ s runs every explained epoch. A float ``b``
            in ``(0, 1)``: the same within ``b``, and when even the cheap round costs more than ``b``, whole rounds
            are skipped so that ``cost / (spacing * training + cost)`` stays within it (said once in the log).
            ``None``: no budget, every method at every explained epoch and in the fit-start reference.
        output_transform: Maps the model's output to logits ``(N, num_classes)``, for tuple/dict outputs.
        method_options: Options per method, ``{method: {option: value}}``. ``integrated_gradients``: ``n_steps``
            (16; path nodes, trapezoid rule, both ends; the start with ``tolerance``), ``tolerance`` (0.02; adaptive
            IG refines the path intervals of probes whose completeness error exceeds it, up to ``max_steps`` (128)
            nodes; ``None``: exactly ``n_steps``), ``baseline`` (``None``: zeros; or a constant in the model's input
            space), ``internal_batch_size`` (``None``: the training batch size, so an explanation pass never needs
            more memory than a training step).
        metric_options: Options per measure, ``{measure: {option: value}}``. ``faithfulness``: ``steps`` (8),
            ``perturbation`` (``"blur"``, ``"mean"`` or ``"zero"``). ``sanity``: ``layers`` (``None``: all; layers
            re-initialised from the output side), ``threshold`` (0.5; warn when a method's mean similarity to its
            randomised-model maps exceeds it).
        drift: Drift detection: ``size`` (16, side of the pooled maps compared, at most 128), ``topk`` (0.1, share of
            pixels in the top-k overlap), ``pool_size`` (``"auto"`` or the extra samples the detector watches) and
            ``pool_from`` (``"both"``, ``"validation"``, ``"training"``), and the keyword arguments of
            :class:`~lightning_xai.drift.DriftDetector`: ``warmup_epochs``, ``window``, ``horizon``, ``threshold``,
            ``slack``, ``cusum_threshold``, ``learn_below``, ``min_spread``, ``event_factor``, ``settle``,
            ``gap_spread``, ``statistics``, ``probe_sigmas`` (each key, its bounds and meaning:
            ``lightning_xai.callbacks._config.DRIFT_OPTIONS``).
        display: How overlays look: ``mean`` and ``std`` (per-channel normalisation of the inputs, to show probes in
            their real colours), ``class_names`` (``None``: the dataset's ``classes``), ``colormap`` (``"jet"``,
            ``"inferno"``, ``"viridis"``), ``alpha`` (0.5, heatmap opacity).
        probe_options: How probes are read: ``input_key``, ``label_key``, ``mask_key`` (index, key or callable
            selecting the field of a dataset item; ``None`` guesses) and ``seed`` (0; probe selection and the sanity
            check's re-initialisation).
        segmentation: For a segmentation model (output ``(N, K, H, W)`` class logits, or a dict with ``"out"``; found
            at setup, nothing to set): ``target`` (``"mask"``: each probe's ground-truth region of its class, else
            the predicted one; ``"predicted"``: the pixels predicted as that class, else the ground truth), the
            class explained per probe (``class_index``; ``None``: its most frequent class other than
            ``background`` (0) and ``ignore_index`` (255)). The scalar explained is that class's logits summed over
            the region (pytorch-grad-cam's ``SemanticSegmentationTarget``). See README "Segmentation models".

    Logged keys (step = ``trainer.global_step``):
        - ``xai/{method}/overlay`` (image): one panel per explained epoch (:class:`lightning_xai.render.ProbeRenderer`):
          64 px tiles in rows of 4 (276 px wide: readable at TensorBoard's default card size), a title with the
          method, the epoch and the number of flagged probes, per tile ``#<probe id> <label>`` /
          ``p=<prediction> <probability>`` (orange when wrong), flagged probes outlined.
        - ``xai/{method}/timeline`` (image, at the end of fit and on :meth:`write_timelines`): each probe (row)
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

    At the end of fit rank 0 writes ``<log dir>/xai_report.html``, read back from what was logged (see
    :mod:`lightning_xai.report`; ``python -m lightning_xai.report LOGDIR`` rebuilds it).

        The scalars also go into ``trainer.callback_metrics`` (identical on every rank), so ``EarlyStopping`` and
        ``ModelCheckpoint`` can monitor them.

    Example::

        >>> from lightning_xai import ExplanationMonitor
        >>> monitor = ExplanationMonitor(num_probes=8, every_n_epochs=2,
        ...                              method_options={"integrated_gradients": {"n_steps": 8}})
        >>> monitor.methods
        ('grad_cam', 'saliency', 'integrated_gradients')
    """

    def __init__(
        self,
        probes: Any = None,
        num_probes: int = 16,
        methods: Sequence[str] = DEFAULT_METHODS,
        every_n_epochs: int = 1,
        target: int | Literal["label", "pred"] = "label",
        layer: str | None = None,
        metrics: Sequence[str] = DEFAULT_METRICS,
        log_images: bool = True,
        views: Sequence[str] = (),
        view_options: dict[str, dict[str, Any]] | None = None,
        on_drift: Callable[[Any], Any] | None = None,
        on_error: Literal["warn", "raise"] = "warn",
        max_overhead: float | Literal["auto"] | None = "auto",
        output_transform: Callable[[Any], Tensor] | None = None,
        method_options: dict[str, dict[str, Any]] | None = None,
        metric_options: dict[str, dict[str, Any]] | None = None,
        drift: DriftOptions | None = None,
        display: DisplayOptions | None = None,
        probe_options: ProbeOptions | None = None,
        segmentation: SegmentationOptions | None = None,
    ) -> None:
        super().__init__()
        config = build_config(
            probes=probes, num_probes=num_probes, methods=methods, every_n_epochs=every_n_epochs, target=target,
            layer=layer, metrics=metrics, log_images=log_images, views=views, view_options=view_options,
            on_drift=on_drift, on_error=on_error,
            max_overhead=max_overhead, output_transform=output_transform, method_options=method_options,
            metric_options=metric_options, drift=drift, display=display, probe_options=probe_options,
            segmentation=segmentation,
        )
        self.config: MonitorConfig = config
        self._probes = ProbeSetup(config)
        self._explainer = ProbeExplainer(config)
        self._pool = DetectionPool(config)  # the drift detector's extra samples, explained with the cheap methods
        self._pool_explainer = ProbeExplainer(config)
        self._failures = FailureLog(rank_zero_warn)  # a persistent failure warns once, repeats are summed up
        self._round = DistributedRound(config.on_error, warn=self._failures.warn)
        self._tracker = DriftTracker(config.methods, config.size, config.detector_options, config.drift["topk"])
        self._last_lrs: list[float] | None = None  # learning rates at the last explained round (schedule steps)
        self._reporter = Reporter(config.methods, config.display, config.log_images)
        self._views = ViewRunner(config.views, config.view_options)
        self._views_layer: str | None = None
        self._last_explained_epoch: int | None = None
        self._loaded_fingerprint: str | None = None
        self._latest: dict[str, Any] | None = None  # the last explained epoch's results, on every rank
        self._suffix, self._suffix_scalars = "", False  # tag names when several monitors share a Trainer
        # what the monitor costs: this epoch's start and time spent, the fit-start round, the max_overhead schedule
        self._epoch_start: float | None = None
        self._spent = 0.0
        self._start_cost = 0.0
        self._cost_said = False
        self._next_epoch = 0
        self._spacing_said = False
        # the budget (max_overhead): credit earned by training, spent by the monitor; which methods always run
        self._budget = CostBudget(self._share(config.max_overhead))
        self._pinned: tuple[str, ...] = config.methods  # run at every explained epoch (and in the reference)
        self._optional: tuple[str, ...] = ()  # run when the budget allows, each in its own timed pass
        self._period_start: float | None = None  # the budget's clock: since the last accounting
        self._period_spent = 0.0
        self._views_seconds: float | None = None  # rank 0's last views run, broadcast with the next round
        self._pool_seconds = 0.0  # this round's detection pool (read + explain), rank 0's clock
        self._views_ran = False
        self._world_size = 1
        # As constructed: the setup dry run may leave methods out, the checkpoint key must not change with it.
        self._state_key = self._generate_state_key(methods=config.methods, num_probes=config.num_probes,
                                                   layer=config.layer, every_n_epochs=config.every_n_epochs,
                                                   target=config.target)

    # ------------------------------------------------------------------ what users read
    def __getattr__(self, name: str) -> Any:
        # the checked arguments read as attributes: monitor.methods, monitor.method_options, ...
        config = self.__dict__.get("config")
        if config is not None and name in MonitorConfig.__dataclass_fields__:
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def probe_set(self) -> ProbeSet | None:
        return self._probes.probe_set

    @property
    def layer_name(self) -> str | None:
        """The Grad-CAM layer in use (dotted name), known after ``setup``."""
        return self._probes.layer_name

    @property
    def class_names(self) -> list[str] | None:
        return self._probes.class_names

    @property
    def history(self) -> Sequence[dict[str, Any]]:
        """One plain record per explained epoch: epoch, step, per-probe stability/top-k/flags, measures, pred (a
        compact :class:`~lightning_xai.callbacks._tracker.History` that reads like a list of dicts)."""
        return self._tracker.history

    @property
    def budget(self) -> CostBudget:
        """The :class:`~lightning_xai.callbacks._budget.CostBudget` of ``max_overhead``: the credit training has
        earned, the measured costs (``budget.row_seconds``: one sample through the cheap methods), and
        ``budget.allow(kind, seconds)`` for optional work. Identical on every rank (fed with rank 0's clock)."""
        return self._budget

    @property
    def drift_detector(self) -> Any:
        """The :class:`~lightning_xai.drift.DriftDetector` (e.g. ``accept()`` a new behaviour after an alarm)."""
        return self._tracker.drift

    @property
    def latest(self) -> dict[str, Any] | None:
        """The last explained epoch, on every rank: ``{"epoch", "step", "maps": {method: (N, 1, H, W)}, "pred",
        "prob"}`` (heatmaps on the CPU, probe order), or ``None`` before the first one."""
        if self._latest is None:
            return None
        results = self._latest["results"]
        return {"epoch": self._latest["epoch"], "step": self._latest["step"], "pred": results["pred"],
                "prob": results["prob"], "maps": {m: results[f"map/{m}"] for m in self._ran(results)}}

    @property
    def views_history(self) -> list[dict[str, Any]]:
        """One record per explained epoch with views: ``{"epoch", "step", "scalars": {tag: value}}`` (rank 0)."""
        return self._views.history

    @staticmethod
    def _share(max_overhead: Any) -> float | None:
        return AUTO_SHARE if max_overhead == "auto" else max_overhead

    def _spaces_rounds(self) -> bool:
        """Whether whole rounds may be skipped (an explicit ``max_overhead=b``; ``"auto"`` never skips a round)."""
        return isinstance(self.config.max_overhead, float)

    def _plan_methods(self, trainer: pl.Trainer) -> None:
        """Which methods run at every explained epoch (the cheap ones, and any whose key another callback
        monitors) and which when the budget allows (each in its own timed pass)."""
        c = self.config
        if c.max_overhead is None:
            self._pinned, self._optional = c.methods, ()
            return
        size = tuple(self.probe_set.images.shape[-2:]) if self.probe_set is not None else (224, 224)

        def cheap(m: str) -> bool:
            declared = get_method(m).options  # the monitor's own options (internal_batch_size) are not the method's
            return passes(m, {k: v for k, v in c.method_options.get(m, {}).items() if k in declared}, size) <= 1.0

        watched = {cb.monitor for cb in trainer.callbacks if isinstance(getattr(cb, "monitor", None), str)}
        every = self._keys_for(c.methods)
        pinned = tuple(m for m in c.methods if cheap(m) or watched & (every - self._keys_for(
            tuple(x for x in c.methods if x != m))))
        if not pinned:  # nothing cheap to keep the stability keys going: every method runs every explained epoch
            pinned = c.methods
        self._pinned = pinned
        self._optional = tuple(m for m in c.methods if m not in pinned)

    def _keys_for(self, methods: Sequence[str]) -> set[str]:
        return {self._key(k) for k in DriftDetector.keys(methods) | measure_keys(self.config.metrics, methods)}

    def _round_groups(self, *, reference: bool) -> list[tuple[str, ...]]:
        """This round's passes: the pinned methods in one, then each optional method the budget allows now."""
        if reference or not self._optional:
            return [self._pinned]
        allowed = [m for m in self._optional if self._budget.allow(m, self._estimate(m))]
        return [self._pinned, *((m,) for m in allowed)]

    def _estimate(self, method: str) -> float | None:
        """Seconds ``method`` takes on rank 0's shard: its last measured pass, else its passes per probe times the
        measured cost of one probe through the cheap methods."""
        last = self._budget.last(method)
        if last is not None:
            return last
        probes = self.probe_set
        if probes is None:
            return None
        start, stop = shard_bounds(len(probes), max(1, self._world_size), 0)
        declared = get_method(method).options
        options = {k: v for k, v in self.config.method_options.get(method, {}).items() if k in declared}
        return self._budget.estimate_rows((stop - start) * passes(method, options, tuple(probes.images.shape[-2:])))

    def logged_keys(self) -> set[str]:
        """Every scalar key this monitor can log (stability and drift, and the chosen measures')."""
        return {self._key(k) for k in self._base_keys()}

    @staticmethod
    def _layout_keys(trainer: pl.Trainer) -> set[str]:
        # TensorBoard shows the first custom-scalars layout of a run: each monitor writes every monitor's keys, so
        # two monitors in one Trainer never hide each other's charts
        return set().union(*(cb.logged_keys() for cb in trainer.callbacks if isinstance(cb, ExplanationMonitor)))

    def _base_keys(self) -> set[str]:
        return self._tracker.keys() | measure_keys(self.config.metrics, self.config.methods) | {_OVERHEAD}

    def _key(self, key: str) -> str:
        return f"{key}/{self._suffix}" if self._suffix and self._suffix_scalars else key

    def _name_tags(self, trainer: pl.Trainer) -> None:
        """With several monitors in one Trainer, each writes its text and images under its own suffix
        (``xai/drift/monitor_1``), and its scalars too where another monitor logs the same key."""
        monitors = [cb for cb in trainer.callbacks if isinstance(cb, ExplanationMonitor)]
        self._suffix, self._suffix_scalars = "", False
        if len(monitors) > 1:
            index = next(i for i, cb in enumerate(monitors) if cb is self)
            self._suffix = f"monitor_{index}"
            mine = self._base_keys()
            self._suffix_scalars = any(mine & other._base_keys() for other in monitors if other is not self)
        self._reporter.suffix = self._suffix

    # ------------------------------------------------------------------ identity & state
    @property
    def state_key(self) -> str:
        return self._state_key

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, lists and numbers only, so checkpoints load with ``torch.load(weights_only=True)``."""
        probes = self.probe_set
        return {
            "version": _STATE_VERSION,
            "probe_ids": [] if probes is None else probes.ids.tolist(),
            "probe_fingerprint": "" if probes is None else probes.fingerprint,
            "last_explained_epoch": -1 if self._last_explained_epoch is None else self._last_explained_epoch,
            "tracker": self._tracker.state_dict(),
            "views": self._views.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded_fingerprint = state_dict["probe_fingerprint"] or None
        last = int(state_dict["last_explained_epoch"])
        self._last_explained_epoch = None if last < 0 else last
        tracker = state_dict.get("tracker")
        if tracker is None:  # version 1 (lightning_xai 0.1)
            tracker = {"history": state_dict["history"], "has_reference": bool(state_dict["reference"]),
                       "drift": {"reference": state_dict["reference"], "reference_pred": state_dict["reference_pred"],
                                 "detector": state_dict["drift"]}}
        self._tracker.load_state_dict(tracker)
        self._views.load_state_dict(state_dict.get("views", {}))
        self._check_restored_probes()

    def _check_restored_probes(self) -> None:
        # Lightning restores callback state after setup() (DDP) or later (FSDP): compare once both exist.
        if self._loaded_fingerprint is None or self.probe_set is None:
            return
        if self._loaded_fingerprint != self.probe_set.fingerprint:
            rank_zero_warn(
                "ExplanationMonitor: the probe set differs from the one in the checkpoint (different data, "
                "num_probes or probe_options['seed']); stability history and drift state are reset for the new "
                "probes."
            )
            self._tracker.reset()
        self._loaded_fingerprint = None

    # ------------------------------------------------------------------ setup: everything that can fail, fails here
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        began = time.perf_counter()
        check_strategy(trainer.strategy)
        self._name_tags(trainer)
        check_monitors(trainer.callbacks, self.logged_keys(), self.config.every_n_epochs,
                       budget=self._spaces_rounds())
        # Each fit starts its own history: new probes from this fit's data, a new reference, a fresh drift state.
        # A resumed fit restores the checkpoint's in load_state_dict, which Lightning calls after setup.
        self._last_explained_epoch = None
        self._latest = None
        self._cost_said, self._spacing_said, self._next_epoch, self._start_cost = False, False, 0, 0.0
        self._budget.reset()
        self._world_size = int(getattr(trainer, "world_size", 1) or 1)
        self._views_seconds, self._views_ran = None, False
        self._tracker.reset()
        self._reporter.reset()
        self._failures.reset()
        self._probes.select_for(trainer)
        self._setup_segmentation(pl_module)
        with muted_logging(pl_module):  # setup's forwards: a self.log() in forward would fail here
            self._probes.validate(pl_module, lambda: train_batch_size(trainer), world_size=trainer.world_size,
                                  views=self._views, train_samples=lambda: train_samples(trainer))
        self._explainer.layer_name = self._probes.layer_name
        self._explainer.layer_reshape = self._probes.layer_reshape
        self._add_automatic_methods(pl_module)
        self._dry_run(trainer, pl_module)
        self._plan_methods(trainer)
        self._setup_pool(trainer)
        if self._views:
            self._setup_views(pl_module)
        self._check_restored_probes()
        # the budget's clock starts here: setup's own work counts as the monitor's
        self._period_start, self._period_spent = began, time.perf_counter() - began

    def _setup_segmentation(self, model: torch.nn.Module) -> None:
        """A segmentation model (issue 24, callbacks/_segmentation.py): its probes' class regions are explained, and
        logits ``(N, K)`` for the setup checks are each class over the image."""
        found = SegmentationTargets.detect(model, self.probe_set, self.config.segmentation,
                                           self.config.output_transform, self.config.target)
        self._explainer.segmentation = self._pool_explainer.segmentation = found
        config, self._segmentation_layer = SegmentationTargets.configure(
            self.config, found, getattr(self, "_segmentation_layer", None))
        self.config = self._probes.config = self._explainer.config = config

    def _add_automatic_methods(self, model: torch.nn.Module) -> None:
        """With `methods` left at the default: the automatic methods that apply to this model join them (attention
        rollout on a class-token ViT); the others are left out silently (nothing was asked for)."""
        config = self.config
        wanted = tuple(m for m in config.automatic if m not in config.methods)
        if not wanted:
            return
        with muted_logging(model):
            added = self._probes.applicable(model, self._explainer, wanted)
        if added:
            config = dataclasses.replace(config, methods=config.methods + added)
            self.config = self._probes.config = self._explainer.config = config
            self._tracker.methods = self._reporter.methods = config.methods

    def _dry_run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """One probe through every method: what cannot work fails now, once, with its cause (not every epoch)."""
        with muted_logging(pl_module):
            failed = self._probes.dry_run(pl_module, self._explainer)
        if self._probes.notes:  # one warning for all of them
            rank_zero_warn("ExplanationMonitor (setup dry run on the first probe):\n"
                           + "\n".join(f"- {note}" for note in self._probes.notes))
        if not failed:
            return
        why = "\n".join(f"- {m}: {reason}" for m, reason in failed.items())
        working = tuple(m for m in self.config.methods if m not in failed)
        if not working:
            raise MisconfigurationException(f"ExplanationMonitor: no method can explain this model:\n{why}")
        rank_zero_warn(f"ExplanationMonitor: explaining with {', '.join(working)} only; these methods cannot work on "
                       f"this model and are left out:\n{why}")
        config = dataclasses.replace(self.config, methods=working,
                                     method_options={m: o for m, o in self.config.method_options.items()
                                                     if m in working})
        self.config = self._probes.config = self._explainer.config = config
        self._tracker.methods = self._reporter.methods = working
        # a callback monitoring a left-out method's key would wait forever: say so now
        check_monitors(trainer.callbacks, self.logged_keys(), config.every_n_epochs,
                       budget=self._spaces_rounds())

    def _setup_pool(self, trainer: pl.Trainer) -> None:
        """The drift detection pool (every rank selects the same samples from the same data; no collective)."""
        # under a budget an "auto" pool is what it pays for after the display probes' pass (issue 21, _pool.py)
        size = tuple(self.probe_set.images.shape[-2:])
        options = {m: {k: v for k, v in self.config.method_options.get(m, {}).items() if k in get_method(m).options}
                   for m in self._pinned}
        display_rows = len(self.probe_set) * max(1.0, sum(passes(m, options[m], size) for m in self._pinned
                                                          if passes(m, options[m], size) > 1.0)
                                                 + any(passes(m, options[m], size) <= 1.0 for m in self._pinned))
        self._pool.setup(trainer, self.probe_set, self._probes.source, self.config.methods,
                         share=self._budget.share, display_rows=display_rows)
        self._pool_explainer = ProbeExplainer(self._pool.explainer_config(), self._probes.layer_name)
        self._pool_explainer.layer_reshape = self._probes.layer_reshape
        self._pool_explainer.segmentation = self._explainer.segmentation
        if self._pool.notes:
            rank_zero_warn("ExplanationMonitor: " + "; ".join(self._pool.notes))
        if self._pool.budget_note:
            rank_zero_info(f"ExplanationMonitor: {self._pool.budget_note}.")

    def _explain_pool(self, trainer: pl.Trainer, model: torch.nn.Module) -> DetectionRows | None:
        """The pool's rows this round (every rank its shard, gathered); NaN maps (left out) if it failed."""
        if self._pool.pending:  # a resumed fit: the pool its checkpoint's detector tracks (never another size)
            tracked = self._tracker.drift.num_samples
            self._pool.fit(None if tracked is None else tracked - len(self.probe_set))
        if not self._pool.enabled:
            return None
        began = time.perf_counter()
        ok, read = self._round.agreed(trainer, self._pool.samples, what="reading the drift detection pool")
        results = None
        if ok and read[0] is not None:
            with muted_logging(model):
                results = self._round.explain(trainer, model, read[0], self._pool_explainer)
        self._pool_seconds = time.perf_counter() - began
        methods, n, origin = self._pool.methods, self._pool.size, self._pool.origin
        if results is None:
            h, w = self.probe_set.images.shape[-2:]
            missing = torch.full((n,), -1, dtype=torch.long)
            return DetectionRows({m: torch.full((n, 1, h, w), float("nan")) for m in methods}, pred=missing,
                                 target=missing, origin=origin)
        return DetectionRows({m: results[f"map/{m}"] for m in methods}, pred=results["pred"],
                             target=results["target"], origin=read[1], masks=read[0].masks)

    def _setup_views(self, model: torch.nn.Module) -> None:
        """The views' layer (the Grad-CAM layer) and pool, on every rank (no collectives, so a bad source fails
        everywhere alike, here)."""
        probes, options = self.probe_set, self.config.probe_options
        try:
            layer = self._probes.layer_name
            if layer is None:
                example = probes.images[:1].to(module_device(model))
                layer = (resolve_layer(model, self.config.layer)[0] if self.config.layer is not None
                         else find_gradcam_layer(model, example, output_transform=self.config.output_transform))
            self._views_layer = layer
            self._views.build_pool(self._probes.source if self._probes.source is not None else probes,
                                   class_names=self.class_names, input_key=options["input_key"],
                                   label_key=options["label_key"], mask_key=options["mask_key"],
                                   seed=options["seed"])
            with muted_logging(model):  # a forward: the model's self.log() must not run in setup
                self._views.check_model(model, layer, probes.images[:1].to(module_device(model)),
                                        output_transform=self.config.output_transform, owner="ExplanationMonitor",
                                        budget_bytes=self._probes.budget_bytes(model))
        except (ValueError, TypeError, RuntimeError) as err:
            message = str(err) if str(err).startswith("ExplanationMonitor") else \
                f"ExplanationMonitor (views={self.config.views}): {err}"
            raise MisconfigurationException(message) from err

    def _run_views(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Rank 0 computes and writes the views (no collectives inside); every rank learns whether that failed."""

        def run() -> None:
            if not trainer.is_global_zero:
                return
            writer = self._reporter.sink(trainer)
            with muted_logging(pl_module):  # the views' forwards are the monitor's too: no self.log() from them
                failures = self._views.run(
                    pl_module, self._views_layer, self.probe_set, writer, epoch=trainer.current_epoch,
                    step=trainer.global_step, mean=self.config.display["mean"], std=self.config.display["std"],
                    class_names=self.class_names, output_transform=self.config.output_transform,
                    device=module_device(pl_module), write_scalars=False,
                )
            if self._views.history and self._views.history[-1]["scalars"]:
                self._reporter.write_scalars(trainer, self._views.history[-1]["scalars"])
            if failures:
                name, error = next(iter(failures.items()))
                message = (f"ExplanationMonitor: view(s) {', '.join(failures)} failed at epoch "
                           f"{trainer.current_epoch}; {name}: {type(error).__name__}: {error}. The other views and "
                           "the heatmaps were written")
                if self.config.on_error == "raise":  # raised inside the agreement: every rank stops
                    raise RuntimeError(message) from error
                self._failures.warn(f"{message}; training continues (set on_error='raise' to stop instead).")

        self._round.agreed(trainer, run, what="views")

    def _run_attention_graphs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def run() -> None:
            if trainer.is_global_zero:
                with muted_logging(pl_module):
                    self._views.attention_graphs(
                        pl_module, self.probe_set, self._reporter.sink(trainer), step=trainer.global_step,
                        mean=self.config.display["mean"], std=self.config.display["std"],
                        class_names=self.class_names, output_transform=self.config.output_transform,
                        device=module_device(pl_module))
                self._reporter.sink(trainer).flush()

        self._round.agreed(trainer, run, what="structured attention graphs")

    # ------------------------------------------------------------------ when to explain
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        self._explainer.train_batch_size = getattr(loader, "batch_size", None) if loader is not None else None
        self._pool_explainer.train_batch_size = self._explainer.train_batch_size
        # The reference frame: what the model looks at before this fit trains it (skipped on resume).
        if not self._tracker.has_reference:
            start = time.perf_counter()
            self._run(trainer, pl_module, reference=True)
            self._start_cost = time.perf_counter() - start

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start, self._spent = time.perf_counter(), 0.0

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Only the end-of-epoch validation (not the sanity check, not a mid-epoch val_check_interval run): then the
        # result is in the state ModelCheckpoint saves right after, in on_validation_end.
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._maybe_run(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._maybe_run(trainer, pl_module)  # epochs without a validation run

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the last overlays are in the event file before the loggers finalise; a failure is agreed on like any other
        self._round.agreed(trainer, self._reporter.finish_images, what="writing overlays")
        if self._views.graph_options is not None:
            self._run_attention_graphs(trainer, pl_module)
        if "sanity" in self.config.metrics:  # the trained model: now the check is meaningful, so warn
            latest = self._latest["results"] if self._latest and self._latest["step"] == trainer.global_step else None
            # the methods of the last round (reused as the reference), else the pinned ones: one more cheap round
            began = time.perf_counter()
            self.check_sanity(trainer, pl_module, warn=True, reference=latest,
                              methods=None if self.config.max_overhead is None or latest is not None else self._pinned)
            self._budget.record("sanity", time.perf_counter() - began)
        # Rank 0 writes the timelines and the report (read back from the logs); a failure obeys on_error.
        ok, path = self._round.agreed(trainer, lambda: self._end_of_fit(trainer) if trainer.is_global_zero else None,
                                      what="writing the timelines and the report")
        if ok and path:
            rank_zero_info(f"ExplanationMonitor: report written to {path}")
        summary = self._failures.summary()
        if summary:
            rank_zero_warn(summary)

    def _end_of_fit(self, trainer: pl.Trainer) -> str | None:
        if self.probe_set is None or not self._tracker.history:
            return None
        self.write_timelines(trainer)
        return self._reporter.write_report(trainer, sanity_threshold=self.config.metric_options["sanity"]["threshold"])

    def write_timelines(self, trainer: pl.Trainer) -> list[str]:
        """Log each method's timeline now, as ``xai/{method}/timeline`` at the current step: a row per probe, a column
        per explained epoch (up to 12: the first, the last, the alarm epochs, evenly spread), flagged probes outlined.
        Called at the end of fit; call it on rank 0 whenever you want one earlier. Returns the tags written."""
        if not trainer.is_global_zero or self.probe_set is None:
            return []
        return self._reporter.write_timelines(trainer, self.probe_set, self.class_names)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._reporter.shutdown()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._reporter.shutdown()
        self._reporter.reset()

    def _maybe_run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.config.every_n_epochs != 0 or self._last_explained_epoch == epoch:
            return
        if epoch < self._next_epoch:  # spaced out by max_overhead
            return
        self._last_explained_epoch = epoch
        self._run(trainer, pl_module, reference=False)
        # independent of the heatmaps: they run even if this epoch's explanation was skipped; within the budget after
        # the first time (their measured cost, broadcast with the round, so every rank decides alike)
        if self._views.views and (not self._views_ran or self._budget.allow("views", self._budget.last("views"))):
            self._views_ran = True
            began = time.perf_counter()
            try:
                self._run_views(trainer, pl_module)
            finally:
                self._views_seconds = time.perf_counter() - began
                self._period_spent += self._views_seconds

    # ------------------------------------------------------------------ one explanation round, on every rank
    def _explain(self, trainer: pl.Trainer, model: torch.nn.Module, *, targets: Tensor | None = None,
                 measures: Sequence[Any] = (), adaptive: bool = True,
                 groups: Sequence[Sequence[str]] | None = None) -> dict[str, Tensor] | None:
        """Every rank explains its shard; all agree on success before gathering. ``None``: skipped (warned).
        ``groups``: the methods, one ``explain_detailed`` call per group (``None``: every method in one call)."""
        assert self.probe_set is not None, "setup() selects the probes"
        with muted_logging(model):  # the model's own self.log() in forward must not log the monitor's forwards
            results = self._round.explain(trainer, model, self.probe_set, self._explainer, targets=targets,
                                          measures=measures, adaptive=adaptive, groups=groups)
        for method, error in self._explainer.errors.items():
            self._reporter.warn_once(
                f"failed/{method}", f"ExplanationMonitor: {method} failed at epoch {trainer.current_epoch} ({error}); "
                "its maps are left out of the metrics while the other methods go on. Warned once.")
        if results is not None and not all(bool(torch.isfinite(results[f"map/{m}"]).all())
                                           for m in self._ran(results) if m not in self._explainer.errors):
            self._reporter.warn_once(
                "nonfinite", "ExplanationMonitor: the model produced non-finite attributions (NaN/inf) at epoch "
                f"{trainer.current_epoch}; those probes are shown as flat maps and left out of the stability metrics. "
                "No NaN is logged.")
        return results

    def _ran(self, results: Mapping[str, Tensor]) -> tuple[str, ...]:
        """The methods with maps in ``results`` (this round's), in the configured order."""
        return tuple(m for m in self.config.methods if f"map/{m}" in results)

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, reference: bool) -> None:
        start = time.perf_counter()
        try:
            self._round_once(trainer, pl_module, reference=reference, start=start)
        finally:
            took = time.perf_counter() - start
            self._spent += took
            self._period_spent += took

    def _round_once(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, reference: bool,
                    start: float) -> None:
        measures = [] if reference else active_measures(self.config.metrics, stage="epoch")
        # The fit-start reference: fixed IG steps (an untrained model would refine most probes up to the cap), and
        # no sanity check (randomised vs untrained says nothing; it runs at the end of fit): at most one round.
        groups = self._round_groups(reference=reference)
        results = self._explain(trainer, pl_module, measures=[m for m in measures if m.shard is not None],
                                adaptive=not reference, groups=groups)
        if results is None:
            if not reference:
                self._publish(trainer, {}, self._epoch_keys())  # skipped: nothing stale stays behind
            return
        extra = self._explain_pool(trainer, pl_module)
        if reference:
            self._tracker.take_reference(trainer.current_epoch, results, extra)
            self._last_lrs = [float(g["lr"]) for opt in trainer.optimizers for g in opt.param_groups if "lr" in g]
            # what one probe costs through the cheap methods: the first estimate of everything optional
            self._record_passes(self._round.broadcast(trainer, self._pass_timings()))
            return
        ok, measured = self._round.agreed(trainer, lambda: self._measure(trainer, results, measures, extra),
                                          what="measuring")
        if not ok:
            self._publish(trainer, {}, self._epoch_keys())
            return
        now = time.perf_counter()
        # this epoch's time in the monitor, plus the last overlay job's (on a background thread: it overlaps
        # training but takes CPU from it); rank 0's clock decides
        background = self._reporter.background_seconds if self.config.log_images else 0.0
        timing = {"spent": self._spent + now - start, "background": background,
                  "elapsed": None if self._epoch_start is None else now - self._epoch_start,
                  # the budget's period: since the last accounting (epochs not explained included)
                  "period": None if self._period_start is None else now - self._period_start,
                  "period_spent": self._period_spent + now - start,
                  "passes": self._pass_timings(), "views": self._views_seconds,
                  "pool": self._pool_seconds if extra is not None else None}
        # Identical decisions and monitored values on every rank, decided by rank 0 (no float drift between ranks).
        (scalars, report, record, histograms), timing = self._round.broadcast(trainer, (measured, timing))
        spent, background, elapsed = timing["spent"], timing["background"], timing["elapsed"]
        if elapsed is not None and elapsed > 0:
            # counted as if the background work did not overlap training: an upper bound of the share
            scalars[_OVERHEAD] = (spent + background) / (elapsed + background)
        scalars = {self._key(k): v for k, v in scalars.items()}
        self._tracker.history.append(record)
        self._latest = {"results": results, "step": trainer.global_step, "epoch": trainer.current_epoch}
        self._publish(trainer, scalars, self._epoch_keys())
        self._account(trainer, timing)
        text = drift_text(trainer.current_epoch, trainer.global_step, self._ran(results), scalars, report.details())

        def write() -> None:
            if trainer.is_global_zero:
                self._reporter.write_epoch(trainer, probes=self.probe_set, results=results, scalars=scalars,
                                           histograms=histograms, text=text, class_names=self.class_names,
                                           flags=record.get("flags"), layout_keys=self._layout_keys(trainer))

        # rank 0 writes; a failure there is still agreed on, so no rank goes on alone to the next collective
        self._round.agreed(trainer, write, what="writing")
        if report.alarm:
            # one line; the details (what moved where, per class and probe) are in the `xai/drift` text
            rank_zero_warn(f"ExplanationMonitor: {report.headline()} (step {trainer.global_step}; details in the "
                           "xai/drift text)")
            if self.config.on_drift is not None:  # user code: a failure obeys on_error like any other
                self._round.agreed(trainer, lambda: self.config.on_drift(report), what="on_drift")

    def _measure(self, trainer: pl.Trainer, results: Mapping[str, Tensor], measures: Sequence[Any],
                 extra: DetectionRows | None = None
                 ) -> tuple[dict[str, float], DriftReport, dict[str, Any], dict[str, Tensor]]:
        probes = self.probe_set
        lrs = [float(g["lr"]) for opt in trainer.optimizers for g in opt.param_groups if "lr" in g]
        event = lr_event(self._last_lrs, lrs)
        self._last_lrs = lrs
        compared = self._compared()  # before the update: which methods have an earlier map
        scalars, report, record = self._tracker.update(trainer.current_epoch, trainer.global_step, results,
                                                       masks=probes.masks, labels=probes.labels,
                                                       probe_ids=probes.ids.tolist(), class_names=self.class_names,
                                                       event=event, extra=extra)
        # a method's first map (an optional method's first run under the budget) has nothing to be compared with:
        # no stability key, rather than a 0.0 that reads as a change
        for method in undefined_similarity(scalars, {m: results[f"map/{m}"] for m in self._ran(results)
                                                     if m in compared}):
            self._reporter.warn_once(
                f"undefined/{method}", f"ExplanationMonitor: at epoch {trainer.current_epoch} no probe's {method} map "
                "could be compared with the one before (degenerate maps, all zero or constant: e.g. a head "
                f"initialised to zero, or such maps before training); xai/{method}/stability and topk_overlap are "
                f"logged as 0.0 (no similarity shown, never 'stable') and xai/{method}/degenerate counts those "
                "probes. Warned once.")
        measured = run_measures(measures, self._context(results), self.config.metric_options)
        scalars.update(measured.scalars)
        record.update(measured.per_probe)
        record["pred"] = results["pred"].tolist()
        return scalars, report, record, measured.histograms

    def _compared(self) -> set[str]:
        """The methods with an earlier map of this fit to compare with: the reference round's (the pinned ones) and
        every earlier round's."""
        earlier = self._tracker.history.fields("stability")  # from the stored columns: no record rebuilt
        return earlier | (set(self._pinned) if self._tracker.has_reference else set())

    def _context(self, results: Mapping[str, Tensor], extras: Mapping[str, Tensor] | None = None) -> MeasureContext:
        methods = self._ran(results)
        return MeasureContext(
            methods=methods, maps={m: results[f"map/{m}"] for m in methods}, pred=results["pred"],
            target=results["target"], masks=self.probe_set.masks,
            extras=extras if extras is not None else {k: v for k, v in results.items() if not k.startswith("map/")},
            size=self.config.size,
        )

    def _epoch_keys(self) -> set[str]:
        methods = self.config.methods
        keys = self._tracker.keys().union(*(m.keys(methods) for m in active_measures(self.config.metrics)))
        return {self._key(k) for k in keys | {_OVERHEAD}}

    def _pass_timings(self) -> list[tuple[tuple[str, ...], float, int]]:
        return [(t.methods, t.seconds, t.rows) for t in self._explainer.timings]

    def _record_passes(self, timings: Sequence[tuple[tuple[str, ...], float, int]]) -> float:
        """Rank 0's pass timings into the budget (the pinned pass as ``"cheap"``, per probe; each optional method
        under its name); returns the optional methods' seconds."""
        optional = 0.0
        for methods, seconds, rows in timings:
            if tuple(methods) == self._pinned:
                self._budget.record("cheap", seconds, rows)
            else:
                optional += seconds
                for m in methods:
                    self._budget.record(m, seconds)
        return optional

    def _account(self, trainer: pl.Trainer, timing: Mapping[str, Any]) -> None:
        """Feed the budget (rank 0's broadcast clock: identical on every rank); say once what the monitor costs;
        with an explicit ``max_overhead=b``, space the rounds to stay within it."""
        spent, background, elapsed = timing["spent"], timing["background"], timing["elapsed"]
        optional = self._record_passes(timing["passes"])
        if timing["views"] is not None:
            self._budget.record("views", timing["views"])
        if timing.get("pool") is not None:  # the pool's rows are spent like the methods' (in "spent"); its cost
            self._budget.record("pool", timing["pool"])
        if timing["period"] is not None:
            self._budget.account(timing["period"] - timing["period_spent"], timing["period_spent"] + background)
        self._period_start, self._period_spent = time.perf_counter(), 0.0
        if elapsed is None or elapsed <= 0:
            return
        epoch, c = trainer.current_epoch, self.config
        train = max(elapsed - spent, 1e-6)  # the epoch without the monitor
        cost = spent + background
        elapsed = train + cost
        if not self._cost_said:
            self._cost_said = True
            every = max(c.every_n_epochs, math.ceil(cost * 0.9 / (0.1 * train)))
            ran = [m for m in c.methods if m in self._pinned or self._budget.last(m) is not None]
            rank_zero_info(
                f"ExplanationMonitor: one explanation round ({len(self.probe_set)} probes, {', '.join(ran)}) "
                f"took {cost:.2f} s{' (+ overlays drawn in the background)' if c.log_images and not background else ''}"
                f", {cost / elapsed:.0%} of epoch {epoch} ({elapsed:.1f} s)"
                + (f"; the reference round before training took {self._start_cost:.2f} s" if self._start_cost else "")
                + self._optional_note()
                + (". To lower it, explain less often "  # only advise a spacing that actually changes something
                   f"(every_n_epochs={every} keeps it near 10%) or " if every > c.every_n_epochs else
                   ". To lower it, explain ")
                + f"fewer probes (num_probes={max(1, len(self.probe_set) // 2)})"
                # the cheap round alone above 10%: a number for max_overhead spaces the rounds themselves
                + ("; max_overhead=0.1 spaces the rounds automatically" if not self._spaces_rounds()
                   and cost - optional > 0.1 * elapsed else "")
                + ". `xai/overhead` logs the share every round."
            )
        if self._spaces_rounds():
            b = c.max_overhead
            cost -= optional  # the optional methods live within the budget's credit; the pinned round decides
            spacing = max(1, math.ceil(cost * (1.0 - b) / (b * train)))  # cost / (spacing * train + cost) <= b
            self._next_epoch = epoch + spacing
            if spacing > c.every_n_epochs and not self._spacing_said:
                self._spacing_said = True
                rank_zero_info(
                    f"ExplanationMonitor: a round costs {cost:.2f} s against {train:.1f} s of training per epoch; to "
                    f"stay within max_overhead={b} it explains every {spacing} epochs from now on (the spacing "
                    "follows the measured costs)."
                )

    def _optional_note(self) -> str:
        """What the budget does with the optional methods, for the one cost line."""
        if not self._optional:
            return ""
        share = self._budget.share
        parts = []
        for m in self._optional:
            estimate = self._estimate(m)
            parts.append(f"{m} (about {estimate:.2f} s a round)" if estimate is not None else m)
        return (f". {', '.join(parts)} run{'s' if len(parts) == 1 else ''} only when the training time has paid for "
                f"{'it' if len(parts) == 1 else 'them'} within max_overhead={self.config.max_overhead!r} "
                f"({share:.0%} of the training time; max_overhead=None runs every method every epoch)")

    def _sanity_keys(self) -> set[str]:
        measures = active_measures(self.config.metrics, stage="sanity") or [get_measure("sanity")]
        return {self._key(k) for m in measures for k in m.keys(self.config.methods)}

    def _publish(self, trainer: pl.Trainer, scalars: Mapping[str, float], keys: set[str]) -> None:
        """This round's values into ``trainer.callback_metrics``; a key this round could not measure (skipped round,
        no finite value) never keeps an earlier round's number without saying so.

        What a watching callback then sees: nothing, when every watcher is ``EarlyStopping(strict=False)`` (it skips
        the epoch) or nobody watches; NaN, when every watcher is a ``ModelCheckpoint`` (it ranks NaN last, so no
        checkpoint becomes "best" on it) or an ``EarlyStopping(check_finite=False)``; otherwise (a strict or
        NaN-stopping ``EarlyStopping``, which would stop training on either) the last measured value, with one
        warning: that epoch counts as one without improvement.
        """
        for key, value in scalars.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        for key in keys - set(scalars):
            if key not in trainer.callback_metrics:
                continue
            watchers = [cb for cb in trainer.callbacks if getattr(cb, "monitor", None) == key]
            if all(isinstance(cb, EARLY_STOPPING) and not cb.strict for cb in watchers):
                del trainer.callback_metrics[key]
            elif all(isinstance(cb, MODEL_CHECKPOINT)
                     or (isinstance(cb, EARLY_STOPPING) and not cb.check_finite) for cb in watchers):
                trainer.callback_metrics[key] = torch.tensor(float("nan"))
            else:
                self._reporter.warn_once(
                    f"stale/{key}", f"ExplanationMonitor could not measure {key!r} at epoch {trainer.current_epoch}; "
                    f"{', '.join(type(cb).__name__ for cb in watchers)} watching it sees its last measured value "
                    "(an epoch without improvement). EarlyStopping(..., strict=False) skips such epochs instead.")

    def check_sanity(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, warn: bool = True,
                     reference: Mapping[str, Tensor] | None = None,
                     methods: Sequence[str] | None = None) -> dict[str, float] | None:
        """Model-randomisation sanity check (Adebayo et al. 2018), on every rank; call it on demand too.

        Explains a copy of the model whose weights are re-initialised (``metric_options['sanity']['layers']``
        layers from the top, all by default) and compares each probe's map with the real model's (Spearman). A method
        whose maps barely change does not explain the model: with ``warn`` a warning names it when the mean
        similarity exceeds ``metric_options['sanity']['threshold']``. The real model is never modified. Logs
        ``xai/{method}/sanity_similarity``.

        ``reference``: the real model's results of this step (their methods are checked), else it explains
        ``methods`` (``None``: every method) on the real model first. Integrated Gradients runs at exactly
        ``n_steps`` on the randomised copy (adaptive refinement would chase the random model's kinks).

        Cost: one deep copy of the model and one explanation round on it (plus one on the real model without
        ``reference``).
        """
        if reference is None:
            reference = self._explain(trainer, pl_module, groups=None if methods is None else [tuple(methods)])
            if reference is None:
                self._publish(trainer, {}, self._sanity_keys())
                return None
        options = self.config.metric_options["sanity"]
        ok, randomized = self._round.agreed(
            trainer, lambda: randomized_copy(pl_module, num_layers=options["layers"],
                                             seed=self.config.probe_options["seed"]), what="sanity check")
        if not ok:
            self._publish(trainer, {}, self._sanity_keys())
            return None
        checked = self._ran(reference)
        random_maps = self._explain(trainer, randomized, targets=reference["target"], adaptive=False,
                                    groups=[checked])
        del randomized
        if random_maps is None:
            self._publish(trainer, {}, self._sanity_keys())
            return None
        extras = {f"random/{m}": random_maps[f"map/{m}"] for m in checked}
        measures = active_measures(self.config.metrics, stage="sanity") or [get_measure("sanity")]
        scalars = run_measures(measures, self._context(reference, extras), self.config.metric_options).scalars
        scalars = {self._key(k): v for k, v in self._round.broadcast(trainer, scalars).items()}
        self._publish(trainer, scalars, self._sanity_keys())
        self._round.agreed(trainer, lambda: self._reporter.write_scalars(trainer, scalars)
                           if trainer.is_global_zero else None, what="writing the sanity check")
        failing = {k.split("/")[1]: v for k, v in scalars.items() if v > options["threshold"]}
        unexpected = {m: v for m, v in failing.items() if m not in INPUT_WEIGHTED}
        passing = [k.split("/")[1] for k, v in scalars.items() if v <= options["threshold"]]
        judge = (f"Judge what the model learnt with {' and '.join(passing)}, which "
                 f"{'pass' if len(passing) > 1 else 'passes'}" if passing else
                 "No method passed: read every map with care")
        if warn and unexpected:  # a method that should depend on the weights and does not: worth a warning
            rank_zero_warn(
                "ExplanationMonitor sanity check: the maps of "
                + ", ".join(f"{m} (similarity {v:.2f})" for m, v in unexpected.items())
                + " barely change when the model's weights are randomised, so they say little about what this model "
                f"learnt (Adebayo et al. 2018). {judge}."
            )
        expected = {m: v for m, v in failing.items() if m in INPUT_WEIGHTED}
        if warn and expected:  # how the method works, every run: say what it means, once, without alarm
            rank_zero_info(
                "ExplanationMonitor sanity check: "
                + ", ".join(f"{m} maps stay {v:.2f} similar" for m, v in expected.items())
                + " with randomised weights, as expected for a method weighted by the input (x - baseline): they show "
                f"where the image's evidence is. {judge}."
            )
        return scalars
