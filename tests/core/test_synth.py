"""The synthetic assay: determinism, file layouts, plate maps, ground truth and the phenotype."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from neurorg_core.errors import NeuroRGError
from neurorg_core.schema import (
    CLASS,
    COMPOUND,
    DOSE,
    N_CLASSES,
    PLATE,
    ROLE,
    TRUE_EC50,
    TRUE_HILL,
    TRUE_MAX_RESCUE,
    TRUE_RESCUE,
    TRUE_SEVERITY,
    WELL,
)
from neurorg_core.synth import (
    CLASS_SEVERITY,
    DEFAULT_PARAMS,
    SYNTH_PIXEL_SIZE_UM,
    PlateEffects,
    _stamp_ellipses,
    _walk,
    draw_plate_effects,
    render_field,
    rescue_fraction,
    write_synthetic_plates,
)
from neurorg_core.wells import parse_well

TINY = dict(n_fields=1, size=64, n_wells=96)


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    a = write_synthetic_plates(tmp_path / "a", seed=7, **TINY)[0]
    b = write_synthetic_plates(tmp_path / "b", seed=7, **TINY)[0]
    c = write_synthetic_plates(tmp_path / "c", seed=8, **TINY)[0]
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db
    assert da.keys() == dc.keys()
    images = [k for k in da if k.endswith(".tif")]
    assert sum(da[k] != dc[k] for k in images) == len(images)


def test_two_workers_write_the_same_bytes_as_one(tmp_path):
    one = write_synthetic_plates(tmp_path / "one", seed=12, layout="npy", n_fields=1, size=24)[0]
    two = write_synthetic_plates(tmp_path / "two", seed=12, layout="npy", n_fields=1, size=24,
                                 n_workers=2)[0]
    assert _digest(one) == _digest(two)


def test_imagexpress_names_and_training_plate_map(tmp_path):
    folders = write_synthetic_plates(tmp_path, seed=1, n_plates=2, **TINY)
    assert [f.name for f in folders] == ["plate_01", "plate_02"]
    pm = pd.read_csv(folders[0] / "platemap.csv")
    assert list(pm.columns) == [PLATE, WELL, COMPOUND, DOSE, ROLE, CLASS]
    assert len(pm) == 60
    assert pm[CLASS].value_counts().to_dict() == {k: 10 for k in range(N_CLASSES)}
    rows_cols = [parse_well(w) for w in pm[WELL]]
    assert {r for r, _ in rows_cols} == set(range(2, 8))      # B..G
    assert {c for _, c in rows_cols} == set(range(2, 12))     # 02..11
    assert set(pm.loc[pm[CLASS] == 0, ROLE]) == {"control"}
    assert set(pm.loc[pm[CLASS] == 5, ROLE]) == {"disease"}
    names = {p.name for p in folders[0].glob("*.tif")}
    assert len(names) == 60 * 3
    assert {f"plate_01_{w}_s1_w{ch}.tif" for w in pm[WELL] for ch in (1, 2, 3)} == names
    img = tifffile.imread(folders[0] / f"plate_01_{pm[WELL][0]}_s1_w3.tif")
    assert img.shape == (64, 64) and img.dtype == np.uint8
    # class positions are shuffled per plate
    pm2 = pd.read_csv(folders[1] / "platemap.csv")
    assert list(pm2[WELL]) == list(pm[WELL])
    assert list(pm2[CLASS]) != list(pm[CLASS])


def test_sixteen_bit_is_257_times_eight_bit(tmp_path):
    f8 = write_synthetic_plates(tmp_path / "a", seed=3, **TINY)[0]
    f16 = write_synthetic_plates(tmp_path / "b", seed=3, bit_depth=16, **TINY)[0]
    name = sorted(p.name for p in f8.glob("*.tif"))[5]
    a, b = tifffile.imread(f8 / name), tifffile.imread(f16 / name)
    assert b.dtype == np.uint16
    np.testing.assert_array_equal(b, a.astype(np.uint16) * 257)


def test_twelve_bit_camera_data_in_sixteen_bit_files(tmp_path):
    f8 = write_synthetic_plates(tmp_path / "a", seed=3, **TINY)[0]
    f12 = write_synthetic_plates(tmp_path / "b", seed=3, bit_depth=12, **TINY)[0]
    name = sorted(p.name for p in f8.glob("*.tif"))[5]
    a, b = tifffile.imread(f8 / name), tifffile.imread(f12 / name)
    assert b.dtype == np.uint16 and b.max() <= 4095
    np.testing.assert_array_equal(b, np.rint(a * (4095 / 255)).astype(np.uint16))


def test_magnification_scales_cells_not_counts():
    """At 2x the same cells are twice as large in pixels: a 2x field of 128 px holds the cells of
    a 64 px native field, and shrunk 2x it matches the native field's statistics."""
    from neurorg_core.synth import SynthParams

    p2 = DEFAULT_PARAMS.at_magnification(2.0)
    assert p2.microglia_radius_rest_px == 2 * DEFAULT_PARAMS.microglia_radius_rest_px
    assert p2.neurons_per_10k_px2 == DEFAULT_PARAMS.neurons_per_10k_px2 / 4
    assert DEFAULT_PARAMS.at_magnification(1.0) is DEFAULT_PARAMS
    assert isinstance(p2, SynthParams)
    effects = PlateEffects(noise_sd=0.0)
    nat = np.stack([render_field(np.random.default_rng(i), 0.0, effects, 128) for i in range(6)]).astype(float)
    big = np.stack([render_field(np.random.default_rng(i), 0.0, effects, 256, magnification=2.0)
                    for i in range(6)]).astype(float)
    shrunk = big.reshape(6, 128, 2, 128, 2, 3).mean(axis=(2, 4))
    # same mean brightness per channel (cells cover the same fraction of the field) ...
    np.testing.assert_allclose(shrunk.mean(axis=(0, 1, 2)), nat.mean(axis=(0, 1, 2)), rtol=0.25)
    # ... while a 2x field of the same pixel size shows a quarter of the cells, each 4x the area:
    # bright-pixel area per cell differs, so per-pixel foreground fraction is the same but objects
    # are larger: the fraction of foreground pixels whose 4-neighbours are all foreground rises
    def interior(img):
        fg = img[..., 0] > 60
        core = fg[1:-1, 1:-1] & fg[:-2, 1:-1] & fg[2:, 1:-1] & fg[1:-1, :-2] & fg[1:-1, 2:]
        return core.sum() / max(fg[1:-1, 1:-1].sum(), 1)
    assert np.mean([interior(b) for b in big]) > np.mean([interior(n) for n in nat]) + 0.1


