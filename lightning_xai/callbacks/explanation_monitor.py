"""ExplanationMonitor: orchestration only (*when* to explain, *which rank* does what, *what* is kept); the work is done
by the named collaborators of ``callbacks/``, each testable without a Trainer (DESIGN.md lists them)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from torch import Tensor

from lightning_xai.callbacks._compat import (
    CALLBACK_BASES,
    muted_logging,
    rank_zero_info,
    rank_zero_warn,
)
from lightning_xai.callbacks._config import (
    DEFAULT_METHODS,
    DEFAULT_METRICS,
    RENAMED,
    DisplayOptions,
    DriftOptions,
    MonitorConfig,
    ProbeOptions,
    SegmentationOptions,
    build_config,
)
from lightning_xai.callbacks._cost import CostPlan
from lightning_xai.callbacks._failures import FailureLog
from lightning_xai.callbacks._measuring import EpochMeasures
from lightning_xai.callbacks._probes import ProbeSetup, check_monitors, check_strategy, train_batch_size, train_samples
from lightning_xai.callbacks._reporter import Reporter
from lightning_xai.callbacks._results import maps_of
from lightning_xai.callbacks._round import DistributedRound
from lightning_xai.callbacks._rounds import Rounds
from lightning_xai.callbacks._segmentation import SegmentationTargets
from lightning_xai.callbacks._state import FitState
from lightning_xai.callbacks._view_stage import ViewStage

if TYPE_CHECKING:  # either package's classes; only for the annotations
    import pytorch_lightning as pl

    from lightning_xai.callbacks._budget import CostBudget


class ExplanationMonitor(*CALLBACK_BASES):  # a Callback of every installed Lightning package
    r"""Explain a fixed probe set while the model trains; log overlays, stability, quality measures and drift.

    At the end of every ``every_n_epochs``-th training epoch (at its end-of-epoch validation when there is one, so the
    results belong to that epoch's checkpoint), the probes are explained with ``methods`` on the unwrapped model in
    eval mode, gradients by ``torch.autograd.grad`` only: parameters, ``.grad``, buffers, flags and the RNG are left
    as they were, so a seeded run trains bitwise the same with and without the monitor. A *reference* round before
    the first step (IG at exactly ``n_steps``) gives the first epoch a stability value. **Stability**: Spearman
    correlation of a probe's pooled map with the previous explained epoch's (1.0: unchanged). **Drift**:
    :class:`~lightning_xai.drift.DriftDetector`; an alarm warns once, writes text and calls ``on_drift(report)``.

    Args (every option's default, bounds and meaning: ``docs/options.md``, generated from the specs):
        probes: The probe set: ``None`` (``num_probes`` class-balanced samples of the validation data, else the
            training data), images ``(N, C, H, W)``, ``(images, labels[, masks])``, a ``Dataset`` or a ``DataLoader``.
        num_probes: Number of probes taken from ``probes`` or the validation data.
        methods: Attribution methods (:func:`lightning_xai.attribution.available_methods`); left at the default,
            ``attention_rollout`` joins them on a class-token ViT.
        every_n_epochs: Explain after every n-th training epoch.
        target: Class explained: ``"label"`` (the prediction where unknown), ``"pred"`` or a class index.
        layer: Grad-CAM layer (dotted name); ``None`` picks the last 4-D output before the head.
        measures: Quality measures (:func:`lightning_xai.metrics.registry.available_measures`; each one's ``cost``):
            ``"localisation"``, ``"agreement"``, ``"faithfulness"`` (as costly as IG), ``"sanity"`` (end of fit).
        log_images: Log overlay panels and timelines (scalars and text are always logged).
        views: Views of what the network learnt (:data:`lightning_xai.views.VIEWS`), rank 0, after explained epochs;
            a failing view warns (or raises with ``on_error="raise"``) without stopping the others.
        view_options: ``{view: {option: value}}`` (its class's keyword arguments), plus ``"pool": {"size": N}``.
        on_drift: Called as ``on_drift(report)`` on every rank at every drift alarm.
        on_error: ``"warn"`` skips a failing epoch on every rank (DDP never hangs); ``"raise"`` stops training.
        max_overhead: ``"auto"``: the one-pass methods (and any whose key another callback ``monitor``\ s) every
            explained epoch, the others and the views when the run has paid for them within 5% of its training time;
            a float ``b`` in ``(0, 1)``: within ``b``, spacing whole rounds if needed; ``None``: no budget.
        output_transform: Maps the model's output to logits ``(N, num_classes)``, for tuple/dict outputs.
        method_options: ``{method: {option: value}}``, each method's registry options (IG: ``n_steps``,
            ``tolerance``, ``max_steps``, ``baseline``, ``internal_batch_size``).
        measure_options: ``{measure: {option: value}}``, each measure's ``options``.
        drift_options: ``size``, ``topk``, ``pool_size``, ``pool_from`` and the drift detector's keywords
            ``warmup_epochs``, ``window``, ``horizon``, ``threshold``, ``slack``, ``cusum_threshold``,
            ``learn_below``, ``min_spread``, ``event_factor``, ``settle``, ``gap_spread``, ``statistics``,
            ``probe_sigmas``, ``prior_weight``.
        display_options: ``mean``, ``std`` (the inputs' normalisation), ``class_names``, ``colormap``, ``alpha``.
        probe_options: ``input_key``, ``label_key``, ``mask_key`` (``None`` guesses) and ``seed``.
        sinks: Your own sinks (:class:`lightning_xai.writers.BaseSink`), beside those of the Trainer's loggers.
        segmentation: A segmentation model (found at setup, nothing to set): ``target`` (``"mask"`` or
            ``"predicted"`` region), ``class_index`` per probe (README "Segmentation models").
        metrics, metric_options, drift, display: deprecated 0.1 names of measures, measure_options, drift_options,
            display_options.

    Logged (step = ``trainer.global_step``; every key: :mod:`lightning_xai.keys`): overlays, timelines, stability,
    top-k overlap, flagged probes, the drift alarm, the measures', ``xai/overhead``, the ``xai/drift`` text, the
    views' items, the custom-scalars layout; with several monitors, each one's tags end in ``/monitor_{i}``. The
    scalars also go into ``trainer.callback_metrics`` for ``EarlyStopping`` / ``ModelCheckpoint``. At the end of fit
    rank 0 writes ``<log dir>/xai_report.html`` (``python -m lightning_xai.report LOGDIR`` rebuilds it).

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
        sinks: Sequence[Any] | None = None,
        measures: Sequence[str] | None = None,
        measure_options: dict[str, dict[str, Any]] | None = None,
        drift_options: DriftOptions | None = None,
        display_options: DisplayOptions | None = None,
        segmentation: SegmentationOptions | None = None,
    ) -> None:
        super().__init__()
        c = self.config = build_config(
            probes=probes, num_probes=num_probes, methods=methods, every_n_epochs=every_n_epochs, target=target,
            layer=layer, metrics=metrics, log_images=log_images, views=views, view_options=view_options,
            on_drift=on_drift, on_error=on_error, max_overhead=max_overhead, output_transform=output_transform,
            method_options=method_options, metric_options=metric_options, drift=drift, display=display,
            probe_options=probe_options, sinks=sinks, measures=measures, measure_options=measure_options,
            drift_options=drift_options, display_options=display_options, segmentation=segmentation,
        )
        failures = FailureLog(rank_zero_warn)  # a persistent failure warns once, repeats are summed up
        self._fit = FitState(self._generate_state_key(methods=c.methods, num_probes=c.num_probes, layer=c.layer,
                                                      every_n_epochs=c.every_n_epochs, target=c.target), failures)
        self._probes = ProbeSetup(c)
        self._round = DistributedRound(c.on_error, warn=failures.warn)
        self._reporter = Reporter(c.methods, c.display, c.log_images, sinks=c.sinks)  # rank 0's writes; tag names
        self._measures = EpochMeasures(c, self._reporter.warn_once)  # the tracker (stability, drift) and measures
        self._views = ViewStage(c, failures.warn)
        self._cost = CostPlan(c)  # max_overhead: which methods run when; the monitor's clock
        self._rounds = Rounds(c, self._probes, self._round, self._measures, self._reporter, self._cost, self._fit)

    # ------------------------------------------------------------------ what users read
    def __getattr__(self, name: str) -> Any:
        # the checked arguments read as attributes: monitor.methods, monitor.method_options, ...
        config = self.__dict__.get("config")
        if config is not None and (name in MonitorConfig.__dataclass_fields__ or name in RENAMED):
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    probe_set = property(lambda self: self._probes.probe_set, doc="The probes (:class:`ProbeSet`), after setup.")
    layer_name = property(lambda self: self._probes.layer_name, doc="The Grad-CAM layer in use, after setup.")
    class_names = property(lambda self: self._probes.class_names, doc="The class names, after setup.")
    history = property(lambda self: self._measures.tracker.history,
                       doc="One record per explained epoch (a compact ``_tracker.History`` read like a list of dicts).")
    budget: CostBudget = property(  # type: ignore[assignment]
        lambda self: self._cost.budget, doc="The ``max_overhead`` budget (``_budget.CostBudget``): credit, measured "
        "costs, ``allow(kind, seconds)`` for optional work; identical on every rank.")
    drift_detector = property(lambda self: self._measures.tracker.drift,
                              doc="The :class:`~lightning_xai.drift.DriftDetector` (e.g. ``accept()`` after an alarm).")
    views_history = property(lambda self: self._views.runner.history,
                             doc='One record per explained epoch with views: ``{"epoch", "step", "scalars"}``.')
    state_key = property(lambda self: self._fit.state_key)
    _pool = property(lambda self: self._rounds.pool.pool)  # the drift detection pool (_pool.DetectionPool)

    @property
    def latest(self) -> dict[str, Any] | None:
        """The last explained epoch on every rank: ``{"epoch", "step", "maps": {method: (N,1,H,W)}, "pred", "prob"}``."""
        latest = self._fit.latest
        if latest is None:
            return None
        results = latest["results"]
        return {"epoch": latest["epoch"], "step": latest["step"], "pred": results["pred"], "prob": results["prob"],
                "maps": maps_of(results, self.config.methods)}

    def logged_keys(self) -> set[str]:
        """Every scalar key this monitor can log (stability and drift, and the chosen measures')."""
        return {self._reporter.names.scalar(k) for k in self._measures.logged_keys()}

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, lists and numbers only, so checkpoints load with ``torch.load(weights_only=True)``."""
        return self._fit.state_dict(self.probe_set, self._measures.tracker, self._views.runner)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._fit.load_state_dict(state_dict, self._measures.tracker, self._views.runner)
        self._fit.check_restored_probes(self.probe_set, self._measures.tracker)

    # ------------------------------------------------------------------ setup: everything that can fail, fails here
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        began = time.perf_counter()
        check_strategy(trainer.strategy)
        # several monitors in one Trainer: tags with a suffix (and scalars where two log the same key)
        monitors = [cb for cb in trainer.callbacks if isinstance(cb, ExplanationMonitor)]
        self._reporter.names.assign(monitors.index(self) if self in monitors else 0, self._measures.logged_keys(),
                                    [cb._measures.logged_keys() for cb in monitors if cb is not self])
        check_monitors(trainer.callbacks, self.logged_keys(), self.config.every_n_epochs, budget=self._cost.spaces_rounds)
        # Each fit starts its own history: new probes from this fit's data, a new reference, a fresh drift state.
        # A resumed fit restores the checkpoint's in load_state_dict, which Lightning calls after setup.
        self._fit.reset()
        self._cost.reset(int(getattr(trainer, "world_size", 1) or 1))
        self._measures.tracker.reset()
        self._reporter.reset()
        self._probes.select_for(trainer)
        # a segmentation model (issue 24): its probes' class regions are explained, its setup checks see (N, K) logits
        found = SegmentationTargets.detect(pl_module, self.probe_set, self.config.segmentation,
                                           self.config.output_transform, self.config.target)
        self._rounds.explainer.segmentation = found
        config, self._fit.segmentation_layer = SegmentationTargets.configure(self.config, found,
                                                                             self._fit.segmentation_layer)
        self._use(config)
        with muted_logging(pl_module):  # setup's forwards: a self.log() in forward would fail here
            self._probes.validate(pl_module, lambda: train_batch_size(trainer), world_size=trainer.world_size,
                                  views=self._views.runner, train_samples=lambda: train_samples(trainer))
            self._rounds.explainer.layer_name = self._probes.layer_name
            self._rounds.explainer.layer_reshape = self._probes.layer_reshape
            self._use(self._probes.with_automatic_methods(pl_module, self._rounds.explainer))
            failed = self._probes.dry_run(pl_module, self._rounds.explainer)  # one probe through every method
        config = self._probes.without_failing(failed)  # what cannot work fails now, once, with its cause
        if config is not self.config:
            self._use(config)  # a callback monitoring a left-out method's key would wait forever: say so now
            check_monitors(trainer.callbacks, self.logged_keys(), config.every_n_epochs, budget=self._cost.spaces_rounds)
        watched = {cb.monitor for cb in trainer.callbacks if isinstance(getattr(cb, "monitor", None), str)}
        self._cost.plan(watched, tuple(self.probe_set.images.shape[-2:]),
                        lambda methods: {self._reporter.names.scalar(k) for k in self._measures.logged_keys(methods)})
        # the drift detection pool (every rank selects the same samples from the same data; no collective)
        self._rounds.pool.setup(trainer, self._probes, self.config.methods, self._cost)
        self._rounds.pool.explainer.segmentation = self._rounds.explainer.segmentation
        self._views.setup(pl_module, self._probes)
        self._fit.check_restored_probes(self.probe_set, self._measures.tracker)
        self._cost.start(began)  # the budget's clock starts here: setup's own work counts as the monitor's

    def _use(self, config: MonitorConfig) -> None:
        """Arguments narrowed at setup (methods left out, ...): every part reads the same ones."""
        for part in (self, self._probes, self._rounds, self._rounds.explainer, self._measures, self._views, self._cost):
            part.config = config
        self._measures.tracker.methods = self._reporter.methods = config.methods

    # ------------------------------------------------------------------ when to explain
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        batch_size = getattr(loader, "batch_size", None) if loader is not None else None
        self._rounds.explainer.train_batch_size = self._rounds.pool.explainer.train_batch_size = batch_size
        # The reference frame: what the model looks at before this fit trains it (skipped on resume).
        if not self._measures.tracker.has_reference:
            start = time.perf_counter()
            self._rounds.run(trainer, pl_module, reference=True, layout_keys=set())
            self._cost.start_cost = time.perf_counter() - start

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._cost.epoch_started()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Only the end-of-epoch validation (not the sanity check, not a mid-epoch val_check_interval run): then the
        # result is in the state ModelCheckpoint saves right after, in on_validation_end.
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._maybe_run(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._maybe_run(trainer, pl_module)  # epochs without a validation run

    def _maybe_run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.config.every_n_epochs != 0 or self._fit.last_explained_epoch == epoch:
            return
        if not self._cost.due(epoch):  # spaced out by max_overhead
            return
        self._fit.last_explained_epoch = epoch
        # TensorBoard shows the first custom-scalars layout of a run: each monitor writes every monitor's keys
        layout = set().union(*(cb.logged_keys() for cb in trainer.callbacks if isinstance(cb, ExplanationMonitor)))
        self._rounds.run(trainer, pl_module, reference=False, layout_keys=layout)
        # independent of the heatmaps: they run even if this epoch's explanation was skipped; within the budget after
        # the first time (their measured cost, broadcast with the round, so every rank decides alike)
        if self._views.views and self._cost.views_due(self._views.ran):
            began = time.perf_counter()
            try:
                self._views.run(trainer, pl_module, self._probes, self._reporter, self._round)
            finally:
                self._cost.views_seconds = time.perf_counter() - began
                self._cost.add(self._cost.views_seconds, epoch=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the last overlays are in the event file before the loggers finalise; a failure is agreed on like any other
        self._round.agreed(trainer, self._reporter.finish_images, what="writing overlays")
        self._views.attention_graphs(trainer, pl_module, self._probes, self._reporter, self._round)
        if "sanity" in self.config.metrics:  # the trained model: now the check is meaningful, so warn
            latest = self._fit.latest
            latest = latest["results"] if latest and latest["step"] == trainer.global_step else None
            # the methods of the last round (reused as the reference), else the pinned ones: one more cheap round
            began = time.perf_counter()
            self.check_sanity(trainer, pl_module, warn=True, reference=latest,
                              methods=None if self.config.max_overhead is None or latest is not None
                              else self._cost.pinned)
            self._cost.budget.record("sanity", time.perf_counter() - began)
        # Rank 0 writes the timelines and the report (read back from the logs); a failure obeys on_error.
        ok, path = self._round.agreed(trainer, lambda: self._end_of_fit(trainer) if trainer.is_global_zero else None,
                                      what="writing the timelines and the report")
        if ok and path:
            rank_zero_info(f"ExplanationMonitor: report written to {path}")
        summary = self._fit.failures.summary()
        if summary:
            rank_zero_warn(summary)

    def _end_of_fit(self, trainer: pl.Trainer) -> str | None:
        if self.probe_set is None or not self.history:
            return None
        self.write_timelines(trainer)
        return self._reporter.write_report(trainer, sanity_threshold=self.config.metric_options["sanity"]["threshold"])

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._reporter.shutdown()  # the pending overlay jobs; what ended the run is not masked

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._reporter.shutdown()
        self._reporter.reset()

    # ------------------------------------------------------------------ on demand
    def write_timelines(self, trainer: pl.Trainer) -> list[str]:
        """Log each method's timeline (a row per probe, a column per explained epoch, up to 12) at the current step;
        called at the end of fit, on rank 0 whenever you want one earlier. Returns the tags written."""
        if not trainer.is_global_zero or self.probe_set is None:
            return []
        return self._reporter.write_timelines(trainer, self.probe_set, self.class_names)

    def check_sanity(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, warn: bool = True,
                     reference: Mapping[str, Tensor] | None = None,
                     methods: Sequence[str] | None = None) -> dict[str, float] | None:
        """Model-randomisation sanity check (Adebayo et al. 2018) on every rank, also on demand: each probe's map vs a
        re-initialised copy's (``measure_options['sanity']``), logged as ``xai/{method}/sanity_similarity``; ``warn``
        names methods whose maps barely change. ``reference``: this step's results, else ``methods`` are explained."""
        return self._rounds.check_sanity(trainer, pl_module, warn=warn, reference=reference, methods=methods)
