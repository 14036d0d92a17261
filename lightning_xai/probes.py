"""The fixed probe set: deterministic, class-balanced selection with stable ids and a fingerprint.

A probe set is chosen once per run and explained at every logging epoch, so its selection must not depend on
anything that changes between runs (shuffling, worker seeds, the global RNG state) and must not change anything
either: selecting probes never consumes the global torch, ``random`` or numpy RNG (PITFALLS 19), and every tensor
is cloned, detached and moved to the CPU (PITFALLS 20: tensors created under ``torch.inference_mode``).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

__all__ = ["ClassMapRule", "read_samples_at", "ProbeSet", "agree_on_probes", "select_probes"]

#: ``select_probes`` reads at most ``MAX_SCAN_FACTOR * num_probes`` samples unless ``max_scan`` says otherwise.
MAX_SCAN_FACTOR = 50

_IMAGE_KEYS = ("image", "input", "inputs", "x", "img")
_LABEL_KEYS = ("label", "labels", "target", "targets", "y")
_MASK_KEYS = ("mask", "masks")

Selector = int | str | Callable[[Any], Any] | None


def _as_bytes(t: Tensor, dtype: torch.dtype) -> bytes:
    return t.detach().to("cpu", dtype).contiguous().numpy().tobytes()


@dataclass
class ProbeSet:
    """A fixed set of probe samples.

    Args:
        images: float tensor ``(N, C, H, W)``.
        labels: long tensor ``(N,)``: the class each probe is explained for; ``-1`` where the label is unknown.
        ids: long tensor ``(N,)``: dataset index of each probe (stable across runs).
        masks: optional float tensor ``(N, 1, H, W)`` of ground-truth evidence (1 inside, 0 outside).
        label_sets: multi-label probes only: bool tensor ``(N, K)``, each probe's positive labels (multi-hot);
            ``labels`` then holds the one positive label each probe is explained for (``-1`` for a probe without
            any positive label: its top prediction is explained).

    Shape:
        images ``(N, C, H, W)``, labels ``(N,)``, ids ``(N,)``, masks ``(N, 1, H, W)`` or None,
        label_sets ``(N, K)`` or None.

    Example::

        >>> ps = ProbeSet(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]), torch.tensor([5, 9]))
        >>> len(ps), ps.subset(1, 2).ids.tolist(), len(ps.fingerprint)
        (2, [9], 64)
    """

    images: Tensor
    labels: Tensor
    ids: Tensor
    masks: Tensor | None = None
    label_sets: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or self.images.dim() != 4:
            raise ValueError(f"`images` must be a tensor of shape (N, C, H, W), got {_describe(self.images)}")
        if not self.images.is_floating_point():
            raise TypeError(f"`images` must be a floating point tensor, got dtype {self.images.dtype}")
        n = self.images.shape[0]
        for name in ("labels", "ids"):
            value = getattr(self, name)
            if not isinstance(value, Tensor) or value.dim() != 1 or value.shape[0] != n:
                raise ValueError(f"`{name}` must be a 1-D tensor of length {n} (one per image), got {_describe(value)}")
            if value.is_floating_point() or value.is_complex():
                raise TypeError(f"`{name}` must be an integer tensor, got dtype {value.dtype}")
            setattr(self, name, value.long())
        if self.masks is not None:
            m = self.masks
            if (
                not isinstance(m, Tensor)
                or m.dim() != 4
                or m.shape[0] != n
                or m.shape[1] != 1
                or m.shape[2:] != self.images.shape[2:]
            ):
                raise ValueError(
                    f"`masks` must be None or a tensor of shape ({n}, 1, {self.images.shape[2]}, "
                    f"{self.images.shape[3]}), got {_describe(m)}"
                )
        if self.label_sets is not None:
            sets = self.label_sets
            if not isinstance(sets, Tensor) or sets.dim() != 2 or sets.shape[0] != n or not _is_multi_hot(sets):
                raise ValueError(f"`label_sets` must be None or a multi-hot (0/1) tensor of shape ({n}, K), got "
                                 f"{_describe(sets)}")
            self.label_sets = sets.bool()
            chosen = self.labels[self.labels >= 0]
            if chosen.numel() and int(chosen.max()) >= sets.shape[1]:
                raise ValueError(f"`labels` holds class {int(chosen.max())}, but `label_sets` has {sets.shape[1]} "
                                 "classes")

    @property
    def multi_label(self) -> bool:
        """Whether the probes carry multi-hot labels (``label_sets``)."""
        return self.label_sets is not None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the shapes, ids (int64), images (float32) and labels (int64), all read on the CPU.

        Identical for identical probes on any device, run or process; masks are not part of it (``label_sets`` are,
        when present).
        """
        h = hashlib.sha256()
        h.update(f"probes:{tuple(self.images.shape)}".encode())
        h.update(_as_bytes(self.ids, torch.int64))
        h.update(_as_bytes(self.images, torch.float32))
        h.update(_as_bytes(self.labels, torch.int64))
        if self.label_sets is not None:
            h.update(f"label_sets:{tuple(self.label_sets.shape)}".encode())
            h.update(_as_bytes(self.label_sets, torch.uint8))
        return h.hexdigest()

    def to(self, device: torch.device | str) -> ProbeSet:
        """A copy on ``device`` (ids stay on the CPU)."""
        return ProbeSet(
            images=self.images.to(device),
            labels=self.labels.to(device),
            ids=self.ids,
            masks=None if self.masks is None else self.masks.to(device),
            label_sets=None if self.label_sets is None else self.label_sets.to(device),
        )

    def subset(self, start: int, stop: int) -> ProbeSet:
        """Probes ``start:stop`` (e.g. one rank's shard from :func:`lightning_xai.distributed.shard_bounds`)."""
        sl = slice(start, stop)
        return ProbeSet(
            images=self.images[sl],
            labels=self.labels[sl],
            ids=self.ids[sl],
            masks=None if self.masks is None else self.masks[sl],
            label_sets=None if self.label_sets is None else self.label_sets[sl],
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and a string (loads with ``torch.load(weights_only=True)``); ``masks`` only if present."""
        state: dict[str, Any] = {
            "images": self.images.detach().cpu().clone(),
            "labels": self.labels.detach().cpu().clone(),
            "ids": self.ids.detach().cpu().clone(),
            "fingerprint": self.fingerprint,
        }
        if self.masks is not None:
            state["masks"] = self.masks.detach().cpu().clone()
        if self.label_sets is not None:
            state["label_sets"] = self.label_sets.detach().cpu().clone()
        return state

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> ProbeSet:
        """Rebuild from :meth:`state_dict`; raises ``ValueError`` if the stored fingerprint does not match."""
        missing = [k for k in ("images", "labels", "ids") if k not in state]
        if missing:
            raise ValueError(f"ProbeSet state is missing keys {missing}; got keys {sorted(state)}")
        probes = cls(images=state["images"], labels=state["labels"], ids=state["ids"], masks=state.get("masks"),
                     label_sets=state.get("label_sets"))
        stored = state.get("fingerprint")
        if stored is not None and stored != probes.fingerprint:
            raise ValueError(
                f"ProbeSet state is corrupt: stored fingerprint {stored!r} != recomputed {probes.fingerprint!r}"
            )
        return probes


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__}"


# ---------------------------------------------------------------------------------------------------- RNG isolation
@contextlib.contextmanager
def _isolated_rng(seed: int) -> Iterator[None]:
    """Seed torch (CPU, and CUDA if initialised), ``random`` and numpy inside; restore all of them afterwards."""
    py_state = random.getstate()
    np_mod = None
    np_state = None
    try:
        import numpy as np_mod  # optional: only to save/restore its global state

        np_state = np_mod.random.get_state()
    except ImportError:  # pragma: no cover - numpy ships with torchvision
        np_mod = None
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            random.seed(seed)
            if np_mod is not None:
                np_mod.random.seed(seed % 2**32)
            yield
    finally:
        random.setstate(py_state)
        if np_mod is not None:
            np_mod.random.set_state(np_state)


# ---------------------------------------------------------------------------------------------------- field access
def _select(item: Any, key: Selector, defaults: tuple[str, ...], position: int | None, what: str) -> tuple[Any, bool]:
    """Value of one field of a sample; returns ``(value, found)``. ``key`` overrides the defaults."""
    if callable(key):
        return key(item), True
    if key is not None:
        try:
            return item[key], True
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(
                f"`{what}_key`={key!r} cannot be applied to a sample of type {type(item).__name__}: {err}"
            ) from err
    if isinstance(item, Mapping):
        for k in defaults:
            if k in item:
                return item[k], True
        return None, False
    if isinstance(item, (tuple, list)):
        if position is not None and position < len(item):
            return item[position], True
        return None, False
    if isinstance(item, Tensor) and what == "input":
        return item, True
    return None, False


def _to_label(value: Any) -> int | None:
    """An integer class label, or None if ``value`` is not a scalar class index."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Tensor) and value.numel() == 1:
        if value.is_floating_point():
            v = float(value)
            return int(v) if v.is_integer() else None
        if value.dtype == torch.bool or value.is_complex():
            return None
        return int(value)
    return None


def _is_multi_hot(t: Tensor) -> bool:
    if t.dtype == torch.bool:
        return True
    if t.is_complex():
        return False
    return bool(((t == 0) | (t == 1)).all())


def _to_multi_hot(value: Any) -> Tensor | None:
    """A bool vector ``(K,)`` for a multi-hot label (0/1 values, K >= 2), or None."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float, bool)) for v in value):
        value = torch.tensor([float(v) for v in value])
    if isinstance(value, Tensor) and value.dim() == 1 and value.numel() >= 2 and _is_multi_hot(value):
        return value.detach().to("cpu").bool()
    return None


def _check_image(image: Any, where: str) -> Tensor:
    if not isinstance(image, Tensor):
        raise TypeError(
            f"{where}: the image must be a tensor, got {type(image).__name__} (add a ToTensor transform or pass "
            "`input_key` to pick the image out of each sample)"
        )
    if image.dim() != 3:
        raise ValueError(f"{where}: each image must be 3-D (C, H, W), got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(
            f"{where}: images must be floating point, got dtype {image.dtype} (convert with e.g. "
            "`torchvision.transforms.v2.ToDtype(torch.float32, scale=True)`)"
        )
    return image


def _as_mask(value: Any, image: Tensor) -> Tensor | None:
    """``value`` as a ``(1, H, W)`` float mask if it looks like one for ``image`` (same H, W; one channel)."""
    if not isinstance(value, Tensor):
        return None
    if value.dim() == 2:
        value = value.unsqueeze(0)
    if value.dim() != 3 or value.shape[0] != 1 or value.shape[1:] != image.shape[1:]:
        return None
    return value.to(torch.float32)


@dataclass(frozen=True)
class ClassMapRule:
    """How a segmentation sample's class map (``(H, W)`` integer class ids) becomes a probe's label and mask.

    The probe is explained for one class present in its map: ``class_index`` if given, else the most frequent class
    other than ``background`` and ``ignore_index`` (ties: the lower id). Its mask is that class's region. A map with
    no such class gives an unknown label (``-1``) and an empty mask: the monitor then explains the predicted region.

    Args:
        background: the background class id (never chosen unless named by ``class_index``), or None.
        ignore_index: the "void" id (e.g. 255 in Pascal VOC), never chosen and never in a region, or None.
        class_index: explain this class on every probe (its region, empty where absent), or None.
    """

    background: int | None = 0
    ignore_index: int | None = 255
    class_index: int | None = None

    def label_and_mask(self, class_map: Tensor) -> tuple[int | None, Tensor]:
        """``(label or None, (1, H, W) float mask)`` of a ``(H, W)`` (or ``(1, H, W)``) class map."""
        ids = class_map.reshape(class_map.shape[-2:]).long()
        if self.class_index is not None:
            return int(self.class_index), (ids == self.class_index).float()[None]
        counts = torch.bincount(ids[ids >= 0].flatten(), minlength=1)
        for excluded in (self.background, self.ignore_index):
            if excluded is not None and 0 <= excluded < counts.numel():
                counts[excluded] = 0
        if int(counts.max()) == 0:
            return None, torch.zeros(1, *ids.shape)
        label = int(counts.argmax())  # argmax returns the first maximum: ties go to the lower id
        return label, (ids == label).float()[None]


def _as_class_map(value: Any, image: Tensor) -> Tensor | None:
    """``value`` as an ``(H, W)`` class map if it is an integer tensor of the image's size (a segmentation label)."""
    if not isinstance(value, Tensor) or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        return None
    if value.dim() == 3 and value.shape[0] == 1:
        value = value[0]
    if value.dim() != 2 or value.shape != image.shape[1:]:
        return None
    return value


# ---------------------------------------------------------------------------------------------------- sources
def _samples_from_tensors(source: Any) -> tuple[Iterable[tuple[int, Any]], int | None]:
    """(index, (image, label, mask)) pairs from a tensor or a tuple of tensors."""
    if isinstance(source, Tensor):
        images, labels, masks = source, None, None
    else:
        if not 2 <= len(source) <= 3:
            raise ValueError(
                f"`source` as a tuple must be (images, labels) or (images, labels, masks), got {len(source)} elements"
            )
        images, labels = source[0], source[1]
        masks = source[2] if len(source) == 3 else None
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"`source` images must be a tensor of shape (N, C, H, W), got {_describe(images)}")
    n = images.shape[0]
    if labels is not None:
        labels = torch.as_tensor(labels)
        multi_hot = labels.dim() == 2 and labels.shape[0] == n and labels.shape[1] >= 2 and _is_multi_hot(labels)
        class_maps = labels.dim() == 3 and labels.shape == (n, *images.shape[2:]) and not labels.is_floating_point()
        if not (multi_hot or class_maps) and (labels.dim() != 1 or labels.shape[0] != n):
            raise ValueError(f"`source` labels must have shape ({n},) (class indices), ({n}, K) (multi-hot) or "
                             f"({n}, {images.shape[2]}, {images.shape[3]}) (segmentation class maps), got "
                             f"{_describe(labels)}")
    if masks is not None:
        if not isinstance(masks, Tensor) or masks.shape[0] != n:
            raise ValueError(f"`source` masks must be a tensor with {n} rows, got {_describe(masks)}")
        if masks.dim() == 3:
            masks = masks.unsqueeze(1)

    def gen() -> Iterator[tuple[int, Any]]:
        for i in range(n):
            yield (
                i,
                (
                    images[i],
                    None if labels is None else labels[i],
                    None if masks is None else masks[i],
                ),
            )

    return gen(), n


