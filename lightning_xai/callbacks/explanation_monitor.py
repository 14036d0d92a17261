"""ExplanationMonitor: explain a fixed probe set at epoch ends, log overlays and stability, flag drift.

This module is orchestration only: *when* to explain, *which rank* does what, *what* goes into the checkpoint.
The numbers come from :mod:`lightning_xai.attribution` and :mod:`lightning_xai.metrics`, the pictures from
:mod:`lightning_xai.render`, the files from :mod:`lightning_xai.writers`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from lightning_xai.attribution import explain_detailed, find_gradcam_layer, preserved_state, resolve_layer, to_heatmap
from lightning_xai.distributed import gather_shards, rank_zero_buffers, shard_bounds
from lightning_xai.drift import DriftDetector, DriftReport
from lightning_xai.metrics.agreement import pairwise_agreement
from lightning_xai.metrics.completeness import summarize
from lightning_xai.metrics.faithfulness import deletion_auc, insertion_auc
from lightning_xai.metrics.localisation import pointing_game, relevance_mass
from lightning_xai.metrics.sanity import randomized_copy
from lightning_xai.metrics.stability import downsample, spearman_similarity, topk_overlap
from lightning_xai.probes import ProbeSet, select_probes
from lightning_xai.render import make_overlay_grid
from lightning_xai.writers import FileWriter, TensorBoardWriter

METHODS = ("grad_cam", "saliency", "integrated_gradients")
QUALITY_METRICS = ("localisation", "agreement", "faithfulness", "sanity")
_STATE_VERSION = 1
# Strategies where every forward is a collective (parameters sharded): a forward on one rank's probes alone hangs.
_SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


class ExplanationMonitor(Callback):
    r"""Explain a fixed probe set while the model trains; log overlays, stability and drift.

    At the end of every ``every_n_epochs``-th training epoch (at the end-of-epoch validation run when there is one,
    so the results belong to the checkpoint ``ModelCheckpoint`` writes for that epoch; never during the sanity check),
    the monitor computes Grad-CAM, saliency and Integrated Gradients for each probe on the unwrapped model, in eval
    mode, with gradients taken by ``torch.autograd.grad`` w.r.t. inputs and activations only. Training is not
    affected: parameter ``.grad``, BatchNorm buffers, train/eval flags, ``requires_grad`` and the RNG state are
    restored, so a seeded run gives bitwise the same weights with and without the monitor.

    Before the first training step it explains the probes once more to take a *reference* (the untrained or
    pre-trained model), so the very first logged epoch already has a stability value and monitors such as
    ``EarlyStopping(monitor="xai/grad_cam/stability")`` find their key.

    **Stability** of a probe under a method is the Spearman rank correlation between its heatmap and the one of the
    previous explained epoch (both average-pooled to ``similarity_size`` x ``similarity_size``); 1.0 means unchanged.
    **Drift** (see :class:`~lightning_xai.drift.DriftDetector`): after ``warmup_epochs`` explained epochs, a probe is
    flagged for a method when its stability falls below ``drift_threshold``, or falls more than
    ``drift_sigmas`` standard deviations (and at least ``drift_min_drop``) below its own last ``drift_window``
    values. Each drift event triggers one warning, a text entry and ``on_drift(report)`` if given.

    Args:
        probes: The fixed probe set. ``None`` takes ``num_probes`` samples, class-balanced and deterministically, from
            the validation data (training data if there is none). Otherwise a tensor of images ``(N, C, H, W)``, a tuple
            ``(images, labels)`` or ``(images, labels, masks)``, a map-style ``Dataset`` or a ``DataLoader``.
        num_probes: Number of probes taken from ``probes`` or the validation data.
        methods: Any of ``"grad_cam"``, ``"saliency"``, ``"integrated_gradients"``.
        every_n_epochs: Explain after every n-th training epoch.
        target: Class explained: ``"label"`` (the probe's true label; its prediction where the label is unknown),
            ``"pred"`` (the current prediction) or a fixed class index.
        layer: Grad-CAM layer, a dotted name from ``model.named_modules()``; ``None`` picks the last module with a 4-D
            output before the head.
        n_steps: Integrated Gradients steps (trapezoid rule, both ends included); the starting number when
            ``ig_tolerance`` is set.
        ig_tolerance: Adaptive Integrated Gradients: while a probe's completeness error
            ``|sum(attr) - (f(x) - f(baseline))| / |f(x) - f(baseline)|`` exceeds it, the path intervals that carry
            the error are split (up to ``ig_max_steps`` nodes), reusing every evaluation made. ``None``: exactly
            ``n_steps`` for every probe. Do not lower ``n_steps`` far below 16: completeness is one number per probe
            and can be met by a coarse map.
        ig_max_steps: Cap of the adaptive refinement (bounds the cost of a probe that converges slowly).
        baseline: Integrated Gradients baseline, a constant (in the model's input space) or ``None`` for zeros.
        internal_batch_size: Images per forward pass inside Integrated Gradients; ``None``: the training
            DataLoader's batch size when known (an explanation pass then never needs more memory than a training
            step), else chosen from the free memory.
        input_key: Selects the image from a dataset item (index, key or callable); ``None`` guesses.
        label_key: Selects the label from a dataset item; ``None`` guesses.
        mask_key: Selects a ground-truth mask from a dataset item; ``None`` guesses (used by localisation metrics).
        output_transform: Maps the model's output to logits ``(N, num_classes)``, for tuple/dict outputs.
        mean: Per-channel normalisation mean of the inputs, to show the probe images in their real colours.
        std: Per-channel normalisation std of the inputs.
        class_names: Names for captions; ``None`` uses the dataset's ``classes`` attribute if it has one.
        colormap: ``"jet"``, ``"inferno"`` or ``"viridis"``.
        alpha: Heatmap opacity in the overlay, in ``[0, 1]``.
        log_images: Log overlay grids (scalars and text are always logged).
        similarity_size: Side of the pooled map the stability is measured on.
        topk: Fraction of pixels in the top-k overlap metric.
        drift_threshold: Absolute stability below which a probe is flagged (after warm-up).
        warmup_epochs: Explained epochs before drift can be flagged.
        drift_window: Length of each probe's own history used by the relative rule.
        drift_sigmas: Relative rule: flag when stability < mean - drift_sigmas * std of the window ...
        drift_min_drop: ... and at least this far below the window's mean.
        on_drift: Called as ``on_drift(report)`` with a :class:`~lightning_xai.drift.DriftReport` on every rank.
        on_error: ``"warn"`` skips an epoch whose explanation fails (on every rank, so DDP never hangs);
            ``"raise"`` stops training.
        probe_seed: Seed of the deterministic probe selection (and of the sanity check's re-initialisation).
        metrics: Explanation-quality metrics besides stability and IG completeness (always on with IG):
            ``"localisation"`` (pointing game and relevance mass, when the probes have masks; negligible cost),
            ``"agreement"`` (rank correlation between methods; negligible), ``"faithfulness"`` (deletion and
            insertion AUC; ``2 * (faithfulness_steps + 1)`` forward passes per probe and method, about as much as IG
            itself: off by default), ``"sanity"`` (model-randomisation check at the start and end of fit; one extra
            explanation round each time).
        faithfulness_steps: Points on the deletion/insertion curves.
        perturbation: How deleted pixels are replaced: ``"blur"``, ``"mean"`` or ``"zero"``.
        sanity_layers: Layers re-initialised by the sanity check, from the output side; ``None``: all.
        sanity_threshold: Warn when a method's mean similarity to its randomised-model maps exceeds this.

    Logged keys (step = ``trainer.global_step``):
        - ``xai/{method}/overlay`` (image): one uint8 RGB grid per explained epoch: probes in rows of 8, each image
          enlarged by an integer factor to at least 96 px, with a two-line caption ``y=<label>`` /
          ``p=<prediction> <probability>``; size given by :func:`lightning_xai.render.overlay_grid_size`.
        - ``xai/{method}/stability`` (scalar): mean Spearman similarity to the previous explained epoch.
        - ``xai/{method}/topk_overlap`` (scalar): mean share of the top-``topk`` pixels kept.
        - ``xai/{method}/drift`` (scalar): number of probes flagged.
        - ``xai/integrated_gradients/completeness_error`` (scalar): median over probes of
          ``|sum(attr) - (f(x) - f(baseline))| / |f(x) - f(baseline)|``.
        - ``xai/{method}/pointing_game``, ``xai/{method}/relevance_mass`` (scalars, when the probes have masks):
          share of probes whose map peaks inside the mask; mean share of the map's mass inside the mask.
        - ``xai/integrated_gradients/completeness_error_p90``, ``..._max`` (scalars), and the per-probe errors as a
          histogram under ``xai/integrated_gradients/completeness_error``.
        - ``xai/agreement/{a}_vs_{b}`` (scalar): mean rank correlation between two methods' maps.
        - ``xai/{method}/deletion_auc``, ``xai/{method}/insertion_auc`` (scalars, with ``"faithfulness"``): mean area
          under the target probability as pixels are removed (lower is better) / inserted (higher is better) in
          map order.
        - ``xai/{method}/sanity_similarity`` (scalar, with ``"sanity"``, at the first and last step of fit): mean
          similarity to the maps of a weight-randomised copy (lower is better).
        - ``xai/drift`` (text): the epoch's stability table, and flagged probes with whether their prediction changed.

        The scalars also go into ``trainer.callback_metrics`` (identical on every rank), so ``EarlyStopping`` and
        ``ModelCheckpoint`` can monitor them.

    Example::

        >>> from lightning_xai import ExplanationMonitor
        >>> monitor = ExplanationMonitor(num_probes=8, every_n_epochs=2)
        >>> monitor.methods
        ('grad_cam', 'saliency', 'integrated_gradients')
    """

    def __init__(
        self,
        probes: Any = None,
        num_probes: int = 16,
        methods: Sequence[str] = METHODS,
        every_n_epochs: int = 1,
        target: int | Literal["label", "pred"] = "label",
        layer: str | None = None,
        n_steps: int = 16,
        ig_tolerance: float | None = 0.02,
        ig_max_steps: int = 128,
        baseline: float | None = None,
        internal_batch_size: int | None = None,
        input_key: int | str | Callable | None = None,
        label_key: int | str | Callable | None = None,
        mask_key: int | str | Callable | None = None,
        output_transform: Callable[[Any], Tensor] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
        colormap: Literal["jet", "inferno", "viridis"] = "jet",
        alpha: float = 0.5,
        log_images: bool = True,
        similarity_size: int = 16,
        topk: float = 0.1,
        drift_threshold: float = 0.5,
        warmup_epochs: int = 3,
        drift_window: int = 5,
        drift_sigmas: float = 3.0,
        drift_min_drop: float = 0.2,
        on_drift: Callable[[DriftReport], Any] | None = None,
        on_error: Literal["warn", "raise"] = "warn",
        probe_seed: int = 0,
        metrics: Sequence[str] = ("localisation", "agreement", "sanity"),
        faithfulness_steps: int = 8,
        perturbation: Literal["blur", "mean", "zero"] = "blur",
        sanity_layers: int | None = None,
        sanity_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        methods = (methods,) if isinstance(methods, str) else tuple(methods)
        _check(len(methods) > 0 and all(m in METHODS for m in methods) and len(set(methods)) == len(methods),
               "methods", methods, f"a non-empty selection without repeats from {METHODS}")
        _check(_is_int(num_probes) and num_probes >= 1, "num_probes", num_probes, "an int >= 1")
        _check(_is_int(every_n_epochs) and every_n_epochs >= 1, "every_n_epochs", every_n_epochs, "an int >= 1")
        _check(target in ("label", "pred") or (_is_int(target) and target >= 0), "target", target,
               "'label', 'pred' or a class index >= 0")
        _check(layer is None or (isinstance(layer, str) and layer != ""), "layer", layer,
               "None (automatic) or a dotted module name from model.named_modules()")
        _check(_is_int(n_steps) and n_steps >= 1, "n_steps", n_steps, "an int >= 1")
        _check(ig_tolerance is None or (_is_number(ig_tolerance) and ig_tolerance > 0), "ig_tolerance", ig_tolerance,
               "None or a float > 0 (e.g. 0.02 for 2%)")
        _check(_is_int(ig_max_steps) and ig_max_steps >= n_steps, "ig_max_steps", ig_max_steps,
               f"an int >= n_steps ({n_steps})")
        _check(baseline is None or _is_number(baseline), "baseline", baseline, "None (zeros) or a float")
        _check(internal_batch_size is None or (_is_int(internal_batch_size) and internal_batch_size >= 1),
               "internal_batch_size", internal_batch_size, "None (automatic) or an int >= 1")
        for name, key in (("input_key", input_key), ("label_key", label_key), ("mask_key", mask_key)):
            _check(key is None or isinstance(key, (int, str)) or callable(key), name, key,
                   "None, an int index, a str key or a callable")
        _check(output_transform is None or callable(output_transform), "output_transform", output_transform,
               "None or a callable mapping the model output to logits (N, num_classes)")
        _check((mean is None) == (std is None), "mean/std", (mean, std), "both given or both None")
        if std is not None:
            _check(len(mean) == len(std) and all(_is_number(s) and s > 0 for s in std), "std", std,
                   "positive numbers, as many as mean")
        _check(class_names is None or all(isinstance(c, str) for c in class_names), "class_names", class_names,
               "None or a list of str")
        _check(colormap in ("jet", "inferno", "viridis"), "colormap", colormap, "'jet', 'inferno' or 'viridis'")
        _check(_is_number(alpha) and 0.0 <= alpha <= 1.0, "alpha", alpha, "a float in [0, 1]")
        _check(_is_int(similarity_size) and similarity_size >= 2, "similarity_size", similarity_size, "an int >= 2")
        _check(_is_number(topk) and 0.0 < topk <= 1.0, "topk", topk, "a float in (0, 1]")
        _check(on_drift is None or callable(on_drift), "on_drift", on_drift, "None or a callable(report)")
        _check(on_error in ("warn", "raise"), "on_error", on_error, "'warn' or 'raise'")
        _check(_is_int(probe_seed), "probe_seed", probe_seed, "an int")
        metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        _check(all(m in QUALITY_METRICS for m in metrics), "metrics", metrics, f"a selection from {QUALITY_METRICS}")
        _check(_is_int(faithfulness_steps) and faithfulness_steps >= 1, "faithfulness_steps", faithfulness_steps,
               "an int >= 1")
        _check(perturbation in ("blur", "mean", "zero"), "perturbation", perturbation, "'blur', 'mean' or 'zero'")
        _check(sanity_layers is None or (_is_int(sanity_layers) and sanity_layers >= 1), "sanity_layers",
               sanity_layers, "None (all layers) or an int >= 1")
        _check(_is_number(sanity_threshold) and -1.0 <= sanity_threshold <= 1.0, "sanity_threshold",
               sanity_threshold, "a float in [-1, 1]")
        # DriftDetector validates its own arguments with the same kind of message.
        self._drift_args = {"threshold": drift_threshold, "warmup_epochs": warmup_epochs, "window": drift_window,
                            "drop_sigmas": drift_sigmas, "min_drop": drift_min_drop}
        self._drift = DriftDetector(**self._drift_args)
        _check(isinstance(probes, (Tensor, tuple, list, torch.utils.data.Dataset, torch.utils.data.DataLoader))
               or probes is None, "probes", type(probes).__name__,
               "None, a Tensor, (images, labels[, masks]), a Dataset or a DataLoader")

        self.probes_source = probes
        self.num_probes = int(num_probes)
        self.methods = methods
        self.every_n_epochs = int(every_n_epochs)
        self.target = target
        self.layer = layer
        self.n_steps = int(n_steps)
        self.ig_tolerance = ig_tolerance
        self.ig_max_steps = int(ig_max_steps)
        self.baseline = baseline
        self.internal_batch_size = internal_batch_size
        self.input_key, self.label_key, self.mask_key = input_key, label_key, mask_key
        self.output_transform = output_transform
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self.class_names = None if class_names is None else list(class_names)
        self.colormap = colormap
        self.alpha = float(alpha)
        self.log_images = bool(log_images)
        self.similarity_size = int(similarity_size)
        self.topk = float(topk)
        self.on_drift = on_drift
        self.on_error = on_error
        self.probe_seed = int(probe_seed)
        self.metrics = metrics
        self.faithfulness_steps = int(faithfulness_steps)
        self.perturbation = perturbation
        self.sanity_layers = sanity_layers
        self.sanity_threshold = float(sanity_threshold)

        self.probe_set: ProbeSet | None = None
        self.layer_name: str | None = None
        self.history: list[dict[str, Any]] = []  # one plain record per explained epoch
        self._reference: dict[str, Tensor] = {}  # pooled heatmaps of the previous explained epoch
        self._reference_pred: Tensor | None = None
        self._last_explained_epoch: int | None = None
        self._loaded_fingerprint: str | None = None
        self._writer: TensorBoardWriter | FileWriter | None = None
        self._warned: set[str] = set()
        self._train_batch_size: int | None = None
        self._latest_results: dict[str, Tensor] | None = None  # full results of the last explained epoch
        self._latest_step = -1
        self._latest_epoch = -1
        self._image_executor: ThreadPoolExecutor | None = None
        self._image_job: Future | None = None

    @property
    def latest(self) -> dict[str, Any] | None:
        """The last explained epoch, on every rank: ``{"epoch", "step", "maps": {method: (N, 1, H, W)}, "pred",
        "prob"}`` (heatmaps on the CPU, probe order), or ``None`` before the first one."""
        results = self._latest_results
        if results is None:
            return None
        return {"epoch": self._latest_epoch, "step": self._latest_step, "pred": results["pred"],
                "prob": results["prob"], "maps": {m: results[f"map/{m}"] for m in self.methods}}

    # ------------------------------------------------------------------ identity & state
    @property
    def state_key(self) -> str:
        return self._generate_state_key(methods=self.methods, num_probes=self.num_probes, layer=self.layer,
                                        every_n_epochs=self.every_n_epochs, target=self.target)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, lists and numbers only, so checkpoints load with ``torch.load(weights_only=True)``."""
        return {
            "version": _STATE_VERSION,
            "probe_ids": [] if self.probe_set is None else self.probe_set.ids.tolist(),
            "probe_fingerprint": "" if self.probe_set is None else self.probe_set.fingerprint,
            "reference": {m: t.cpu() for m, t in self._reference.items()},
            "reference_pred": None if self._reference_pred is None else self._reference_pred.cpu(),
            "last_explained_epoch": -1 if self._last_explained_epoch is None else self._last_explained_epoch,
            "history": self.history,
            "drift": self._drift.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded_fingerprint = state_dict["probe_fingerprint"] or None
        self._reference = {m: t.clone() for m, t in state_dict["reference"].items()}
        pred = state_dict["reference_pred"]
        self._reference_pred = None if pred is None else pred.clone()
        last = int(state_dict["last_explained_epoch"])
        self._last_explained_epoch = None if last < 0 else last
        self.history = list(state_dict["history"])
        self._drift.load_state_dict(state_dict["drift"])
        self._check_restored_probes()

    def _check_restored_probes(self) -> None:
        # Lightning restores callback state after setup() (DDP) or later (FSDP): compare once both exist.
        if self._loaded_fingerprint is None or self.probe_set is None:
            return
        if self._loaded_fingerprint != self.probe_set.fingerprint:
            rank_zero_warn(
                "ExplanationMonitor: the probe set differs from the one in the checkpoint (different data, "
                "num_probes or probe_seed); stability history and drift state are reset for the new probes."
            )
            self.history, self._reference, self._reference_pred = [], {}, None
            self._drift = DriftDetector(**self._drift_args)
        self._loaded_fingerprint = None

    # ------------------------------------------------------------------ setup: everything that can fail, fails here
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        strategy = type(trainer.strategy).__name__
        if any(cls.__name__ in _SHARDED_STRATEGIES for cls in type(trainer.strategy).__mro__):  # subclasses too
            raise MisconfigurationException(
                f"ExplanationMonitor does not support strategy {strategy}: its parameters are sharded, so every "
                "forward pass is a collective. Use strategy='ddp' (or 'ddp_spawn'), or explain a saved checkpoint "
                "offline with lightning_xai.attribution.explain."
            )
        self._check_monitors(trainer)
        # epochs count from 0 again in a new fit (a resumed one restores this in load_state_dict, after setup)
        self._last_explained_epoch = None
        if self.probe_set is None:
            source, what = self.probes_source, "probes"
            if source is None:
                source, what = _default_probe_source(trainer)
            self.probe_set = self._select_probes(source, what)
            if self.class_names is None:
                self.class_names = _dataset_classes(source)
        self._validate_against_model(pl_module)
        self._check_restored_probes()

    def _select_probes(self, source: Any, what: str) -> ProbeSet:
        try:
            return select_probes(source, self.num_probes, input_key=self.input_key, label_key=self.label_key,
                                 mask_key=self.mask_key, seed=self.probe_seed)
        except (ValueError, TypeError) as err:
            raise MisconfigurationException(
                f"ExplanationMonitor could not take probes from {what}: {err} Pass `probes=` explicitly, or set "
                "`input_key=`/`label_key=` to select the image and label from each sample."
            ) from err

    def _validate_against_model(self, pl_module: pl.LightningModule) -> None:
        probes = self.probe_set
        assert probes is not None
        if probes.images.ndim != 4:
            raise MisconfigurationException(
                f"ExplanationMonitor: probe images must be (N, C, H, W), got shape {tuple(probes.images.shape)}."
            )
        example = probes.images[:1]
        try:
            with preserved_state(pl_module), torch.no_grad():
                device = _module_device(pl_module)
                output = pl_module(example.to(device))
                logits = self.output_transform(output) if self.output_transform is not None else output
        except Exception as err:
            raise MisconfigurationException(
                f"ExplanationMonitor: the model failed on a probe image of shape {tuple(example.shape)}: "
                f"{type(err).__name__}: {err}. Check that the probes match the model's input (input_key=, probes=)."
            ) from err
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            got = type(logits).__name__ if not isinstance(logits, Tensor) else f"a tensor of shape {tuple(logits.shape)}"
            raise MisconfigurationException(
                f"ExplanationMonitor: the model returned {got}; explanations need logits (N, num_classes). "
                "Pass output_transform=, e.g. `lambda out: out[0]` or `lambda out: out['logits']`."
            )
        num_classes = logits.shape[1]
        labels = probes.labels[probes.labels >= 0]
        if labels.numel() and int(labels.max()) >= num_classes:
            raise MisconfigurationException(
                f"ExplanationMonitor: probe label {int(labels.max())} is out of range for a model with "
                f"{num_classes} outputs. Check label_key= or the dataset's labels."
            )
        if _is_int(self.target) and self.target >= num_classes:
            raise MisconfigurationException(
                f"ExplanationMonitor: target={self.target} is out of range for a model with {num_classes} outputs; "
                f"use a class index in [0, {num_classes - 1}], 'label' or 'pred'."
            )
        if self.mean is not None and len(self.mean) not in (1, probes.images.shape[1]):
            raise MisconfigurationException(
                f"ExplanationMonitor: mean/std have {len(self.mean)} values but probes have "
                f"{probes.images.shape[1]} channels."
            )
        if "grad_cam" in self.methods:
            try:
                if self.layer is None:
                    self.layer_name = find_gradcam_layer(pl_module, example.to(_module_device(pl_module)),
                                                         output_transform=self.output_transform)
                else:
                    self.layer_name, _ = resolve_layer(pl_module, self.layer)
            except (ValueError, RuntimeError) as err:
                raise MisconfigurationException(f"ExplanationMonitor (layer={self.layer!r}): {err}") from err

    def _check_monitors(self, trainer: pl.Trainer) -> None:
        keys = {f"xai/{m}/{k}" for m in self.methods
                for k in ("stability", "topk_overlap", "drift", "pointing_game", "relevance_mass")}
        keys |= {f"xai/{m}/{k}" for m in self.methods for k in ("deletion_auc", "insertion_auc", "sanity_similarity")}
        keys |= {f"xai/integrated_gradients/completeness_error{k}" for k in ("", "_p90", "_max")}
        keys |= {f"xai/agreement/{a}_vs_{b}" for i, a in enumerate(self.methods) for b in self.methods[i + 1:]}
        for cb in trainer.callbacks:
            monitor = getattr(cb, "monitor", None)
            if isinstance(monitor, str) and monitor.startswith("xai/") and monitor not in keys:
                raise MisconfigurationException(
                    f"{type(cb).__name__}(monitor={monitor!r}) watches a key ExplanationMonitor does not log. "
                    f"Available: {sorted(keys)}."
                )
            if (isinstance(monitor, str) and monitor in keys and self.every_n_epochs > 1
                    and isinstance(cb, pl.callbacks.EarlyStopping) and cb.strict):
                raise MisconfigurationException(
                    f"EarlyStopping(monitor={monitor!r}) checks every epoch but ExplanationMonitor explains every "
                    f"{self.every_n_epochs} epochs. Use EarlyStopping(..., strict=False) or every_n_epochs=1."
                )

    # ------------------------------------------------------------------ when to explain
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        self._train_batch_size = getattr(loader, "batch_size", None) if loader is not None else None
        # The reference frame: what the model looks at before this fit trains it (skipped on resume).
        if not self._reference:
            self._run(trainer, pl_module, reference=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the last overlays are in the event file before the loggers finalise; a failure is agreed on like any other
        self._agreed(trainer, self._finish_images)
        if "sanity" in self.metrics:  # the trained model: now the check is meaningful, so warn
            latest = self._latest_results if self._latest_step == trainer.global_step else None
            self.check_sanity(trainer, pl_module, warn=True, reference=latest)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._shutdown_images()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._shutdown_images()
        self._writer = None  # a later fit may bring another logger

    def _shutdown_images(self) -> None:
        try:
            self._finish_images()
        except Exception as err:  # the run is ending anyway: report, don't mask what ended it
            rank_zero_warn(f"ExplanationMonitor: writing the last overlays failed: {type(err).__name__}: {err}")
        finally:
            if self._image_executor is not None:
                self._image_executor.shutdown(wait=True)
                self._image_executor = None

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
        if (epoch + 1) % self.every_n_epochs != 0 or self._last_explained_epoch == epoch:
            return
        self._last_explained_epoch = epoch
        self._run(trainer, pl_module, reference=False)

    # ------------------------------------------------------------------ one explanation round, on every rank
    def _explain_all(self, trainer: pl.Trainer, model: torch.nn.Module, *, faithfulness: bool = False,
                     targets: Tensor | None = None) -> dict[str, Tensor] | None:
        """Every rank explains its shard; all agree on success before gathering. ``None``: skipped (warned)."""
        assert self.probe_set is not None, "setup() selects the probes"

        def explain_shard() -> dict[str, Tensor]:
            with rank_zero_buffers(model):  # every shard explained with rank 0's BatchNorm statistics
                return self._explain_shard(trainer, model, faithfulness=faithfulness, targets=targets)

        ok, local = self._agreed(trainer, explain_shard)
        if not ok:
            return None
        n = len(self.probe_set)
        results = {k: gather_shards(v, n) for k, v in local.items()}
        finite = all(bool(torch.isfinite(v).all()) for k, v in results.items() if k.startswith("map/"))
        if not finite:
            self._warn_once("nonfinite", "ExplanationMonitor: the model produced non-finite attributions (NaN/inf) at "
                            f"epoch {trainer.current_epoch}; those probes are shown as flat maps and left out of the "
                            "stability metrics. No NaN is logged.")
        return results

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, reference: bool) -> None:
        results = self._explain_all(trainer, pl_module, faithfulness=not reference and "faithfulness" in self.metrics)
        if results is None:
            return
        if reference:
            self._set_reference(results)
            if "sanity" in self.metrics:
                self.check_sanity(trainer, pl_module, warn=False, reference=results)
            return
        ok, measured = self._agreed(trainer, lambda: self._measure(trainer, results))
        if not ok:
            return
        # Identical decisions and monitored values on every rank, decided by rank 0 (no float drift between ranks).
        scalars, report, record = trainer.strategy.broadcast(measured, src=0)
        self.history.append(record)
        self._set_reference(results)
        self._latest_results, self._latest_step, self._latest_epoch = results, trainer.global_step, trainer.current_epoch
        for key, value in scalars.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        # rank 0 writes; a failure there is still agreed on, so no rank goes on alone to the next collective
        self._agreed(trainer, lambda: self._write(trainer, results, scalars, report) if trainer.is_global_zero else None)
        if report.any:
            rank_zero_warn(f"ExplanationMonitor: explanation drift at epoch {trainer.current_epoch} "
                           f"(step {trainer.global_step}).\n{report.summary()}")
            if self.on_drift is not None:
                self.on_drift(report)

    def check_sanity(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, warn: bool = True,
                     reference: dict[str, Tensor] | None = None) -> dict[str, float] | None:
        """Model-randomisation sanity check (Adebayo et al. 2018), on every rank; call it on demand too.

        Explains a copy of the model whose weights are re-initialised (``sanity_layers`` layers from the top, all
        by default) and compares each probe's map with the real model's (Spearman). A method whose maps barely change
        does not explain the model: with ``warn`` a warning names it when the mean similarity exceeds
        ``sanity_threshold``. The real model is never modified. Logs ``xai/{method}/sanity_similarity``.

        Cost: one deep copy of the model and one explanation round on it (plus one on the real model without
        ``reference``).
        """
        if reference is None:
            reference = self._explain_all(trainer, pl_module)
            if reference is None:
                return None
        randomized = randomized_copy(pl_module, num_layers=self.sanity_layers, seed=self.probe_seed)
        random_maps = self._explain_all(trainer, randomized, targets=reference["target"])
        del randomized
        if random_maps is None:
            return None
        scalars = {}
        for m in self.methods:
            sim = spearman_similarity(reference[f"map/{m}"], random_maps[f"map/{m}"], size=self.similarity_size)
            if bool(torch.isfinite(sim).any()):
                scalars[f"xai/{m}/sanity_similarity"] = float(sim.nanmean())
        scalars = trainer.strategy.broadcast(scalars, src=0)
        for key, value in scalars.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        if trainer.is_global_zero:
            writer = self._get_writer(trainer)
            writer.add_scalars(scalars, trainer.global_step)
            writer.flush()
        failing = {k.split("/")[1]: v for k, v in scalars.items() if v > self.sanity_threshold}
        if warn and failing:
            rank_zero_warn(
                "ExplanationMonitor sanity check: the maps of "
                + ", ".join(f"{m} (similarity {v:.2f})" for m, v in failing.items())
                + " barely change when the model's weights are randomised, so they say little about what this model "
                "learnt (Adebayo et al. 2018). Prefer the other methods' maps."
            )
        return scalars

    def _explain_shard(self, trainer: pl.Trainer, model: torch.nn.Module, *, faithfulness: bool = False,
                       targets: Tensor | None = None) -> dict[str, Tensor]:
        probes = self.probe_set
        assert probes is not None
        start, stop = shard_bounds(len(probes), trainer.world_size, trainer.global_rank)
        shard = probes.subset(start, stop)
        device = _module_device(model)
        images = shard.images.to(device)
        out: dict[str, Tensor] = {"pred": torch.zeros(0, dtype=torch.long), "prob": torch.zeros(0),
                                  "target": torch.zeros(0, dtype=torch.long)}
        if "integrated_gradients" in self.methods:
            out["ig_error"] = torch.zeros(0)
        h, w = probes.images.shape[-2:]
        for m in self.methods:
            out[f"map/{m}"] = torch.zeros(0, 1, h, w)
            if faithfulness:
                out[f"deletion/{m}"] = out[f"insertion/{m}"] = torch.zeros(0)
        if len(shard) == 0:  # more ranks than probes: still take part in every collective
            return out
        with preserved_state(model):  # eval mode, grads on, RNG and flags restored on exit
            if targets is None:
                targets = self._targets(model, images, shard.labels.to(device))
            else:
                targets = targets[start:stop].to(device)
            options: dict[str, Any] = {"n_steps": self.n_steps, "output_transform": self.output_transform,
                                       "internal_batch_size": self.internal_batch_size or self._train_batch_size}
            if "grad_cam" in self.methods:
                options["layer"] = self.layer_name
            if self.baseline is not None:
                options["baseline"] = torch.full_like(images, float(self.baseline))
            if self.ig_tolerance is not None:
                options["tolerance"] = self.ig_tolerance
                options["max_steps"] = self.ig_max_steps
            explanation = explain_detailed(model, images, targets, self.methods, **options)
            maps = {m: to_heatmap(explanation.maps[m]).float() for m in self.methods}
            if faithfulness:
                for m in self.methods:
                    kwargs = {"steps": self.faithfulness_steps, "perturbation": self.perturbation,
                              "output_transform": self.output_transform}
                    out[f"deletion/{m}"] = deletion_auc(model, images, targets, maps[m], **kwargs).cpu()
                    out[f"insertion/{m}"] = insertion_auc(model, images, targets, maps[m], **kwargs).cpu()
        probs = explanation.logits.float().softmax(dim=1)
        pred = probs.argmax(dim=1)
        out["pred"] = pred.cpu()
        out["prob"] = probs.gather(1, pred[:, None])[:, 0].cpu()
        out["target"] = targets.cpu()
        if "integrated_gradients" in self.methods:
            out["ig_error"] = explanation.ig_relative_error.float().cpu()
        for m in self.methods:
            out[f"map/{m}"] = maps[m].cpu()
        return out

    def _targets(self, model: torch.nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        if _is_int(self.target):
            return torch.full((images.shape[0],), int(self.target), dtype=torch.long, device=images.device)
        if self.target == "label" and bool((labels >= 0).all()):
            return labels.clone()
        with torch.no_grad():
            output = model(images)
            logits = self.output_transform(output) if self.output_transform is not None else output
        pred = logits.argmax(dim=1)
        return pred if self.target == "pred" else torch.where(labels >= 0, labels, pred)

    def _agreed(self, trainer: pl.Trainer, fn: Callable[[], Any]) -> tuple[bool, Any]:
        """Run ``fn`` on this rank; every rank learns whether it failed on any rank, then all warn or all raise."""
        error: BaseException | None = None
        value = None
        try:
            value = fn()
        except Exception as err:
            error = err
        if trainer.strategy.reduce_boolean_decision(error is None, all=True):
            return True, value
        self._handle_failure(trainer, error)
        return False, None

    def _handle_failure(self, trainer: pl.Trainer, error: BaseException | None) -> None:
        where = f"rank {trainer.global_rank}: {type(error).__name__}: {error}" if error else "another rank"
        message = f"ExplanationMonitor failed at epoch {trainer.current_epoch} on {where}"
        if self.on_error == "raise":
            if error is not None:
                raise RuntimeError(message) from error
            raise RuntimeError(message)
        rank_zero_warn(f"{message}. The epoch's explanations are skipped; training continues "
                       "(set on_error='raise' to stop instead).")

    # ------------------------------------------------------------------ metrics, drift, history
    def _set_reference(self, results: dict[str, Tensor]) -> None:
        self._reference = {m: _pool(results[f"map/{m}"], self.similarity_size) for m in self.methods}
        self._reference_pred = results["pred"].clone()

    def _measure(self, trainer: pl.Trainer, results: dict[str, Tensor]) -> tuple[dict[str, float], DriftReport,
                                                                                  dict[str, Any]]:
        similarity: dict[str, Tensor] = {}
        record: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step,
                                  "stability": {}, "topk_overlap": {}, "flags": {}}
        scalars: dict[str, float] = {}
        for m in self.methods:
            current = _pool(results[f"map/{m}"], self.similarity_size)
            previous = self._reference.get(m)
            usable = _finite_rows(current)
            if previous is not None and previous.shape == current.shape:
                usable &= _finite_rows(previous)
                sim = spearman_similarity(previous, current, size=self.similarity_size)
                top = topk_overlap(previous, current, k=self.topk, size=self.similarity_size)
                sim = torch.where(usable, sim, torch.full_like(sim, float("nan")))
                top = torch.where(usable, top, torch.full_like(top, float("nan")))
            else:
                sim = top = torch.full((current.shape[0],), float("nan"))
            similarity[m] = sim
            record["stability"][m] = sim.tolist()
            record["topk_overlap"][m] = top.tolist()
            if bool(usable.any()) and bool(torch.isfinite(sim).any()):
                scalars[f"xai/{m}/stability"] = float(sim.nanmean())
                scalars[f"xai/{m}/topk_overlap"] = float(top.nanmean())
        changed = None
        if self._reference_pred is not None and self._reference_pred.shape == results["pred"].shape:
            changed = results["pred"] != self._reference_pred
        report = self._drift.update(trainer.current_epoch, similarity, prediction_changed=changed)
        for m in self.methods:
            flags = report.flags[m]
            record["flags"][m] = flags.tolist()
            scalars[f"xai/{m}/drift"] = float(flags.sum())
        if "integrated_gradients" in self.methods:
            errors = results["ig_error"]
            errors = errors[torch.isfinite(errors)]
            if errors.numel():
                summary = summarize(errors)
                scalars["xai/integrated_gradients/completeness_error"] = float(summary["median"])
                scalars["xai/integrated_gradients/completeness_error_p90"] = float(summary["p90"])
                scalars["xai/integrated_gradients/completeness_error_max"] = float(summary["max"])
                record["completeness_error"] = errors.tolist()
        if "agreement" in self.metrics and len(self.methods) > 1:
            maps = {m: results[f"map/{m}"] for m in self.methods}
            for pair, values in pairwise_agreement(maps, size=self.similarity_size).items():
                if bool(torch.isfinite(values).any()):
                    scalars[f"xai/agreement/{pair}"] = float(values.nanmean())
        for curve in ("deletion", "insertion"):
            for m in self.methods:
                values = results.get(f"{curve}/{m}")
                if values is not None and bool(torch.isfinite(values).any()):
                    scalars[f"xai/{m}/{curve}_auc"] = float(values[torch.isfinite(values)].mean())
        masks = self.probe_set.masks
        if masks is not None and "localisation" in self.metrics:  # localisation against ground-truth masks (embedded dataset, user masks)
            for m in self.methods:
                maps = results[f"map/{m}"]
                ok = _finite_rows(maps)
                if bool(ok.any()):
                    scalars[f"xai/{m}/pointing_game"] = float(pointing_game(maps[ok], masks[ok]).float().mean())
                    scalars[f"xai/{m}/relevance_mass"] = float(relevance_mass(maps[ok], masks[ok]).mean())
        record["pred"] = results["pred"].tolist()
        return scalars, report, record

    # ------------------------------------------------------------------ rank 0: render and write
    def _write(self, trainer: pl.Trainer, results: dict[str, Tensor], scalars: dict[str, float],
               report: DriftReport) -> None:
        self._finish_images()  # a failure of the previous epoch's overlays surfaces here, inside the rank agreement
        writer = self._get_writer(trainer)
        step = trainer.global_step
        if self.log_images:
            # Rendering and PNG encoding overlap with training on a background thread (rank 0 only, no collectives);
            # the inputs are this epoch's own tensors, never modified afterwards.
            maps = {m: results[f"map/{m}"] for m in self.methods}
            if self._image_executor is None:
                self._image_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lightning_xai")
            self._image_job = self._image_executor.submit(self._write_overlays, writer, maps,
                                                          self._captions(results), step)
        writer.add_scalars(scalars, step)
        if "integrated_gradients" in self.methods:  # the whole distribution, not only its median
            writer.add_histogram("xai/integrated_gradients/completeness_error", results["ig_error"], step)
        for logger in trainer.loggers:  # other loggers (CSV, W&B, ...) get the scalars through their own API
            if not isinstance(logger, pl.loggers.TensorBoardLogger):
                logger.log_metrics(scalars, step)
        writer.add_text("xai/drift", self._drift_text(trainer, scalars, report), step)
        writer.flush()

    def _write_overlays(self, writer: TensorBoardWriter | FileWriter, maps: dict[str, Tensor],
                        captions: list[list[str]], step: int) -> None:
        for m, heatmaps in maps.items():
            grid = make_overlay_grid(self.probe_set.images, heatmaps, captions, alpha=self.alpha,
                                     colormap=self.colormap, mean=self.mean, std=self.std, caption_lines=2)
            writer.add_image(f"xai/{m}/overlay", grid, step)
        writer.flush()

    def _finish_images(self) -> None:
        """Wait for the pending overlay job; re-raises its exception."""
        job, self._image_job = self._image_job, None
        if job is not None:
            job.result()

    def _captions(self, results: dict[str, Tensor]) -> list[list[str]]:
        probes = self.probe_set
        names = self.class_names

        def name(index: int) -> str:
            if index < 0:
                return "?"
            return names[index] if names is not None and index < len(names) else str(index)

        # two short lines fit a 96-128 px tile: the true label, then the prediction and its probability
        return [[f"y={name(int(y))}", f"p={name(int(p))} {float(q):.2f}"]
                for y, p, q in zip(probes.labels, results["pred"], results["prob"])]

    def _drift_text(self, trainer: pl.Trainer, scalars: dict[str, float], report: DriftReport) -> str:
        lines = [f"**epoch {trainer.current_epoch}, step {trainer.global_step}**", "",
                 "| method | stability | top-k overlap | probes flagged |", "|---|---|---|---|"]
        for m in self.methods:
            stab = scalars.get(f"xai/{m}/stability")
            top = scalars.get(f"xai/{m}/topk_overlap")
            lines.append(f"| {m} | {_fmt(stab)} | {_fmt(top)} | {int(scalars[f'xai/{m}/drift'])} |")
        lines.append("")
        lines.append(report.summary() if report.any else "No drift flagged.")
        return "\n".join(lines)

    def _get_writer(self, trainer: pl.Trainer) -> TensorBoardWriter | FileWriter:
        if self._writer is None:
            for logger in trainer.loggers:
                if isinstance(logger, pl.loggers.TensorBoardLogger):
                    self._writer = TensorBoardWriter(logger.experiment)
                    break
            else:
                log_dir = _log_dir_no_collective(trainer)
                rank_zero_warn(
                    "ExplanationMonitor: no TensorBoardLogger found; overlays, scalars and drift text are written "
                    f"as PNG/CSV/Markdown files under {log_dir} (scalars also go to your loggers)."
                )
                self._writer = FileWriter(log_dir)
        return self._writer

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)


# ---------------------------------------------------------------------- helpers
def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"ExplanationMonitor: `{name}={value!r}` is not valid; expected {allowed}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _pool(maps: Tensor, size: int) -> Tensor:
    """Heatmaps (N, 1, H, W) -> pooled (N, 1, size, size): what the stability metrics and the checkpoint keep."""
    return downsample(maps, size=size).reshape(maps.shape[0], 1, size, size)


def _finite_rows(maps: Tensor) -> Tensor:
    return torch.isfinite(maps.flatten(1)).all(dim=1)


def _log_dir_no_collective(trainer: pl.Trainer) -> str:
    """``trainer.log_dir`` without its ``strategy.broadcast``: the writer is made on rank 0 only, where a collective
    would hang or abort DDP (PITFALLS 10). On rank 0 this is the value the broadcast would send."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        if isinstance(logger, (pl.loggers.TensorBoardLogger, pl.loggers.CSVLogger)):
            return logger.log_dir or trainer.default_root_dir
        return logger.save_dir or trainer.default_root_dir
    return trainer.default_root_dir


def _module_device(module: torch.nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _default_probe_source(trainer: pl.Trainer) -> tuple[Any, str]:
    """The validation DataLoader's dataset (training data if there is no validation), without iterating a loader."""
    # Lightning keeps where each loader comes from (module hook, datamodule hook or a loader passed to fit) on the
    # loops; calling the source builds the loader object without iterating it (no RNG use, no workers started).
    for source, what in ((trainer.fit_loop.epoch_loop.val_loop._data_source, "the validation data"),
                         (trainer.fit_loop._data_source, "the training data")):
        if not source.is_defined():
            continue
        loaders = source.dataloader()
        if isinstance(loaders, dict):
            loaders = next(iter(loaders.values()), None)
        elif isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        if loaders is not None:
            return loaders, what
    raise MisconfigurationException(
        "ExplanationMonitor found no validation or training dataloader to take probes from. Pass `probes=` "
        "(a tensor of images, (images, labels), a Dataset or a DataLoader)."
    )


def _dataset_classes(source: Any) -> list[str] | None:
    """Class names from a dataset (or a loader's dataset) that has a ``classes`` list, as ImageFolder does."""
    for obj in (source, getattr(source, "dataset", None)):
        classes = getattr(obj, "classes", None)
        if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
            return list(classes)
    return None
