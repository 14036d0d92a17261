"""The detection pool: more samples for the drift detector than the display probes, explained with cheap methods.

Sixteen display probes are too few to see a change that touches a third of the data, and validation images cannot
show a cue that lives only in the training data. The pool adds validation samples (fixed, read once) and training
samples (the same indices, **re-read every round** under a fixed seed: a cue, a corruption or a relabelling that
appears in the training data is seen directly, while random augmentations repeat exactly). Only the methods that
cost one forward and backward per sample explain the pool (Grad-CAM, saliency, ...); the expensive ones stay on the
display probes.

Under a budget (``max_overhead="auto"`` or a number) an ``"auto"`` pool is as large as the budget pays for
(:func:`budget_pool_rows`): its size is chosen once per fit at setup, before any sample is read (the detector needs
the same samples in the same order at every update, so the size never changes within a fit). Its rows are spent from
the budget like the methods' (the monitor's clock covers reading and explaining them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from lightning_xai.attribution import get_method, is_cheap
from lightning_xai.callbacks._compat import MisconfigurationException
from lightning_xai.callbacks._config import MonitorConfig, class_map_rule
from lightning_xai.callbacks._probes import train_samples
from lightning_xai.probes import ProbeSet, _is_map_style, read_samples_at, select_probes

__all__ = ["DetectionPool", "budget_pool_rows", "cheap_methods", "resolve_pool_size"]

#: ``drift_options={"pool_size": "auto"}``: this share of the training set's samples (at most :data:`AUTO_MAX`), so the
#: pool's cost stays a small share of an epoch's training (one forward + backward per pool sample and cheap method).
AUTO_SHARE = 1 / 16
AUTO_MAX = 128
#: samples read to choose class-balanced pool members (a multiple of the wanted count, not the whole dataset)
_SCAN_FACTOR = 2
#: Under a budget, the share of it that the cheap round (display probes + pool) may take at every explained epoch;
#: the rest pays for the bookkeeping, the optional methods (Integrated Gradients...) and the views.
POOL_BUDGET_SHARE = 0.5
#: ... but an ``"auto"`` pool keeps at least this many samples (or all it chose, when fewer): the drift alarm's recall
#: falls steeply below it (``bench/drift.py pool``: the display probes alone catch 1 of 8 held-out changes in the
#: demo's regime and 5 of 27 in the evaluation part, against 3-4 of 8 and 11 of 27 with 64-128 samples). The
#: drift issue and the cost issue share this budget; detection wins below this floor.
AUTO_BUDGET_FLOOR = 64
#: A training image-step (forward, backward, optimizer step) in units of one sample through the cheap methods (one
#: forward + input-gradient backward): 1.2-1.6 measured (``bench/overhead.py --per-sample``: demo CNN, resnet18,
#: small ViT); 1 is the lower end, so the epoch's training time estimated from it errs low and the pool small.
TRAIN_ROWS_PER_SAMPLE = 1.0


def cheap_methods(methods: tuple[str, ...], method_options: dict[str, dict[str, Any]] | None = None,
                  image_size: tuple[int, int] = (224, 224)) -> tuple[str, ...]:
    """The configured methods that cost one forward and backward per sample with their options (the registry's
    :func:`~lightning_xai.attribution.is_cheap`): the detection pool's methods."""
    out = []
    for m in methods:
        try:
            declared = get_method(m).options  # the monitor's own options (internal_batch_size) are not the method's
            options = {k: v for k, v in (method_options or {}).get(m, {}).items() if k in declared}
            if is_cheap(m, options, image_size):
                out.append(m)
        except (KeyError, ValueError, TypeError):
            continue
    return tuple(out)


def budget_pool_rows(share: float | None, train_samples: int | None, display_rows: float,
                     every_n_epochs: int = 1) -> int | None:
    """Extra pool samples the budget pays for at every explained epoch, or ``None`` when it cannot say (no budget,
    the number of training samples per epoch unknown).

    The cheap round may take :data:`POOL_BUDGET_SHARE` of ``share`` of the training time between two explained
    epochs: ``every_n_epochs`` epochs of ``train_samples`` image-steps (all ranks together), each
    :data:`TRAIN_ROWS_PER_SAMPLE` rows; the display probes' pass takes ``display_rows`` of it (probes x passes of the
    round's pinned methods), each pool sample one more row. Both sides are in rows (one sample through the cheap
    methods, ``CostBudget.row_seconds``), so the rule needs no clock and every rank decides alike, at setup.

    Example::

        >>> budget_pool_rows(0.05, train_samples=2048, display_rows=16)   # 2.5% of 2048 image-steps, 16 probes
        35
        >>> budget_pool_rows(0.05, train_samples=256, display_rows=16)    # a short run: the probes only
        0
    """
    if share is None or not train_samples:
        return None
    rows = POOL_BUDGET_SHARE * share * every_n_epochs * train_samples * TRAIN_ROWS_PER_SAMPLE - display_rows
    return max(0, int(rows))


