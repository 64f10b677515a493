"""Opera Phenix / Operetta (Revvity Harmony export): one 2-D TIFF per channel, row and column in
the name.

``r<row>c<col>f<field>p<plane>-ch<channel>sk1fk1fl1.tiff``, usually in an ``Images`` folder. Only
one focal plane is read: the lowest plane number found (p01 in a normal export); files of other
planes are ignored and logged. Channel ids ``ch1``, ...; default ch1/ch2/ch3. The pixel size is
in the export's ``Index.idx.xml`` (``<ImageResolutionX Unit="m">``) beside the images, read by
``pixelsize.harmony_export_pixel_size`` and written by ``write_harmony_index``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType

from neurorg_core.layouts.base import FieldRef, FileKey, WriteTarget
from neurorg_core.layouts.storage import PerChannelLayout
from neurorg_core.pixelsize import harmony_export_pixel_size
from neurorg_core.schema import CHANNELS
from neurorg_core.wells import parse_well

IMAGES = "Images"
"""The export's image folder, where ``synth`` writes the images and the index."""


def _parse(m: re.Match[str]) -> FileKey:
    return FileKey(int(m.group("row")), int(m.group("col")), int(m.group("field")), m.group("ch"),
                   plane=int(m.group("plane")))


def _file_name(plate: str, ref: FieldRef, channel: str) -> str:
    return f"{IMAGES}/r{ref.row:02d}c{ref.col:02d}f{ref.field:02d}p01-{channel}sk1fk1fl1.tiff"


@dataclass(frozen=True, kw_only=True, eq=False)
class HarmonyLayout(PerChannelLayout):
    """Per-channel files plus the export's index, which holds the pixel size."""

    def end_plate(self, target: WriteTarget) -> None:
        write_harmony_index(self, target)


def write_harmony_index(spec: PerChannelLayout, target: WriteTarget) -> Path:
    """``Images/Index.idx.xml`` as Harmony exports it: one entry per image file, with the pixel
    size in metres."""
    res = f"{target.pixel_size_um * 1e-6:.6E}"
    entries = []
    for well in target.wells:
        r, c = parse_well(well)
        for f in range(1, target.n_fields + 1):
            for ch, role in enumerate(CHANNELS, start=1):
                url = PurePosixPath(spec.file_name(target.plate_name, FieldRef(well, r, c, f),
                                                   spec.default_channels[role])).name
                entries.append(
                    f"    <Image Version=\"1\"><id>{r:02d}{c:02d}K1F{f}P1R{ch}</id>"
                    f"<URL>{url}</URL><Row>{r}</Row><Col>{c}</Col>"
                    f"<FieldID>{f}</FieldID><PlaneID>1</PlaneID><ChannelID>{ch}</ChannelID>"
                    f"<ImageResolutionX Unit=\"m\">{res}</ImageResolutionX>"
                    f"<ImageResolutionY Unit=\"m\">{res}</ImageResolutionY></Image>")
    xml = ('<?xml version="1.0" encoding="utf-8"?>\n'
           '<EvaluationInputData xmlns="http://www.perkinelmer.com/PEHH/HarmonyV5" Version="2">\n'
           "  <Images>\n" + "\n".join(entries) + "\n  </Images>\n</EvaluationInputData>\n")
    images = target.folder / IMAGES
    images.mkdir(parents=True, exist_ok=True)
    path = images / "Index.idx.xml"
    path.write_text(xml, encoding="utf-8")
    return path


OPERETTA = HarmonyLayout(
    name="operetta",
    pattern=re.compile(
        r"^r(?P<row>\d{1,2})c(?P<col>\d{1,2})f(?P<field>\d+)p(?P<plane>\d+)-ch(?P<ch>\d+)"
        r"sk\d+fk\d+fl\d+\.tiff?$",
        re.IGNORECASE,
    ),
    example="Harmony r01c01f01p01-ch1sk1fk1fl1.tiff",
    default_channels=MappingProxyType({"nucleus": "ch1", "neuron": "ch2", "microglia": "ch3"}),
    channel_prefix="ch",
    pixel_size=harmony_export_pixel_size,
    parse=_parse,
    file_name=_file_name,
)