def _iter_map_style(dataset: Any, limit: int) -> Iterator[tuple[int, Any]]:
    for i in range(min(len(dataset), limit)):
        yield i, dataset[i]


def _iter_batches(loader: Iterable[Any]) -> Iterator[tuple[int, Any]]:
    """Unbatch a loader's batches (tuple/list/dict of tensors with a batch dimension) into samples."""
    index = 0
    for batch in loader:
        if isinstance(batch, Tensor):
            rows = [batch[j] for j in range(batch.shape[0])]
        elif isinstance(batch, Mapping):
            size = _batch_size(batch.values())
            rows = [{k: (v[j] if _is_batched(v, size) else v) for k, v in batch.items()} for j in range(size)]
        elif isinstance(batch, (tuple, list)):
            size = _batch_size(batch)
            rows = [tuple(v[j] if _is_batched(v, size) else v for v in batch) for j in range(size)]
        else:
            raise TypeError(
                f"`source`: DataLoader batches must be tensors, tuples/lists or dicts, got {type(batch).__name__}"
            )
        for row in rows:
            yield index, row
            index += 1


def _is_batched(v: Any, size: int) -> bool:
    return (isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == size) or (
        isinstance(v, (list, tuple)) and len(v) == size
    )


def _batch_size(values: Iterable[Any]) -> int:
    for v in values:
        if isinstance(v, Tensor) and v.dim() > 0:
            return int(v.shape[0])
    raise TypeError("`source`: cannot find the batch dimension: no tensor in the DataLoader's batch")


