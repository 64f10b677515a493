import zipfile

import numpy as np
import pytest
import tifffile
from PIL import Image

from neurorg_core.errors import NeuroRGError
from neurorg_core.archive import extract_zip
from neurorg_core.plates import FieldRef, load_plate

GUID = "B9D0A1F2-5C3E-4A57-9E6D-2F1B0C8D7E6A"


def plane(value, shape=(24, 32), dtype=np.uint8):
    """A constant image whose value says which channel / field it is."""
    return np.full(shape, value, dtype=dtype)


def write_imagexpress(folder, wells=("B02", "B03"), sites=(1, 2), channels=(1, 2, 3),
                      shape=(24, 32), dtype=np.uint8, guid=True):
    folder.mkdir(parents=True, exist_ok=True)
    for wi, well in enumerate(wells):
        for s in sites:
            for c in channels:
                name = f"180706_{well}_s{s}_w{c}{GUID if guid else ''}.tif"
                tifffile.imwrite(folder / name, plane(50 * c + 10 * wi + s, shape, dtype))
    return folder


# --- ImageXpress ------------------------------------------------------------------------------

def test_imagexpress_layout_lazy_fields_and_roles(tmp_path):
    root = write_imagexpress(tmp_path / "plate_A" / "TimePoint_1")
    (tmp_path / "plate_A" / "notes.txt").write_text("not an image")
    plate = load_plate(tmp_path / "plate_A")
    assert plate.layout == "imagexpress" and plate.name == "plate_A"
    assert plate.channel_ids == ("w1", "w2", "w3")
    assert plate.channel_map == {"nucleus": "w1", "neuron": "w2", "microglia": "w3"}
    assert plate.wells() == ["B02", "B03"] and plate.plate_format == 96
    assert plate.fields_of("b3") == [FieldRef("B03", 2, 3, 1), FieldRef("B03", 2, 3, 2)]
    assert plate.dtype == np.uint8 and plate.field_shape == (24, 32)
    assert plate.labels == {}
    field = plate.read_field(FieldRef("B03", 2, 3, 2))
    assert field.shape == (24, 32, 3) and field.dtype == np.uint8
    assert field[0, 0].tolist() == [62, 112, 162]   # w1, w2, w3 of B03 site 2
    refs = [ref for ref, _ in plate.iter_fields()]
    assert refs == list(plate.fields) and len(refs) == 4
    assert root.exists()


def test_imagexpress_channel_map_override_and_digit_ids(tmp_path):
    write_imagexpress(tmp_path / "p")
    plate = load_plate(tmp_path / "p", {"nucleus": "w3", "microglia": "1"})
    assert plate.channel_map == {"nucleus": "w3", "neuron": "w2", "microglia": "w1"}
    assert plate.read_field(plate.fields[0])[0, 0].tolist() == [151, 101, 51]


def test_unknown_channel_id_lists_the_ids_found(tmp_path):
    write_imagexpress(tmp_path / "p")
    with pytest.raises(NeuroRGError, match="nucleus=w5 not in the files; ids found: w1, w2, w3"):
        load_plate(tmp_path / "p", {"nucleus": "w5"})
    with pytest.raises(NeuroRGError, match="unknown channel role"):
        load_plate(tmp_path / "p", {"dapi": "w1"})
    with pytest.raises(NeuroRGError, match="two roles share one channel"):
        load_plate(tmp_path / "p", {"nucleus": "w2"})


def test_extra_channel_needs_a_map(tmp_path):
    write_imagexpress(tmp_path / "p", channels=(1, 2, 3, 4))
    with pytest.raises(NeuroRGError, match="found channels w1, w2, w3, w4"):
        load_plate(tmp_path / "p")
    plate = load_plate(tmp_path / "p", {"nucleus": "w4"})
    assert plate.read_field(plate.fields[0])[0, 0].tolist() == [201, 101, 151]


def test_wrong_number_of_channels(tmp_path):
    write_imagexpress(tmp_path / "p", channels=(1, 2))
    with pytest.raises(NeuroRGError, match="p: found channels w1, w2; the imagexpress default"):
        load_plate(tmp_path / "p")