def resolve_pool_size(option: Any, train_len: int | None) -> int:
    """Extra samples in the pool: an int as given, or ``"auto"``: 1/16 of the training set, at most 128."""
    if option != "auto":
        return int(option)
    if not train_len:
        return AUTO_MAX // 2
    return int(min(AUTO_MAX, train_len * AUTO_SHARE)) // 2 * 2


def _training_dataset(trainer: Any) -> Any:
    """The training DataLoader's map-style dataset, or None (iterable data, no loader)."""
    try:
        source = trainer.fit_loop._data_source
        if not source.is_defined():
            return None
        loader = source.dataloader()
    except Exception:  # a stand-in trainer, a loader that cannot be built here: no training part
        return None
    if isinstance(loader, dict):
        loader = next(iter(loader.values()), None)
    elif isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    dataset = getattr(loader, "dataset", None)
    return dataset if dataset is not None and _is_map_style(dataset) else None


class DetectionPool:
    """The pool's samples and how to read them each round.

    After :meth:`setup`: ``extra_validation`` (a fixed :class:`ProbeSet`), ``train_ids`` and the training dataset,
    ``methods`` (the cheap methods), ``notes`` (what to tell the user once). :meth:`samples` returns this round's
    pool beyond the display probes and the origin of each row (0 validation, 1 training).
    """

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.extra_validation: ProbeSet | None = None
        self.train_ids: list[int] = []
        self._train_dataset: Any = None
        self.methods: tuple[str, ...] = ()
        self.notes: list[str] = []
        self.budget_note: str | None = None  # said once (info) when the budget made an "auto" pool smaller
        self.size = 0
        self.origin = torch.zeros(0, dtype=torch.long)
        self.chosen = 0  # the size setup chose, before the budget
        self.pending = False  # the size is still to be fitted to the budget (before the pool's first round)
        self.auto = False

    @property
    def enabled(self) -> bool:
        return bool(self.methods) and self.size > 0

    def setup(self, trainer: Any, display: ProbeSet, display_source: Any, methods: tuple[str, ...],
              share: float | None = None, display_rows: float = 0.0) -> None:
        """Choose the pool (deterministic, RNG-neutral, identical on every rank that sees the same data). With
        ``pool_size="auto"`` and a budget ``share``, at most what :func:`budget_pool_rows` allows after the display
        probes' ``display_rows``."""
        self.reset()
        options, probe = self.config.drift, self.config.probe_options
        method_options = {m: o for m, o in self.config.method_options.items() if m in methods}
        self.methods = cheap_methods(methods, method_options, tuple(display.images.shape[-2:]))
        self.auto = options.get("pool_size", "auto") == "auto"
        where = options.get("pool_from", "both")
        train_dataset = _training_dataset(trainer) if where in ("both", "training") else None
        train_len = len(train_dataset) if train_dataset is not None else None
        size = resolve_pool_size(options.get("pool_size", "auto"), train_len)
        self.chosen = size
        budget_rows = None
        if self.auto and share is not None:
            per_rank = train_samples(trainer)  # after limit_train_batches; every rank trains its share
            world = int(getattr(trainer, "world_size", 1) or 1)
            budget_rows = budget_pool_rows(share, per_rank * world if per_rank else train_len, display_rows,
                                           int(self.config.every_n_epochs))
        if budget_rows is not None and budget_rows < size:
            budget_rows = max(budget_rows, min(size, AUTO_BUDGET_FLOOR))
        if budget_rows is not None and budget_rows < size:
            size = budget_rows if where != "both" or budget_rows < 2 else budget_rows // 2 * 2
            self.budget_note = (
                f"the drift detection pool watches {size} samples besides the display probes instead of {self.chosen}"
                f": what max_overhead={share:g} of this run's training pays for (drift_options={{'pool_size': "
                f"{self.chosen}}} or max_overhead=None keeps them all)")
        if not self.methods or size == 0:
            return
        if where == "both" and train_dataset is None:
            self.notes.append("the training data is not a map-style dataset: the drift detection pool takes "
                              "validation samples only")
        n_train = 0 if train_dataset is None else (size // 2 if where == "both" else size)
        n_val = 0 if where == "training" else size - n_train
        keys = {"input_key": probe["input_key"], "label_key": probe["label_key"], "mask_key": probe["mask_key"],
                "class_maps": class_map_rule(self.config.segmentation)}
        seed = int(probe["seed"])
        try:
            if n_val > 0 and display_source is not None:
                wanted = n_val + len(display)
                chosen = select_probes(display_source, wanted, seed=seed, max_scan=_SCAN_FACTOR * wanted, **keys)
                keep = ~torch.isin(chosen.ids, display.ids)
                if chosen.images.shape[1:] == display.images.shape[1:] and bool(keep.any()):
                    idx = keep.nonzero().flatten()[:n_val]
                    self.extra_validation = ProbeSet(
                        images=chosen.images[idx], labels=chosen.labels[idx], ids=chosen.ids[idx],
                        masks=None if chosen.masks is None else chosen.masks[idx])
            if n_train > 0 and train_dataset is not None:
                chosen = select_probes(train_dataset, n_train, seed=seed, max_scan=_SCAN_FACTOR * n_train, **keys)
                if chosen.images.shape[1:] == display.images.shape[1:]:
                    self.train_ids = chosen.ids.tolist()
                    self._train_dataset = train_dataset
                else:
                    self.notes.append(f"training images {tuple(chosen.images.shape[1:])} differ in size from the "
                                      f"validation probes {tuple(display.images.shape[1:])}: the drift detection "
                                      "pool takes validation samples only")
        except (TypeError, ValueError) as err:
            raise MisconfigurationException(
                f"ExplanationMonitor could not build the drift detection pool: {err} Set drift_options={{'pool_size': 0}} "
                "to watch the display probes only, or probe_options={'input_key': ..., 'label_key': ...}.") from err
        n_val = 0 if self.extra_validation is None else len(self.extra_validation)
        self.size = n_val + len(self.train_ids)
        self.origin = torch.cat([torch.zeros(n_val, dtype=torch.long), torch.ones(len(self.train_ids), dtype=torch.long)])
        self.pending = self.size > 0

    def fit(self, rows: int | None) -> None:
        """Keep at most ``rows`` samples (``None``: all), in the validation and training parts' proportions; called
        once per fit before the pool's first round (a resumed fit: the size its checkpoint's detector tracks)."""
        self.pending = False
        if rows is None or rows >= self.size:
            return
        rows = max(0, int(rows))
        n_val = 0 if self.extra_validation is None else len(self.extra_validation)
        n_train = min(len(self.train_ids), round(rows * len(self.train_ids) / self.size))
        n_val = min(n_val, rows - n_train)
        if self.extra_validation is not None:
            v = self.extra_validation
            self.extra_validation = None if n_val == 0 else ProbeSet(
                images=v.images[:n_val], labels=v.labels[:n_val], ids=v.ids[:n_val],
                masks=None if v.masks is None else v.masks[:n_val])
        self.train_ids = self.train_ids[:n_train]
        self.size = n_val + n_train
        self.origin = torch.cat([torch.zeros(n_val, dtype=torch.long), torch.ones(n_train, dtype=torch.long)])

    def samples(self) -> tuple[ProbeSet | None, Tensor]:
        """This round's pool beyond the display probes (training samples read as they are now) and each row's
        origin (0 validation, 1 training)."""
        parts, origin = [], []
        if self.extra_validation is not None:
            parts.append(self.extra_validation)
            origin.append(torch.zeros(len(self.extra_validation), dtype=torch.long))
        if self.train_ids:
            probe = self.config.probe_options
            train = read_samples_at(self._train_dataset, self.train_ids, input_key=probe["input_key"],
                                    label_key=probe["label_key"], mask_key=probe["mask_key"], seed=int(probe["seed"]),
                                    class_maps=class_map_rule(self.config.segmentation))
            parts.append(train)
            origin.append(torch.ones(len(train), dtype=torch.long))
        if not parts:
            return None, torch.zeros(0, dtype=torch.long)
        if len(parts) == 1:
            return parts[0], origin[0]
        masks = None
        if all(p.masks is not None for p in parts):
            masks = torch.cat([p.masks for p in parts])  # type: ignore[misc]
        images = torch.cat([p.images.to(parts[0].images.dtype) for p in parts])
        return ProbeSet(images=images, labels=torch.cat([p.labels for p in parts]),
                        ids=torch.cat([p.ids for p in parts]), masks=masks), torch.cat(origin)

    def explainer_config(self) -> MonitorConfig:
        """The monitor's configuration reduced to the pool's methods, no measures."""
        return dataclasses.replace(self.config, methods=self.methods, metrics=(),
                                   method_options={m: o for m, o in self.config.method_options.items()
                                                   if m in self.methods})