def _is_map_style(obj: Any) -> bool:
    return (
        not isinstance(obj, IterableDataset)
        and hasattr(obj, "__getitem__")
        and hasattr(obj, "__len__")
        and not isinstance(obj, (str, bytes, Mapping))
    )


# ---------------------------------------------------------------------------------------------------- selection
def select_probes(
    source: Any,
    num_probes: int = 16,
    *,
    input_key: Selector = None,
    label_key: Selector = None,
    mask_key: Selector = None,
    seed: int = 0,
    max_scan: int | None = None,
    class_maps: ClassMapRule | None = None,
) -> ProbeSet:
    """Choose a fixed, class-balanced probe set, deterministically and without touching the global RNGs.

    The first ``max_scan`` samples (default ``50 * num_probes``) are read in index order; probes are then picked
    round-robin over the classes in sorted class order, taking within each class the samples with the lowest
    indices, until ``num_probes`` are chosen (fewer if fewer samples were read). Probes come out in that round-robin
    order (class 0, class 1, ..., class 0, ...). If labels are unknown (no label field, or a label that is neither a
    scalar class index nor a multi-hot vector), the first ``num_probes`` samples are taken and their labels are ``-1``.

    Multi-label data (each label a multi-hot 0/1 vector of K >= 2 classes, as a BCE-trained model uses): a sample
    counts for each of its positive classes and is explained for the class it was picked for (round-robin, so the
    probe set covers every class that occurs); ``label_sets`` keeps every probe's positive labels. Samples without
    any positive label come last, labelled ``-1``.

    Sources:
        * a tensor ``(N, C, H, W)`` of images (labels unknown);
        * a tuple ``(images, labels)`` or ``(images, labels, masks)``;
        * a map-style ``Dataset`` (or any sequence) of samples: a tensor, a tuple/list (``item[0]`` image,
          ``item[1]`` label, ``item[2]`` mask if it is a ``(1, H, W)`` or ``(H, W)`` tensor matching the image), or a
          dict (keys ``"image"``/``"input"``/``"inputs"``/``"x"``/``"img"``, ``"label"``/``"labels"``/``"target"``/
          ``"targets"``/``"y"`` and ``"mask"``/``"masks"``);
        * a ``DataLoader``: over a map-style dataset, its ``dataset`` is read directly (ids are dataset indices; the
          loader's collate function is not used); over an iterable dataset, the loader is iterated and its batches
          unbatched (ids count samples in iteration order; selectors apply to the unbatched sample);
        * an ``IterableDataset``, iterated sample by sample.

    The dataset's ``__getitem__`` / the loader iteration run with the torch (CPU and initialised CUDA), ``random`` and
    numpy RNGs seeded with ``seed`` and restored afterwards: random transforms give the same probes on every run, and
    the caller's RNG streams are untouched (a plain ``next(iter(loader))`` would draw the loader's base seed from the
    global RNG and change every later shuffle and dropout mask).

    Args:
        source: where the probes come from (see above).
        num_probes: how many probes to choose (>= 1).
        input_key: which field of a sample is the image: an int index, a str key, or a callable ``sample -> image``.
        label_key: which field is the label (same kinds). A label that is neither a scalar class index nor a
            multi-hot vector raises when ``label_key`` is given, and means "labels unknown" otherwise.
        mask_key: which field is the ground-truth mask (same kinds); must be ``(1, H, W)`` or ``(H, W)``.
        seed: seed of the isolated RNG streams used while reading samples.
        max_scan: read at most this many samples (default ``50 * num_probes``).
        class_maps: how a segmentation label (an integer class map ``(H, W)`` or ``(1, H, W)`` of the image's size,
            as the label or, without a label, as the mask) becomes the probe's class and mask (default
            :class:`ClassMapRule`: the most frequent class other than background 0 and void 255). Probes are then
            balanced over those classes; samples without such a class come last, labelled ``-1``.

    Returns:
        A :class:`ProbeSet` with CPU tensors (cloned, detached, normal tensors even if the source was created under
        ``torch.inference_mode``); ``images`` keep their floating dtype, ``masks`` are float32.

    Raises:
        ValueError: ``num_probes`` or ``max_scan`` < 1, empty source, images that are not 3-D per sample or of
            differing shapes, selectors that do not apply.
        TypeError: unsupported ``source`` type, non-tensor or non-floating images, bad selectors.

    Example::

        >>> images = torch.rand(10, 3, 8, 8)
        >>> labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
        >>> select_probes((images, labels), num_probes=4).ids.tolist()
        [0, 3, 6, 1]
        >>> multi_hot = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]])
        >>> ps = select_probes((images[:4], multi_hot), num_probes=3)
        >>> ps.ids.tolist(), ps.labels.tolist(), ps.label_sets.int().tolist()
        ([0, 3, 2], [0, 1, 2], [[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    """
    if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
        raise ValueError(f"`num_probes` must be an int >= 1, got {num_probes!r}")
    if max_scan is None:
        max_scan = MAX_SCAN_FACTOR * num_probes
    if isinstance(max_scan, bool) or not isinstance(max_scan, int) or max_scan < 1:
        raise ValueError(f"`max_scan` must be None or an int >= 1, got {max_scan!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` must be an int, got {seed!r}")
    for name, key in (("input_key", input_key), ("label_key", label_key), ("mask_key", mask_key)):
        if not (key is None or callable(key) or (isinstance(key, (int, str)) and not isinstance(key, bool))):
            raise TypeError(f"`{name}` must be None, an int, a str or a callable, got {key!r}")

    with _isolated_rng(seed), torch.inference_mode(False), torch.no_grad():
        segmented: list[bool] = []
        samples = _read_samples(source, max_scan, input_key, label_key, mask_key, class_maps, segmented)
        if not samples:
            raise ValueError(f"`source` is empty: no samples to choose probes from ({_describe(source)})")
        chosen = _choose(samples, num_probes, unknown_last=bool(segmented))
        return _build(samples, chosen)