def test_channel_missing_for_one_well_names_the_well(tmp_path):
    root = write_imagexpress(tmp_path / "p", wells=("B02", "B03", "C04"))
    (root / f"180706_C04_s2_w3{GUID}.tif").unlink()
    with pytest.raises(NeuroRGError, match=r"well C04: field 2 has no file for channel w3 \(microglia\)"):
        load_plate(root)


def test_partial_and_large_plate_formats_and_siteless_names(tmp_path):
    root = tmp_path / "p384"
    root.mkdir()
    for c in (1, 2, 3):
        tifffile.imwrite(root / f"x_P24_w{c}.tif", plane(c))
        tifffile.imwrite(root / f"x_B02_w{c}.tif", plane(c))
    plate = load_plate(root)
    assert plate.plate_format == 384 and plate.wells() == ["B02", "P24"]
    assert plate.fields_of("P24") == [FieldRef("P24", 16, 24, 1)]
    for c in (1, 2, 3):
        tifffile.imwrite(root / f"x_AF48_w{c}.tif", plane(c))
    assert load_plate(root).plate_format == 1536


def test_sixteen_bit_reads_native(tmp_path):
    write_imagexpress(tmp_path / "p", dtype=np.uint16)
    plate = load_plate(tmp_path / "p")
    assert plate.dtype == np.uint16
    assert plate.read_field(plate.fields[0]).dtype == np.uint16


def test_duplicate_files_for_one_channel(tmp_path):
    root = write_imagexpress(tmp_path / "p" / "TimePoint_1")
    write_imagexpress(tmp_path / "p" / "TimePoint_2")
    with pytest.raises(NeuroRGError, match="two files for field 1 channel w1"):
        load_plate(tmp_path / "p")
    assert root.exists()


# --- Operetta / Harmony -----------------------------------------------------------------------

def test_operetta_reads_the_first_plane_only(tmp_path):
    images = tmp_path / "harmony" / "Images"
    images.mkdir(parents=True)
    for r, c in ((2, 2), (3, 5)):
        for f in (1, 2, 3):
            for p in (2, 3):
                for ch in (1, 2, 3):
                    tifffile.imwrite(images / f"r{r:02d}c{c:02d}f{f:02d}p{p:02d}-ch{ch}sk1fk1fl1.tiff",
                                     plane(1000 * p + 10 * ch + f, dtype=np.uint16))
    (tmp_path / "harmony" / "Index.idx.xml").write_text("<xml/>")
    plate = load_plate(tmp_path / "harmony")
    assert plate.layout == "operetta"
    assert plate.channel_ids == ("ch1", "ch2", "ch3")
    assert plate.wells() == ["B02", "C05"] and len(plate.fields_of("C05")) == 3
    assert plate.read_field(FieldRef("C05", 3, 5, 3))[0, 0].tolist() == [2013, 2023, 2033]


# --- multi-channel TIFF / PNG -----------------------------------------------------------------

def test_multichannel_tiff_channel_first_and_last_and_png(tmp_path):
    root = tmp_path / "multi"
    root.mkdir()
    last = np.stack([plane(10), plane(20), plane(30)], axis=-1)
    tifffile.imwrite(root / "B02_s1.tif", last, photometric="rgb")
    tifffile.imwrite(root / "B02_s2.tiff", np.moveaxis(last, -1, 0) + 1)   # (C, H, W)
    Image.fromarray(last + 2).save(root / "plate_B03_s1.png")
    plate = load_plate(root)
    assert plate.layout == "tiff" and plate.channel_ids == ("0", "1", "2")
    assert plate.field_shape == (24, 32)
    assert plate.read_field(FieldRef("B02", 2, 2, 1))[3, 4].tolist() == [10, 20, 30]
    assert plate.read_field(FieldRef("B02", 2, 2, 2))[3, 4].tolist() == [11, 21, 31]
    assert plate.read_field(FieldRef("B03", 2, 3, 1))[3, 4].tolist() == [12, 22, 32]
    swapped = load_plate(root, {"nucleus": "2", "microglia": "0"})
    assert swapped.read_field(FieldRef("B02", 2, 2, 2))[0, 0].tolist() == [31, 21, 11]


