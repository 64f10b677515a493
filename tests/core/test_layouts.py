"""The layout registry: a layout is one spec, read by load_plate and written by synth.

A toy instrument ("toyscope", CellInsight-like names ``<plate>_<well>f<field 0-based>d<channel>.tif``)
is registered here and nowhere else: detecting, reading, checking and writing it must need
nothing but its ``LayoutSpec``.
"""

from __future__ import annotations

import re
from types import MappingProxyType

import numpy as np
import pandas as pd
import pytest
import tifffile

from neurorg_core.cli import build_parser
from neurorg_core.errors import NeuroRGError
from neurorg_core.layouts import (
    BUILTIN_LAYOUTS,
    FieldRef,
    FileKey,
    MultiChannelLayout,
    PerChannelLayout,
    layout_names,
    layout_spec,
    register_layout,
    registered_layout,
    unregister_layout,
)
from neurorg_core.layouts.tiff import resolution_tags
from neurorg_core.pixelsize import file_pixel_size
from neurorg_core.plates import load_plate
from neurorg_core.schema import CHANNELS, TRUE_SEVERITY, WELL
from neurorg_core.synth import SYNTH_PIXEL_SIZE_UM, plate_effects_for, render_well, write_synthetic_plates
from neurorg_core.wells import parse_well


def _toy_key(m: re.Match[str]) -> FileKey:
    row, col = parse_well(m.group("well"))
    return FileKey(row, col, int(m.group("field")) + 1, m.group("ch"))   # fields are 0-based in names


def _toy_name(plate: str, ref: FieldRef, channel: str) -> str:
    return f"{plate}_{ref.well}f{ref.field - 1:02d}{channel}.tif"


TOY = PerChannelLayout(
    name="toyscope",
    pattern=re.compile(r"^(?P<plate>.+)_(?P<well>[A-P]\d{2})f(?P<field>\d{2})d(?P<ch>\d)\.tif$",
                       re.IGNORECASE),
    example="ToyScope <plate>_<well>f<field>d<channel>.tif",
    default_channels={"nucleus": "d0", "neuron": "d1", "microglia": "d2"},
    channel_prefix="d",
    pixel_size=file_pixel_size,
    file_tags=resolution_tags,
    parse=_toy_key,
    file_name=_toy_name,
)

WELLS = ["B02", "C05", "G11"]


@pytest.fixture()
def toy():
    with registered_layout(TOY) as spec:
        yield spec


def test_a_registered_layout_is_written_detected_and_read_with_nothing_else(toy, tmp_path):
    folder = write_synthetic_plates(tmp_path, seed=4, layout="toyscope", n_fields=2, size=32,
                                    bit_depth=16, wells=WELLS)[0]
    names = sorted(p.name for p in folder.glob("*.tif"))
    assert names == sorted(f"plate_01_{w}f{f:02d}d{c}.tif" for w in WELLS for f in (0, 1) for c in (0, 1, 2))

    plate = load_plate(folder)
    assert plate.layout == "toyscope" and plate.spec is toy
    assert plate.channel_ids == ("d0", "d1", "d2")
    assert plate.channel_map == {"nucleus": "d0", "neuron": "d1", "microglia": "d2"}
    assert plate.wells() == WELLS and [f.field for f in plate.fields_of("C05")] == [1, 2]
    assert plate.dtype == np.uint16 and plate.field_shape == (32, 32)
    # the pixel size the spec's file_tags wrote, read back by the spec's pixel_size reader
    assert plate.pixel_size_um == pytest.approx(SYNTH_PIXEL_SIZE_UM)
    assert plate.pixel_size_source == "TIFF resolution"
    assert plate.check_files() == []

    truth = pd.read_csv(folder / "ground_truth.csv").set_index(WELL)
    expected = render_well(4, 1, "C05", truth.loc["C05", TRUE_SEVERITY], 2, 32, plate_effects_for(4, 1))
    got = plate.read_field(plate.fields_of("C05")[1])
    np.testing.assert_array_equal(got, expected[1].astype(np.uint16) * 257)
    assert plate.reused_headers > 0   # the header reuse works for any per-channel layout

    swapped = load_plate(folder, {"nucleus": "2", "microglia": "d0"})   # "2" is the toy's d2
    np.testing.assert_array_equal(swapped.read_field(swapped.fields[0])[..., 0],
                                  plate.read_field(plate.fields[0])[..., 2])


