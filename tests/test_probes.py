"""Probe selection: determinism, class balance, source kinds, RNG neutrality, inference tensors, errors."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from rng_checks import assert_rng_unchanged, rng_snapshot
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from lightning_xai.probes import MAX_SCAN_FACTOR, ProbeSet, select_probes

# Labels chosen so that class order of first appearance (2, 0, 1) differs from sorted order.
LABELS = torch.tensor([2, 2, 0, 2, 1, 0, 0, 2, 1, 1, 0, 2])


def _images(n: int = len(LABELS), size: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return torch.rand(n, 3, size, size, generator=g)


def _masks(n: int = len(LABELS), size: int = 6) -> torch.Tensor:
    return (_images(n, size)[:, :1] > 0.5).float()


class TupleDataset(Dataset):
    def __init__(self, images, labels, masks=None):
        self.images, self.labels, self.masks = images, labels, masks
        self.calls: list[int] = []

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.calls.append(i)
        if self.masks is None:
            return self.images[i], int(self.labels[i])
        return self.images[i], int(self.labels[i]), self.masks[i, 0]  # (H, W) mask


class DictDataset(Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"pixels": self.images[i], "target": self.labels[i], "mask": (self.images[i, :1] > 0.5), "name": f"s{i}"}


class RandomTransformDataset(TupleDataset):
    """Uses the global RNGs in __getitem__, like random augmentations."""

    def __getitem__(self, i):
        image, label = super().__getitem__(i)
        noise = torch.rand(1).item() + random.random() + float(np.random.rand())
        return image + noise, label


class Stream(IterableDataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __iter__(self):
        yield from zip(self.images, self.labels)


# ---------------------------------------------------------------------------------------------------- selection
def test_class_balanced_round_robin_in_sorted_class_order():
    probes = select_probes((_images(), LABELS), num_probes=7)
    # class 0: 2, 5, 6, 10 ; class 1: 4, 8, 9 ; class 2: 0, 1, 3, 7, 11
    assert probes.ids.tolist() == [2, 4, 0, 5, 8, 1, 6]
    assert probes.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert torch.equal(probes.images, _images()[probes.ids])
    assert probes.masks is None


def test_class_balance_counts():
    labels = torch.tensor([0] * 40 + [1] * 5 + [2] * 30)
    probes = select_probes((_images(75), labels), num_probes=16)
    counts = torch.bincount(probes.labels, minlength=3).tolist()
    assert counts == [6, 5, 5]  # 5 rounds over 3 classes, then the 16th probe from class 0
    assert probes.ids[:3].tolist() == [0, 40, 45]


def test_exhausted_small_class_is_skipped():
    labels = torch.tensor([0, 0, 0, 0, 1])
    probes = select_probes((_images(5), labels), num_probes=4)
    assert probes.ids.tolist() == [0, 4, 1, 2]


def test_fewer_samples_than_probes():
    probes = select_probes((_images(3), torch.tensor([1, 0, 1])), num_probes=16)
    assert len(probes) == 3
    assert probes.ids.tolist() == [1, 0, 2]


def test_unknown_labels_take_first_samples():
    probes = select_probes(_images(), num_probes=5)
    assert probes.ids.tolist() == [0, 1, 2, 3, 4]
    assert probes.labels.tolist() == [-1] * 5


def test_deterministic_across_calls_and_sources():
    images, masks = _images(), _masks()
    a = select_probes((images, LABELS, masks), num_probes=6)
    b = select_probes((images.clone(), LABELS.clone(), masks.clone()), num_probes=6)
    c = select_probes(TupleDataset(images, LABELS, masks), num_probes=6)
    d = select_probes(DataLoader(TupleDataset(images, LABELS, masks), batch_size=4, shuffle=True), num_probes=6)
    for other in (b, c, d):
        assert torch.equal(a.ids, other.ids)
        assert torch.equal(a.images, other.images)
        assert torch.equal(a.labels, other.labels)
        assert torch.equal(a.masks, other.masks)
        assert a.fingerprint == other.fingerprint


def test_tuple_dataset_mask_detected_and_shaped():
    images, masks = _images(), _masks()
    probes = select_probes(TupleDataset(images, LABELS, masks), num_probes=4)
    assert probes.masks is not None
    assert probes.masks.shape == (4, 1, 6, 6) and probes.masks.dtype == torch.float32
    assert torch.equal(probes.masks, masks[probes.ids])


def test_tuple_third_element_that_is_not_a_mask_is_ignored():
    ds = [(img, int(lbl), "a filename") for img, lbl in zip(_images(), LABELS)]
    probes = select_probes(ds, num_probes=3)
    assert probes.masks is None
    assert probes.ids.tolist() == [2, 4, 0]


def test_dict_items_with_keys():
    ds = DictDataset(_images(), LABELS)
    probes = select_probes(ds, num_probes=3, input_key="pixels")  # label via default "target", mask via "mask"
    assert probes.ids.tolist() == [2, 4, 0]
    assert probes.labels.tolist() == [0, 1, 2]
    assert probes.masks is not None and probes.masks.dtype == torch.float32

    by_callable = select_probes(ds, num_probes=3, input_key=lambda s: s["pixels"], label_key=lambda s: s["target"])
    assert torch.equal(by_callable.ids, probes.ids)

    with pytest.raises(TypeError, match="input_key"):
        select_probes(ds, num_probes=3)  # no default image key in this dict


def test_int_selectors():
    ds = [(int(lbl), img) for img, lbl in zip(_images(), LABELS)]
    probes = select_probes(ds, num_probes=3, input_key=1, label_key=0)
    assert probes.ids.tolist() == [2, 4, 0]
    with pytest.raises(ValueError, match="input_key"):
        select_probes(ds, num_probes=3, input_key=5, label_key=0)


def test_non_class_label_means_unknown_unless_selected_explicitly():
    ds = [(img, torch.tensor([0.2, 0.8])) for img in _images()]  # soft labels
    probes = select_probes(ds, num_probes=3)
    assert probes.labels.tolist() == [-1, -1, -1] and probes.ids.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="label_key"):
        select_probes(ds, num_probes=3, label_key=1)


def test_dataloader_over_map_style_dataset_reads_dataset_not_loader():
    ds = TupleDataset(_images(), LABELS)
    loader = DataLoader(ds, batch_size=5, shuffle=True, num_workers=0)
    before = rng_snapshot()
    probes = select_probes(loader, num_probes=3)
    assert_rng_unchanged(before)
    assert probes.ids.tolist() == [2, 4, 0]


def test_iterable_dataloader_unbatched_and_rng_neutral():
    loader = DataLoader(Stream(_images(), LABELS), batch_size=5)
    torch.manual_seed(7)
    before = rng_snapshot()
    probes = select_probes(loader, num_probes=4)
    assert_rng_unchanged(before)
    assert probes.ids.tolist() == [2, 4, 0, 5]
    assert torch.equal(probes.images, _images()[probes.ids])
    # Plain iteration would have consumed the global RNG (the loader draws its base seed): the pitfall we avoid.
    next(iter(loader))
    assert not torch.equal(before[0], torch.get_rng_state())


def test_iterable_dataset_directly():
    probes = select_probes(Stream(_images(), LABELS), num_probes=3)
    assert probes.ids.tolist() == [2, 4, 0]


def test_tensor_dataset_items():
    probes = select_probes(TensorDataset(_images(), LABELS), num_probes=3)
    assert probes.ids.tolist() == [2, 4, 0]


def test_random_transforms_are_isolated_and_repeatable():
    ds = RandomTransformDataset(_images(), LABELS)
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    before = rng_snapshot()
    a = select_probes(ds, num_probes=4, seed=3)
    assert_rng_unchanged(before)
    torch.manual_seed(99)  # a different global state must not change the probes
    b = select_probes(ds, num_probes=4, seed=3)
    assert torch.equal(a.images, b.images)
    c = select_probes(ds, num_probes=4, seed=4)
    assert not torch.equal(a.images, c.images)  # the seed drives the isolated streams


def test_max_scan_bounds_reads():
    n = 2000
    ds = TupleDataset(_images(n, size=2), torch.arange(n) % 3)
    probes = select_probes(ds, num_probes=2)
    assert len(probes) == 2
    assert max(ds.calls) < MAX_SCAN_FACTOR * 2
    assert len(ds.calls) == MAX_SCAN_FACTOR * 2
    ds.calls.clear()
    select_probes(ds, num_probes=2, max_scan=10)
    assert ds.calls == list(range(10))
    # With a small scan window, a class that only appears later is not found.
    late = TupleDataset(_images(30, size=2), torch.tensor([0] * 20 + [1] * 10))
    assert select_probes(late, num_probes=4, max_scan=20).labels.tolist() == [0, 0, 0, 0]
    assert select_probes(late, num_probes=4).labels.tolist() == [0, 1, 0, 1]


def test_inference_tensors_become_normal_tensors():
    with torch.inference_mode():
        images = _images() * 1.0
        labels = LABELS.clone()
        masks = _masks()
        assert images.is_inference()
    probes = select_probes((images, labels, masks), num_probes=4)
    for t in (probes.images, probes.labels, probes.ids, probes.masks):
        assert not t.is_inference()
    # Usable in autograd (PITFALLS 20).
    x = probes.images.clone().requires_grad_(True)
    (x * 2).sum().backward()
    # Also when called inside inference mode (e.g. from a validation hook).
    with torch.inference_mode():
        inside = select_probes((images, labels, masks), num_probes=4)
    assert not inside.images.is_inference() and not inside.labels.is_inference()
    assert torch.equal(inside.images, probes.images)


def test_outputs_are_detached_cpu_copies():
    images = _images().requires_grad_(True)
    probes = select_probes((images, LABELS), num_probes=3)
    assert not probes.images.requires_grad and probes.images.device.type == "cpu"
    probes.images.zero_()
    assert images.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------- ProbeSet
def test_fingerprint_deterministic_and_sensitive():
    a = select_probes((_images(), LABELS), num_probes=4)
    b = select_probes((_images(), LABELS), num_probes=4)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    changed_image = ProbeSet(a.images.clone(), a.labels, a.ids)
    changed_image.images[0, 0, 0, 0] += 1e-3
    changed_label = ProbeSet(a.images, a.labels.flip(0), a.ids)
    changed_ids = ProbeSet(a.images, a.labels, a.ids + 1)
    fps = {a.fingerprint, changed_image.fingerprint, changed_label.fingerprint, changed_ids.fingerprint}
    assert len(fps) == 4
    # dtype of the stored images does not matter (hashed as float32)
    assert ProbeSet(a.images.double(), a.labels, a.ids).fingerprint == a.fingerprint


def test_probe_set_len_subset_to():
    p = select_probes((_images(), LABELS, _masks()), num_probes=5)
    assert len(p) == 5
    s = p.subset(1, 3)
    assert len(s) == 2 and s.ids.tolist() == p.ids[1:3].tolist()
    assert torch.equal(s.masks, p.masks[1:3])
    assert len(p.subset(5, 5)) == 0
    q = p.to("cpu")
    assert q.fingerprint == p.fingerprint
    if torch.cuda.is_available():  # pragma: no cover - CPU CI
        assert p.to("cuda").images.is_cuda


def test_state_dict_roundtrip_weights_only(tmp_path):
    p = select_probes((_images(), LABELS, _masks()), num_probes=5)
    buf = io.BytesIO()
    torch.save(p.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    q = ProbeSet.from_state_dict(state)
    assert q.fingerprint == p.fingerprint
    assert torch.equal(q.masks, p.masks)
    no_masks = ProbeSet.from_state_dict(select_probes(_images(), num_probes=2).state_dict())
    assert no_masks.masks is None
    state["images"] = state["images"] + 1
    with pytest.raises(ValueError, match="fingerprint"):
        ProbeSet.from_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        ProbeSet.from_state_dict({"images": p.images})


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"images": torch.zeros(2, 3, 4)}, ValueError, "images"),
        ({"images": torch.zeros(2, 3, 4, 4, dtype=torch.uint8)}, TypeError, "floating"),
        ({"labels": torch.zeros(3, dtype=torch.long)}, ValueError, "labels"),
        ({"labels": torch.zeros(2)}, TypeError, "labels"),
        ({"ids": torch.zeros(2, 1, dtype=torch.long)}, ValueError, "ids"),
        ({"masks": torch.zeros(2, 3, 4, 4)}, ValueError, "masks"),
    ],
)
def test_probe_set_validation(kwargs, exc, match):
    args = {"images": torch.zeros(2, 3, 4, 4), "labels": torch.zeros(2, dtype=torch.long), "ids": torch.arange(2)}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        ProbeSet(**args)


# ---------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("source", "kwargs", "exc", "match"),
    [
        (_images(), {"num_probes": 0}, ValueError, "num_probes"),
        (_images(), {"num_probes": 2.0}, ValueError, "num_probes"),
        (_images(), {"max_scan": 0}, ValueError, "max_scan"),
        (_images(), {"input_key": 1.5}, TypeError, "input_key"),
        (_images(), {"seed": "a"}, TypeError, "seed"),
        (torch.zeros(0, 3, 4, 4), {}, ValueError, "empty"),
        ([], {}, ValueError, "empty"),
        (torch.zeros(5, 4, 4), {}, ValueError, r"\(N, C, H, W\)"),
        ((torch.zeros(5, 3, 4, 4), torch.zeros(4)), {}, ValueError, "labels"),
        ((torch.zeros(5, 3, 4, 4),), {}, ValueError, "tuple"),
        ("images.png", {}, TypeError, "source"),
        (42, {}, TypeError, "source"),
        ([(torch.zeros(4, 4), 0)], {}, ValueError, "3-D"),
        ([(torch.zeros(1, 3, 4, 4), 0)], {}, ValueError, "3-D"),
        ([(torch.zeros(3, 4, 4, dtype=torch.uint8), 0)], {}, TypeError, "floating"),
        ([("not an image", 0)], {}, TypeError, "tensor"),
        ([(torch.zeros(3, 4, 4), 0), (torch.zeros(3, 5, 5), 1)], {}, ValueError, "differs"),
        ([(torch.zeros(3, 4, 4), 0, torch.zeros(2, 4, 4))], {"mask_key": 2}, ValueError, "mask"),
    ],
)
def test_select_probes_errors(source, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        select_probes(source, **kwargs)