def test_multichannel_wrong_channel_counts(tmp_path):
    two = tmp_path / "two"
    two.mkdir()
    tifffile.imwrite(two / "A01_s1.tif", np.zeros((2, 16, 16), np.uint8))
    with pytest.raises(NeuroRGError, match="found channels 0, 1"):
        load_plate(two)
    four = tmp_path / "four"
    four.mkdir()
    tifffile.imwrite(four / "A01_s1.tif", np.zeros((16, 16, 4), np.uint8))
    with pytest.raises(NeuroRGError, match="found channels 0, 1, 2, 3"):
        load_plate(four)
    assert load_plate(four, {"nucleus": "3"}).channel_map["nucleus"] == "3"
    grey = tmp_path / "grey"
    grey.mkdir()
    tifffile.imwrite(grey / "A01_s1.tif", np.zeros((16, 16), np.uint8))
    with pytest.raises(NeuroRGError, match="A01_s1.tif, well A01: image has shape"):
        load_plate(grey)


def test_later_field_with_other_channel_count_fails_on_read(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    tifffile.imwrite(root / "A01_s1.tif", np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(root / "A02_s1.tif", np.zeros((16, 16, 4), np.uint8))
    plate = load_plate(root)
    with pytest.raises(NeuroRGError, match="A02_s1.tif, well A02: image has 4 channels"):
        plate.read_field(FieldRef("A02", 1, 2, 1))
    assert any("A02_s1.tif" in p for p in plate.check_files())


# --- the study's npy release ------------------------------------------------------------------

def write_npy(folder, plate_no, cls, wells, value=None, shape=(20, 20)):
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((len(wells), *shape, 3), np.uint8)
    for i in range(len(wells)):
        arr[i] = (value if value is not None else 10 * cls + i)
        arr[i, ..., 1] = 200
    np.save(folder / f"{cls}_Plate_{plate_no}.npy", arr)
    (folder / f"{cls}_Plate_{plate_no}.csv").write_text("well\n" + "\n".join(wells) + "\n")


def test_npy_release_labels_and_fields(tmp_path):
    write_npy(tmp_path / "rel", 3, 0, ["B02", "B02", "B03"])
    write_npy(tmp_path / "rel", 3, 5, ["C2", "C02"])
    plate = load_plate(tmp_path / "rel")
    assert plate.layout == "npy" and plate.name == "Plate_3"
    assert plate.labels == {"B02": 0, "B03": 0, "C02": 5}
    assert [f.field for f in plate.fields_of("B02")] == [1, 2]
    assert plate.read_field(FieldRef("B02", 2, 2, 2))[0, 0].tolist() == [1, 200, 1]
    assert plate.read_field(FieldRef("C02", 3, 2, 2))[0, 0].tolist() == [51, 200, 51]


def test_npy_several_plates_need_a_choice(tmp_path):
    write_npy(tmp_path / "rel", 1, 0, ["B02"])
    write_npy(tmp_path / "rel", 2, 0, ["B03"])
    with pytest.raises(NeuroRGError, match="holds plates 1, 2"):
        load_plate(tmp_path / "rel")
    assert load_plate(tmp_path / "rel", plate=2).wells() == ["B03"]
    with pytest.raises(NeuroRGError, match="plate 7 not found; plates here: 1, 2"):
        load_plate(tmp_path / "rel", plate=7)


def test_npy_csv_problems_name_the_file(tmp_path):
    write_npy(tmp_path / "a", 1, 0, ["B02", "B03"])
    (tmp_path / "a" / "0_Plate_1.csv").write_text("well\nB02\n")
    with pytest.raises(NeuroRGError, match="0_Plate_1.csv: 1 rows but 0_Plate_1.npy holds 2"):
        load_plate(tmp_path / "a")
    write_npy(tmp_path / "b", 1, 0, ["B02"])
    (tmp_path / "b" / "0_Plate_1.csv").unlink()
    with pytest.raises(NeuroRGError, match="0_Plate_1.npy: no 0_Plate_1.csv beside it"):
        load_plate(tmp_path / "b")
    write_npy(tmp_path / "c", 1, 0, ["B02"])
    write_npy(tmp_path / "c", 1, 4, ["B02"])
    with pytest.raises(NeuroRGError, match="well B02: well appears in both"):
        load_plate(tmp_path / "c")


def test_truncated_npy(tmp_path):
    write_npy(tmp_path / "t", 1, 0, ["B02", "B03"])
    path = tmp_path / "t" / "0_Plate_1.npy"
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(NeuroRGError, match="0_Plate_1.npy: not a readable .npy array, or truncated"):
        load_plate(tmp_path / "t")


# --- zip --------------------------------------------------------------------------------------

def test_zip_round_trip(tmp_path):
    root = write_imagexpress(tmp_path / "src")
    zpath = tmp_path / "myplate.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(root.iterdir()):
            zf.write(p, f"myplate/TimePoint_1/{p.name}")
        zf.writestr("__MACOSX/._junk.tif", b"resource fork")
    plate = load_plate(zpath, work_dir=tmp_path / "work")
    assert plate.name == "myplate" and plate.layout == "imagexpress"
    assert plate.source == zpath and plate.root.parent == tmp_path / "work"   # the store records the zip
    folder = load_plate(root)
    for ref in folder.fields:
        np.testing.assert_array_equal(plate.read_field(ref), folder.read_field(ref))


@pytest.mark.parametrize("evil", ["../escape.tif", "/abs/path.tif", "a/../../up.tif", "C:/win.tif"])
def test_unsafe_zip_is_refused_before_anything_is_extracted(tmp_path, evil):
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("good_A01_s1_w1.tif", b"data")
        zf.writestr(evil, b"data")
    work = tmp_path / "work"
    with pytest.raises(NeuroRGError, match="evil.zip: refusing the whole zip, nothing extracted"):
        load_plate(zpath, work_dir=work)
    assert list(work.rglob("*")) == []
    assert not (tmp_path / "escape.tif").exists()


def test_zip_size_bound_empty_and_corrupt(tmp_path):
    zpath = tmp_path / "big.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("A01_s1.tif", b"\0" * 100_000)
    with pytest.raises(NeuroRGError, match="big.zip: the zip expands to 100000 bytes, more than"):
        extract_zip(zpath, tmp_path / "out", max_bytes=50_000)
    assert not (tmp_path / "out").exists()
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    with pytest.raises(NeuroRGError, match="empty.zip: the zip is empty"):
        load_plate(empty, work_dir=tmp_path / "w")
    notzip = tmp_path / "fake.zip"
    notzip.write_bytes(b"this is not a zip")
    with pytest.raises(NeuroRGError, match="fake.zip: not a readable zip"):
        load_plate(notzip, work_dir=tmp_path / "w")



def test_load_plate_honours_max_zip_bytes(tmp_path):
    # load_plate's own size limit reaches the extraction (it was once replaced by the 64 GiB default)
    root = write_imagexpress(tmp_path / "src")
    zpath = tmp_path / "small.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(root.iterdir()):
            zf.write(p, p.name)
    total = sum(i.file_size for i in zipfile.ZipFile(zpath).infolist())
    with pytest.raises(NeuroRGError, match=f"small.zip: the zip expands to {total} bytes, more than the limit of 100"):
        load_plate(zpath, work_dir=tmp_path / "work", max_zip_bytes=100)
    assert load_plate(zpath, work_dir=tmp_path / "work", max_zip_bytes=total).wells() == ["B02", "B03"]

# --- bad input --------------------------------------------------------------------------------

def test_empty_folder_and_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NeuroRGError, match="empty: no image files found"):
        load_plate(tmp_path / "empty")
    odd = tmp_path / "odd"
    odd.mkdir()
    tifffile.imwrite(odd / "random_name.tif", plane(1))
    with pytest.raises(NeuroRGError, match="no file name matches a known layout .e.g. random_name.tif"):
        load_plate(odd)
    with pytest.raises(NeuroRGError, match="missing: no such file"):
        load_plate(tmp_path / "missing")


def test_mixed_layouts_are_refused(tmp_path):
    root = write_imagexpress(tmp_path / "mix")
    tifffile.imwrite(root / "C03_s1.tif", np.zeros((24, 32, 3), np.uint8), photometric="rgb")
    with pytest.raises(NeuroRGError, match="mixes layouts: imagexpress .* tiff"):
        load_plate(root)


def test_truncated_tiff_names_file_and_well(tmp_path):
    root = write_imagexpress(tmp_path / "p", shape=(64, 64))
    victim = root / f"180706_B03_s2_w2{GUID}.tif"
    victim.write_bytes(victim.read_bytes()[:2000])
    plate = load_plate(root)
    with pytest.raises(NeuroRGError, match=f"180706_B03_s2_w2{GUID}.tif, well B03: image is truncated"):
        plate.read_field(FieldRef("B03", 2, 3, 2))
    plate.read_field(FieldRef("B03", 2, 3, 1))      # the other fields still read


def test_check_files_reports_a_truncated_tiff_whose_header_survived(tmp_path):
    """A file cut short after its header (an interrupted copy or upload) has the same kind as its
    healthy neighbours, so it is not among the fields check_files decodes; its header's strip
    offsets point past the end of the file, which the check sees without decoding."""
    root = write_imagexpress(tmp_path / "p", shape=(64, 64))
    victim = root / f"180706_B03_s2_w2{GUID}.tif"
    victim.write_bytes(victim.read_bytes()[:200])
    plate = load_plate(root)
    problems = plate.check_files()
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"180706_B03_s2_w2{GUID}.tif, well B03: image is truncated")
    assert "200 bytes" in problems[0]


