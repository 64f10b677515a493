"""Image files damaged the way transfers damage them: truncated copies. A truncated file must be
refused, naming the file and well, by ``Plate.check_files`` (so `inspect` never calls such a plate
scoreable) and by every read, never decoded into silently wrong pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from neurorg_core import cli
from neurorg_core.errors import NeuroRGError
from neurorg_core.plates import FieldRef, load_plate

WELLS = ("B02", "B03")


def write_plate(folder: Path, dtype=np.uint16, **imwrite) -> Path:
    """A 2-well, 2-site, 3-channel ImageXpress plate of random 48 x 40 images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    top = 4095 if dtype == np.uint16 else 255
    for well in WELLS:
        for site in (1, 2):
            for ch in (1, 2, 3):
                img = rng.integers(0, top, (48, 40), dtype=dtype, endpoint=True)
                tifffile.imwrite(folder / f"exp_{well}_s{site}_w{ch}.tif", img, **imwrite)
    return folder


def truncate(path: Path, n_bytes: int) -> None:
    path.write_bytes(path.read_bytes()[:-n_bytes])


@pytest.mark.parametrize("imwrite, cut", [
    ({}, 500),                                       # uncompressed: decoding would fail, but only if tried
    ({"compression": "lzw"}, 1),                     # LZW missing its end code decodes whole
    ({"compression": "zstd", "tile": (16, 16)}, 200),
])
def test_check_files_finds_a_truncated_file_of_a_kind_already_decoded(tmp_path, imwrite, cut):
    root = write_plate(tmp_path / "p", **imwrite)
    truncate(root / "exp_B03_s2_w2.tif", cut)       # a late field: its kind was decoded in B02 s1
    problems = load_plate(root).check_files()
    assert len(problems) == 1, problems
    assert problems[0].startswith("exp_B03_s2_w2.tif, well B03: image is truncated")


def test_truncated_jpeg_tiff_is_refused_not_decoded_to_grey(tmp_path):
    root = write_plate(tmp_path / "p", dtype=np.uint8, compression="jpeg")
    truncate(root / "exp_B03_s1_w1.tif", 2000)       # libjpeg fills the missing rows with 128
    plate = load_plate(root)
    with pytest.raises(NeuroRGError, match="exp_B03_s1_w1.tif, well B03: image is truncated"):
        plate.read_field(FieldRef("B03", 2, 3, 1))
    assert len(plate.check_files()) == 1


