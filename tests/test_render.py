"""Tests for lightning_xai.render: normalisation, colormaps, overlays, captions, grids."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_xai.render import (
    COLORMAPS,
    DEGENERATE_MARKER,
    apply_colormap,
    caption,
    caption_height,
    colormap_lut,
    default_font_size,
    denormalize,
    make_overlay_grid,
    normalize_maps,
    overlay,
    overlay_grid_size,
    upscale_factor,
)


def gaussian_map(size: int = 32, center: tuple[float, float] = (6.0, 6.0), sigma: float = 4.0) -> torch.Tensor:
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    return torch.exp(-((yy - center[0]) ** 2 + (xx - center[1]) ** 2) / (2 * sigma**2)).view(1, 1, size, size)


def red_probe(n: int = 1, size: int = 32) -> torch.Tensor:
    img = torch.zeros(n, 3, size, size)
    img[:, 0] = 1.0
    return img


# ------------------------------------------------------------------------------------------------- normalize
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_normalize_min_max(dtype):
    maps = torch.tensor([[1.0, 2.0], [3.0, 5.0]], dtype=dtype).view(1, 1, 2, 2)
    out, degenerate = normalize_maps(maps)
    assert out.dtype == torch.float32 and out.shape == (1, 1, 2, 2)
    torch.testing.assert_close(out.view(-1), torch.tensor([0.0, 0.25, 0.5, 1.0]))
    assert degenerate.tolist() == [False]


def test_normalize_per_image():
    maps = torch.stack([torch.linspace(0, 1, 16), torch.linspace(-100, 300, 16)]).view(2, 1, 4, 4)
    out, degenerate = normalize_maps(maps)
    torch.testing.assert_close(out[0], out[1])
    assert out[1].min() == 0 and out[1].max() == 1
    assert not degenerate.any()


@pytest.mark.parametrize(
    "fill",
    [0.0, 7.5, -3.0, 1e30, float("nan"), float("inf"), float("-inf")],
    ids=["zero", "flat", "negative", "huge", "nan", "inf", "-inf"],
)
def test_normalize_degenerate_never_nan(fill):
    maps = torch.full((3, 1, 5, 5), fill)
    out, degenerate = normalize_maps(maps)
    assert torch.isfinite(out).all()
    assert (out == 0).all()
    assert degenerate.tolist() == [True, True, True]


def test_normalize_almost_flat_is_degenerate_but_small_scale_is_not():
    flat = torch.full((1, 1, 4, 4), 1000.0)
    flat[0, 0, 0, 0] += 1e-5  # rounding noise relative to the values
    tiny = torch.zeros(1, 1, 4, 4)
    tiny[0, 0, 1, 1] = 1e-30  # small but a real, relative structure
    out, degenerate = normalize_maps(torch.cat([flat, tiny]))
    assert degenerate.tolist() == [True, False]
    assert out[1, 0, 1, 1] == 1.0 and out[1].sum() == 1.0


def test_normalize_partial_nonfinite_set_to_zero():
    maps = torch.tensor([[float("nan"), 1.0], [float("inf"), 3.0]]).view(1, 1, 2, 2)
    out, degenerate = normalize_maps(maps)
    assert degenerate.tolist() == [False]
    torch.testing.assert_close(out.view(-1), torch.tensor([0.0, 1 / 3, 0.0, 1.0]))


def test_normalize_extreme_range_no_overflow():
    maps = torch.tensor([-3e38, 3e38, 0.0, 1.5e38]).view(1, 1, 2, 2)
    out, degenerate = normalize_maps(maps)
    assert torch.isfinite(out).all() and not degenerate.any()
    torch.testing.assert_close(out.view(-1), torch.tensor([0.0, 1.0, 0.5, 0.75]))


def test_normalize_bad_input():
    with pytest.raises(ValueError, match="maps"):
        normalize_maps(torch.zeros(2, 3, 4, 4))
    with pytest.raises(TypeError, match="maps"):
        normalize_maps([[0.0]])
    with pytest.raises(ValueError, match="eps"):
        normalize_maps(torch.zeros(1, 1, 2, 2), eps=-1.0)


# ------------------------------------------------------------------------------------------------- colormaps
def test_colormap_endpoints():
    ends = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
    jet = apply_colormap(ends, "jet")[:, :, 0, 0]
    assert jet.shape == (2, 3)
    r0, g0, b0 = jet[0].tolist()
    r1, g1, b1 = jet[1].tolist()
    assert b0 >= 0.5 and r0 < 0.1 and g0 < 0.1  # blue end
    assert r1 >= 0.5 and g1 < 0.1 and b1 < 0.1  # red end
    mid = apply_colormap(torch.full((1, 1, 1, 1), 0.5), "jet")[0, :, 0, 0]
    assert mid[1] > 0.9  # green-ish middle
    inferno = apply_colormap(ends, "inferno")[:, :, 0, 0]
    assert inferno[0].max() < 0.05 and inferno[1].min() > 0.6  # black -> pale yellow
    viridis = apply_colormap(ends, "viridis")[:, :, 0, 0]
    assert viridis[0, 2] > viridis[0, 1] and viridis[1, 0] > 0.9 and viridis[1, 2] < 0.2  # purple -> yellow


@pytest.mark.parametrize("name", COLORMAPS)
def test_colormap_lut_matches_matplotlib(name):
    matplotlib = pytest.importorskip("matplotlib")
    ours = colormap_lut(name)
    ref = torch.tensor(matplotlib.colormaps[name](torch.arange(256).numpy())[:, :3], dtype=torch.float32)
    assert ours.shape == (256, 3)
    tol = 1e-4 if name == "jet" else 7 / 255  # jet is exact; the others interpolate 17 anchors
    assert (ours - ref).abs().max() < tol


@pytest.mark.parametrize("name", COLORMAPS)
def test_colormap_range_and_nonfinite(name):
    maps = torch.tensor([-1.0, 0.0, 0.3, 1.0, 2.0, float("nan"), float("inf")]).view(1, 1, 1, 7)
    rgb = apply_colormap(maps, name)
    assert rgb.shape == (1, 3, 1, 7) and rgb.dtype == torch.float32
    assert rgb.min() >= 0 and rgb.max() <= 1 and torch.isfinite(rgb).all()
    torch.testing.assert_close(rgb[..., 0], rgb[..., 1])  # clamped below
    torch.testing.assert_close(rgb[..., 4], rgb[..., 3])  # clamped above
    torch.testing.assert_close(rgb[..., 5], rgb[..., 1])  # nan -> 0
    torch.testing.assert_close(rgb[..., 6], rgb[..., 1])  # inf -> 0


def test_colormap_bad_name():
    with pytest.raises(ValueError, match="colormap.*hot"):
        apply_colormap(torch.zeros(1, 1, 2, 2), "hot")
    with pytest.raises(ValueError, match="colormap"):
        overlay(torch.zeros(1, 3, 2, 2), torch.zeros(1, 1, 2, 2), colormap="Jet")


# ------------------------------------------------------------------------------------------------ denormalize
def test_denormalize_mean_std_and_clamp():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.1, 0.5)
    target = torch.rand(2, 3, 4, 4)
    normed = (target - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(denormalize(normed, mean, std), target)
    out = denormalize(torch.tensor([-5.0, 5.0, float("nan")]).view(1, 1, 1, 3))
    assert out.shape == (1, 3, 1, 3)
    assert out[0, :, 0].tolist() == [[0.0, 1.0, 0.0]] * 3


def test_denormalize_uint8_and_grayscale():
    img = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    out = denormalize(img)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 1, 3)
    torch.testing.assert_close(out[0, 2, 0], torch.tensor([0.0, 0.2, 1.0]))
    with pytest.raises(ValueError, match="uint8"):
        denormalize(img, mean=[0.5])


def test_denormalize_bad_args():
    with pytest.raises(ValueError, match="images"):
        denormalize(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="mean"):
        denormalize(torch.zeros(1, 3, 4, 4), mean=(0.1, 0.2))
    with pytest.raises(ValueError, match="std"):
        denormalize(torch.zeros(1, 3, 4, 4), std=(0.1, 0.0, 0.2))
    with pytest.raises(TypeError, match="images"):
        denormalize(torch.zeros(1, 3, 4, 4, dtype=torch.int64))


# ---------------------------------------------------------------------------------------------------- overlay
def test_red_probe_flat_map_is_red():
    out, degenerate = overlay(red_probe(2), torch.zeros(2, 1, 8, 8))
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 32, 32)
    assert degenerate.tolist() == [True, True]
    assert (out[:, 0] == 255).all() and (out[:, 1:] == 0).all()


def test_red_probe_normalised_with_mean_std_is_red():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    normed = (red_probe() - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out, _ = overlay(normed, torch.zeros(1, 1, 32, 32), mean=mean, std=std)
    assert (out[0, 0] == 255).all() and (out[0, 1:] == 0).all()


def test_hot_spot_top_left():
    grey = torch.full((1, 3, 32, 32), 0.5)
    out, degenerate = overlay(grey, gaussian_map(32, center=(6.0, 6.0)))
    assert not degenerate.any()
    redness = out[0, 0].float() - out[0, 2].float()
    y, x = divmod(int(redness.argmax()), 32)
    assert y < 10 and x < 10
    assert redness[3:10, 3:10].mean() > 40  # hot: red end of jet
    assert redness[24:, 24:].mean() < -40  # cold: blue end of jet


def test_overlay_resizes_heatmap_and_blends():
    grey = torch.full((1, 1, 64, 48), 0.5)  # grayscale, non-square
    small = gaussian_map(8, center=(7.0, 7.0), sigma=1.0)  # hot spot bottom-right, 8x8
    out, _ = overlay(grey, small, alpha=0.5)
    assert out.shape == (1, 3, 64, 48)
    redness = out[0, 0].float() - out[0, 2].float()
    y, x = divmod(int(redness.argmax()), 48)
    assert y > 48 and x > 36
    plain, _ = overlay(grey, small, alpha=0.0)
    assert (plain == 128).all()


def test_overlay_nan_map_finite_output():
    maps = torch.full((1, 1, 8, 8), float("nan"))
    out, degenerate = overlay(torch.rand(1, 3, 8, 8), maps)
    assert degenerate.tolist() == [True]
    assert out.dtype == torch.uint8


def test_overlay_bad_args():
    with pytest.raises(ValueError, match="alpha"):
        overlay(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4), alpha=1.5)
    with pytest.raises(ValueError, match="one map per image"):
        overlay(torch.zeros(2, 3, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="heatmaps"):
        overlay(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))


# ---------------------------------------------------------------------------------------------------- caption
def test_caption_height_and_pixels():
    img = torch.full((3, 96, 96), 128, dtype=torch.uint8)
    out = caption(img, ["y=cat  p=dog 0.87"])
    h = caption_height(96, 1)
    assert h > 8 and out.shape == (3, 96 + h, 96) and out.dtype == torch.uint8
    assert torch.equal(out[:, :96], img)
    strip = out[:, 96:]
    assert (strip == 0).float().mean() > 0.5  # mostly black background
    assert (strip > 200).sum() > 20  # white text drawn
    two = caption(img, ["y=cat", DEGENERATE_MARKER])
    assert two.shape[1] == 96 + caption_height(96, 2) > out.shape[1]
    assert torch.equal(caption(img, []), img)


def test_caption_text_changes_pixels_and_truncates():
    img = torch.zeros(3, 40, 96, dtype=torch.uint8)
    a = caption(img, ["y=cat"])
    b = caption(img, ["y=dog"])
    assert not torch.equal(a, b)
    long = caption(img, ["x" * 200])
    assert long.shape == a.shape
    lit_cols = (long[:, 40:] > 100).any(dim=0).any(dim=0).nonzero()
    assert lit_cols.max() < 96  # stays inside the image
    bigger = caption(img, ["y=cat"], font_size=20)
    assert bigger.shape[1] > a.shape[1]


def test_caption_bad_args():
    with pytest.raises(ValueError, match="image"):
        caption(torch.zeros(3, 8, 8), ["a"])
    with pytest.raises(TypeError, match="lines"):
        caption(torch.zeros(3, 8, 8, dtype=torch.uint8), "a")
    with pytest.raises(ValueError, match="font_size"):
        caption(torch.zeros(3, 8, 8, dtype=torch.uint8), ["a"], font_size=0)


# ------------------------------------------------------------------------------------------------------- grid
@pytest.mark.parametrize("n", [1, 5, 8, 16])
@pytest.mark.parametrize("size", [(32, 32), (28, 28), (100, 60)])
def test_grid_size_formula(n, size):
    h, w = size
    images, maps = torch.rand(n, 3, h, w), torch.rand(n, 1, 7, 7)
    grid = make_overlay_grid(images, maps, ["y=cat  p=dog 0.87"] * n, nrow=4, padding=3)
    k = upscale_factor(h, w, 96)
    assert k == max(1, math.ceil(96 / min(h, w)))
    cell_h, cell_w = k * h + caption_height(k * w, 1), k * w
    ncol, nrows = min(4, n), math.ceil(n / min(4, n))
    expected = (nrows * (cell_h + 3) + 3, ncol * (cell_w + 3) + 3)
    assert grid.dtype == torch.uint8 and grid.shape == (3, *expected)
    assert overlay_grid_size(n, size, nrow=4, padding=3, caption_lines=1) == expected


def test_grid_documented_example_size():
    grid = make_overlay_grid(torch.rand(16, 3, 32, 32), torch.rand(16, 1, 8, 8), ["y=cat  p=dog 0.87"] * 16)
    assert grid.shape == (3, 232, 786)
    assert default_font_size(96) == 10 and caption_height(96, 1) == 17


def test_grid_red_probe_flat_map_and_padding():
    grid = make_overlay_grid(red_probe(2), torch.zeros(2, 1, 4, 4), ["y=red  p=red 0.99"] * 2, pad_value=255)
    lines = 2  # caption + flat-map marker
    cell_h = 96 + caption_height(96, lines)
    assert grid.shape == (3, cell_h + 4, 2 * 98 + 2)
    tile = grid[:, 2 : 2 + 96, 2 : 2 + 96]
    assert (tile[0] == 255).all() and (tile[1:] == 0).all()
    assert (grid[:, :2] == 255).all()  # white padding
    strip = grid[:, 2 + 96 : 2 + cell_h, 2 : 2 + 96]
    assert (strip > 200).sum() > 20  # caption text drawn


def test_grid_hot_spot_top_left_after_upscale():
    grid = make_overlay_grid(torch.full((1, 3, 32, 32), 0.5), gaussian_map(32), None, padding=2)
    assert grid.shape == (3, 96 + 4, 96 + 4)  # no captions: no strip
    tile = grid[:, 2:98, 2:98].float()
    redness = tile[0] - tile[2]
    y, x = divmod(int(redness.argmax()), 96)
    assert y < 30 and x < 30


def test_grid_caption_lines_fixed_size():
    images, maps = torch.rand(3, 3, 32, 32), torch.rand(3, 1, 8, 8)
    maps[1] = 0.0  # degenerate -> would add a marker line
    grid = make_overlay_grid(images, maps, ["y=1 p=2 0.5"] * 3, caption_lines=1)
    assert grid.shape[1:] == overlay_grid_size(3, (32, 32), caption_lines=1)
    default = make_overlay_grid(images, maps, ["y=1 p=2 0.5"] * 3)
    assert default.shape[1:] == overlay_grid_size(3, (32, 32), caption_lines=2)
    # the merged line shows the marker first: the cell differs from a non-degenerate caption
    nondeg = make_overlay_grid(images[1:2], maps[0:1], ["y=1 p=2 0.5"], caption_lines=1)
    assert not torch.equal(grid[:, 98:115, 100:196], nondeg[:, 98:115, 2:98])


def test_grid_grayscale_uint8_inferno_no_upscale():
    images = torch.randint(0, 256, (3, 1, 20, 20), dtype=torch.uint8)
    grid = make_overlay_grid(
        images,
        torch.rand(3, 1, 20, 20),
        [["a", "b"], ["c"], []],
        colormap="inferno",
        upscale_to=None,
        nrow=3,
        font_size=9,
    )
    assert grid.shape[1:] == overlay_grid_size(3, (20, 20), nrow=3, upscale_to=None, caption_lines=2, font_size=9)


def test_grid_bad_args():
    images, maps = torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
    for kwargs, name in [
        ({"nrow": 0}, "nrow"),
        ({"padding": -1}, "padding"),
        ({"upscale_to": 0}, "upscale_to"),
        ({"pad_value": 256}, "pad_value"),
        ({"caption_lines": -1}, "caption_lines"),
    ]:
        with pytest.raises(ValueError, match=name):
            make_overlay_grid(images, maps, **kwargs)
    with pytest.raises(ValueError, match="captions"):
        make_overlay_grid(images, maps, ["only one"])
    with pytest.raises(TypeError, match="captions"):
        make_overlay_grid(images, maps, "not a list")
    with pytest.raises(ValueError, match="at least one"):
        make_overlay_grid(images[:0], maps[:0])


def test_caption_old_pillow_bitmap_font(monkeypatch):
    """Pillow < 10.1 (or no FreeType): load_default() takes no size and gives a latin-1 bitmap font."""
    from PIL import ImageFont

    import lightning_xai.render.text as caption_module

    bitmap = ImageFont.load_default_imagefont()

    def old_load_default(*args, **kwargs):
        if args or kwargs:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return bitmap

    monkeypatch.setattr(caption_module.ImageFont, "load_default", old_load_default)
    caption_module._font.cache_clear()
    try:
        img = torch.zeros(3, 32, 96, dtype=torch.uint8)
        out = caption(img, ["y=chat \u732b  p=dog 0.87", "x" * 100])
        assert out.shape == (3, 32 + caption_height(96, 2), 96)
        assert (out[:, 32:] > 200).sum() > 20
    finally:
        caption_module._font.cache_clear()
