"""Real-world TIFFs: compressed files (through imagecodecs), `inspect` decoding one field of each
kind of file, z-stacks and time series refused, the pixel limit over every page and sample, and
file names that are not UTF-8."""

from __future__ import annotations

import json
import os
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from neurorg_core import cli
from neurorg_core.errors import NeuroRGError
from neurorg_core.plates import FieldRef, load_plate

CODECS = ["lzw", "zlib", "adobe_deflate", "zstd", "packbits"]
WELLS = ("B02", "B03")


def write_per_channel(folder: Path, layout: str, dtype=np.uint16, seed: int = 0, **imwrite) -> dict:
    """A 2-well, 2-site, 3-channel plate of random images; returns {(well, site, ch): pixels}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    top = 4095 if dtype == np.uint16 else 255   # 12-bit camera data, or 8-bit
    truth = {}
    for w, well in enumerate(WELLS):
        for site in (1, 2):
            for ch in (1, 2, 3):
                img = rng.integers(0, top, (48, 40), dtype=dtype, endpoint=True)
                if layout == "operetta":
                    name = f"r02c{w + 2:02d}f{site:02d}p01-ch{ch}sk1fk1fl1.tiff"
                else:
                    name = f"exp_{well}_s{site}_w{ch}.tif"
                tifffile.imwrite(folder / name, img, **imwrite)
                truth[(well, site, ch)] = img
    return truth


def assert_plate_reads(plate, truth, *, atol: int = 0) -> None:
    for ref, pixels in plate.iter_fields():
        for ch in (1, 2, 3):
            expected = truth[(ref.well, ref.field, ch)].astype(int)
            np.testing.assert_allclose(pixels[..., ch - 1].astype(int), expected, atol=atol, rtol=0)


# --- compressed TIFFs -------------------------------------------------------------------------

@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("layout", ["operetta", "imagexpress"])
def test_compressed_16_bit_tiffs_read_exactly(tmp_path, codec, layout):
    truth = write_per_channel(tmp_path / "p", layout, compression=codec)
    with tifffile.TiffFile(next((tmp_path / "p").iterdir())) as tif:
        assert tif.pages.first.compression != 1   # really compressed on disk
    plate = load_plate(tmp_path / "p")
    assert plate.layout == layout and plate.dtype == np.uint16
    assert plate.check_files() == []
    assert_plate_reads(plate, truth)
    assert plate.reused_headers == 0   # compressed bytes are never read through a remembered header


@pytest.mark.parametrize("codec", ["lzw", "zlib", "zstd"])
def test_compressed_with_predictor_and_tiles_reads_exactly(tmp_path, codec):
    truth = write_per_channel(tmp_path / "p", "imagexpress", compression=codec, predictor=True,
                              tile=(16, 16))
    assert_plate_reads(load_plate(tmp_path / "p"), truth)


def test_jpeg_8_bit_reads_close(tmp_path):
    truth = write_per_channel(tmp_path / "p", "imagexpress", dtype=np.uint8,
                              compression="jpeg", compressionargs={"level": 95})
    plate = load_plate(tmp_path / "p")
    assert plate.dtype == np.uint8 and plate.check_files() == []
    for ref, pixels in plate.iter_fields():
        for ch in (1, 2, 3):
            diff = pixels[..., ch - 1].astype(int) - truth[(ref.well, ref.field, ch)].astype(int)
            assert np.abs(diff).mean() < 12   # lossy: close, not exact (random noise is JPEG's worst case)
    smooth = tmp_path / "smooth"
    smooth.mkdir()
    ramp = np.add.outer(np.arange(48), np.arange(40)).astype(np.uint8) * 2
    for ch in (1, 2, 3):
        tifffile.imwrite(smooth / f"exp_B02_s1_w{ch}.tif", ramp, compression="jpeg",
                         compressionargs={"level": 95})
    field = load_plate(smooth).read_field(FieldRef("B02", 2, 2, 1))
    assert np.abs(field[..., 0].astype(int) - ramp).max() <= 3


@pytest.mark.parametrize("codec", ["lzw", "zlib", "zstd", "packbits"])
def test_compressed_multichannel_tiff_reads_exactly(tmp_path, codec):
    root = tmp_path / "multi"
    root.mkdir()
    rng = np.random.default_rng(4)
    cyx = rng.integers(0, 4095, (3, 48, 40), dtype=np.uint16)
    yxs = rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)
    tifffile.imwrite(root / "B02_s1.tif", cyx, compression=codec, photometric="minisblack")
    plate = load_plate(root)
    np.testing.assert_array_equal(plate.read_field(plate.fields[0]), np.moveaxis(cyx, 0, -1))
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    tifffile.imwrite(rgb / "B02_s1.tif", yxs, compression=codec, photometric="rgb")
    np.testing.assert_array_equal(load_plate(rgb).read_field(FieldRef("B02", 2, 2, 1)), yxs)


def test_header_reuse_still_serves_uncompressed_files_after_compressed_ones(tmp_path):
    # a plate mixing compressed and plain files: the plain ones are read through one remembered
    # header, the compressed ones never are
    truth = write_per_channel(tmp_path / "p", "imagexpress")
    for (well, site, ch), img in truth.items():
        if ch == 2:
            tifffile.imwrite(tmp_path / "p" / f"exp_{well}_s{site}_w{ch}.tif", img, compression="lzw")
    plate = load_plate(tmp_path / "p")
    assert_plate_reads(plate, truth)
    assert plate.reused_headers == 7   # 8 plain files: the first parsed, 7 reused


# --- inspect decodes one field of each kind --------------------------------------------------

def _corrupt_pixels(path: Path) -> None:
    """Overwrite a compressed file's pixel data with noise: the header stays valid."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        offset, count = int(page.dataoffsets[0]), int(page.databytecounts[0])
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = np.random.default_rng(9).integers(0, 256, count, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _set_compression(path: Path, code: int) -> None:
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages.first.tags["Compression"]
        where, order = int(tag.valueoffset), tif.byteorder
    data = bytearray(path.read_bytes())
    struct.pack_into(f"{order}H", data, where, code)
    path.write_bytes(bytes(data))


def test_inspect_catches_a_plate_that_cannot_be_decoded(tmp_path, capsys):
    # every header reads fine; only decoding tells that the pixels cannot be read
    write_per_channel(tmp_path / "harmony" / "Images", "operetta", compression="zlib")
    for path in (tmp_path / "harmony" / "Images").iterdir():
        _corrupt_pixels(path)
    assert cli.main(["inspect", str(tmp_path / "harmony")]) == 2
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["scoreable"] is False and len(report["file_problems"]) == 1
    problem = report["file_problems"][0]
    assert "r02c02f01p01-ch1sk1fk1fl1.tiff, well B02" in problem
    assert "ADOBE_DEFLATE compression cannot be decoded" in problem
    assert "not scoreable" in captured.err and "Traceback" not in captured.err


def test_inspect_decodes_one_field_per_kind_and_finds_an_unknown_codec(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NEURORG_MODEL_DIR", str(tmp_path / "no_models"))  # small fields: no model's crop check
    truth = write_per_channel(tmp_path / "p", "imagexpress", compression="lzw")
    # B03 site 2 channel 3 was written with a compression no decoder knows: a second kind
    _set_compression(tmp_path / "p" / "exp_B03_s2_w3.tif", 60000)
    assert cli.main(["inspect", str(tmp_path / "p")]) == 2
    problems = json.loads(capsys.readouterr().out)["file_problems"]
    assert len(problems) == 1 and "exp_B03_s2_w3.tif, well B03" in problems[0]
    assert "60000" in problems[0]
    (tmp_path / "p" / "exp_B03_s2_w3.tif").unlink()
    tifffile.imwrite(tmp_path / "p" / "exp_B03_s2_w3.tif", truth[("B03", 2, 3)], compression="lzw")
    assert cli.main(["inspect", str(tmp_path / "p")]) == 0
    assert json.loads(capsys.readouterr().out)["scoreable"] is True


def test_a_field_with_a_bad_header_is_reported_once_and_another_field_is_decoded(tmp_path):
    write_per_channel(tmp_path / "p", "imagexpress", compression="lzw")
    (tmp_path / "p" / "exp_B02_s1_w2.tif").write_bytes(b"garbage")   # in the very first field
    plate = load_plate(tmp_path / "p")
    problems = plate.check_files()
    assert len(problems) == 1 and "exp_B02_s1_w2.tif, well B02: not a readable TIFF" in problems[0]


# --- axes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("axes, what", [("ZYX", "z-stack of 5 planes"), ("TYX", "time series of 5 planes")])
def test_imagej_stack_is_not_taken_for_channels(tmp_path, axes, what):
    root = tmp_path / "stack"
    root.mkdir()
    tifffile.imwrite(root / "B02_s1.tif", np.zeros((5, 32, 40), np.uint16), imagej=True,
                     metadata={"axes": axes})
    with pytest.raises(NeuroRGError, match=f"B02_s1.tif, well B02: image is a {what} .axes {axes}"):
        load_plate(root)
    # three planes would have passed the old shape guess as three channels
    tifffile.imwrite(root / "B02_s1.tif", np.zeros((3, 32, 40), np.uint16), imagej=True,
                     metadata={"axes": axes})
    with pytest.raises(NeuroRGError, match="export one plane per field"):
        load_plate(root)


def test_z_stack_in_a_per_channel_layout_is_refused(tmp_path):
    write_per_channel(tmp_path / "p", "imagexpress")
    tifffile.imwrite(tmp_path / "p" / "exp_B02_s1_w1.tif", np.zeros((4, 48, 40), np.uint16), imagej=True,
                     metadata={"axes": "ZYX"})
    with pytest.raises(NeuroRGError, match="exp_B02_s1_w1.tif, well B02: image is a z-stack of 4 planes"):
        load_plate(tmp_path / "p")
    tifffile.imwrite(tmp_path / "p" / "exp_B03_s1_w1.tif", np.zeros((48, 40), np.uint16))
    (tmp_path / "p" / "exp_B02_s1_w1.tif").unlink()
    for ch in (2, 3):
        (tmp_path / "p" / f"exp_B02_s1_w{ch}.tif").unlink()
    tifffile.imwrite(tmp_path / "p" / "exp_B03_s2_w2.tif", np.zeros((2, 48, 40), np.uint16), imagej=True,
                     metadata={"axes": "TYX"})
    plate = load_plate(tmp_path / "p")   # a later file: found when read, and by check_files
    with pytest.raises(NeuroRGError, match="exp_B03_s2_w2.tif, well B03: image is a time series"):
        plate.read_field(FieldRef("B03", 2, 3, 2))
    assert any("time series" in p for p in plate.check_files())


def test_real_multichannel_layouts_still_work(tmp_path):
    rng = np.random.default_rng(5)
    cyx = rng.integers(0, 60000, (3, 32, 40), dtype=np.uint16)
    cases = {
        "imagej_cyx": dict(data=cyx, imagej=True, metadata={"axes": "CYX"}),
        "imagej_tzcyx": dict(data=cyx[None, None], imagej=True, metadata={"axes": "TZCYX"}),
        "ome_cyx": dict(data=cyx, ome=True, metadata={"axes": "CYX"}),
        "planar_syx": dict(data=cyx, photometric="rgb", planarconfig="separate"),
    }
    for name, kw in cases.items():
        root = tmp_path / name
        root.mkdir()
        data = kw.pop("data")
        tifffile.imwrite(root / "C03_s1.tif", data, **kw)
        plate = load_plate(root)
        assert plate.channel_ids == ("0", "1", "2"), name
        np.testing.assert_array_equal(plate.read_field(plate.fields[0]), np.moveaxis(cyx, 0, -1))


# --- the pixel limit counts every page and sample -------------------------------------------

def test_multipage_tiff_over_the_limit_is_refused_before_decoding(tmp_path):
    root = tmp_path / "big"
    root.mkdir()
    # 3 pages of 1000 x 1000: each page is under the limit, the file (3 M values) is not
    tifffile.imwrite(root / "B02_s1.tif", np.ones((3, 1000, 1000), np.uint16), photometric="minisblack")
    tracemalloc.start()
    try:
        with pytest.raises(NeuroRGError, match=r"B02_s1.tif, well B02: image is 3 x 1000 x 1000 = 3000000 "
                                               r"pixel values \(every page and sample counted\), more "
                                               r"than the limit of 2000000"):
            load_plate(root, max_pixels=2_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000   # one decoded page alone would be 2 MB
    plate = load_plate(root, max_pixels=3_000_000)
    assert plate.read_field(plate.fields[0]).shape == (1000, 1000, 3)


def test_later_multipage_file_over_the_limit_is_refused_on_read(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    tifffile.imwrite(root / "A01_s1.tif", np.zeros((3, 100, 100), np.uint8), photometric="minisblack")
    tifffile.imwrite(root / "A02_s1.tif", np.zeros((3, 100, 100), np.uint8), photometric="minisblack")
    plate = load_plate(root, max_pixels=30_000)
    tifffile.imwrite(root / "A02_s1.tif", np.zeros((6, 100, 100), np.uint8), photometric="minisblack")
    with pytest.raises(NeuroRGError, match="A02_s1.tif, well A02: image is 6 x 100 x 100 = 60000 pixel values"):
        plate.read_field(FieldRef("A02", 1, 2, 1))


# --- file names that are not UTF-8 --------------------------------------------------------------

def _fs(parent: Path, name: bytes) -> Path:
    return Path(os.fsdecode(os.fsencode(parent) + b"/" + name))


def test_non_utf8_file_name_inside_a_plate_is_read_and_named_printably(tmp_path):
    root = tmp_path / "p"
    truth = write_per_channel(root, "imagexpress")
    for path in list(root.iterdir()):   # the plate's name (every file's prefix) is not UTF-8
        path.rename(_fs(root, b"exp\xff" + os.fsencode(path.name)[3:]))
    odd = _fs(root, b"exp\xff_B03_s2_w1.tif")
    plate = load_plate(root)
    assert_plate_reads(plate, truth)
    odd.write_bytes(b"not a tiff")
    problems = plate.check_files()
    assert len(problems) == 1 and "exp\\xff_B03_s2_w1.tif, well B03: not a readable TIFF" in problems[0]
    problems[0].encode("utf-8")   # printable: a console, a browser and DuckDB take it
    with pytest.raises(NeuroRGError) as info:
        plate.read_field(FieldRef("B03", 2, 3, 2))
    str(info.value).encode("utf-8")


def test_non_utf8_plate_folder_is_refused_with_a_clear_message(tmp_path):
    root = _fs(tmp_path, b"pl\xe9te")
    write_per_channel(root, "imagexpress")
    with pytest.raises(NeuroRGError, match=r"is not valid UTF-8 text .* rename the folder or zip") as info:
        load_plate(root)
    assert "pl\\xe9te" in str(info.value)
    str(info.value).encode("utf-8")
