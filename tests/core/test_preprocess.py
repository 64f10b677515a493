"""From fields to crops: intensity scaling, the crop plan at the model's crop edge, resizing."""

import numpy as np
import pytest

from neurorg_core.errors import NeuroRGError
from neurorg_core.preprocess import (
    CropGeometry,
    Intensity,
    crops_from_field,
    detect_intensity,
    field_channel_stats,
    plan_crops,
    resize_square,
    sample_field_indices,
    scale_intensity,
)


# --- intensity ---------------------------------------------------------------------------------

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


@pytest.mark.parametrize("peak,bits", [(200, 8), (255, 8), (256, 12), (4095, 12), (4096, 14),
                                       (16383, 14), (16384, 16), (65535, 16)])
def test_significant_bits_from_the_sample_maximum(peak, bits):
    fields = [np.zeros((4, 4, 3), np.uint16), np.full((4, 4, 3), peak, np.uint16)]
    got = detect_intensity(np.uint16, fields)
    assert got.bits == bits and got.full_scale == 2**bits - 1
    assert f"max {peak} over 2 field(s)" in got.source


def test_eight_bit_images_and_user_bits_need_no_sample():
    def never():
        raise AssertionError("fields read")
        yield
    assert detect_intensity(np.uint8, never()).bits == 8
    assert detect_intensity(np.uint16, never(), bits=12).source == "given by the user"
    with pytest.raises(NeuroRGError, match="bit depth 10 .* 8, 12, 14, 16"):
        detect_intensity(np.uint16, never(), bits=10)
    with pytest.raises(NeuroRGError, match="8-bit images"):
        detect_intensity(np.uint8, never(), bits=12)


def test_sample_spreads_over_the_plate():
    assert sample_field_indices(5) == [0, 1, 2, 3, 4]
    idx = sample_field_indices(400, 16)
    assert len(idx) == 16 and idx[0] == 0 and idx[-1] == 399
    assert max(np.diff(idx)) - min(np.diff(idx)) <= 1


def test_twelve_bit_data_crops_like_the_same_data_scaled_to_sixteen_bits():
    """A 12-bit camera's values, and the same values scaled to the full 16-bit range (x 16 or x
    65535/4095, as acquisition software does), give the same crops within 1e-3."""
    rng = np.random.default_rng(3)
    v12 = rng.integers(0, 4096, (128, 128, 3), dtype=np.uint16)
    plan = plan_crops(1, (128, 128), 64, crops_per_well=4)
    a = crops_from_field(v12, plan, 0, 32, detect_intensity(np.uint16, [v12]))
    for scaled in (v12 * np.uint16(16), np.rint(v12 * (65535 / 4095)).astype(np.uint16)):
        b = crops_from_field(scaled, plan, 0, 32, detect_intensity(np.uint16, [scaled]))
        assert np.abs(a - b).max() < 1e-3
    # read as plain 16-bit (the old behaviour) the 12-bit plate is 16 x too dark
    c = crops_from_field(v12, plan, 0, 32)
    assert abs(a.mean() / c.mean() - 65535 / 4095) < 0.01


def test_values_above_the_significant_bits_are_clipped():
    field = np.full((8, 8, 3), 5000, np.uint16)
    crops = crops_from_field(field, plan_crops(1, (8, 8), 8, 1), 0, 4, Intensity(12))
    np.testing.assert_array_equal(crops, 1.0)
    np.testing.assert_array_equal(scale_intensity(field, Intensity(12)), 1.0)


# --- the crop plan ------------------------------------------------------------------------------

@pytest.mark.parametrize("size,n_fields,grid,per_field_max", [
    (256, 4, (2, 2), 4),      # the demo: 15 of 16 whole tiles
    (512, 1, (4, 4), 15),
    (512, 4, (4, 4), 4),
    (256, 16, (2, 2), 1),     # 64 tiles: one crop from 15 of the 16 fields
    (1024, 1, (8, 8), 15),
])
def test_tiles_keep_the_model_edge_whatever_the_field_size(size, n_fields, grid, per_field_max):
    plan = plan_crops(n_fields, (size, size), 128)
    assert plan.edge == 128 and plan.grid == grid and not plan.overlapping
    assert len(plan.tiles) == plan.crops_per_well == 15
    assert len(set(plan.tiles)) == 15
    counts = [len(plan.tiles_of(i)) for i in range(n_fields)]
    assert sum(counts) == 15 and max(counts) <= per_field_max
    assert max(counts) - min(counts) <= 1        # evenly over the well's fields
    # tiles are centred in the field and do not overlap
    tops = sorted({t for t, _ in plan.boxes})
    assert tops[0] == (size - grid[0] * 128) // 2 and all(b - a == 128 for a, b in zip(tops, tops[1:]))