def test_magnification_one_renders_the_bytes_the_demo_was_trained_on():
    """The magnification fixes below change nothing at the native scale: the demo model, the app's
    demo plate and every 1x benchmark plate were rendered by this code (digest taken before them)."""
    effects = draw_plate_effects(np.random.default_rng(5))
    digest = hashlib.sha256()
    for severity in (0.0, 0.6, 1.0):
        digest.update(render_field(np.random.default_rng(11), severity, effects, 96).tobytes())
    assert digest.hexdigest() == "c0ac4f07120a15c62f5c80b74b5f4027e529fff4e4ca80675e831011d5659f85"


@pytest.mark.parametrize("radius", [2.5, 4.0])
def test_soft_edges_are_one_native_pixel_at_any_magnification(radius):
    """A cell stamped at magnification m (m x the radius, an edge m pixels wide) holds, per native
    pixel area, the light of the native cell. With a one-pixel edge at 2x it held pi (r^2 + 1/48)
    against pi (r^2 + 1/12): 1 % less for a 2.5 px cell, 0.35 % for a 4 px nucleus, which the demo
    read as a more severe phenotype. Averaged over 8 sub-pixel centres (the pixel grid's own
    counting error is under 0.1 %)."""
    centres = np.random.default_rng(1).uniform(20, 28, (8, 2))

    def light(m: float) -> float:
        total = 0.0
        one = np.array([1.0])
        for cy, cx in centres:
            canvas = np.zeros((int(48 * m), int(48 * m)), np.float32)
            _stamp_ellipses(canvas, cy * m * one, cx * m * one, radius * m * one, radius * m * one, 0 * one, one,
                            edge_px=m)
            total += float(canvas.sum(dtype=np.float64)) / (m * m)
        return total / len(centres)

    native = light(1.0)
    assert native == pytest.approx(np.pi * (radius ** 2 + 1 / 12), rel=2e-3)
    assert light(2.0) == pytest.approx(native, rel=1e-3)
    assert light(3.0) == pytest.approx(native, rel=1e-3)