def test_a_registered_layout_reports_missing_channels_like_the_built_ins(toy, tmp_path):
    folder = write_synthetic_plates(tmp_path, seed=4, layout="toyscope", n_fields=1, size=16, wells=WELLS)[0]
    (folder / "plate_01_C05f00d1.tif").unlink()
    with pytest.raises(NeuroRGError, match=r"well C05: field 1 has no file for channel d1 \(neuron\)"):
        load_plate(folder)


def test_an_unregistered_layout_is_neither_read_nor_written(tmp_path):
    with registered_layout(TOY):
        folder = write_synthetic_plates(tmp_path, seed=4, layout="toyscope", n_fields=1, size=16,
                                        wells=WELLS)[0]
        assert "toyscope" in layout_names()
    assert "toyscope" not in layout_names()
    with pytest.raises(NeuroRGError, match="no file name matches a known layout"):
        load_plate(folder)
    with pytest.raises(NeuroRGError, match="layout 'toyscope' is not one of imagexpress, operetta, tiff, npy"):
        write_synthetic_plates(tmp_path / "again", seed=4, layout="toyscope", n_fields=1, size=16)


def test_worker_processes_write_only_built_in_layouts(toy, tmp_path):
    with pytest.raises(NeuroRGError, match="registered in this process only; write it with n_workers=1"):
        write_synthetic_plates(tmp_path, seed=4, layout="toyscope", n_fields=1, size=16, n_workers=2)
    assert not any(tmp_path.iterdir())


def test_registry_guards_its_names():
    builtins = tuple(s.name for s in BUILTIN_LAYOUTS)   # the one list of names (a new layout: one entry)
    assert layout_names() == builtins == ("imagexpress", "operetta", "tiff", "npy")
    assert build_parser().parse_args(["synth", "--out", "x", "--layout", "operetta"]).layout == "operetta"
    with registered_layout(TOY):
        with pytest.raises(NeuroRGError, match="'toyscope' is already registered"):
            register_layout(TOY)
        assert layout_names() == (*builtins, "toyscope")
        assert build_parser().parse_args(["synth", "--out", "x", "--layout", "toyscope"]).layout == "toyscope"
    with pytest.raises(NeuroRGError, match="built-in layout 'tiff' cannot be unregistered"):
        unregister_layout("tiff")
    assert layout_spec("tiff").name == "tiff"
    with pytest.raises(ValueError, match="default_channels must map each of"):
        PerChannelLayout(name="bad", pattern=TOY.pattern, example="", default_channels={"nucleus": "d0"},
                         pixel_size=file_pixel_size, parse=_toy_key, file_name=_toy_name)


def test_two_layouts_claiming_one_folder_are_refused(toy, tmp_path):
    folder = write_synthetic_plates(tmp_path, seed=4, layout="toyscope", n_fields=1, size=16, wells=WELLS)[0]
    tifffile.imwrite(folder / "exp_B02_s1_w1.tif", np.zeros((16, 16), np.uint8))
    with pytest.raises(NeuroRGError, match=r"mixes layouts: imagexpress \(1 files.*toyscope \(9 files"):
        load_plate(folder)


@pytest.mark.parametrize("spec", [*[s for s in BUILTIN_LAYOUTS if s.name != "npy"], TOY], ids=lambda s: s.name)
def test_every_file_name_a_layout_writes_is_one_it_reads(spec):
    """The contract a new per-channel or multi-channel layout must keep: ``file_name`` and
    ``parse`` agree, and the channel ids written are the defaults."""
    ref = FieldRef("C05", 3, 5, 7)
    if isinstance(spec, MultiChannelLayout):
        names = {"": spec.file_name("plate_01", ref)}
    else:
        assert isinstance(spec, PerChannelLayout)
        names = {spec.default_channels[r]: spec.file_name("plate_01", ref, spec.default_channels[r])
                 for r in CHANNELS}
    for channel, name in names.items():
        m = spec.match(name.rsplit("/", 1)[-1])
        assert m is not None, name
        key = spec.parse(m)
        assert (key.row, key.col, key.field) == (3, 5, 7)
        assert (spec.channel_id(key.channel) if key.channel else "") == channel


def test_default_channel_maps_are_read_only():
    with pytest.raises(TypeError):
        TOY.default_channels["nucleus"] = "d2"   # type: ignore[index]
    assert isinstance(TOY.default_channels, MappingProxyType)