def read_samples_at(dataset: Any, ids: Sequence[int], *, input_key: Selector = None, label_key: Selector = None,
                    mask_key: Selector = None, seed: int = 0, class_maps: ClassMapRule | None = None) -> ProbeSet:
    """Read the samples ``ids`` of a map-style dataset as they are *now*, as a :class:`ProbeSet` (labels as stored).

    For watching training data that may change between epochs (a planted cue, a new augmentation, relabelled
    samples): read under the same isolated, seeded RNG every time, so an unchanged dataset with random transforms
    gives the same tensors at every call, and the caller's RNG streams are untouched.

    Raises:
        TypeError: ``dataset`` is not map-style.
    """
    if not _is_map_style(dataset):
        raise TypeError(f"`dataset` must be a map-style dataset (with __getitem__ and __len__), got "
                        f"{type(dataset).__name__}")
    ids = [int(i) for i in ids]
    with _isolated_rng(seed), torch.inference_mode(False), torch.no_grad():
        samples = _read_samples(_Indexed(dataset, ids), len(ids), input_key, label_key, mask_key, class_maps)
    samples = [(ids[pos], image, label, mask) for pos, (_, image, label, mask) in enumerate(samples)]
    return _build(samples, [(pos, label if isinstance(label, int) else None) for pos, (_, _, label, _) in
                            enumerate(samples)])