def test_non_image_with_image_extension(tmp_path):
    root = write_imagexpress(tmp_path / "p")
    (root / f"180706_B02_s1_w1{GUID}.tif").write_text("I am a text file")
    with pytest.raises(NeuroRGError, match=f"180706_B02_s1_w1{GUID}.tif, well B02: not a readable TIFF"):
        load_plate(root)                            # the first field's header is read at load
    later = write_imagexpress(tmp_path / "q")
    (later / "180706_B03_s1_w3.tif").unlink(missing_ok=True)
    (later / f"180706_B03_s1_w3{GUID}.tif").write_bytes(b"\x89PNG not really")
    plate = load_plate(later)
    with pytest.raises(NeuroRGError, match="well B03: not a readable TIFF"):
        plate.read_field(FieldRef("B03", 2, 3, 1))
    assert len(plate.check_files()) == 1


def test_corrupt_png(tmp_path):
    root = tmp_path / "png"
    root.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "A01_s1.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "A02_s1.png")
    data = (root / "A02_s1.png").read_bytes()
    (root / "A02_s1.png").write_bytes(data[:-30])
    plate = load_plate(root)
    with pytest.raises(NeuroRGError, match="A02_s1.png, well A02"):
        plate.read_field(FieldRef("A02", 1, 2, 1))


