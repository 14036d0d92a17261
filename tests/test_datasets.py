"""ShapesDataset: determinism, RNG neutrality, masks, shortcut marker, errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from rng_checks import assert_rng_unchanged, rng_snapshot
from torch.utils.data import DataLoader

from lightning_xai.datasets import MARKER_COLORS, SHAPE_NAMES, SHAPES_MEAN, SHAPES_STD, ShapesDataset


def test_item_types_and_shapes():
    ds = ShapesDataset(10, image_size=32, seed=0)
    image, label, mask = ds[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 4
    assert mask.shape == (1, 32, 32) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert len(ds) == 10
    assert ds.classes == ["circle", "square", "triangle", "cross"]
    assert ShapesDataset.classes == list(SHAPE_NAMES)
    assert ds[-1][1] == ds[9][1]
    assert ds[torch.tensor(3)][1] == label


def test_normalize_and_denormalize():
    raw = ShapesDataset(20, normalize=False, seed=5)
    norm = ShapesDataset(20, normalize=True, seed=5)
    x = torch.stack([raw[i][0] for i in range(20)])
    y = torch.stack([norm[i][0] for i in range(20)])
    assert x.min() >= 0 and x.max() <= 1
    mean, std = torch.tensor(SHAPES_MEAN).view(1, 3, 1, 1), torch.tensor(SHAPES_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(y, (x - mean) / std)
    torch.testing.assert_close(norm.denormalize(y), x)
    # The constants standardise the data: roughly zero mean, unit std.
    assert y.mean().abs() < 0.25 and 0.75 < y.std() < 1.25


def test_deterministic_by_seed_and_index():
    a = ShapesDataset(50, seed=3)
    b = ShapesDataset(50, seed=3)
    order = [7, 3, 49, 0, 7]
    for i in order:
        ia, la, ma = a[i]
        ib, lb, mb = b[i]
        assert la == lb and torch.equal(ia, ib) and torch.equal(ma, mb)
    other_seed = ShapesDataset(50, seed=4)
    assert not torch.equal(a[7][0], other_seed[7][0])
    assert not torch.equal(a[7][0], a[8][0])
    # A longer dataset with the same seed has the same first items.
    assert torch.equal(ShapesDataset(500, seed=3)[7][0], a[7][0])


def test_global_rng_untouched_and_irrelevant():
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    before = rng_snapshot()
    ds = ShapesDataset(40, seed=1, shortcut_strength=0.5)
    items = [ds[i] for i in range(40)]
    ds.marker_mask(3)
    ds.sample(4)
    assert_rng_unchanged(before)
    torch.manual_seed(12345)
    again = [ShapesDataset(40, seed=1, shortcut_strength=0.5)[i] for i in range(40)]
    for (x, y, m), (x2, y2, m2) in zip(items, again):
        assert y == y2 and torch.equal(x, x2) and torch.equal(m, m2)


def test_labels_balanced_per_block():
    for num_classes in (2, 4, 6):
        ds = ShapesDataset(6 * num_classes, num_classes=num_classes, seed=2, image_size=16)
        labels = [ds.label(i) for i in range(len(ds))]
        for start in range(0, len(ds), num_classes):
            assert sorted(labels[start : start + num_classes]) == list(range(num_classes))
        blocks = [labels[s : s + num_classes] for s in range(0, len(ds), num_classes)]
        assert len({tuple(b) for b in blocks}) > 1  # shuffled within blocks, not a fixed cycle
        assert all(ds[i][1] == labels[i] for i in range(num_classes))


def test_mask_covers_the_shape():
    ds = ShapesDataset(60, image_size=32, seed=7, normalize=False)
    inside_std, contrast, areas = [], [], []
    for i in range(len(ds)):
        image, _, mask = ds[i]
        m = mask[0].bool()
        areas.append(m.float().mean().item())
        inside = image[:, m]
        # pixels just outside the shape: dilate the mask by 2 px and remove the mask
        ring = torch.nn.functional.max_pool2d(mask[None], 5, stride=1, padding=2)[0, 0].bool() & ~m
        outside = image[:, ring]
        inside_std.append(inside.std(dim=1).mean().item())
        contrast.append((inside.mean(dim=1) - outside.mean(dim=1)).abs().max().item())
    areas_t = torch.tensor(areas)
    assert areas_t.min() > 0.03 and areas_t.max() < 0.5, areas_t
    # inside the mask: one flat colour plus pixel noise; right outside: a different colour
    assert torch.tensor(inside_std).median() < 0.08
    assert torch.tensor(contrast).median() > 0.2
    assert (torch.tensor(contrast) > 0.1).float().mean() > 0.9


def test_every_shape_class_renders_at_both_sizes():
    for size in (16, 32, 64):
        ds = ShapesDataset(12, num_classes=6, image_size=size, seed=0)
        seen = {}
        for i in range(12):
            _, label, mask = ds[i]
            assert mask.sum() > 0
            seen.setdefault(label, mask)
        assert sorted(seen) == list(range(6))


def test_marker_class_counter_none():
    clean = ShapesDataset(24, seed=11, normalize=False)
    ds = ShapesDataset(24, seed=11, normalize=False, shortcut_strength=1.0, marker="class")
    for mode in ("class", "counter", "none"):
        ds.set_shortcut(1.0, mode)
        for i in range(24):
            image, label, mask = ds[i]
            clean_image, clean_label, clean_mask = clean[i]
            assert label == clean_label and torch.equal(mask, clean_mask)  # the marker is never part of the mask
            mm = ds.marker_mask(i)
            sample = ds.sample(i)
            assert torch.equal(sample["marker_mask"], mm) and torch.equal(sample["image"], image)
            if mode == "none":
                assert mm.sum() == 0 and sample["marker_class"] == -1
                assert torch.equal(image, clean_image)
                continue
            expected_cls = label if mode == "class" else (label + 1) % 4
            assert sample["marker_class"] == ds.marker_class(i) == expected_cls
            assert mm.sum() == ds.marker_size**2
            assert torch.equal(mm, ds.marker_region(expected_cls))
            on = mm[0].bool()
            # a checkerboard of the marker colour and black on the marker, everything else untouched
            color = torch.tensor(MARKER_COLORS[expected_cls]).view(3, 1)
            yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
            lit = ((yy + xx) % 2 == 0)[on]
            assert torch.equal(image[:, on][:, lit], color.expand(3, int(lit.sum())))
            assert torch.equal(image[:, on][:, ~lit], torch.zeros(3, int((~lit).sum())))
            assert torch.equal(image[:, ~on], clean_image[:, ~on])
            assert (mm * mask).sum() == 0  # the marker does not occlude the shape


@pytest.mark.parametrize(("image_size", "n"), [(16, 200), (32, 300), (48, 100)])
def test_marker_never_overlaps_any_shape(image_size, n):
    ds = ShapesDataset(n, seed=2, image_size=image_size)
    regions = torch.stack([ds.marker_region(c) for c in range(ds.num_classes)]).amax(0)
    # a 1-px dilation of the marker squares stays clear of every shape
    regions = torch.nn.functional.max_pool2d(regions[None], 3, stride=1, padding=1)[0]
    for i in range(len(ds)):
        assert (ds[i][2] * regions).sum() == 0, i


def test_distinct_markers_per_class():
    ds = ShapesDataset(4, num_classes=6, image_size=32)
    regions = [ds.marker_region(c) for c in range(6)]
    for c in range(4):
        for d in range(c + 1, 4):
            assert (regions[c] * regions[d]).sum() == 0  # 4 corners for the first 4 classes
    assert len(set(MARKER_COLORS[:6])) == 6


def test_shortcut_strength_is_a_probability_and_monotone():
    ds = ShapesDataset(400, seed=0, image_size=16, shortcut_strength=0.5)
    half = {i for i in range(400) if ds.marker_class(i) >= 0}
    assert 150 < len(half) < 250
    ds.set_shortcut(0.8)
    more = {i for i in range(400) if ds.marker_class(i) >= 0}
    assert half < more  # raising the strength only adds markers
    ds.set_shortcut(0.0)
    assert all(ds.marker_class(i) == -1 for i in range(400))


def test_set_shortcut_reaches_a_single_process_dataloader():
    ds = ShapesDataset(8, seed=0, image_size=16, normalize=False)
    loader = DataLoader(ds, batch_size=8, num_workers=0)
    _, _, _ = next(iter(loader))
    first = next(iter(loader))[0]
    ds.set_shortcut(1.0, "class")
    second = next(iter(loader))[0]
    assert not torch.equal(first, second)
    assert ds.marker == "class" and ds.shortcut_strength == 1.0
    ds.set_shortcut(0.5)  # keeps the mode
    assert ds.marker == "class"


def test_many_items_are_distinct():
    ds = ShapesDataset(300, image_size=32, seed=9)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    flat = images.flatten(1)
    assert torch.unique(flat, dim=0).shape[0] == 300


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": -1}, "num_samples"),
        ({"num_samples": 2.5}, "num_samples"),
        ({"image_size": 8}, "image_size"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 7}, "num_classes"),
        ({"seed": 1.0}, "seed"),
        ({"shortcut_strength": 1.5}, "shortcut_strength"),
        ({"shortcut_strength": True}, "shortcut_strength"),
        ({"marker": "corner"}, "marker"),
        ({"marker_size": 1}, "marker_size"),
        ({"marker_size": 20, "image_size": 32}, "marker_size"),
        ({"normalize": "yes"}, "normalize"),
    ],
)
def test_constructor_errors(kwargs, match):
    args = {"num_samples": 4}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ShapesDataset(**args)


def test_other_errors():
    ds = ShapesDataset(4)
    with pytest.raises(IndexError):
        ds[4]
    with pytest.raises(IndexError):
        ds[-5]
    with pytest.raises(TypeError):
        ds[1.0]
    with pytest.raises(ValueError, match="shortcut_strength"):
        ds.set_shortcut(-0.1)
    with pytest.raises(ValueError, match="marker"):
        ds.set_shortcut(0.5, "both")
    with pytest.raises(ValueError, match="class_index"):
        ds.marker_region(4)
    assert ds.shortcut_strength == 0.0 and ds.marker == "class"  # failed calls change nothing
