"""Probe handling and the checks made at ``setup()``: where the probes come from, which ones, and whether they fit
the model, the strategy and the other callbacks. Everything that can fail before training fails here."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_xai._validation import is_int
from lightning_xai.attribution import explain_detailed, get_method, gradcam_layer, gradient_blockers, preserved_state
from lightning_xai.callbacks._compat import EARLY_STOPPING, MisconfigurationException, muted_logging, rank_zero_warn
from lightning_xai.callbacks._config import MonitorConfig, explain_options, uses_layer
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
        if isinstance(monitor, str) and monitor.startswith("xai/") and monitor not in keys:
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

    def select(self, source: Any, what: str = "probes") -> ProbeSet:
        options = self.config.probe_options
        try:
            probes = select_probes(source, self.config.num_probes, input_key=options["input_key"],
                                   label_key=options["label_key"], mask_key=options["mask_key"],
                                   seed=options["seed"])
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

    def validate(self, model: torch.nn.Module, train_batch_size: Callable[[], int | None] | None = None) -> None:
        """One forward on one probe: output shape, label and target range, channels, Grad-CAM layer.

        ``train_batch_size`` (called only if that forward fails) gives the training batch size, to tell a model that
        only runs at its training batch size from one that does not fit the probes.
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
            raise MisconfigurationException(
                f"ExplanationMonitor: the model returned {got}; explanations need logits (N, num_classes). "
                "Pass output_transform=, e.g. `lambda out: out[0]` or `lambda out: out['logits']`."
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
        self.layer_name = self.layer_reshape = self.layer_problem = None
        if uses_layer(config.methods):
            self._find_layer(model, example.to(module_device(model)))

    def _find_layer(self, model: torch.nn.Module, example: Tensor) -> None:
        config = self.config
        try:
            reshape = config.method_options.get("grad_cam", {}).get("reshape")
            found = gradcam_layer(model, example, config.layer, reshape=reshape,
                                  output_transform=config.output_transform)
        except ValueError as err:  # an unknown or unusable `layer=`: the user's argument, fix it before training
            raise MisconfigurationException(f"ExplanationMonitor (layer={config.layer!r}): {err}") from err
        except RuntimeError as err:  # no layer can work (no spatial layer, all under no_grad): the dry run says so
            self.layer_problem = str(err)
            return
        self.layer_name, self.layer_reshape = found.name, found.reshape
        if found.warning is not None:
            self.notes.append(f"Grad-CAM layer {found.name!r}: {found.warning}.")

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
                    else:
                        self.notes.append(f"{method}: the map of the first probe is all zero at setup (e.g. a head "
                                          "initialised to zero); such maps are reported as degenerate, not stable.")
        return failed


def _runs_on(forward: Callable[[Tensor], Any], images: Tensor) -> bool:
    try:
        forward(images)
    except Exception:
        return False
    return True


def train_batch_size(trainer: pl.Trainer) -> int | None:
    """The training DataLoader's batch size, from where Lightning will load it (the loader is built, not iterated),
    or ``None`` if unknown."""
    source = trainer.fit_loop._data_source
    try:
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