def test_picks_spread_evenly_over_all_tiles():
    plan = plan_crops(1, (1024, 1024), 128)          # 64 tiles, 15 crops
    idx = [t for _, t in plan.tiles]
    gaps = np.diff(idx)
    assert gaps.min() >= 4 and gaps.max() <= 5


def test_too_few_whole_tiles_overlap_so_the_well_gets_its_crops():
    plan = plan_crops(1, (256, 256), 128)            # 4 whole tiles, 15 asked
    assert plan.grid == (4, 4) and plan.overlapping and plan.crops_per_well == 15
    assert sorted({t for t, _ in plan.boxes}) == [0, 43, 85, 128]    # stride ~43 px, edge-to-edge
    plan2 = plan_crops(2, (256, 256), 128)           # 8 whole tiles
    assert plan2.grid in ((3, 3), (2, 4), (4, 2)) and plan2.crops_per_well == 15


def test_non_square_fields_and_margins():
    plan = plan_crops(1, (300, 520), 100, crops_per_well=12)
    assert plan.grid == (3, 5)
    assert {t for t, _ in plan.boxes} == {0, 100, 200}
    assert {x for _, x in plan.boxes} == {10, 110, 210, 310, 410}


def test_plan_refuses_fields_smaller_than_the_crop_and_bad_counts():
    with pytest.raises(NeuroRGError, match=r"fields are 100 x 100 px, smaller than the 128 px crop"):
        plan_crops(4, (100, 100), 128)
    with pytest.raises(NeuroRGError, match="at least one field"):
        plan_crops(0, (256, 256), 128)
    with pytest.raises(NeuroRGError, match="field index 4"):
        plan_crops(4, (256, 256), 128).tiles_of(4)


def test_whole_field_models_take_one_crop_per_field():
    g = CropGeometry("whole_field")
    edge = g.edge_on((1200, 1200))
    plan = plan_crops(15, (1200, 1200), edge, 15, overlap=False)
    assert plan.grid == (1, 1) and plan.tiles == tuple((f, 0) for f in range(15))
    few = plan_crops(4, (1200, 1200), edge, 15, overlap=False)
    assert few.crops_per_well == 4 and few.grid == (1, 1)          # never the same field twice
    wide = plan_crops(1, (100, 140), g.edge_on((100, 140)), 15, overlap=False)
    assert wide.boxes == ((0, 20),)                                 # the largest centred square


def test_a_tiny_field_gives_fewer_crops_rather_than_repeats():
    plan = plan_crops(1, (10, 10), 8)                 # 3 x 3 distinct positions at most
    assert plan.crops_per_well == 9 and len(set(plan.tiles)) == 9


def test_plan_keys_differ_by_edge_and_grid():
    a, b = plan_crops(4, (256, 256), 128), plan_crops(4, (256, 256), 64)
    assert a.key(0) != b.key(0) and a.key(0).startswith("e128g2x2:")


# --- geometry from the model card -----------------------------------------------------------------

def test_crop_edge_follows_the_pixel_size_ratio():
    g = CropGeometry("tiles", 128, 0.65)
    assert g.edge_on((512, 512), 0.65) == 128
    assert g.edge_on((512, 512), 0.325) == 256       # a 2x magnified plate: same cells, twice the pixels
    assert g.edge_on((512, 512), 1.3) == 64
    assert g.edge_on((512, 512), None) == 128         # unknown: assumed the model's scale
    assert CropGeometry("tiles", 128, None).edge_on((512, 512), 0.325) == 128
    assert CropGeometry("whole_field").edge_on((1200, 1100)) == 1100


def test_geometry_from_card_with_clear_errors():
    card = {"crop_geometry": {"mode": "tiles", "crop_edge_px": 128, "pixel_size_um": 0.65}}
    g = CropGeometry.from_card(card)
    assert g == CropGeometry("tiles", 128, 0.65) and CropGeometry.from_card({"crop_geometry": g.as_card()}) == g
    with pytest.raises(NeuroRGError, match="no crop_geometry"):
        CropGeometry.from_card({})
    with pytest.raises(NeuroRGError, match="crop edge '128' px"):
        CropGeometry.from_card({"crop_geometry": {"mode": "tiles", "crop_edge_px": "128"}})
    with pytest.raises(NeuroRGError, match="mode 'grid'"):
        CropGeometry.from_card({"crop_geometry": {"mode": "grid", "crop_edge_px": 128}})
    with pytest.raises(NeuroRGError, match="pixel size -1"):
        CropGeometry.from_card({"crop_geometry": {"mode": "tiles", "crop_edge_px": 128, "pixel_size_um": -1}})


