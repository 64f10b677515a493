import numpy as np
import pytest

from neurorg_core.errors import NeuroRGError
from neurorg_core.preprocess import (
    crops_from_field, plan_crops, resize_square, scale_intensity, tile_boxes,
)


def test_scale_16_bit_equals_8_bit_times_257_exactly():
    img8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    img16 = img8.astype(np.uint16) * np.uint16(257)
    a, b = scale_intensity(img8), scale_intensity(img16)
    assert a.dtype == np.float32 and b.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert a.min() == 0.0 and a.max() == 1.0


def test_scale_refuses_other_dtypes_naming_them():
    with pytest.raises(NeuroRGError, match="float64.*uint8 or uint16"):
        scale_intensity(np.zeros((2, 2)))


@pytest.mark.parametrize(
    "n_fields,grid,per_field",
    [(4, 2, None), (1, 4, [15]), (15, 1, [1] * 15), (2, 3, None), (20, 1, None)],
)
def test_plan_counts_and_grid(n_fields, grid, per_field):
    plan = plan_crops(n_fields)
    assert plan.grid == grid
    expected_total = min(15, n_fields * grid * grid)
    assert len(plan.tiles) == expected_total == plan.crops_per_well
    assert len(set(plan.tiles)) == len(plan.tiles)          # no tile used twice
    counts = [len(plan.tiles_of(i)) for i in range(n_fields)]
    assert sum(counts) == expected_total
    if per_field is not None:
        assert counts == per_field
    # evenly spread: no field gives more than one crop more than any other
    assert max(counts) - min(counts) <= 1


def test_plan_four_fields_takes_15_of_16_tiles():
    plan = plan_crops(4)
    assert plan.grid == 2
    assert sorted(len(plan.tiles_of(i)) for i in range(4)) == [3, 4, 4, 4]
    assert all(0 <= t < 4 for _, t in plan.tiles)


def test_plan_twenty_fields_uses_15_of_them():
    plan = plan_crops(20, crops_per_well=15)
    assert sum(1 for i in range(20) if plan.tiles_of(i)) == 15


def test_plan_rejects_no_fields():
    with pytest.raises(NeuroRGError, match="at least one field"):
        plan_crops(0)
    with pytest.raises(NeuroRGError, match="field index 4"):
        plan_crops(4).tiles_of(4)


def test_tile_boxes_are_centred_squares():
    boxes = tile_boxes((40, 60), 2)
    assert boxes == [(0, 5, 20), (0, 35, 20), (20, 5, 20), (20, 35, 20)]


def test_crops_pick_the_planned_tiles_at_the_right_place():
    # field whose value encodes the tile: tile (r, c) of a 4x4 grid of 8 px tiles = 4*r + c
    field = np.zeros((32, 32, 3), dtype=np.uint8)
    for r in range(4):
        for c in range(4):
            field[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = 10 * (4 * r + c)
    field[..., 1] = 255
    plan = plan_crops(1)
    crops = crops_from_field(field, plan, 0, 8)
    assert crops.shape == (15, 8, 8, 3) and crops.dtype == np.float32
    for crop, tile in zip(crops, plan.tiles_of(0)):
        np.testing.assert_allclose(crop[..., 0], 10 * tile / 255, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(crops[..., 1], 1.0)


def test_crops_resize_by_area_average_for_integer_factor():
    field = np.zeros((8, 8, 3), dtype=np.uint16)
    field[::2, ::2] = 65535            # one bright pixel in every 2x2 block
    crops = crops_from_field(field, plan_crops(15), 0, 4)
    assert crops.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(crops, 0.25, atol=1e-6)


@pytest.mark.parametrize("dtype,side,size", [(np.uint8, 128, 64), (np.uint16, 96, 32), (np.uint8, 60, 20)])
def test_integer_shrink_matches_the_pillow_box_filter(dtype, side, size):
    """The numpy block-sum path for integer factors gives what Pillow's box filter (the general
    path, ``resize_square``) gives, on random 8- and 16-bit tiles."""
    full = np.iinfo(dtype).max
    field = np.random.default_rng(2).integers(0, full, (side, side, 3), dtype=dtype, endpoint=True)
    crops = crops_from_field(field, plan_crops(15), 0, size)
    expected = resize_square(scale_intensity(field), size)
    np.testing.assert_allclose(crops[0], expected, rtol=0, atol=1e-6)


def test_crops_non_integer_resize_keeps_range_and_mean():
    rng = np.random.default_rng(0)
    field = rng.integers(0, 256, (90, 90, 3), dtype=np.uint8)
    crops = crops_from_field(field, plan_crops(15), 0, 32)
    assert crops.shape == (1, 32, 32, 3)
    assert 0.0 <= crops.min() and crops.max() <= 1.0
    assert abs(crops.mean() - field.mean() / 255) < 0.01


def test_resize_up_and_identity():
    img = np.random.default_rng(1).random((10, 10, 3), dtype=np.float32)
    assert resize_square(img, 10) is img or np.array_equal(resize_square(img, 10), img)
    up = resize_square(img, 25)
    assert up.shape == (25, 25, 3)
    assert img.min() - 1e-6 <= up.min() and up.max() <= img.max() + 1e-6


def test_crops_reject_wrong_channel_count():
    with pytest.raises(NeuroRGError, match=r"expected \(H, W, 3\)"):
        crops_from_field(np.zeros((8, 8), np.uint8), plan_crops(1), 0, 4)