def test_field_of_another_size_fails_on_read_and_in_check(tmp_path):
    root = write_imagexpress(tmp_path / "p")
    tifffile.imwrite(root / f"180706_B03_s1_w2{GUID}.tif", plane(1, shape=(30, 30)))
    plate = load_plate(root)
    with pytest.raises(NeuroRGError, match="well B03: field is 30 x 30 pixels but the plate's fields are 24 x 32"):
        plate.read_field(FieldRef("B03", 2, 3, 1))
    problems = plate.check_files()
    assert len(problems) == 1 and "B03_s1_w2" in problems[0] and "30 x 30" in problems[0]


def test_pixel_limit_checked_from_the_header(tmp_path):
    root = write_imagexpress(tmp_path / "p", shape=(40, 50))
    with pytest.raises(NeuroRGError, match="image is 40 x 50 = 2000 pixels, more than the limit of 1999"):
        load_plate(root, max_pixels=1999)
    assert load_plate(root, max_pixels=2000).field_shape == (40, 50)
    png = tmp_path / "png"
    png.mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(png / "A01_s1.png")
    with pytest.raises(NeuroRGError, match="A01_s1.png, well A01: image is 40 x 50 x 3 = 6000 pixel values"):
        load_plate(png, max_pixels=100)


def test_pixel_limit_from_environment(tmp_path, monkeypatch):
    root = write_imagexpress(tmp_path / "p", shape=(40, 50))
    monkeypatch.setenv("NEURORG_MAX_PIXELS", "100")
    with pytest.raises(NeuroRGError, match="NEURORG_MAX_PIXELS"):
        load_plate(root)


def test_summary_is_json_able(tmp_path):
    import json

    plate = load_plate(write_imagexpress(tmp_path / "p"))
    summary = json.loads(json.dumps(plate.summary()))
    assert summary["layout"] == "imagexpress" and summary["plate_format"] == 96
    assert summary["fields_per_well"] == {"B02": 2, "B03": 2}
    assert summary["channel_map"]["microglia"] == "w3" and summary["field_shape"] == [24, 32]