# --- crops --------------------------------------------------------------------------------------

def test_crops_pick_the_planned_tiles_at_the_right_place():
    # field whose value encodes the tile: tile (r, c) of a 4x4 grid of 8 px tiles = 4*r + c
    field = np.zeros((32, 32, 3), dtype=np.uint8)
    for r in range(4):
        for c in range(4):
            field[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = 10 * (4 * r + c)
    field[..., 1] = 255
    plan = plan_crops(1, (32, 32), 8)
    assert plan.grid == (4, 4)
    crops = crops_from_field(field, plan, 0, 8)
    assert crops.shape == (15, 8, 8, 3) and crops.dtype == np.float32
    for crop, tile in zip(crops, plan.tiles_of(0)):
        np.testing.assert_allclose(crop[..., 0], 10 * tile / 255, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(crops[..., 1], 1.0)


def test_crops_resize_by_area_average_for_integer_factor():
    field = np.zeros((8, 8, 3), dtype=np.uint16)
    field[::2, ::2] = 65535            # one bright pixel in every 2x2 block
    crops = crops_from_field(field, plan_crops(1, (8, 8), 8, 1), 0, 4)
    assert crops.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(crops, 0.25, atol=1e-6)


@pytest.mark.parametrize("dtype,side,size", [(np.uint8, 128, 64), (np.uint16, 96, 32), (np.uint8, 60, 20)])
def test_integer_shrink_matches_the_pillow_box_filter(dtype, side, size):
    """The numpy block-sum path for integer factors gives what Pillow's box filter (the general
    path, ``resize_square``) gives, on random 8- and 16-bit tiles."""
    full = np.iinfo(dtype).max
    field = np.random.default_rng(2).integers(0, full, (side, side, 3), dtype=dtype, endpoint=True)
    crops = crops_from_field(field, plan_crops(1, (side, side), side, 1), 0, size)
    expected = resize_square(scale_intensity(field), size)
    np.testing.assert_allclose(crops[0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype,bits,shape,edge,size,crops", [
    (np.uint8, None, (256, 256), 128, 64, 4),      # the demo: 2 x 2 tiles on one 2-px grid, shrunk once
    (np.uint16, 12, (300, 260), 64, 16, 15),       # clipped 12-bit values, 4 x 4 shrink, a margin
    (np.uint16, None, (200, 210), 90, 30, 9),      # overlapping tiles off the 3-px grid: tile by tile
    (np.uint8, None, (520, 700), 64, 32, 3),       # 3 of 80 tiles: too sparse for one region
])
def test_integer_shrink_of_several_tiles_is_the_block_mean_of_each_tile(dtype, bits, shape, edge, size, crops):
    """Each crop is the mean of its tile's k x k blocks of clipped, scaled values, whether the tiles
    are summed over their common region or one by one; a float64 reference (reshape-mean) agrees to
    float32 rounding, and the crop equals the same tile cut alone (a one-tile plan) bit for bit."""
    from neurorg_core.preprocess import CropPlan

    full = np.iinfo(dtype).max
    field = np.random.default_rng(5).integers(0, full, (*shape, 3), dtype=dtype, endpoint=True)
    intensity = Intensity(bits) if bits else None
    top = intensity.full_scale if intensity else full
    plan = plan_crops(1, shape, edge, crops)
    got = crops_from_field(field, plan, 0, size, intensity)
    k = edge // size
    for crop, t in zip(got, plan.tiles_of(0)):
        y, x = plan.boxes[t]
        tile = np.minimum(field[y:y + edge, x:x + edge], top).astype(np.float64) / top
        expected = tile.reshape(size, k, size, k, 3).mean(axis=(1, 3))
        np.testing.assert_allclose(crop, expected, rtol=0, atol=2e-7)
        alone = CropPlan(1, 1, plan.edge, plan.grid, plan.boxes, ((0, t),))
        np.testing.assert_array_equal(crop, crops_from_field(field, alone, 0, size, intensity)[0])


def test_crops_non_integer_resize_keeps_range_and_mean():
    rng = np.random.default_rng(0)
    field = rng.integers(0, 256, (90, 90, 3), dtype=np.uint8)
    crops = crops_from_field(field, plan_crops(1, (90, 90), 90, 1), 0, 32)
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
        crops_from_field(np.zeros((8, 8), np.uint8), plan_crops(1, (8, 8), 4), 0, 4)


def test_field_channel_stats_by_hand():
    field = np.zeros((8, 8, 3), np.uint8)
    field[..., 1] = 255
    field[::8, ::8, 2] = 255          # the strided sample (every 4th pixel) holds 1 of 4 at 255
    st = field_channel_stats(field)
    np.testing.assert_allclose(st[0], [0.0, 1.0, 0.25])
    np.testing.assert_allclose(st[1], [0.0, 0.0, np.sqrt(0.25 * 0.75)])


@pytest.mark.parametrize(("dtype", "bits", "shape"), [
    (np.uint8, None, (37, 50)), (np.uint16, 12, (37, 50)), (np.uint16, None, (37, 50)),
    (np.uint8, 8, (256, 256)),        # the demo's fields
    (np.uint16, 14, (1100, 1030)),    # a 275 x 258 sample per channel: longer than numpy's 8192-value buffer
])
def test_field_channel_stats_equal_numpy_mean_and_std_bit_for_bit(dtype, bits, shape):
    # the fused computation must give exactly what each channel's float64 mean / std gave before
    # (stored fit statistics and the model-fit verdict are compared between runs)
    rng = np.random.default_rng(3)
    top = np.iinfo(dtype).max
    field = rng.gamma(2.0, top / 30, (*shape, 3)).clip(0, top).astype(dtype)   # some above 12/14 bits: clipped
    intensity = Intensity(bits) if bits else None
    st = field_channel_stats(field, intensity)
    full = intensity.full_scale if intensity else top
    for c in range(3):
        x = field[::4, ::4, c].astype(np.float32) * np.float32(1.0 / full)
        x = np.minimum(x, np.float32(1.0))
        assert st[0, c] == x.mean(dtype=np.float64)
        assert st[1, c] == x.std(dtype=np.float64)


@pytest.mark.parametrize("dtype,bits,edge,size", [
    (np.uint8, None, 128, 64),     # the demo: k = 2, uint16 sums
    (np.uint16, 12, 96, 32),       # k = 3, clipped 12-bit values
    (np.uint16, None, 64, 32),     # k = 2 on full 16-bit values: uint32 sums
    (np.uint16, 14, 128, 32),      # k = 4
])
def test_integer_shrink_is_the_exact_block_sum_times_one_scale(dtype, bits, edge, size):
    """Crops cut by integer shrinking are bit for bit float32(exact k x k integer sum) x
    float32(1 / (k * k * full scale)): cached predictions are keyed on what a crop holds, so any
    faster summing must give these very values."""
    full = np.iinfo(dtype).max
    shape = (2 * edge + 6, 2 * edge + 2)
    field = np.random.default_rng(11).integers(0, full, (*shape, 3), dtype=dtype, endpoint=True)
    intensity = Intensity(bits) if bits else None
    top = intensity.full_scale if intensity else full
    plan = plan_crops(1, shape, edge, 4)
    got = crops_from_field(field, plan, 0, size, intensity)
    k = edge // size
    for crop, t in zip(got, plan.tiles_of(0)):
        y, x = plan.boxes[t]
        tile = np.minimum(field[y:y + edge, x:x + edge], top).astype(np.int64)
        sums = tile.reshape(size, k, size, k, 3).sum(axis=(1, 3))
        np.testing.assert_array_equal(crop, sums.astype(np.float32) * np.float32(1.0 / (k * k * top)))


def test_the_detected_bits_note_names_the_setting_in_the_app_and_the_cli():
    """The note shown on Upload & score told a biologist to "give --bit-depth", a flag of the CLI;
    the app's setting is *Significant bits* (the pixel-size note already names both)."""
    from neurorg_core.preprocess import PlateCropping

    v12 = np.full((8, 8, 3), 4095, np.uint16)
    cropping = PlateCropping(geometry=CropGeometry(mode="tiles", crop_edge_px=64, pixel_size_um=0.65), edge=64,
                             intensity=detect_intensity(np.uint16, [v12]), pixel_size_um=0.65,
                             pixel_size_source="user")
    [note] = cropping.notes()
    assert note.startswith("16-bit images holding 12-bit data")
    assert "--bit-depth" in note and "Significant bits" in note