def test_paths_cover_whole_native_pixels_at_any_magnification():
    """A neurite or process of L native px takes ceil(L) native pixels at 1x, so at 2x it takes
    2 ceil(L) steps of half a native pixel (it took ceil(2 L): up to half a pixel shorter, and
    resting microglia's short processes read as retracted)."""
    lengths = np.array([1.0, 1.2, 2.4, 2.5, 3.9, 13.0])
    start = np.zeros(len(lengths))
    _, _, native = _walk(np.random.default_rng(0), start, start, start, lengths, 0.1)
    _, _, at2 = _walk(np.random.default_rng(0), start, start, start, 2 * lengths, 0.1, magnification=2.0)
    np.testing.assert_array_equal(native.sum(axis=1), np.ceil(lengths))
    np.testing.assert_array_equal(at2.sum(axis=1), 2 * np.ceil(lengths))


@pytest.mark.parametrize("layout", ["imagexpress", "operetta", "tiff"])
def test_pixel_size_written_into_the_files(tmp_path, layout):
    folder = write_synthetic_plates(tmp_path, seed=2, layout=layout, magnification=2.0, **TINY)[0]
    want = SYNTH_PIXEL_SIZE_UM / 2
    if layout == "operetta":
        xml = (folder / "Images" / "Index.idx.xml").read_text()
        assert f'<ImageResolutionX Unit="m">{want * 1e-6:.6E}</ImageResolutionX>' in xml
        assert xml.count("<Image ") == 60 * 3
        return
    path = next(folder.glob("*.tif"))
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if layout == "imagexpress":
            assert f'id="spatial-calibration-x" type="float" value="{want:g}"' in page.description
        else:
            x = page.tags["XResolution"].value
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            assert abs(1e4 / (x[0] / x[1]) - want) < 1e-6


def test_operetta_and_tiff_layouts(tmp_path):
    op = write_synthetic_plates(tmp_path / "op", seed=2, layout="operetta", n_fields=2, size=32)[0]
    names = {p.name for p in (op / "Images").glob("*.tiff")}
    assert len(names) == 60 * 2 * 3
    assert "r02c02f01p01-ch1sk1fk1fl1.tiff" in names
    assert "r07c11f02p01-ch3sk1fk1fl1.tiff" in names
    tf = write_synthetic_plates(tmp_path / "tf", seed=2, layout="tiff", n_fields=2, size=32)[0]
    assert {p.name for p in tf.glob("*.tif")} >= {"B02_s1.tif", "G11_s2.tif"}
    img = tifffile.imread(tf / "B02_s2.tif")
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    # the same well renders the same pixels whatever the layout
    same = tifffile.imread(op / "Images" / "r02c02f02p01-ch3sk1fk1fl1.tiff")
    np.testing.assert_array_equal(img[:, :, 2], same)


def test_npy_layout_per_class_with_well_csv(tmp_path):
    folder = write_synthetic_plates(tmp_path, seed=4, layout="npy", n_fields=2, size=32)[0]
    pm = pd.read_csv(folder / "platemap.csv")
    for k in range(N_CLASSES):
        arr = np.load(folder / f"{k}_Plate_1.npy")
        assert arr.shape == (20, 32, 32, 3) and arr.dtype == np.uint8
        wells = pd.read_csv(folder / f"{k}_Plate_1.csv")["well"]
        assert len(wells) == 20
        assert set(wells) == set(pm.loc[pm[CLASS] == k, WELL])
    with pytest.raises(NeuroRGError, match="training"):
        write_synthetic_plates(tmp_path / "x", seed=4, layout="npy", kind="screen", n_fields=1, size=32)