# --- the synthetic generator's output, every layout ------------------------------------------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from neurorg_core.synth import write_synthetic_plates

    out = tmp_path_factory.mktemp("synth")
    folders = {layout: write_synthetic_plates(out / layout, seed=3, n_fields=1, size=48, layout=layout)[0]
               for layout in ("imagexpress", "operetta", "tiff", "npy")}
    folders["imagexpress16"] = write_synthetic_plates(out / "ix16", seed=3, n_fields=1, size=48,
                                                      bit_depth=16)[0]
    return folders


@pytest.mark.parametrize("layout", ["imagexpress", "operetta", "tiff", "npy"])
def test_reads_generator_output(synthetic, layout):
    from neurorg_core.platemap import check_plate_map, load_plate_map
    from neurorg_core.schema import CLASS, WELL

    plate = load_plate(synthetic[layout])
    plate_map = load_plate_map(synthetic[layout] / "platemap.csv")
    assert plate.layout == layout
    assert len(plate.wells()) == 60 and plate.plate_format == 96 and plate.wells()[0] == "B02"
    assert all(len(plate.fields_of(w)) == 1 for w in plate.wells())
    assert plate.field_shape == (48, 48) and plate.dtype == np.uint8
    assert check_plate_map(plate_map, plate.wells()) == []
    if layout == "npy":
        truth = dict(zip(plate_map[WELL], plate_map[CLASS].astype(int)))
        assert plate.labels == truth
    # the same plate in every layout gives the same pixels
    reference = load_plate(synthetic["imagexpress"])
    for ref in (plate.fields[0], plate.fields[-1]):
        np.testing.assert_array_equal(plate.read_field(ref), reference.read_field(ref))


def test_generator_16_bit_is_8_bit_times_257(synthetic):
    from neurorg_core.preprocess import crops_from_field, plan_crops

    p8, p16 = load_plate(synthetic["imagexpress"]), load_plate(synthetic["imagexpress16"])
    assert p16.dtype == np.uint16
    ref = p8.fields[5]
    f8, f16 = p8.read_field(ref), p16.read_field(ref)
    np.testing.assert_array_equal(f16, f8.astype(np.uint16) * 257)
    plan = plan_crops(1, f8.shape[:2], f8.shape[0] // 4)
    np.testing.assert_array_equal(crops_from_field(f8, plan, 0, 16), crops_from_field(f16, plan, 0, 16))


def test_zip_with_symlink_member_is_refused(tmp_path):
    zpath = tmp_path / "link.zip"
    info = zipfile.ZipInfo("A01_s1.tif")
    info.external_attr = (0o120777 << 16)          # a symbolic link
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(NeuroRGError, match="symbolic link"):
        extract_zip(zpath, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_sixteen_bit_colour_png_is_refused_not_truncated(tmp_path):
    import struct
    import zlib

    h = w = 4
    raw = b"".join(b"\0" + bytes(6 * w) for _ in range(h))     # filter byte + RGB 16-bit rows
    data = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))
    root = tmp_path / "png16"
    root.mkdir()
    (root / "A01_s1.png").write_bytes(data)
    with pytest.raises(NeuroRGError, match="A01_s1.png, well A01: 16-bit colour PNG"):
        load_plate(root)


def test_unused_channel_is_not_read_or_checked(tmp_path):
    root = write_imagexpress(tmp_path / "p", channels=(1, 2, 3, 4))
    tifffile.imwrite(root / f"180706_B02_s1_w4{GUID}.tif", plane(1, shape=(5, 5)))
    plate = load_plate(root, {"nucleus": "w1"})
    assert [p.name[:16] for p in plate.files_of(plate.fields[0])] == [
        "180706_B02_s1_w1", "180706_B02_s1_w2", "180706_B02_s1_w3"]
    assert plate.check_files() == []
    assert plate.read_field(plate.fields[0]).shape == (24, 32, 3)


# --- TIFF header reuse (tiffreuse.TiffReader) ---------------------------------------------------

def _random_imagexpress(root, rng, dtype, shape=(24, 32), **imwrite):
    """Random per-channel planes; returns {(well, site, channel): plane}."""
    root.mkdir(parents=True, exist_ok=True)
    top = np.iinfo(dtype).max
    truth = {}
    for well in ("B02", "B03", "C04"):
        for s in (1, 2):
            for c in (1, 2, 3):
                img = rng.integers(0, top, shape, dtype=dtype, endpoint=True)
                kwargs = {k: (v(well, s, c) if callable(v) else v) for k, v in imwrite.items()}
                tifffile.imwrite(root / f"180706_{well}_s{s}_w{c}.tif", img, **kwargs)
                truth[(well, s, c)] = img
    return truth