class _Indexed(Sequence):
    """``dataset[ids[i]]`` as a sequence (a map-style view of chosen samples)."""

    def __init__(self, dataset: Any, ids: list[int]) -> None:
        self.dataset, self.ids = dataset, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: Any) -> Any:
        if not isinstance(i, int):
            raise TypeError("index must be an int")
        if not -len(self.ids) <= i < len(self.ids):
            raise IndexError(i)
        return self.dataset[self.ids[i]]


def _sample_pairs(source: Any, max_scan: int) -> tuple[Any, bool]:
    """``(index, item)`` pairs of any supported source, and whether items are already ``(image, label, mask)``."""
    tensor_source = isinstance(source, Tensor) or (
        isinstance(source, tuple) and len(source) > 0 and isinstance(source[0], Tensor)
    )
    if tensor_source:
        pairs, _ = _samples_from_tensors(source)
        return pairs, True
    elif isinstance(source, DataLoader):
        prepared = False
        pairs = _iter_map_style(source.dataset, max_scan) if _is_map_style(source.dataset) else _iter_batches(source)
    elif isinstance(source, IterableDataset):
        prepared = False
        pairs = ((i, item) for i, item in enumerate(source))
    elif isinstance(source, Dataset) or (_is_map_style(source) and isinstance(source, Sequence)):
        prepared = False
        pairs = _iter_map_style(source, max_scan)
    else:
        raise TypeError(
            "`source` must be a tensor of images, a tuple (images, labels[, masks]), a map-style Dataset, an "
            f"IterableDataset or a DataLoader, got {type(source).__name__}"
        )
    return pairs, prepared


