"""ImageXpress (Molecular Devices MetaXpress): one 2-D TIFF per channel, the well in the name.

``<anything>_<well>_s<site>_w<channel><optional GUID>.tif``, e.g.
``180706_A01_s5_w1B9D0A1F2-5C3E-4A57-9E6D-2F1B0C8D7E6A.tif``. ``_s<site>`` may be absent when a
well has one site. Channel ids ``w1``, ``w2``, ...; default roles w1 = nucleus, w2 = neuron,
w3 = microglia. The pixel size is MetaMorph's spatial calibration in each file's
ImageDescription (``pixelsize._from_metamorph`` reads it; ``metamorph_description`` writes it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from neurorg_core.layouts.base import WELL_PATTERN, FieldRef, FileKey
from neurorg_core.layouts.storage import PerChannelLayout
from neurorg_core.pixelsize import file_pixel_size
from neurorg_core.wells import parse_well


def _parse(m: re.Match[str]) -> FileKey:
    row, col = parse_well(m.group("well"))
    return FileKey(row, col, int(m.group("site") or 1), m.group("ch"))


def _file_name(plate: str, ref: FieldRef, channel: str) -> str:
    return f"{plate}_{ref.well}_s{ref.field}_{channel}.tif"


def metamorph_description(pixel_size_um: float) -> str:
    """The spatial calibration as MetaMorph / MetaXpress writes it in ImageDescription."""
    return ("<MetaData><PlaneInfo>"
            f'<prop id="spatial-calibration-x" type="float" value="{pixel_size_um:.6g}"/>'
            f'<prop id="spatial-calibration-y" type="float" value="{pixel_size_um:.6g}"/>'
            '<prop id="spatial-calibration-units" type="string" value="um"/>'
            "</PlaneInfo></MetaData>")


def _tags(pixel_size_um: float) -> Mapping[str, object]:
    return {"description": metamorph_description(pixel_size_um), "metadata": None}


IMAGEXPRESS = PerChannelLayout(
    name="imagexpress",
    pattern=re.compile(
        rf"^(?P<prefix>.*?)_(?P<well>{WELL_PATTERN})(?:_s(?P<site>\d+))?_w(?P<ch>\d+?)"
        r"(?P<guid>[0-9A-Fa-f]{8}-[0-9A-Fa-f-]+)?\.tiff?$",
        re.IGNORECASE,
    ),
    example="ImageXpress <name>_<well>_s<site>_w<ch>.tif",
    default_channels=MappingProxyType({"nucleus": "w1", "neuron": "w2", "microglia": "w3"}),
    channel_prefix="w",
    pixel_size=file_pixel_size,
    file_tags=_tags,
    parse=_parse,
    file_name=_file_name,
)
