"""Tests for the monitor's overlay panel, tiles, PNG encoder and timelines (lightning_xai.render)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_xai.render import (
    FLAG_COLOR,
    ProbeRenderer,
    Timeline,
    compose_panel,
    display_order,
    encode_png,
    id_range,
    overlay,
    overlay_panel,
    overlay_tiles,
    select_epochs,
    tile_shape,
)
from lightning_xai.render.panel import BACKGROUND, GAP
from lightning_xai.render.text import CAPTION_PADDING, line_height


def hot_corner_maps(n: int, size: int = 8) -> torch.Tensor:
    maps = torch.zeros(n, 1, size, size)
    maps[:, :, 0, 0] = 1.0
    return maps


def test_tiles_equal_overlay_at_native_size_and_enlarge_crisply():
    images, maps = torch.rand(3, 3, 32, 32), torch.rand(3, 1, 8, 8)
    maps[1] = 0.0  # flat
    tiles, degenerate = overlay_tiles(images, maps, tile=32)
    reference, ref_degenerate = overlay(images, maps)
    assert torch.equal(tiles.contiguous(), reference) and degenerate.tolist() == ref_degenerate.tolist() == [
        False, True, False]
    big, _ = overlay_tiles(images, maps, tile=64)  # integer enlargement: every pixel repeated 2x2
    assert big.shape == (3, 3, 64, 64)
    assert torch.equal(big[:, :, ::2, ::2], tiles) and torch.equal(big[:, :, 1::2, 1::2], tiles)


@pytest.mark.parametrize("size,tile,expected", [((224, 224), 64, (64, 64)), ((28, 20), 64, (64, 46)),
                                                 ((32, 32), 64, (64, 64)), ((100, 50), 48, (48, 24))])
def test_tile_shape_and_resized_tiles(size, tile, expected):
    assert tile_shape(*size, tile) == expected
    tiles, _ = overlay_tiles(torch.rand(2, 1, *size), torch.rand(2, 1, 7, 7), tile=tile)
    assert tiles.shape == (2, 3, *expected) and tiles.dtype == torch.uint8


def test_red_probe_flat_map_stays_red_and_hot_spot_lands_top_left():
    red = torch.zeros(2, 3, 32, 32)
    red[:, 0] = 1.0
    maps = hot_corner_maps(2)
    maps[1] = 0.0
    tiles, degenerate = ProbeRenderer(red, tile=64).tiles(maps)
    assert degenerate.tolist() == [False, True]
    assert torch.equal(tiles[1, :, 0, 0], torch.tensor([255, 0, 0], dtype=torch.uint8))  # plain image
    top_left, bottom_right = tiles[0, :, :8, :8].float().mean((1, 2)), tiles[0, :, -8:, -8:].float().mean((1, 2))
    assert top_left[0] > 200 and bottom_right[2] > top_left[2]  # jet: red where the map is high, blue elsewhere


def test_panel_layout_outline_title_and_text():
    images = torch.rand(6, 3, 32, 32)
    maps = torch.rand(6, 1, 8, 8)
    plain = overlay_panel(images, maps, [["#0 cat", "p=dog .9"]] * 6, ncol=4)
    lh = line_height(10)
    assert plain.shape == (3, 2 * (64 + 2 * lh + CAPTION_PADDING + GAP) + GAP, 4 * (64 + GAP) + GAP) == (3, 2 * (
        64 + 2 * lh + CAPTION_PADDING + GAP) + GAP, 276)
    flagged = overlay_panel(images, maps, [["#0 cat", "p=dog .9"]] * 6, ncol=4, flagged=[False, True, *[False] * 4],
                            title="grad_cam  epoch 3")
    hwc = flagged.permute(1, 2, 0)
    title_h = flagged.shape[1] - plain.shape[1]
    assert title_h > 10
    # the title line has text pixels; the flagged (second) tile has an outline in the gap left of it
    assert (hwc[:title_h].int().sum(-1) > 3 * 120).any()
    x_gap = 64 + GAP + 1
    assert torch.equal(hwc[title_h + GAP + 10, x_gap], torch.tensor(FLAG_COLOR, dtype=torch.uint8))
    assert torch.equal(hwc[title_h + GAP + 10, 1], torch.tensor(BACKGROUND, dtype=torch.uint8))  # first: none
    # caption rows hold text (bright pixels) below each tile
    cap = hwc[title_h + GAP + 64 : title_h + GAP + 64 + 24, GAP : GAP + 64]
    assert (cap.int().sum(-1) > 3 * 150).sum() > 20


def test_panel_marks_a_flat_map_and_truncates_long_text():
    images, maps = torch.rand(2, 3, 32, 32), torch.rand(2, 1, 8, 8)
    maps[0] = float("nan")
    long = ["y=" + "x" * 80, "p=" + "y" * 80]
    panel = overlay_panel(images, maps, [long, long])
    assert panel.shape[2] == 2 * (64 + GAP) + GAP
    tiles = panel.permute(1, 2, 0)[GAP : GAP + 64]
    band = tiles[-12:, GAP : GAP + 64].float()
    assert band.mean() < tiles[-12:, 2 * GAP + 64 : 2 * GAP + 128].float().mean()  # darkened "flat map" band


def test_compose_panel_bad_args():
    tiles = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="tiles"):
        compose_panel(tiles.float())
    with pytest.raises(ValueError, match="captions"):
        compose_panel(tiles, [["a"]])
    with pytest.raises(ValueError, match="flagged"):
        compose_panel(tiles, flagged=[True])
    with pytest.raises(ValueError, match="ncol"):
        compose_panel(tiles, ncol=0)
    with pytest.raises(TypeError, match="caption line"):
        compose_panel(tiles, [[("a", "red")], ["b"]])
    with pytest.raises(ValueError, match="tile"):
        ProbeRenderer(torch.rand(2, 3, 8, 8), tile=4)
    with pytest.raises(ValueError, match="one map per probe"):
        ProbeRenderer(torch.rand(2, 3, 8, 8)).tiles(torch.rand(3, 1, 8, 8))


@pytest.mark.parametrize("shape", [(3, 1, 1), (3, 7, 5), (3, 64, 97)])
def test_encode_png_round_trip(shape):
    img = torch.randint(0, 256, shape, dtype=torch.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(img))).convert("RGB"))
    assert np.array_equal(decoded, img.permute(1, 2, 0).numpy())
    view = img.permute(1, 2, 0).contiguous().permute(2, 0, 1)  # non-contiguous input
    assert encode_png(view) == encode_png(img)


def test_encode_png_bad_args():
    with pytest.raises(ValueError, match="img"):
        encode_png(torch.zeros(4, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="level"):
        encode_png(torch.zeros(3, 2, 2, dtype=torch.uint8), level=10)


def test_select_epochs_keeps_ends_and_flags():
    assert select_epochs([3, 1, 2], [], 5) == [1, 2, 3]
    chosen = select_epochs(list(range(100)), [40, 41], 6)
    assert len(chosen) == 6 and {0, 99, 40, 41} <= set(chosen)


def test_timeline_rows_columns_and_flags():
    renderer = ProbeRenderer(torch.rand(3, 3, 16, 16), tile=32)
    timeline = Timeline(max_columns=4, keep_epochs=6)
    for epoch in range(8):
        maps = hot_corner_maps(3) if epoch < 5 else hot_corner_maps(3).flip(-1)
        tiles, _ = renderer.tiles(maps)
        timeline.add("grad_cam", epoch, tiles, flagged=[epoch == 5, False, False])
    kept = timeline.epochs("grad_cam")
    assert len(kept) == 6 and 0 in kept and 5 in kept and 7 in kept  # first, flagged and last survive thinning
    img = timeline.image("grad_cam", ["#0", "#1", "#2"])
    assert img.dtype == torch.uint8 and img.shape[0] == 3
    hwc = img.permute(1, 2, 0)
    assert (hwc.reshape(-1, 3) == torch.tensor(FLAG_COLOR, dtype=torch.uint8)).all(-1).sum() > 4 * 32
    assert img.shape[2] == max(48, 32) + 4 * (32 + GAP) + GAP  # 4 epoch columns after the label column
    with pytest.raises(ValueError, match="saliency"):
        timeline.image("saliency")
    with pytest.raises(ValueError, match="changed shape"):
        timeline.add("grad_cam", 9, torch.zeros(3, 3, 8, 8, dtype=torch.uint8))


def test_render_equals_panel_and_returns_the_tiles():
    renderer = ProbeRenderer(torch.rand(5, 3, 32, 32), tile=64)
    maps = torch.rand(5, 1, 8, 8)
    captions = [["#1 a", "p=b .5"]] * 5
    panel, tiles = renderer.render(maps, captions, title="x", flagged=[True, False, False, False, True])
    assert torch.equal(panel, renderer.panel(maps, captions, title="x", flagged=[True, False, False, False, True]))
    assert torch.equal(tiles, renderer.tiles(maps)[0]) and tiles.shape == (5, 3, 64, 64)


def test_render_groups_of_eight_fill_the_card_and_keep_all_tiles():
    renderer = ProbeRenderer(torch.rand(11, 3, 32, 32), tile=64)
    maps = torch.rand(11, 1, 8, 8)
    flags = [i == 9 for i in range(11)]
    panels, tiles = renderer.render_groups(maps, [["#1 a", "p=b .5"]] * 11, title="grad_cam | epoch 2", flagged=flags,
                                           caption_lines=2)
    assert [(start, stop) for _, start, stop in panels] == [(0, 8), (8, 11)]
    first, second = panels[0][0], panels[1][0]
    assert first.shape[2] == 276 and first.shape[1] < 220  # 4 x 2 tiles: TensorBoard's card shows it at full size
    assert second.shape[1] < first.shape[1] and second.shape[2] == 3 * (64 + GAP) + GAP  # one row of 3
    assert torch.equal(tiles, renderer.tiles(maps)[0])
    hwc = second.permute(1, 2, 0)  # probe 10 (index 9) is the second tile of the second panel: outlined
    outline = (hwc.reshape(-1, 3) == torch.tensor(FLAG_COLOR, dtype=torch.uint8)).all(-1).sum()
    assert outline > 4 * 64 and not (first.permute(1, 2, 0).reshape(-1, 3) == torch.tensor(
        FLAG_COLOR, dtype=torch.uint8)).all(-1).any()


def test_panels_and_timeline_follow_probe_ids_and_titles_name_them():
    images = torch.rand(11, 3, 16, 16)
    renderer = ProbeRenderer(images, tile=32)
    ids = [5, 1, 2, 3, 0, 10, 9, 8, 7, 6, 4]
    maps = torch.rand(11, 1, 4, 4)
    captions = [[f"#{i} a", "p=b .5"] for i in ids]
    panels, tiles = renderer.render_groups(maps, captions, title="grad_cam | epoch 2", caption_lines=2, ids=ids)
    assert display_order(ids, 11) == [4, 1, 2, 3, 10, 0, 9, 8, 7, 6, 5]
    assert [(start, stop) for _, start, stop in panels] == [(0, 8), (8, 11)]
    assert torch.equal(tiles, renderer.tiles(maps)[0])  # the probes' own order, for the timeline
    # the first panel holds ids 0-7 in order: it is the panel of those tiles, titled with their ids
    expected = compose_panel(tiles[[4, 1, 2, 3, 10, 0, 9, 8]], [captions[i] for i in [4, 1, 2, 3, 10, 0, 9, 8]],
                             title="grad_cam | epoch 2 | #0-#7 of 11", caption_lines=2)
    assert torch.equal(panels[0][0], expected)
    assert id_range([8, 9, 10]) == "#8-#10" and id_range([4]) == "#4"

    timeline = Timeline()
    timeline.add("grad_cam", 0, tiles)
    sorted_rows = timeline.image("grad_cam", [f"#{i}" for i in ids], ids=ids)
    timeline_sorted = Timeline()
    timeline_sorted.add("grad_cam", 0, tiles[display_order(ids, 11)])
    assert torch.equal(sorted_rows, timeline_sorted.image("grad_cam", [f"#{i}" for i in sorted(ids)]))


def test_caption_lines_fit_their_tile():
    from lightning_xai.render.text import _fit_line

    assert _fit_line("p=triangle .98", 64, 10) == ("p=triangle .98", 9)  # one size smaller, all of it
    assert _fit_line("p=circle .87", 64, 10) == ("p=circle .87", 10)
    text, size = _fit_line("p=hexagon_large .98", 64, 10)
    assert text.endswith("\u2026 .98") and size == 10  # the score stays readable
    assert _fit_line("a rather long title | with | flagged", 64, 10)[0].endswith("\u2026")


def test_timeline_marks_alarm_epochs_not_flagged_ones():
    renderer = ProbeRenderer(torch.rand(2, 3, 16, 16), tile=64)
    timeline = Timeline(max_columns=3)
    tiles, _ = renderer.tiles(hot_corner_maps(2))
    for epoch in range(6):  # flags at epoch 1 (evidence), an alarm at epoch 4
        timeline.add("grad_cam", epoch, tiles, flagged=[epoch in (1, 4), False], alarm=epoch == 4)
    assert timeline.epochs("grad_cam") == list(range(6))
    img = timeline.image("grad_cam").permute(1, 2, 0)
    title_h = line_height(11) + 2 * CAPTION_PADDING
    header = img[title_h : title_h + line_height(10)]
    label_w = 64
    columns = [header[:, label_w + c * (64 + GAP) + GAP : label_w + (c + 1) * (64 + GAP)] for c in range(3)]
    orange = [bool((col.reshape(-1, 3).int() - torch.tensor(FLAG_COLOR)).abs().sum(-1).lt(30).any()) for col in columns]
    assert orange == [False, True, False]  # columns 0, 4 (the alarm, chosen before the flagged epoch), 5