def _unpack(item: Any, prepared: bool, where: str, input_key: Selector, label_key: Selector,
            mask_key: Selector) -> tuple[Any, Any, bool, Any]:
    """``(image, raw label, whether a label was found, raw mask or None)`` of one sample."""
    if prepared:
        image, raw_label, raw_mask = item
        return image, raw_label, raw_label is not None, raw_mask
    image, found = _select(item, input_key, _IMAGE_KEYS, 0, "input")
    if not found:
        raise TypeError(
            f"{where}: cannot find the image in a sample of type {type(item).__name__} "
            f"(pass `input_key`); dict keys tried: {_IMAGE_KEYS}"
        )
    raw_label, has_label = _select(item, label_key, _LABEL_KEYS, 1, "label")
    raw_mask, has_mask = _select(item, mask_key, _MASK_KEYS, 2, "mask")
    return image, raw_label, has_label, raw_mask if has_mask else None


def _classifier_label(raw_label: Any, has_label: bool, label_key: Selector, where: str,
                      num_labels: int | None) -> tuple[int | Tensor | None, int | None]:
    """A class index or a multi-hot vector (all of one length ``num_labels``), or None; and ``num_labels``."""
    label: int | Tensor | None = _to_label(raw_label) if has_label else None
    if has_label and label is None:
        label = _to_multi_hot(raw_label)
        if label is not None:
            if num_labels is None:
                num_labels = label.numel()
            if label.numel() != num_labels:
                raise ValueError(f"{where}: a multi-hot label of {label.numel()} classes after one of "
                                 f"{num_labels}")
    if has_label and label is None and label_key is not None:
        raise ValueError(f"{where}: `label_key`={label_key!r} selects {_describe(raw_label)}, not a class index, "
                         "a multi-hot vector or an integer class map of the image's size (segmentation)")
    return label, num_labels