def test_screen_plate_roles_and_true_rescue(tmp_path):
    folder = write_synthetic_plates(tmp_path, seed=5, kind="screen", **TINY)[0]
    pm = pd.read_csv(folder / "platemap.csv")
    assert CLASS not in pm.columns
    roles = pm[ROLE].value_counts().to_dict()
    assert roles == {"treatment": 72, "control": 8, "disease": 8, "empty": 8}
    gt = pd.read_csv(folder / "ground_truth.csv")
    treated = gt[gt[ROLE] == "treatment"]
    assert treated[COMPOUND].nunique() >= 4
    assert (treated.groupby(COMPOUND)[DOSE].nunique() == 6).all()
    assert (treated.groupby([COMPOUND, DOSE]).size() == 3).all()  # triplicates
    inactive = treated[treated[TRUE_MAX_RESCUE] == 0]
    assert len(inactive) == 18 and (inactive[TRUE_RESCUE] == 0).all()
    disease_sev = CLASS_SEVERITY[-1]
    d, e, h, m = (treated[c].to_numpy() for c in (DOSE, TRUE_EC50, TRUE_HILL, TRUE_MAX_RESCUE))
    expected_rescue = m * d**h / (d**h + e**h)
    np.testing.assert_allclose(treated[TRUE_RESCUE], expected_rescue)
    np.testing.assert_allclose(treated[TRUE_SEVERITY], disease_sev * (1 - expected_rescue))
    # each dose series spans its EC50
    for _, g in treated.groupby(COMPOUND):
        assert g[DOSE].min() < g[TRUE_EC50].iloc[0] < g[DOSE].max()
    # empty wells are not imaged
    empty = set(pm.loc[pm[ROLE] == "empty", WELL])
    imaged = {p.name.split("_")[2] for p in folder.glob("*.tif")}
    assert not (empty & imaged) and len(imaged) == 88


def test_rescue_fraction_by_hand():
    from neurorg_core.synth import Compound

    cpd = Compound("X", ec50_um=1.0, hill=2.0, max_rescue=0.8)
    assert rescue_fraction(1.0, cpd) == pytest.approx(0.4)
    assert rescue_fraction(3.0, cpd) == pytest.approx(0.8 * 9 / 10)


def test_384_training_plate_has_40_wells_per_class(tmp_path):
    folder = write_synthetic_plates(tmp_path, seed=6, n_wells=384, n_fields=1, size=16)[0]
    pm = pd.read_csv(folder / "platemap.csv")
    assert pm[CLASS].value_counts().to_dict() == {k: 40 for k in range(N_CLASSES)}
    assert max(parse_well(w)[0] for w in pm[WELL]) > 8


def test_384_screen_layout_repeats_each_96_position_in_a_2x2_block():
    from neurorg_core.synth import build_plate_table

    t96 = build_plate_table(0, 1, 96, "screen").set_index(WELL)
    t384 = build_plate_table(0, 1, 384, "screen")
    assert t384[ROLE].value_counts().to_dict() == {"treatment": 288, "control": 32, "disease": 32,
                                                   "empty": 32}
    for well, row in t384.set_index(WELL).iterrows():
        r, c = parse_well(well)
        src = t96.loc[f"{chr(ord('A') + (r - 1) // 2)}{(c - 1) // 2 + 1:02d}"]
        assert (row[ROLE], row[COMPOUND]) == (src[ROLE], src[COMPOUND])
        assert row[DOSE] == src[DOSE] or (pd.isna(row[DOSE]) and pd.isna(src[DOSE]))


def test_microglia_signal_rises_with_severity_nucleus_flat():
    """Over the six classes the microglia foreground brightens monotonically; nuclei do not change.

    Every class is rendered from the same seed (same cell positions), so only severity differs.
    """
    effects = PlateEffects(noise_sd=0.0, offset=(0.0, 0.0, 0.0))
    fg_mean, totals = [], []
    for sev in CLASS_SEVERITY:
        rng = np.random.default_rng(100)
        fields = np.stack([render_field(rng, sev, effects, 128) for _ in range(8)]).astype(float)
        px = fields.reshape(-1, 3)
        fg_mean.append([px[px[:, c] > 20, c].mean() for c in range(3)])
        totals.append(px.mean(axis=0))
    fg_mean, totals = np.array(fg_mean), np.array(totals)
    assert np.all(np.diff(fg_mean[:, 2]) > 0), fg_mean[:, 2]
    assert fg_mean[-1, 2] > 1.5 * fg_mean[0, 2]
    nuc_change = np.abs(fg_mean[:, 0] / fg_mean[0, 0] - 1).max()
    assert nuc_change < 0.05, fg_mean[:, 0]
    assert np.abs(totals[:, 0] / totals[0, 0] - 1).max() < 0.05, totals[:, 0]
    # neurons lose neurite area as severity rises
    assert totals[-1, 1] < 0.8 * totals[0, 1]


