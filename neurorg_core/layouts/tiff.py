"""One multi-channel TIFF or PNG per field, the well and site in the name.

``<well>_s<site>.tif|tiff|png`` (an optional ``<anything>_`` prefix is allowed), channel-last
(H, W, C) or channel-first (C, H, W). Channel ids are the sample indices ``0``, ``1``, ``2``.
PNG must be 8-bit (``images.png_header``). The pixel size is the TIFF resolution tags
(ResolutionUnit centimetre as ``synth`` writes them; OME-XML and ImageJ are read too).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from neurorg_core.layouts.base import WELL_PATTERN, FieldRef, FileKey
from neurorg_core.layouts.storage import MultiChannelLayout
from neurorg_core.pixelsize import file_pixel_size
from neurorg_core.wells import parse_well


def _parse(m: re.Match[str]) -> FileKey:
    row, col = parse_well(m.group("well"))
    return FileKey(row, col, int(m.group("site")))


def _file_name(plate: str, ref: FieldRef) -> str:
    return f"{ref.well}_s{ref.field}.tif"


def resolution_tags(pixel_size_um: float) -> Mapping[str, object]:
    """TIFF XResolution / YResolution in pixels per centimetre (1e4 / µm per pixel)."""
    per_cm = 1e4 / pixel_size_um
    return {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER", "metadata": None}


TIFF = MultiChannelLayout(
    name="tiff",
    pattern=re.compile(rf"^(?:.*_)?(?P<well>{WELL_PATTERN})_s(?P<site>\d+)\.(?:tiff?|png)$", re.IGNORECASE),
    example="<well>_s<site>.tif|png (multi-channel)",
    default_channels=MappingProxyType({"nucleus": "0", "neuron": "1", "microglia": "2"}),
    pixel_size=file_pixel_size,
    file_tags=resolution_tags,
    parse=_parse,
    file_name=_file_name,
)