def _read_samples(
    source: Any, max_scan: int, input_key: Selector, label_key: Selector, mask_key: Selector,
    class_maps: ClassMapRule | None = None, segmented: list[bool] | None = None,
) -> list[tuple[int, Tensor, int | Tensor | None, Tensor | None]]:
    """Samples as ``(index, image, label, mask)``; a segmentation class map becomes ``class_maps``' label and mask
    (``segmented``, if given, gets one entry per such sample)."""
    rule = ClassMapRule() if class_maps is None else class_maps
    pairs, prepared = _sample_pairs(source, max_scan)

    out: list[tuple[int, Tensor, int | Tensor | None, Tensor | None]] = []
    shape = None
    num_labels = None  # K of multi-hot labels, once one is seen
    for index, item in pairs:
        where = f"`source` sample {index}"
        image, raw_label, has_label, raw_mask = _unpack(item, prepared, where, input_key, label_key, mask_key)
        image = _check_image(image, where)
        if shape is None:
            shape = image.shape
        elif image.shape != shape:
            raise ValueError(
                f"{where}: image shape {tuple(image.shape)} differs from the first sample's {tuple(shape)}"
            )
        # A segmentation label: an integer class map of the image's size, as the label (or, without a label, as the
        # mask: {"image": ..., "mask": class ids}). It becomes one class and that class's region (ClassMapRule).
        class_map = _as_class_map(raw_label, image) if has_label else None
        if class_map is None and not has_label and raw_mask is not None:
            class_map = _as_class_map(raw_mask, image)
        if class_map is not None:
            label, mask = rule.label_and_mask(class_map)
            out.append((index, image, label, mask))
            if segmented is not None:
                segmented.append(True)
            if len(out) >= max_scan:
                break
            continue
        label, num_labels = _classifier_label(raw_label, has_label, label_key, where, num_labels)
        mask = None
        if raw_mask is not None:
            mask = _as_mask(raw_mask, image)
            if mask is None and (mask_key is not None or prepared):
                raise ValueError(
                    f"{where}: the mask must be (1, H, W) or (H, W) matching the image {tuple(image.shape)}, "
                    f"got {_describe(raw_mask)}"
                )
        if isinstance(label, int) and label < 0:
            label = None  # -1 (or any negative value) means "unknown", as in ProbeSet.labels
        out.append((index, image, label, mask))
        if len(out) >= max_scan:
            break
    return out


def _round_robin(queues: list[list[int]], num_probes: int) -> list[tuple[int, int]]:
    """``(queue index, position)`` pairs: each queue's next unchosen position in turn, until ``num_probes``."""
    chosen: list[tuple[int, int]] = []
    taken: set[int] = set()
    heads = [0] * len(queues)
    while len(chosen) < num_probes:
        progressed = False
        for q, queue in enumerate(queues):
            while heads[q] < len(queue) and queue[heads[q]] in taken:
                heads[q] += 1  # a multi-label sample already chosen for another class
            if heads[q] < len(queue) and len(chosen) < num_probes:
                chosen.append((q, queue[heads[q]]))
                taken.add(queue[heads[q]])
                heads[q] += 1
                progressed = True
        if not progressed:
            break
    return chosen