def test_inspect_refuses_a_plate_with_a_truncated_png(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NEURORG_MODEL_DIR", str(tmp_path / "no_models"))
    root = tmp_path / "png"
    root.mkdir()
    rng = np.random.default_rng(1)
    for well in WELLS:
        for site in (1, 2):
            pixels = rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"{well}_s{site}.png")
    truncate(root / "B03_s2.png", 300)
    assert cli.main(["inspect", str(root)]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["scoreable"] is False and len(report["file_problems"]) == 1
    assert report["file_problems"][0].startswith("B03_s2.png, well B03: image is truncated")


# --- pixels whose values do not mean brightness --------------------------------------------------

@pytest.mark.parametrize("photometric, what", [("miniswhite", "MINISWHITE"), ("palette", "PALETTE")])
def test_inverted_or_palette_tiff_is_refused_not_read_as_brightness(tmp_path, photometric, what):
    # MinIsWhite stores 0 as white and a palette image stores colour indices: decoding gives the
    # raw numbers, so reading them as fluorescence would silently invert or scramble the field
    root = write_plate(tmp_path / "p", dtype=np.uint8)
    img = tifffile.imread(root / "exp_B03_s2_w2.tif")
    kw = {"colormap": np.zeros((3, 256), np.uint16)} if photometric == "palette" else {}
    tifffile.imwrite(root / "exp_B03_s2_w2.tif", img, photometric=photometric, **kw)
    plate = load_plate(root)
    problems = plate.check_files()
    assert len(problems) == 1 and problems[0].startswith("exp_B03_s2_w2.tif, well B03: ")
    assert what in problems[0]
    with pytest.raises(NeuroRGError, match=f"exp_B03_s2_w2.tif, well B03: .*{what}"):
        plate.read_field(FieldRef("B03", 2, 3, 2))


# --- zips ----------------------------------------------------------------------------------------

def test_zip_holding_one_path_twice_is_refused_naming_the_member(tmp_path):
    # zipfile and some archivers append a second entry of the same name; extracting it would keep
    # whichever copy comes last, silently
    import warnings
    import zipfile

    root = write_plate(tmp_path / "p")
    zpath = tmp_path / "dup.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(zpath, "w") as zf:
        warnings.simplefilter("ignore")   # zipfile's "Duplicate name" warning
        zf.writestr("p\\exp_B03_s1_w2.tif", b"II*\0 an older, broken copy")
        for path in sorted(root.iterdir()):
            zf.write(path, f"p/{path.name}")
    with pytest.raises(NeuroRGError, match=r"dup.zip: .*'p/exp_B03_s1_w2.tif' twice"):
        load_plate(zpath)


# --- two plates given as one ---------------------------------------------------------------------

def test_imagexpress_files_of_two_plates_are_not_merged_into_one(tmp_path):
    # two plates' exports whose wells do not collide (B02-B03 and C02-C03) in one zip: the file
    # names' plate prefixes differ, and reading them as one 4-well plate would be silent
    import zipfile

    root = write_plate(tmp_path / "one")
    zpath = tmp_path / "plates.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for path in sorted(root.iterdir()):
            zf.write(path, f"PlateA/{path.name.replace('exp_', 'PlateA_')}")
            zf.write(path, f"PlateB/{path.name.replace('exp_', 'PlateB_').replace('_B0', '_C0')}")
    expected = r"PlateB_C02_s1_w1.tif: files of 2 plates found together \(name prefixes 'PlateA', 'PlateB'"
    with pytest.raises(NeuroRGError, match=expected):
        load_plate(zpath)


# --- a field at another bit depth in a 16-bit plate ----------------------------------------------

def test_a_field_above_the_detected_bit_depth_is_refused_not_clipped(tmp_path, copy_screen_wells,
                                                                      tiny_ensemble_files):
    # 12-bit camera data in 16-bit files; one field the bit-depth sample does not read holds data
    # scaled to 16 bits. Scaled by 4095 it would be clipped to white, silently
    from neurorg_core.model import load_bundle
    from neurorg_core.pipeline import ScoreOptions, run_plate
    from neurorg_core.platemap import load_plate_map
    from neurorg_core.preprocess import INTENSITY_SAMPLE_FIELDS, sample_field_indices
    from neurorg_core.schema import ROLE
    from neurorg_core.store import ResultStore

    root = tmp_path / "p"
    keep = copy_screen_wells(root, lambda pm: pm[pm[ROLE] != "empty"].head(INTENSITY_SAMPLE_FIELDS + 2))
    keep.to_csv(root / "platemap.csv", index=False)
    for path in root.glob("*.tif"):
        tifffile.imwrite(path, tifffile.imread(path).astype(np.uint16) * 16, photometric="rgb")  # <= 4080
    plate = load_plate(root)
    unsampled = sorted(set(range(len(plate.fields))) - set(sample_field_indices(len(plate.fields))))
    victim = plate.fields[unsampled[0]]
    path = plate.files_of(victim)[0]
    tifffile.imwrite(path, tifffile.imread(path) * 16, photometric="rgb")   # 16-bit scale
    with ResultStore(tmp_path / "r.duckdb") as store, pytest.raises(NeuroRGError) as info:
        run_plate(load_plate(root), load_plate_map(root / "platemap.csv"), load_bundle(tiny_ensemble_files),
                  store, name="p", options=ScoreOptions(crops_per_well=4, backend="keras"))
    message = str(info.value)
    assert message.startswith(f"{path.name}, well {victim.well}: ") and "12-bit" in message
    assert "--bit-depth" in message


def test_a_zip_inside_the_zip_is_named(tmp_path):
    import zipfile

    root = write_plate(tmp_path / "p")
    inner = tmp_path / "plate 1.zip"
    with zipfile.ZipFile(inner, "w") as zf:
        for path in sorted(root.iterdir()):
            zf.write(path, f"p/{path.name}")
    outer = tmp_path / "sent.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.write(inner, "plate 1.zip")
        zf.writestr("__MACOSX/._plate 1.zip", b"\0\5\26\7")
    with pytest.raises(NeuroRGError, match=r"sent.zip: .*'plate 1.zip' is a zip inside the zip"):
        load_plate(outer)


def test_tiff_without_a_photometric_tag_reads_as_grey(tmp_path):
    # some writers leave the tag out; libtiff then assumes min-is-black, and so do we
    import struct

    root = write_plate(tmp_path / "p")
    path = root / "exp_B03_s2_w2.tif"
    expected = tifffile.imread(path)
    with tifffile.TiffFile(path) as tif:
        where = tif.pages.first.tags["PhotometricInterpretation"].offset
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, where, 65000)   # the entry becomes an unknown private tag
    path.write_bytes(bytes(data))
    plate = load_plate(root)
    assert plate.check_files() == []
    np.testing.assert_array_equal(plate.read_field(FieldRef("B03", 2, 3, 2))[..., 1], expected)
