"""Pixel size (µm per pixel) read from real files of each kind: OME-XML, ImageJ, plain TIFF
resolution, a Harmony index, MetaMorph XML; and the user's value winning over all of them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile

from neurorg_core import cli
from neurorg_core.errors import NeuroRGError
from neurorg_core.plates import load_plate

CYX = np.zeros((3, 32, 40), np.uint16)


def multi(root: Path, **imwrite) -> Path:
    root.mkdir(parents=True)
    for well in ("B02", "B03"):
        tifffile.imwrite(root / f"{well}_s1.tif", CYX, **imwrite)
    return root


def metamorph(x: float, y: float, units: str = "um") -> str:
    return ('<MetaData><PlaneInfo>'
            f'<prop id="spatial-calibration-x" type="float" value="{x}"/>'
            f'<prop id="spatial-calibration-y" type="float" value="{y}"/>'
            f'<prop id="spatial-calibration-units" type="string" value="{units}"/>'
            '</PlaneInfo></MetaData>')


def imagexpress(root: Path, **imwrite) -> Path:
    root.mkdir(parents=True)
    for ch in (1, 2, 3):
        tifffile.imwrite(root / f"exp_B02_s1_w{ch}.tif", CYX[0], **imwrite)
    return root


def harmony_index(x_m: str, y_m: str | None = None) -> str:
    y_m = y_m or x_m
    return ('<?xml version="1.0" encoding="utf-8"?>\n'
            '<EvaluationInputData xmlns="http://www.perkinelmer.com/PEHH/HarmonyV5" Version="2">\n'
            '  <Images>\n    <Image Version="1">\n      <id>0202K1F1P1R1</id>\n'
            '      <URL>r02c02f01p01-ch1sk1fk1fl1.tiff</URL>\n'
            f'      <ImageResolutionX Unit="m">{x_m}</ImageResolutionX>\n'
            f'      <ImageResolutionY Unit="m">{y_m}</ImageResolutionY>\n'
            '    </Image>\n  </Images>\n</EvaluationInputData>\n')


def operetta(root: Path, **imwrite) -> Path:
    images = root / "Images"
    images.mkdir(parents=True)
    for ch in (1, 2, 3):
        tifffile.imwrite(images / f"r02c02f01p01-ch{ch}sk1fk1fl1.tiff", CYX[0], **imwrite)
    return images


@pytest.mark.parametrize("metadata, expected", [
    ({"PhysicalSizeX": 0.325, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.325}, 0.325),
    ({"PhysicalSizeX": 650, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 650,
      "PhysicalSizeYUnit": "nm"}, 0.65),
    ({"PhysicalSizeX": 1.3}, 1.3),   # OME's default unit is µm
])
def test_ome_xml(tmp_path, metadata, expected):
    plate = load_plate(multi(tmp_path / "ome", ome=True, metadata={"axes": "CYX", **metadata}))
    assert plate.pixel_size_um == pytest.approx(expected)
    assert plate.pixel_size_source == "OME-XML"


@pytest.mark.parametrize("unit", ["um", "micron", "\\u00B5m"])   # ImageJ writes µ as \\u00B5
def test_imagej_unit_and_resolution(tmp_path, unit):
    plate = load_plate(multi(tmp_path / "ij", imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                             metadata={"axes": "CYX", "unit": unit}))
    assert plate.pixel_size_um == pytest.approx(0.65, rel=1e-6)
    assert plate.pixel_size_source == "ImageJ"


def test_imagej_without_unit_says_nothing(tmp_path):
    plate = load_plate(multi(tmp_path / "ij", imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                             metadata={"axes": "CYX"}))
    assert plate.pixel_size_um is None and plate.pixel_size_source is None


@pytest.mark.parametrize("unit, per_unit, expected", [
    ("CENTIMETER", 1e4 / 0.65, 0.65),   # the lead's synth writes this
    ("INCH", 25400 / 0.5, 0.5),
])
def test_plain_tiff_resolution(tmp_path, unit, per_unit, expected):
    plate = load_plate(multi(tmp_path / "res", photometric="minisblack", resolution=(per_unit, per_unit),
                             resolutionunit=unit))
    assert plate.pixel_size_um == pytest.approx(expected, rel=1e-6)
    assert plate.pixel_size_source == "TIFF resolution"


def test_default_and_implausible_resolutions_are_ignored(tmp_path):
    plain = load_plate(multi(tmp_path / "plain", photometric="minisblack"))   # tifffile's 1/1, no unit
    assert plain.pixel_size_um is None and plain.pixel_size_source is None
    photo = load_plate(multi(tmp_path / "dpi", photometric="minisblack", resolution=(72, 72),
                             resolutionunit="INCH"))   # 353 µm per pixel: a "photo" default
    assert photo.pixel_size_um is None


def test_metamorph_description(tmp_path):
    plate = load_plate(imagexpress(tmp_path / "ix", description=metamorph(0.65, 0.65)))
    assert plate.pixel_size_um == pytest.approx(0.65) and plate.pixel_size_source == "MetaMorph"
    nm = load_plate(imagexpress(tmp_path / "nm", description=metamorph(650, 650, "nm")))
    assert nm.pixel_size_um == pytest.approx(0.65)


def test_metamorph_x_and_y_differ_uses_x_and_logs(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="neurorg_core.pixelsize"):
        plate = load_plate(imagexpress(tmp_path / "ix", description=metamorph(0.65, 0.7)))
    assert plate.pixel_size_um == pytest.approx(0.65)
    assert "0.65 x 0.7 µm; using X" in caplog.text


def test_harmony_index_above_the_images_folder(tmp_path):
    root = tmp_path / "harmony"
    images = operetta(root)
    (root / "Index.idx.xml").write_text(harmony_index("6.5E-07"))
    plate = load_plate(root)
    assert plate.layout == "operetta"
    assert plate.pixel_size_um == pytest.approx(0.65) and plate.pixel_size_source == "Harmony index"
    given_images = load_plate(images)   # the Images folder itself: the index one level up is found
    assert given_images.pixel_size_um == pytest.approx(0.65)


def test_harmony_index_beside_the_images_wins_over_tiff_resolution(tmp_path):
    images = operetta(tmp_path / "h", resolution=(1e4 / 2.0, 1e4 / 2.0), resolutionunit="CENTIMETER")
    assert load_plate(tmp_path / "h").pixel_size_source == "TIFF resolution"
    (images / "Index.xml").write_text(harmony_index("1.3E-06"))
    plate = load_plate(tmp_path / "h")
    assert plate.pixel_size_um == pytest.approx(1.3) and plate.pixel_size_source == "Harmony index"


def test_broken_harmony_index_is_skipped_not_guessed(tmp_path, caplog):
    operetta(tmp_path / "h")
    (tmp_path / "h" / "Index.idx.xml").write_text("<EvaluationInputData><Images><Image>")
    with caplog.at_level(logging.WARNING, logger="neurorg_core.pixelsize"):
        plate = load_plate(tmp_path / "h")
    assert plate.pixel_size_um is None and "Index.idx.xml: pixel size not read" in caplog.text


def test_user_value_wins_and_is_checked(tmp_path):
    root = imagexpress(tmp_path / "ix", description=metamorph(0.65, 0.65))
    plate = load_plate(root, pixel_size_um=0.325)
    assert plate.pixel_size_um == 0.325 and plate.pixel_size_source == "user"
    for bad in (0, -1, float("nan"), "abc"):
        with pytest.raises(NeuroRGError, match="pixel size .* is not usable; expected a number of µm"):
            load_plate(root, pixel_size_um=bad)


def test_summary_and_inspect_show_the_pixel_size(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NEURORG_MODEL_DIR", str(tmp_path / "no_models"))  # small fields: no model's crop check
    root = imagexpress(tmp_path / "ix", description=metamorph(0.65, 0.65))
    summary = json.loads(json.dumps(load_plate(root).summary()))
    assert summary["pixel_size_um"] == pytest.approx(0.65) and summary["pixel_size_source"] == "MetaMorph"
    assert cli.main(["inspect", str(root)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pixel_size_um"] == pytest.approx(0.65) and report["pixel_size_source"] == "MetaMorph"
    unknown = load_plate(imagexpress(tmp_path / "none")).summary()
    assert unknown["pixel_size_um"] is None and unknown["pixel_size_source"] is None


def test_a_magnified_plate_gives_the_same_crops_with_its_pixel_size_read_or_given(tmp_path):
    """The same 2x plate, once as ImageXpress TIFFs (pixel size from their MetaMorph XML) and once
    as the npy release (no metadata; the user gives the pixel size, at load or at scoring): the
    crop edge is the model's at the plate's scale and every crop is identical, so the two ways of
    knowing the pixel size can never score a plate differently."""
    from neurorg_core.preprocess import CropGeometry, crops_from_field, plate_cropping
    from neurorg_core.synth import SYNTH_PIXEL_SIZE_UM, write_synthetic_plates

    kw = dict(seed=31, n_fields=2, size=64, magnification=2.0, wells=["B02", "C05", "D07"])
    ix = load_plate(write_synthetic_plates(tmp_path / "ix", layout="imagexpress", **kw)[0])
    npy_root = write_synthetic_plates(tmp_path / "npy", layout="npy", **kw)[0]
    model = CropGeometry("tiles", 16, SYNTH_PIXEL_SIZE_UM)
    read = plate_cropping(ix, model)
    given_at_scoring = plate_cropping(load_plate(npy_root), model, pixel_size_um=SYNTH_PIXEL_SIZE_UM / 2)
    given_at_load = plate_cropping(load_plate(npy_root, pixel_size_um=SYNTH_PIXEL_SIZE_UM / 2), model)
    assert read.pixel_size_source == "MetaMorph" and given_at_scoring.pixel_size_source == "user"
    assert read.edge == given_at_scoring.edge == given_at_load.edge == 32
    assert read.intensity == given_at_scoring.intensity
    npy = load_plate(npy_root)
    assert ix.wells() == npy.wells() == ["B02", "C05", "D07"]
    for well in ix.wells():
        plan_a = read.plan(2, ix.field_shape, 8)
        plan_b = given_at_scoring.plan(2, npy.field_shape, 8)
        assert plan_a == plan_b
        for i, (ra, rb) in enumerate(zip(ix.fields_of(well), npy.fields_of(well))):
            a = crops_from_field(ix.read_field(ra), plan_a, i, 16, read.intensity)
            b = crops_from_field(npy.read_field(rb), plan_b, i, 16, given_at_scoring.intensity)
            assert a.shape == (4, 16, 16, 3)
            np.testing.assert_array_equal(a, b)
