"""Probe handling and the checks made at ``setup()``: where the probes come from, which ones, and whether they fit
the model, the strategy and the other callbacks. Everything that can fail before training fails here."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_xai import keys as xai_keys
from lightning_xai._validation import is_int
from lightning_xai.attribution import (
    NotApplicable,
    explain_detailed,
    get_method,
    gradcam_layer,
    gradient_blockers,
    preserved_state,
)
from lightning_xai.attribution._batching import _cpu_available_bytes as cpu_available_bytes
from lightning_xai.callbacks._compat import EARLY_STOPPING, MisconfigurationException, muted_logging, rank_zero_warn
from lightning_xai.callbacks._config import MonitorConfig, class_map_rule, explain_options, uses_layer
from lightning_xai.callbacks._round import ProbeExplainer, module_device
from lightning_xai.metrics.degenerate import DEGENERATE_KINDS, degenerate_kinds
from lightning_xai.metrics.sanity import parameterized_layers
from lightning_xai.probes import ProbeSet, agree_on_probes, select_probes

if TYPE_CHECKING:
    import pytorch_lightning as pl

# Strategies where every forward is a collective (parameters sharded): a forward on one rank's probes alone hangs.
_SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


def check_strategy(strategy: Any) -> None:
    name = type(strategy).__name__
    if any(cls.__name__ in _SHARDED_STRATEGIES for cls in type(strategy).__mro__):  # subclasses too
        raise MisconfigurationException(
            f"ExplanationMonitor does not support strategy {name}: its parameters are sharded, so every "
            "forward pass is a collective. Use strategy='ddp' (or 'ddp_spawn'), or explain a saved checkpoint "
            "offline with lightning_xai.attribution.explain."
        )


def check_monitors(callbacks: Iterable[Any], keys: set[str], every_n_epochs: int, budget: bool = False) -> None:
    """Other callbacks that ``monitor`` an ``xai/`` key must watch one this monitor logs, as often as it logs it
    (``budget``: ``max_overhead`` may skip epochs)."""
    for cb in callbacks:
        monitor = getattr(cb, "monitor", None)
        if isinstance(monitor, str) and xai_keys.is_xai(monitor) and monitor not in keys:
            raise MisconfigurationException(
                f"{type(cb).__name__}(monitor={monitor!r}) watches a key ExplanationMonitor does not log. "
                f"Available: {sorted(keys)}."
            )
        if (isinstance(monitor, str) and monitor in keys and (every_n_epochs > 1 or budget)
                and isinstance(cb, EARLY_STOPPING) and cb.strict):
            how = f"every {every_n_epochs} epochs" if every_n_epochs > 1 else "on the epochs max_overhead allows"
            fix = "every_n_epochs=1" if every_n_epochs > 1 else "max_overhead=None"
            raise MisconfigurationException(
                f"EarlyStopping(monitor={monitor!r}) checks every epoch but ExplanationMonitor explains {how}. Use "
                f"EarlyStopping(..., strict=False) or {fix}."
            )


def default_probe_source(trainer: pl.Trainer) -> tuple[Any, str]:
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


def dataset_classes(source: Any) -> list[str] | None:
    """Class names from a dataset (or a loader's dataset) that has a ``classes`` list, as ImageFolder does."""
    for obj in (source, getattr(source, "dataset", None)):
        classes = getattr(obj, "classes", None)
        if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
            return list(classes)
    return None


class ProbeSetup:
    """Selects the probes for a fit and checks them against the model.

    After :meth:`select`: ``probe_set`` and ``class_names``; after :meth:`validate`: ``layer_name`` (Grad-CAM),
    ``layer_problem`` (why no Grad-CAM layer can work, or None) and ``notes`` (things to tell the user once);
    :meth:`dry_run` explains one probe with every method and returns the methods that cannot work, with the cause.
    """

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.probe_set: ProbeSet | None = None
        self.class_names: list[str] | None = config.display["class_names"]
        self.layer_name: str | None = None
        self.layer_reshape: Any = None
        self.layer_problem: str | None = None
        self.notes: list[str] = []
        self.source: Any = None
        self.estimate: RoundEstimate | None = None  # what the options imply for this model, found at setup

    def select(self, source: Any, what: str = "probes") -> ProbeSet:
        options = self.config.probe_options
        try:
            probes = select_probes(source, self.config.num_probes, input_key=options["input_key"],
                                   label_key=options["label_key"], mask_key=options["mask_key"],
                                   seed=options["seed"], class_maps=class_map_rule(self.config.segmentation))
        except (ValueError, TypeError) as err:
            raise MisconfigurationException(
                f"ExplanationMonitor could not take probes from {what}: {err} Pass `probes=` explicitly, or set "
                "probe_options={'input_key': ..., 'label_key': ...} to select the image and label from each sample."
            ) from err
        self.probe_set = probes
        self.source = source  # the views read their pool from the same place
        if self.class_names is None:
            self.class_names = dataset_classes(source)
        return probes

    def select_for(self, trainer: pl.Trainer) -> ProbeSet:
        """Select on every rank, then make every rank use rank 0's set (a collective under DDP).

        Ranks may see different data (a validation ``IterableDataset`` split by rank, per-rank files): explaining
        shards of different probe sets would draw one rank's images with another's maps, and sets of different
        sizes would break the gather. A rank whose own selection failed gets rank 0's set too.
        """

        def select() -> ProbeSet:
            source, what = self.config.probes, "probes"
            if source is None:
                source, what = default_probe_source(trainer)
            return self.select(source, what)

        if getattr(trainer, "world_size", 1) == 1:  # (a stand-in trainer in tests may not say)
            return select()
        local, error = None, None
        try:
            local = select()
        except MisconfigurationException as err:
            error = str(err)
        try:
            probes, differing = agree_on_probes(local, error)
        except ValueError as err:  # rank 0 failed: every rank raises the same error
            raise MisconfigurationException(f"ExplanationMonitor: {err}") from None
        if differing:
            rank_zero_warn(
                f"ExplanationMonitor: the probe set differs across ranks (rank(s) {differing} selected other probes "
                "than rank 0, e.g. from a validation IterableDataset split by rank); every rank now explains rank "
                f"0's {len(probes)} probes (fingerprint {probes.fingerprint[:12]}). Pass `probes=` to choose them."
            )
        self.probe_set = probes
        return probes

    def validate(self, model: torch.nn.Module, train_batch_size: Callable[[], int | None] | None = None, *,
                 world_size: int = 1, views: Any = None,
                 train_samples: Callable[[], int | None] | None = None) -> None:
        """One forward on one probe: output shape, label and target range, channels, Grad-CAM layer; then a forward
        at every batch size the rounds will pass (:func:`round_batch_sizes`) and what the sizes chosen in the options
        imply for this model and input (:meth:`check_budget`).

        ``train_batch_size`` gives the training batch size (IG's default chunk, and to tell a model that only runs at
        its training batch size from one that does not fit the probes); ``world_size`` the ranks sharing the probes;
        ``views`` the :class:`~lightning_xai.views.ViewRunner` (its pool's chunks are batch sizes too);
        ``train_samples`` the training samples per epoch (to say when a round costs many epochs of training).
        """
        probes, config = self.probe_set, self.config
        assert probes is not None, "select() first"
        if probes.images.ndim != 4:
            raise MisconfigurationException(
                f"ExplanationMonitor: probe images must be (N, C, H, W), got shape {tuple(probes.images.shape)}."
            )
        example = probes.images[:1]

        def forward(images: Tensor) -> Any:
            with preserved_state(model), muted_logging(model), torch.no_grad():
                output = model(images.to(module_device(model)))
                return config.output_transform(output) if config.output_transform is not None else output

        try:
            logits = forward(example)
        except Exception as err:
            batch = train_batch_size() if train_batch_size is not None else None
            if batch is not None and batch > 1 and _runs_on(forward, example.expand(batch, *example.shape[1:])):
                raise MisconfigurationException(
                    f"ExplanationMonitor: the model runs on a batch of {batch} images (the training batch size) but "
                    f"fails on 1 image ({type(err).__name__}: {err}): its forward depends on the batch size. The "
                    "monitor explains batches of 1 to `internal_batch_size` images (Integrated Gradients' path "
                    "points in chunks, every probe shard, the last partial chunk), so make forward accept any batch "
                    f"size, e.g. `x.flatten(1)` or `x.view(x.shape[0], -1)` instead of `x.view({batch}, -1)`."
                ) from err
            raise MisconfigurationException(
                f"ExplanationMonitor: the model failed on a probe image of shape {tuple(example.shape)}: "
                f"{type(err).__name__}: {err}. Check that the probes match the model's input (probes=, "
                "probe_options={'input_key': ...})."
            ) from err
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            got = type(logits).__name__ if not isinstance(logits, Tensor) else f"a tensor of shape {tuple(logits.shape)}"
            after = " after `output_transform`" if config.output_transform is not None else ""
            raise MisconfigurationException(
                f"ExplanationMonitor: the model returned {got}{after}; explanations need logits (N, num_classes). "
                f"{suggest_output_transform(logits, rows=1)}"
            )
        if not bool(torch.isfinite(probes.images).all()):
            bad = (~torch.isfinite(probes.images.flatten(1))).any(dim=1).nonzero().flatten()
            raise MisconfigurationException(
                f"ExplanationMonitor: probe images contain NaN/inf (probe ids {probes.ids[bad][:8].tolist()}); "
                "their maps would be meaningless. Clean those samples or pass finite `probes=`."
            )
        if bool((probes.labels < -1).any()):
            raise MisconfigurationException(
                f"ExplanationMonitor: probe label {int(probes.labels.min())} is not a class index. Check "
                "probe_options['label_key'] or the dataset's labels."
            )
        num_classes = logits.shape[1]
        if probes.label_sets is not None and probes.label_sets.shape[1] != num_classes:
            raise MisconfigurationException(
                f"ExplanationMonitor: the probes' multi-hot labels have {probes.label_sets.shape[1]} classes but the "
                f"model has {num_classes} outputs. Check probe_options['label_key'] or the dataset's labels."
            )
        labels = probes.labels[probes.labels >= 0]
        if labels.numel() and int(labels.max()) >= num_classes:
            raise MisconfigurationException(
                f"ExplanationMonitor: probe label {int(labels.max())} is out of range for a model with "
                f"{num_classes} outputs. Check probe_options['label_key'] or the dataset's labels."
            )
        if is_int(config.target) and config.target >= num_classes:
            raise MisconfigurationException(
                f"ExplanationMonitor: target={config.target} is out of range for a model with {num_classes} outputs; "
                f"use a class index in [0, {num_classes - 1}], 'label' or 'pred'."
            )
        mean = config.display["mean"]
        if mean is not None and len(mean) not in (1, probes.images.shape[1]):
            raise MisconfigurationException(
                f"ExplanationMonitor: display['mean']/display['std'] have {len(mean)} values but probes have "
                f"{probes.images.shape[1]} channels."
            )
        layers = config.metric_options["sanity"]["layers"]
        if "sanity" in config.metrics and layers is not None:
            available = len(parameterized_layers(model))
            if layers > available:
                raise MisconfigurationException(
                    f"ExplanationMonitor: `metric_options['sanity']['layers']={layers}` is larger than the model's "
                    f"{available} layers with parameters; use an int <= {available} or None (all)."
                )
        self.notes = []
        batch = train_batch_size() if train_batch_size is not None else None
        rows = self._rows(batch)
        # what cannot fit is refused before anything else is spent on it
        self.estimate = self.check_budget(model, world_size=world_size, rows=rows,
                                          train_samples=train_samples() if train_samples is not None else None)
        sizes = round_batch_sizes(config, len(probes), world_size, rows, num_classes=logits.shape[1],
                                  pool_size=getattr(views, "pool_size", 0) if views else 0)
        self._check_batch_sizes(forward, example, sizes, rows)
        self.layer_name = self.layer_reshape = self.layer_problem = None
        if uses_layer(config.methods):
            device = module_device(model)
            self._find_layer(model, example.to(device), probes.images[:4].to(device))
            self._check_method_layers(model, example.to(device), probes.images[:4].to(device))

    def _find_layer(self, model: torch.nn.Module, example: Tensor, examples: Tensor | None = None) -> None:
        config = self.config
        reshape = config.method_options.get("grad_cam", {}).get("reshape")
        try:
            found = gradcam_layer(model, example, config.layer, reshape=reshape,
                                  output_transform=config.output_transform)
            if config.layer is not None and found.warning is not None and examples is not None and len(examples) > 1:
                # the positions did not reach the output for one probe: for a few, is it the structure?
                found = gradcam_layer(model, examples, config.layer, reshape=reshape,
                                      output_transform=config.output_transform)
        except ValueError as err:  # an unknown or unusable `layer=`: the user's argument, fix it before training
            raise MisconfigurationException(f"ExplanationMonitor (layer={config.layer!r}): {err}") from err
        except RuntimeError as err:  # no layer can work (no spatial layer, all under no_grad): the dry run says so
            self.layer_problem = str(err)
            return
        if config.layer is not None and found.warning is not None:
            # An explicit layer whose positions never reach the head (a class-token ViT's last block: the head reads
            # only the class token) gives all-zero Grad-CAM at every epoch, whatever the weights: refuse it now.
            try:
                auto = f"layer={gradcam_layer(model, example, output_transform=config.output_transform).name!r} (the " \
                       "automatic choice) or layer=None"
            except (ValueError, RuntimeError):
                auto = "an earlier layer"
            raise MisconfigurationException(
                f"ExplanationMonitor (layer={config.layer!r}): {found.warning}, for every probe tried and whatever "
                f"the weights (the test follows the head's input features), so Grad-CAM would be all zero at every "
                f"epoch. Use {auto}.")
        self.layer_name, self.layer_reshape = found.name, found.reshape
        if found.warning is not None:
            self.notes.append(f"Grad-CAM layer {found.name!r}: {found.warning}.")

    def _check_method_layers(self, model: torch.nn.Module, example: Tensor, examples: Tensor) -> None:
        """A CAM method's own ``method_options[m]['layer']`` is checked like ``layer=``: an unknown or unusable name,
        or positions that never reach the head, fail here (not as a warning at every epoch)."""
        for method in self.config.methods:
            options = self.config.method_options.get(method) or {}
            layer = options.get("layer")
            if layer is None or not get_method(method).uses_layer:
                continue
            what = f"method_options[{method!r}]['layer']={layer!r}"
            try:
                found = gradcam_layer(model, example, layer, reshape=options.get("reshape"),
                                      output_transform=self.config.output_transform)
                if found.warning is not None and len(examples) > 1:
                    found = gradcam_layer(model, examples, layer, reshape=options.get("reshape"),
                                          output_transform=self.config.output_transform)
            except ValueError as err:
                raise MisconfigurationException(f"ExplanationMonitor ({what}): {err}") from err
            except RuntimeError:  # no gradient reaches it: the dry run names the cause
                continue
            if found.warning is not None:
                raise MisconfigurationException(
                    f"ExplanationMonitor ({what}): {found.warning}, for every probe tried and whatever the weights, "
                    f"so {method} would be all zero at every epoch. Use an earlier layer, or leave it out (the "
                    "monitor's `layer=`, automatic by default, applies).")

    def _rows(self, train_batch: int | None) -> int | None:
        """Rows per explanation chunk: IG's ``internal_batch_size``, else the training batch size (None: automatic)."""
        ig = self.config.method_options.get("integrated_gradients") or {}
        return ig.get("internal_batch_size") or train_batch

    def _check_batch_sizes(self, forward: Callable[[Tensor], Any], example: Tensor, sizes: dict[int, str],
                           rows: int | None) -> None:
        """A forward at every batch size the rounds pass (one each, no gradients): a model whose forward depends on
        the batch size fails here, naming the size and where the rounds use it, not at every epoch."""
        ran, failed = [1], None
        for size in sorted(sizes):
            if size == 1:
                continue
            try:
                forward(example.expand(size, *example.shape[1:]))
            except Exception as err:  # noqa: BLE001 - reported below with the sizes that work
                failed = (size, err)
                break
            ran.append(size)
        if failed is None:
            return
        size, err = failed
        upto = f"up to {rows}" if rows else "of any size"
        raise MisconfigurationException(
            f"ExplanationMonitor: the model fails on a batch of {size} images ({type(err).__name__}: {err}) but runs "
            f"on batches of {ran}; the explanation rounds pass it batches of {size} ({sizes[size]}) and, in general, "
            f"{upto} (Integrated Gradients' path points in chunks of internal_batch_size, each rank's share of the "
            "probes, the last partial chunk, and smaller ones while adaptive IG refines). Make forward accept any "
            "batch size, e.g. `x.flatten(1)` or `x.view(x.shape[0], -1)` instead of a fixed one."
        ) from err

    def budget_bytes(self, model: torch.nn.Module) -> int:
        """What the monitor may hold on ``model``'s device at once: half of what is available there now."""
        return available_bytes(module_device(model)) // 2

    def check_budget(self, model: torch.nn.Module, *, world_size: int = 1, rows: int | None = None,
                     train_samples: int | None = None) -> RoundEstimate:
        """The memory and passes one round needs with these options on this model and input (worst case), refused
        with the options to lower when it cannot fit the device; a round that costs many epochs of training is noted.

        One forward + backward of one probe measures the activations autograd keeps per image (as
        ``explain`` sizes its chunks)."""
        probes, config = self.probe_set, self.config
        assert probes is not None, "select() first"
        device = module_device(model)
        per_row = _saved_bytes_per_image(model, probes.images[:1].to(device), config.output_transform)
        estimate = estimate_round(config, probes, world_size=world_size, rows=rows, bytes_per_row=per_row)
        budget = self.budget_bytes(model)
        if estimate.device_bytes > budget:
            parts = "; ".join(f"{what}: {_size(n)}" for what, n in estimate.parts.items() if n)
            raise MisconfigurationException(
                f"ExplanationMonitor: one explanation round would hold about {_size(estimate.device_bytes)} on "
                f"{device} in the worst case ({parts}), more than the {_size(budget)} it may take there (half of what "
                f"is available). Lower {' or '.join(estimate.knobs) or 'num_probes'}."
            )
        samples = train_samples
        if samples and estimate.passes > 100 * samples:
            self.notes.append(
                f"one explanation round costs up to {estimate.passes} forward + backward passes of one image "
                f"({estimate.passes / samples:.0f}x the {samples} training samples of an epoch); lower "
                f"{' or '.join(estimate.knobs) or 'num_probes'}, or explain less often (every_n_epochs, max_overhead)")
        return estimate

    def applicable(self, model: torch.nn.Module, explainer: ProbeExplainer, methods: tuple[str, ...]
                   ) -> tuple[str, ...]:
        """Those of ``methods`` that apply to this model: each explains the first probe without raising
        :class:`~lightning_xai.attribution.NotApplicable` (e.g. attention rollout off a class-token ViT)."""
        probes = self.probe_set
        assert probes is not None, "select() first"
        device = module_device(model)
        images = probes.images[:1].to(device)
        found = []
        with preserved_state(model):
            targets = explainer.targets(model, images, probes.labels[:1].to(device))
            options = explain_options(self.config, images, self.layer_name, None, layer_reshape=self.layer_reshape,
                                      adaptive=False)
            for method in methods:
                explanation = explain_detailed(model, images, targets, (method,), errors="collect", **options)
                if not isinstance(explanation.errors.get(method), NotApplicable):
                    found.append(method)
        return tuple(found)

    def dry_run(self, model: torch.nn.Module, explainer: ProbeExplainer) -> dict[str, str]:
        """Explain the first probe with each method on its own; ``{method: why it cannot work}`` for the failures.

        A method fails here when it raises (a non-spatial layer, a model that cannot be differentiated), or when its
        map is all zero because part of the forward runs under ``torch.no_grad()`` (the input gradient is cut): that
        is structural, the same at every epoch and on every rank. A map that is merely degenerate for this model's
        current weights (all zero, constant) is noted, not refused: training may change it.
        """
        probes, config = self.probe_set, self.config
        assert probes is not None, "select() first"
        device = module_device(model)
        images = probes.images[:1].to(device)
        failed: dict[str, str] = {}
        blockers: list[str] | None = None
        with preserved_state(model):
            targets = explainer.targets(model, images, probes.labels[:1].to(device))
            # Integrated Gradients on its two end nodes: whether it works (raises, or is cut by a no_grad region) is
            # the question here, not its precision (adaptive IG on one untrained probe could take max_steps passes)
            options = explain_options(config, images, self.layer_name, None, layer_reshape=self.layer_reshape,
                                      adaptive=False)
            if "n_steps" in options:
                options["n_steps"] = 2
            for method in config.methods:
                if self.layer_problem is not None and get_method(method).uses_layer:
                    failed[method] = self.layer_problem
                    continue
                try:
                    found = explain_detailed(model, images, targets, (method,), **options).maps[method]
                except Exception as err:  # noqa: BLE001 - any failure of one method is reported, not raised
                    failed[method] = f"{type(err).__name__}: {err}"
                    continue
                kind = DEGENERATE_KINDS[int(degenerate_kinds(found)[0])]
                if kind in ("non-finite", "constant"):
                    self.notes.append(f"{method}: the map of the first probe is {kind} at setup; such maps are "
                                      "reported as degenerate, never as stable.")
                elif kind == "all zero":
                    if blockers is None:
                        blockers = gradient_blockers(model, images, output_transform=config.output_transform)
                    if blockers:
                        failed[method] = (
                            "its map is all zero because the model's forward runs "
                            f"{', '.join(repr(b) for b in blockers[:3])} under torch.no_grad() (a frozen backbone?), "
                            "which cuts the input's gradient. Run the frozen part with requires_grad_(False) on its "
                            "parameters instead of torch.no_grad() to explain through it"
                        )
                    elif zero_head(model):  # one probe's empty map is ordinary (an all-negative CAM); a zero head is not
                        self.notes.append(f"{method}: the map of the first probe is all zero at setup: the model's "
                                          "head is initialised to zero, so every map is all zero until it learns; such "
                                          "maps are reported as degenerate, never as stable.")
        return failed

    def with_automatic_methods(self, model: torch.nn.Module, explainer: ProbeExplainer) -> MonitorConfig:
        """With `methods` left at the default: the automatic methods that apply to this model join them (attention
        rollout on a class-token ViT); the others are left out silently (nothing was asked for)."""
        config = self.config
        wanted = tuple(m for m in config.automatic if m not in config.methods)
        added = self.applicable(model, explainer, wanted) if wanted else ()
        return dataclasses.replace(config, methods=config.methods + added) if added else config

    def without_failing(self, failed: Mapping[str, str]) -> MonitorConfig:
        """The dry run's findings, said once: its notes in one warning; methods that cannot work on this model left
        out, with their causes (none working raises). Returns the arguments to use (``self.config`` if unchanged)."""
        if self.notes:
            rank_zero_warn("ExplanationMonitor (setup dry run on the first probe):\n"
                           + "\n".join(f"- {note}" for note in self.notes))
        if not failed:
            return self.config
        why = "\n".join(f"- {m}: {reason}" for m, reason in failed.items())
        working = tuple(m for m in self.config.methods if m not in failed)
        if not working:
            raise MisconfigurationException(f"ExplanationMonitor: no method can explain this model:\n{why}")
        rank_zero_warn(f"ExplanationMonitor: explaining with {', '.join(working)} only; these methods cannot work on "
                       f"this model and are left out:\n{why}")
        options = {m: o for m, o in self.config.method_options.items() if m in working}
        return dataclasses.replace(self.config, methods=working, method_options=options)


@dataclass
class RoundEstimate:
    """What one explanation round needs with the monitor's options on a model and input (worst case).

    Attributes:
        device_bytes: bytes held on the model's device at the peak: one chunk of activations plus the buffers the
            explanation keeps (inputs, maps, adaptive IG's per-node gradients, CAM activations).
        parts: those bytes by cause, in words.
        passes: forward + backward passes of one image per round (adaptive IG at ``max_steps``).
        knobs: the options that lower it, as the user writes them.
    """

    device_bytes: int
    parts: dict[str, int] = field(default_factory=dict)
    passes: int = 0
    knobs: list[str] = field(default_factory=list)


def _size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def available_bytes(device: torch.device) -> int:
    """Memory available now: free device memory on CUDA, ``MemAvailable`` on the host (4 GiB where unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return cpu_available_bytes()


def _saved_bytes_per_image(model: torch.nn.Module, image: Tensor, output_transform: Any) -> int:
    """Bytes autograd keeps for backward through ``model`` for one image (parameters and buffers excluded)."""
    from lightning_xai.attribution._batching import SavedBytes

    counter = SavedBytes(model)
    try:
        with preserved_state(model), muted_logging(model), counter.counting():
            x = image.detach().clone().requires_grad_(True)
            out = model(x)
            logits = output_transform(out) if output_transform is not None else out
            torch.autograd.grad(logits.float().sum(), x, allow_unused=True)
    except Exception:  # noqa: BLE001 - the dry run reports a model that cannot be differentiated
        return counter.bytes
    return counter.bytes


def passes_per_probe(method: str, options: dict[str, Any], image_size: tuple[int, int]) -> int:
    """Forward (+ backward) passes one probe costs under ``method`` (worst case), from its options."""
    from lightning_xai.attribution import check_method_options

    if method == "integrated_gradients":
        adaptive = options.get("tolerance") is not None
        return int(options["max_steps"] if adaptive else options["n_steps"])
    try:
        opts = check_method_options(method, {k: v for k, v in options.items() if k != "reshape"})
    except (ValueError, TypeError):
        return 1
    if method == "smoothgrad":
        base = str(opts["base"])
        return int(opts["n_samples"]) * passes_per_probe(base, dict(opts["base_options"]), image_size)
    if method == "lime":
        return int(opts["n_samples"])
    if method == "occlusion":
        (kh, kw), (sh, sw) = (_pair(opts["window"]), _pair(opts["stride"]))
        h, w = image_size
        return (max(0, -(-(h - kh) // sh)) + 1) * (max(0, -(-(w - kw) // sw)) + 1) + 1
    if method == "igos":
        return int(opts["iterations"]) * (int(opts["ig_steps"]) + int(opts["line_search"]) + 1)
    return 1  # served by the shared pass


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if is_int(v) else (int(v[0]), int(v[1]))


def estimate_round(config: MonitorConfig, probes: ProbeSet, *, world_size: int, rows: int | None,
                   bytes_per_row: int) -> RoundEstimate:
    """:class:`RoundEstimate` of one round on this rank (its share of the probes), from the options alone plus the
    measured ``bytes_per_row`` (activations kept per image)."""
    n = -(-len(probes) // max(1, world_size))
    image = int(probes.images[0].numel()) * 4
    size = tuple(int(v) for v in probes.images.shape[-2:])
    parts: dict[str, int] = {}
    knobs: list[str] = ["num_probes"]
    ig = config.method_options.get("integrated_gradients")
    if rows:
        parts[f"one chunk of {rows} images' activations ({_size(bytes_per_row)} each)"] = rows * bytes_per_row
    parts["the probes, their maps and gradients"] = n * image * (4 + len(config.methods))
    if ig is not None:
        root = "method_options['integrated_gradients']"
        if ig["tolerance"] is not None:
            parts[f"adaptive IG's node gradients (probes x max_steps={ig['max_steps']} x image)"] =                 n * int(ig["max_steps"]) * image
            knobs.insert(0, f"{root}['max_steps']")
        if rows and ig["internal_batch_size"]:
            knobs.append(f"{root}['internal_batch_size']")
    passes = n * max(passes_per_probe(m, config.method_options.get(m) or {}, size) for m in config.methods)
    if "faithfulness" in config.metrics:
        steps = int(config.metric_options["faithfulness"]["steps"])
        passes += n * len(config.methods) * (steps + 1)  # forward only: about half a pass each, twice (2 curves)
        knobs.append("metric_options['faithfulness']['steps']")
    return RoundEstimate(int(sum(parts.values())), parts, int(passes), knobs)


def round_batch_sizes(config: MonitorConfig, num_probes: int, world_size: int, rows: int | None, *,
                      num_classes: int = 0, pool_size: int = 0) -> dict[int, str]:
    """Every batch size a round passes to the model, each with where it comes from (the setup forwards at each).

    Follows how the explanation chunks its points (:mod:`lightning_xai.attribution._engine`: a first chunk of at most
    16 rows that measures the activations, then balanced chunks of up to ``rows``), each rank's share of the probes,
    the faithfulness curves' chunks and the views' forwards. Sizes below 9 are all included: adaptive IG's
    refinements and a chunk shrunk by the buffers the explanation holds can take any small size.
    """
    from lightning_xai.attribution._batching import PROBE_ROWS

    sizes: dict[int, str] = {}

    def add(size: int, why: str) -> None:
        if size >= 1:
            sizes.setdefault(int(size), why)

    add(1, "the setup dry run")
    shards = {-(-num_probes // max(1, world_size)), num_probes // max(1, world_size)}
    for n in sorted(s for s in shards if s > 0):
        add(n, f"one rank's {n} probes, forwarded whole for their targets and logits")
        ig = config.method_options.get("integrated_gradients")
        nodes = int(ig["n_steps"]) if ig is not None else 1
        remaining = n * nodes
        first = min(PROBE_ROWS, remaining, rows or PROBE_ROWS)
        add(first, "the first chunk of the explanation, which measures the activations")
        remaining -= first
        while rows and remaining > 0:
            chunk = -(-remaining // -(-remaining // rows))
            add(chunk, f"a chunk of {n} probes x {nodes} path nodes in rows of up to {rows}")
            remaining -= chunk
        if "faithfulness" in config.metrics:
            total = n * (int(config.metric_options["faithfulness"]["steps"]) + 1)
            chunk = min(total, max(n, 128))
            add(chunk, "the faithfulness curves' chunks")
            add(total % chunk, "the faithfulness curves' last chunk")
    limit = rows or PROBE_ROWS
    for small in range(2, min(limit, 8) + 1):
        add(small, "a small chunk: adaptive IG refining a few probes, or the last partial chunk")
    if pool_size:
        add(min(pool_size, 64), "the views' forwards over their pool, in chunks of 64")
        add(pool_size % 64, "the views' last pool chunk")
        add(num_classes, "activation maximisation, one image per class")
    return sizes


def zero_head(model: torch.nn.Module) -> bool:
    """Whether the model's last ``nn.Linear`` (its head, in registration order) has all-zero weights."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return bool(linears) and not bool(linears[-1].weight.detach().any())


def suggest_output_transform(output: Any, rows: int) -> str:
    """An ``output_transform`` that turns ``output`` into logits, checked on it, in words; or how to write one."""
    def logits_like(v: Any) -> bool:
        return isinstance(v, Tensor) and v.ndim == 2 and v.shape[0] == rows

    candidates: list[tuple[str, Any]] = []
    if isinstance(output, Mapping):
        keys = sorted(output, key=lambda k: (k != "logits", str(k)))
        candidates += [(f"lambda out: out[{k!r}]", output[k]) for k in keys]
    if isinstance(output, (tuple, list)):
        candidates += [(f"lambda out: out[{i}]", v) for i, v in enumerate(output)]
    names = [f.name for f in dataclasses.fields(output)] if dataclasses.is_dataclass(output) else []
    names = sorted(set(names) | ({"logits"} if hasattr(output, "logits") else set()), key=lambda k: (k != "logits", k))
    candidates += [(f"lambda out: out.{name}", getattr(output, name, None)) for name in names]
    if isinstance(output, Tensor) and output.shape[:1] == (rows,) and output.ndim > 2 and output[0].numel() > 0:
        candidates.append(("lambda out: out.flatten(1)", output.flatten(1)))
    for code, value in candidates:
        if logits_like(value):
            return f"Pass output_transform={code} (it gives a tensor of shape {tuple(value.shape)} here)."
    return ("Pass output_transform=, a callable mapping the model's output to a tensor of logits (N, num_classes), "
            "e.g. `lambda out: out.logits` for an output object with a `logits` field.")


def _runs_on(forward: Callable[[Tensor], Any], images: Tensor) -> bool:
    try:
        forward(images)
    except Exception:
        return False
    return True


def train_samples(trainer: pl.Trainer) -> int | None:
    """Training samples per epoch (batches per epoch, after ``limit_train_batches``, times the batch size), from
    where Lightning will load them (the loader is built, not iterated), or ``None`` if unknown."""
    try:
        loader = trainer.fit_loop._data_source.dataloader()
        if isinstance(loader, dict):
            loader = next(iter(loader.values()), None)
        elif isinstance(loader, (list, tuple)):
            loader = loader[0] if loader else None
        batches, size = len(loader), loader.batch_size
    except Exception:  # an iterable loader, a stand-in trainer: only a hint for a note
        return None
    limit = getattr(trainer, "limit_train_batches", None)
    if is_int(limit):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit)
    return batches * size if is_int(size) and batches > 0 else None


def train_batch_size(trainer: pl.Trainer) -> int | None:
    """The training DataLoader's batch size, from where Lightning will load it (the loader is built, not iterated),
    or ``None`` if unknown."""
    try:
        source = trainer.fit_loop._data_source
        if not source.is_defined():
            return None
        loader = source.dataloader()
    except Exception:  # only a hint for an error message
        return None
    if isinstance(loader, dict):
        loader = next(iter(loader.values()), None)
    elif isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    size = getattr(loader, "batch_size", None)
    return size if is_int(size) else None
