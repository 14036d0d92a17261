"""One explanation round: shard -> explain -> agree -> gather, and the agreement every rank-local step goes through.

:class:`ProbeExplainer` (pure torch) explains a batch of probes with the configured methods and the measures that
need the model. :class:`DistributedRound` runs it on every rank's shard and reassembles the results; it only needs an
object with ``world_size``, ``global_rank``, ``current_epoch`` and a ``strategy`` offering
``reduce_boolean_decision`` and ``broadcast`` (a Lightning ``Trainer``, or a stand-in in tests).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_xai._validation import is_int
from lightning_xai.attribution import explain_detailed, preserved_state, to_heatmap
from lightning_xai.callbacks._config import MonitorConfig, explain_options
from lightning_xai.distributed import gather_shards, rank_zero_buffers, shard_bounds
from lightning_xai.metrics.registry import Measure
from lightning_xai.probes import ProbeSet


def module_device(module: torch.nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


@dataclass(frozen=True)
class PassTiming:
    """One ``explain_detailed`` call of a round on this rank: its methods, wall seconds and rows (forward +
    input-gradient backward evaluations of one sample: the probes, or Integrated Gradients' path points)."""

    methods: tuple[str, ...]
    seconds: float
    rows: int


class ProbeExplainer:
    """Explains probes with the configured methods; results are ``(n, ...)`` CPU tensors keyed by name.

    Keys: ``map/{method}`` ``(n, 1, H, W)`` heatmaps of the methods that ran, ``pred``, ``prob`` (softmax probability
    of ``pred``; for multi-label probes the sigmoid score of ``target``), ``target``, ``ig_error`` (when Integrated
    Gradients ran) and the outputs of the given measures' ``shard`` functions.

    ``timings`` (after :meth:`explain`): one :class:`PassTiming` per ``explain_detailed`` call, for the budget.
    """

    def __init__(self, config: MonitorConfig, layer_name: str | None = None) -> None:
        self.config = config
        self.layer_name = layer_name
        self.layer_reshape: Any = None  # the Grad-CAM layer's reshape to (N, C, h, w), found with it at setup
        self.errors: dict[str, str] = {}  # methods that failed in the last call, with the cause
        self.train_batch_size: int | None = None
        self.timings: list[PassTiming] = []
        # a segmentation model's region rule (callbacks/_segmentation.py), set at setup; None for a classifier
        self.segmentation: Any = None

    def targets(self, model: torch.nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        """The class explained for each probe: the fixed index, the label (prediction where unknown) or the pred."""
        target = self.config.target
        if is_int(target):
            return torch.full((images.shape[0],), int(target), dtype=torch.long, device=images.device)
        if target == "label" and bool((labels >= 0).all()):
            return labels.clone()
        with torch.no_grad():
            output = model(images)
            transform = self.config.output_transform
            logits = transform(output) if transform is not None else output
        pred = logits.argmax(dim=1)
        return pred if target == "pred" else torch.where(labels >= 0, labels, pred)

    def empty(self, probes: ProbeSet, measures: Sequence[Measure],
              methods: Sequence[str] | None = None) -> dict[str, Tensor]:
        """The results of zero probes (a rank with an empty shard still takes part in every gather)."""
        methods = self.config.methods if methods is None else tuple(methods)
        h, w = probes.images.shape[-2:]
        out = {"pred": torch.zeros(0, dtype=torch.long), "prob": torch.zeros(0),
               "target": torch.zeros(0, dtype=torch.long)}
        if "integrated_gradients" in methods:
            out["ig_error"] = torch.zeros(0)
        for m in methods:
            out[f"map/{m}"] = torch.zeros(0, 1, h, w)
        for measure in measures:
            for key in measure.shard_keys(methods):
                out[key] = torch.zeros(0)
        if self.segmentation is not None:
            out["region"] = torch.zeros(0, 1, h, w)
        return out

    def explain(self, model: torch.nn.Module, probes: ProbeSet, *, targets: Tensor | None = None,
                measures: Sequence[Measure] = (), adaptive: bool = True,
                groups: Sequence[Sequence[str]] | None = None) -> dict[str, Tensor]:
        """Explain ``probes`` (a shard) on ``model``; ``targets`` overrides the target rule (the sanity round);
        ``adaptive=False``: no adaptive refinement of Integrated Gradients (see :func:`explain_options`).

        ``groups``: the methods to run, as groups of one ``explain_detailed`` call each (methods in one call share
        its passes; separate calls are timed separately, for the budget). ``None``: every configured method in one
        call.
        """
        config = self.config
        groups = [tuple(config.methods)] if groups is None else [tuple(g) for g in groups if g]
        methods = tuple(m for g in groups for m in g)
        out = self.empty(probes, measures, methods)
        self.timings = []
        if len(probes) == 0:
            return out
        device = module_device(model)
        images = probes.images.to(device)
        with preserved_state(model):  # eval mode, grads on; RNG, flags and every buffer restored on exit
            segmented = None  # a segmentation model: each probe's class region becomes its own target column
            if self.segmentation is not None:
                segmented = self.segmentation.prepare(model, images, probes, targets)
                targets = segmented.targets
            elif targets is None:
                targets = self.targets(model, images, probes.labels.to(device))
            else:
                targets = targets.to(device)
            transform = config.output_transform if segmented is None else segmented.transform
            found: dict[str, Tensor] = {}
            errors: dict[str, BaseException] = {}
            logits: Tensor | None = None
            ig_error: Tensor | None = None
            # (a method's options reach only that method, so one set of keywords serves every group)
            options = explain_options(config, images, self.layer_name, self.train_batch_size,
                                      layer_reshape=self.layer_reshape, adaptive=adaptive)
            options["output_transform"] = transform
            for group in groups:
                began = time.perf_counter()
                # A method that fails is reported and its maps are NaN (left out of every metric, never logged as a
                # number); the other methods' maps still count.
                explanation = explain_detailed(model, images, targets, group, errors="collect", **options)
                rows = int(explanation.ig_evals.sum()) if explanation.ig_evals is not None else images.shape[0]
                self.timings.append(PassTiming(group, time.perf_counter() - began, rows))
                found.update(explanation.maps)
                errors.update(explanation.errors)
                logits = explanation.logits if logits is None else logits
                if explanation.ig_relative_error is not None:
                    ig_error = explanation.ig_relative_error
            self.errors = {m: f"{type(e).__name__}: {e}" for m, e in errors.items()}
            if len(self.errors) == len(methods):  # nothing left to show: the round fails (agreed on)
                raise RuntimeError("every method failed: " + "; ".join(f"{m}: {e}" for m, e in self.errors.items()))
            h, w = images.shape[-2:]
            maps = {m: to_heatmap(found[m]).float() if m in found
                    else torch.full((images.shape[0], 1, h, w), float("nan"), device=device) for m in methods}
            for measure in measures:
                if measure.shard is not None:
                    out.update(measure.shard(model, images, targets, maps, config.metric_options.get(measure.name, {}),
                                             transform))
        assert logits is not None
        logits = logits.float()
        pred = logits.argmax(dim=1)
        if probes.multi_label:
            # Independent sigmoid scores (a BCE-trained head): the explained class's own score, not a softmax share.
            out["prob"] = logits.sigmoid().gather(1, targets[:, None].to(logits.device))[:, 0].cpu()
        else:
            out["prob"] = logits.softmax(dim=1).gather(1, pred[:, None])[:, 0].cpu()
        if segmented is not None:  # the class explained, its region, and what the model predicts in the region
            pred, targets = segmented.pred, segmented.classes
            out["prob"] = segmented.prob.float().cpu()
            out["region"] = segmented.regions_at(images.shape[-2:]).cpu()
        out["pred"] = pred.cpu()
        out["target"] = targets.cpu()
        if ig_error is not None:
            out["ig_error"] = ig_error.float().cpu()
        for m in methods:
            out[f"map/{m}"] = maps[m].cpu()
        return out


class DistributedRound:
    """Runs rank-local work so that all ranks agree on its outcome, and the shard/explain/gather round.

    Args:
        on_error: ``"warn"``: a failure on any rank makes every rank skip (one warning); ``"raise"``: every rank
            raises.
        warn: how to warn (rank-zero warning in the callback).
    """

    def __init__(self, on_error: str, warn: Callable[[str], None] | None = None) -> None:
        self.on_error = on_error
        self._warn = warn or (lambda message: warnings.warn(message, stacklevel=3))

    def agreed(self, trainer: Any, fn: Callable[[], Any], *, what: str = "") -> tuple[bool, Any]:
        """Run ``fn`` on this rank; every rank learns whether it failed on any rank, then all warn or all raise."""
        error: BaseException | None = None
        value = None
        try:
            value = fn()
        except Exception as err:
            error = err
        if trainer.strategy.reduce_boolean_decision(error is None, all=True):
            return True, value
        self.fail(trainer, error, what=what)
        return False, None

    def fail(self, trainer: Any, error: BaseException | None, *, what: str = "") -> None:
        where = f"rank {trainer.global_rank}: {type(error).__name__}: {error}" if error else "another rank"
        doing = f" ({what})" if what else ""
        epoch = getattr(error, "epoch", None)  # a failure reported later than it happened names its own epoch
        epoch = trainer.current_epoch if epoch is None else epoch
        message = f"ExplanationMonitor failed at epoch {epoch}{doing} on {where}"
        if self.on_error == "raise":
            if error is not None:
                raise RuntimeError(message) from error
            raise RuntimeError(message)
        self._warn(f"{message}. The epoch's explanations are skipped; training continues "
                   "(set on_error='raise' to stop instead).")

    def explain(self, trainer: Any, model: torch.nn.Module, probes: ProbeSet, explainer: ProbeExplainer, *,
                targets: Tensor | None = None, measures: Sequence[Measure] = (),
                adaptive: bool = True, groups: Sequence[Sequence[str]] | None = None) -> dict[str, Tensor] | None:
        """Every rank explains its shard (with rank 0's BatchNorm buffers); all agree; gather in probe order.

        Returns ``None`` when the round was skipped (already warned on every rank).
        """
        start, stop = shard_bounds(len(probes), trainer.world_size, trainer.global_rank)

        def explain_shard() -> dict[str, Tensor]:
            with rank_zero_buffers(model):
                shard_targets = None if targets is None else targets[start:stop]
                return explainer.explain(model, probes.subset(start, stop), targets=shard_targets, measures=measures,
                                         adaptive=adaptive, groups=groups)

        ok, local = self.agreed(trainer, explain_shard, what="explaining")
        if not ok:
            return None
        return {k: gather_shards(v, len(probes)) for k, v in local.items()}

    def broadcast(self, trainer: Any, obj: Any) -> Any:
        """Rank 0's value on every rank (identical decisions and monitored values, no float drift between ranks)."""
        return trainer.strategy.broadcast(obj, src=0)