def _choose(samples: list[tuple[int, Tensor, int | Tensor | None, Tensor | None]], num_probes: int,
            unknown_last: bool = False) -> list[tuple[int, int | None]]:
    """``(position into samples, class explained)`` of the chosen probes, in round-robin class order.

    Multi-label samples belong to each of their positive classes; a sample chosen for class ``c`` is explained for
    ``c``. Samples without a positive label fill the set last (their prediction is explained).
    """
    labels = [label for _, _, label, _ in samples]
    if any(isinstance(label, Tensor) for label in labels):
        if not all(isinstance(label, Tensor) for label in labels):
            raise ValueError("`source` mixes multi-hot labels with class indices or unknown labels")
        by_class: dict[int, list[int]] = {}
        for pos, label in enumerate(labels):
            for c in label.nonzero().flatten().tolist():  # type: ignore[union-attr]
                by_class.setdefault(int(c), []).append(pos)
        classes = sorted(by_class)
        picked = [(pos, classes[q]) for q, pos in _round_robin([by_class[c] for c in classes], num_probes)]
        taken = {pos for pos, _ in picked}
        rest = [pos for pos, label in enumerate(labels) if pos not in taken and not label.any()]  # type: ignore[union-attr]
        return picked + [(pos, None) for pos in rest[: num_probes - len(picked)]]
    if unknown_last and any(label is not None for label in labels):
        # segmentation: balanced over the classes present; maps without a class (background only) fill the set last
        known = [(pos, label) for pos, label in enumerate(labels) if label is not None]
        picked = _choose([samples[pos] for pos, _ in known], num_probes)
        picked = [(known[p][0], label) for p, label in picked]
        rest = [(pos, None) for pos, label in enumerate(labels) if label is None]
        return picked + rest[: num_probes - len(picked)]
    if any(label is None for label in labels):  # labels unknown (for some): the first samples, known labels kept
        return [(pos, labels[pos]) for pos in range(min(num_probes, len(samples)))]  # type: ignore[misc]
    by_label: dict[int, list[int]] = {}
    for pos, label in enumerate(labels):
        by_label.setdefault(int(label), []).append(pos)  # type: ignore[arg-type]
    return [(pos, int(labels[pos])) for _, pos in  # type: ignore[arg-type]
            _round_robin([by_label[c] for c in sorted(by_label)], num_probes)]


def _build(samples: list[tuple[int, Tensor, int | Tensor | None, Tensor | None]],
           chosen: list[tuple[int, int | None]]) -> ProbeSet:
    picked = [samples[p] for p, _ in chosen]
    images = torch.stack([img.detach().to("cpu").clone() for _, img, _, _ in picked])
    labels = torch.tensor([-1 if target is None else target for _, target in chosen], dtype=torch.long)
    ids = torch.tensor([index for index, _, _, _ in picked], dtype=torch.long)
    masks = None
    if picked and all(m is not None for _, _, _, m in picked):
        masks = torch.stack([m.detach().to("cpu", torch.float32).clone() for _, _, _, m in picked])  # type: ignore[union-attr]
    label_sets = None
    if picked and isinstance(picked[0][2], Tensor):
        label_sets = torch.stack([label for _, _, label, _ in picked])  # type: ignore[misc]
    return ProbeSet(images=images, labels=labels, ids=ids, masks=masks, label_sets=label_sets)


# ---------------------------------------------------------------------------------------------------- across ranks
def agree_on_probes(local: ProbeSet | None, error: str | None = None, *, group: Any = None
                    ) -> tuple[ProbeSet, list[int]]:
    """Make every rank explain rank 0's probe set; report the ranks whose own selection differed.

    Each rank selects its probes from its own data; a validation ``IterableDataset`` split by rank (or any per-rank
    data) then gives each rank other probes, and explaining shards of different sets draws one rank's images with
    another's maps. Rank 0's fingerprint is compared with every rank's; only if one differs is rank 0's probe set
    sent to all ranks (one object broadcast).

    A collective when ``torch.distributed`` is initialised: every rank must call it, also one whose own selection
    failed (``local=None``, ``error`` saying why): it then receives rank 0's set. If rank 0's selection failed, every
    rank raises the same ``ValueError``. Without distributed (or one rank) it returns ``(local, [])``.

    Args:
        local: this rank's probe set, or ``None`` if its selection failed.
        error: why it failed (used in the message when rank 0 failed).
        group: process group (default: the world).

    Returns:
        ``(probe set, differing ranks)``: rank 0's set on every rank, and the ranks whose own set differed from it
        (empty when all agreed), the same list on every rank.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        if local is None:
            raise ValueError(error or "no probe set")
        return local, []
    src = dist.get_global_rank(group, 0) if group is not None else 0
    is_src = dist.get_rank() == src
    head = [(local.fingerprint if local is not None else None, error) if is_src else None]
    dist.broadcast_object_list(head, src=src, group=group)
    fingerprint, src_error = head[0]
    if fingerprint is None:
        raise ValueError(f"rank 0 could not select probes: {src_error}")
    same = [None] * dist.get_world_size(group)
    dist.all_gather_object(same, local is not None and local.fingerprint == fingerprint, group=group)
    differing = [rank for rank, ok in enumerate(same) if not ok]
    if not differing:
        return local, []  # type: ignore[return-value]
    payload = [local.state_dict() if is_src else None]  # type: ignore[union-attr]
    dist.broadcast_object_list(payload, src=src, group=group)
    return ProbeSet.from_state_dict(payload[0]), differing