def _count_tifffile_parses(monkeypatch):
    calls = []
    real = tifffile.TiffFile

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(tifffile, "TiffFile", counting)
    return calls


def _assert_fields_match(plate, truth):
    for ref, pixels in plate.iter_fields():
        for c in (1, 2, 3):
            np.testing.assert_array_equal(pixels[..., c - 1], truth[(ref.well, ref.field, c)])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_files_written_alike_are_parsed_once_and_read_exactly(tmp_path, monkeypatch, dtype):
    truth = _random_imagexpress(tmp_path / "p", np.random.default_rng(1), dtype)
    plate = load_plate(tmp_path / "p")
    calls = _count_tifffile_parses(monkeypatch)
    _assert_fields_match(plate, truth)
    assert len(calls) == 1          # 18 files, one header parsed by tifffile
    first = plate.read_field(plate.fields[0])
    first[0, 0, 0] ^= 1             # fields are independent, writable arrays
    assert plate.read_field(plate.fields[0])[0, 0, 0] == truth[("B02", 1, 1)][0, 0]


def test_files_whose_headers_differ_are_each_read_by_tifffile(tmp_path, monkeypatch):
    # per-file metadata of equal length (as an instrument's time stamps): same file size,
    # different header bytes, so no header may be reused
    truth = _random_imagexpress(tmp_path / "p", np.random.default_rng(2), np.uint16,
                                description=lambda w, s, c: f"acquired {w} site {s} channel {c}")
    plate = load_plate(tmp_path / "p")
    calls = _count_tifffile_parses(monkeypatch)
    _assert_fields_match(plate, truth)
    assert len(calls) == 18


@pytest.mark.parametrize("imwrite", [{"byteorder": ">"}, {"compression": "zlib"}, {"tile": (16, 16)}],
                         ids=["big-endian", "zlib", "tiled"])
def test_header_reuse_keeps_other_tiffs_exact(tmp_path, imwrite):
    truth = _random_imagexpress(tmp_path / "p", np.random.default_rng(3), np.uint16, shape=(32, 48),
                                **imwrite)
    _assert_fields_match(load_plate(tmp_path / "p"), truth)


def test_same_size_file_with_another_header_is_not_read_through_the_old_one(tmp_path):
    # a 32 x 24 file has exactly the byte size of the plate's 24 x 32 files: only its header
    # (ImageWidth / ImageLength) differs, and that must still be caught
    root = write_imagexpress(tmp_path / "p", wells=("B02", "B03", "B04"))
    victim = root / f"180706_B04_s1_w2{GUID}.tif"
    tifffile.imwrite(victim, plane(1, shape=(32, 24)))
    plate = load_plate(root)
    assert plate.read_field(FieldRef("B02", 2, 2, 1))[0, 0].tolist() == [51, 101, 151]
    with pytest.raises(NeuroRGError, match="B04_s1_w2.*well B04: field is 32 x 24 pixels"):
        plate.read_field(FieldRef("B04", 2, 4, 1))


def test_header_templates_are_bounded_per_plate(tmp_path):
    from neurorg_core.tiffreuse import TiffReader

    rng = np.random.default_rng(5)
    reader = TiffReader()
    for i in range(TiffReader.MAX_TEMPLATES + 6):   # every file its own header (same size, other text)
        img = rng.integers(0, 255, (24, 32), dtype=np.uint8)
        path = tmp_path / f"x_B02_s{i + 1}_w1.tif"
        tifffile.imwrite(path, img, description=f"acquired {i:04d}")
        np.testing.assert_array_equal(reader.read(path, 10**6), img)
    assert reader.n_templates == TiffReader.MAX_TEMPLATES == sum(map(len, reader.templates.values()))
    assert reader.reused == 0
    again = tmp_path / "x_B02_s1_w1.tif"    # a file written like a remembered one is still served
    np.testing.assert_array_equal(reader.read(again, 10**6), tifffile.imread(again))
    assert reader.reused == 1
