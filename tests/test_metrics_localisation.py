import pytest
import torch

from lightning_xai.metrics import boxes_to_masks, pointing_game, relevance_mass


def test_boxes_to_masks_pixel_centres():
    masks = boxes_to_masks(torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 1.0], [1.0, 1.0, 1.0, 1.0]]), (3, 4))
    assert masks.shape == (3, 1, 3, 4) and masks.dtype == torch.bool
    expected0 = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    expected1 = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(masks[0, 0], expected0)
    assert torch.equal(masks[1, 0], expected1)
    assert not masks[2].any()  # zero-area box
    with pytest.raises(ValueError, match="boxes"):
        boxes_to_masks(torch.zeros(2, 3), 4)
    with pytest.raises(ValueError, match="size"):
        boxes_to_masks(torch.zeros(2, 4), (4,))


def test_pointing_game_hits_misses_and_ties():
    maps = torch.zeros(4, 1, 2, 2)
    maps[0, 0, 0, 1] = 1.0  # peak inside
    maps[1, 0, 1, 0] = 1.0  # peak outside
    maps[2, 0, 0, 1] = maps[2, 0, 1, 0] = 1.0  # tie, one inside -> hit
    maps[3] = 0.5  # flat: points nowhere
    mask = torch.tensor([[False, True], [False, False]]).expand(4, 1, 2, 2)
    out = pointing_game(maps, mask)
    assert out.dtype == torch.float32
    assert out.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_pointing_game_degenerate_never_nan():
    maps = torch.zeros(3, 1, 4, 4)
    maps[1, 0, 0, 0] = float("nan")
    maps[2, 0, 0, 0] = 1.0
    masks = torch.zeros(3, 1, 4, 4, dtype=torch.bool)  # empty masks
    out = pointing_game(maps, masks)
    assert out.tolist() == [0.0, 0.0, 0.0]


def test_masks_are_resized_nearest_and_boxes_accepted():
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 3, 3] = 2.0
    low_res = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]])  # float mask, bottom-right quadrant
    assert pointing_game(maps, low_res).item() == 1.0
    assert pointing_game(maps, torch.tensor([[2.0, 2.0, 4.0, 4.0]])).item() == 1.0
    assert pointing_game(maps, torch.tensor([[0.0, 0.0, 2.0, 2.0]])).item() == 0.0
    assert relevance_mass(maps, low_res[:, 0]).item() == 1.0  # (N, H, W) masks


def test_relevance_mass_hand_computed():
    maps = torch.tensor([[[[3.0, 1.0], [-2.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    masks = torch.tensor([[True, False], [True, True]]).expand(2, 1, 2, 2)
    out = relevance_mass(maps, masks)
    torch.testing.assert_close(out, torch.tensor([5 / 6, 0.0]))  # magnitudes (to_heatmap rule); no mass -> 0
    # multi-channel maps: sum of |.| over channels -> [[2, 2], [4, 0]], inside = 6 / 8
    rgb = torch.tensor([[[[1.0, -1.0], [2.0, 0.0]], [[-1.0, 1.0], [2.0, 0.0]]]])
    torch.testing.assert_close(relevance_mass(rgb, masks[:1]), torch.tensor([0.75]))
    nan_map = torch.tensor([[[[float("nan"), 1.0], [1.0, 0.0]]]])
    torch.testing.assert_close(relevance_mass(nan_map, masks[:1]), torch.tensor([0.5]))


def test_mask_validation():
    maps = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="one mask per heatmap"):
        pointing_game(maps, torch.ones(3, 1, 4, 4))
    with pytest.raises(ValueError, match="masks"):
        relevance_mass(maps, torch.ones(2, 3, 4, 4))


def test_signed_maps_use_magnitude_like_to_heatmap():
    maps = torch.tensor([[[[0.5, 0.0], [-2.0, 0.0]]]])
    mask = torch.tensor([[[[False, False], [True, False]]]])
    assert pointing_game(maps, mask).item() == 1.0
    torch.testing.assert_close(relevance_mass(maps, mask), torch.tensor([0.8]))