def test_batch_effects_differ_between_plates(tmp_path):
    e1 = draw_plate_effects(np.random.default_rng(1), DEFAULT_PARAMS)
    e2 = draw_plate_effects(np.random.default_rng(2), DEFAULT_PARAMS)
    assert e1.gain != e2.gain and e1.blur_sigma != e2.blur_sigma and e1.density != e2.density
    # the same well with the same nominal severity looks different on another plate
    folders = write_synthetic_plates(tmp_path, seed=9, n_plates=2, kind="screen", n_fields=1, size=48)
    a = tifffile.imread(folders[0] / "plate_01_A02_s1_w1.tif").astype(float)
    b = tifffile.imread(folders[1] / "plate_02_A02_s1_w1.tif").astype(float)
    assert abs(a.mean() - b.mean()) > 0.5 or abs(a.std() - b.std()) > 0.5


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(NeuroRGError, match="layout"):
        write_synthetic_plates(tmp_path, seed=0, layout="bmp", n_fields=1, size=16)
    with pytest.raises(NeuroRGError, match="96 or 384"):
        write_synthetic_plates(tmp_path, seed=0, n_wells=1536, n_fields=1, size=16)
    with pytest.raises(NeuroRGError, match="kind"):
        write_synthetic_plates(tmp_path, seed=0, kind="assay", n_fields=1, size=16)
    with pytest.raises(NeuroRGError, match="too small"):
        write_synthetic_plates(tmp_path, seed=0, n_fields=1, size=4)
    with pytest.raises(NeuroRGError, match="bit_depth"):
        write_synthetic_plates(tmp_path, seed=0, n_fields=1, size=16, bit_depth=10)
    with pytest.raises(NeuroRGError, match="magnification"):
        write_synthetic_plates(tmp_path, seed=0, n_fields=1, size=16, magnification=0)
    assert not any(tmp_path.iterdir())   # nothing written for bad arguments


def test_plates_read_back_through_load_plate(tmp_path):
    """The ingestion reader finds every written field and returns the rendered pixels."""
    from neurorg_core.plates import load_plate
    from neurorg_core.platemap import check_plate_map, load_plate_map
    from neurorg_core.synth import plate_effects_for, render_well

    for layout, bit_depth in (("imagexpress", 16), ("npy", 8)):
        folder = write_synthetic_plates(tmp_path / layout, seed=11, layout=layout, bit_depth=bit_depth,
                                        n_fields=2, size=24)[0]
        plate = load_plate(folder)
        assert plate.layout == layout and len(plate.wells()) == 60 and len(plate.fields) == 120
        assert check_plate_map(load_plate_map(folder / "platemap.csv"), plate.wells()) == []
        gt = pd.read_csv(folder / "ground_truth.csv").set_index(WELL)
        effects = plate_effects_for(11, 1)
        expected = render_well(11, 1, "C05", gt.loc["C05", TRUE_SEVERITY], 2, 24, effects)
        got = plate.read_field(plate.fields_of("C05")[1])
        scale = 257 if bit_depth == 16 else 1
        np.testing.assert_array_equal(got, expected[1].astype(got.dtype) * scale)
        if layout == "npy":
            assert plate.labels["C05"] == gt.loc["C05", CLASS]


def test_cli_synth_writes_plates_and_rejects_bad_input(tmp_path, capsys):
    from neurorg_core.cli import main

    assert main(["synth", "--out", str(tmp_path), "--seed", "3", "--plates", "2", "--fields", "1",
                 "--size", "16", "--kind", "screen", "--layout", "tiff", "--bit-depth", "16"]) == 0
    assert tifffile.imread(tmp_path / "plate_01" / "A02_s1.tif").dtype == np.uint16
    assert (tmp_path / "plate_02" / "ground_truth.csv").is_file()
    assert len(list((tmp_path / "plate_01").glob("*.tif"))) == 88
    assert main(["synth", "--out", str(tmp_path / "x"), "--layout", "npy", "--kind", "screen",
                 "--fields", "1", "--size", "16"]) == 2
    assert "training" in capsys.readouterr().err
