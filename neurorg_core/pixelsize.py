"""The pixel size (µm per pixel) of a plate, from its files' metadata; headers only, no pixels.

Sources, in the order they are trusted (the first that gives a value wins):

``OME-XML``
    ``<Pixels PhysicalSizeX="0.65" PhysicalSizeXUnit="µm">`` in an OME-TIFF (unit default µm).
``ImageJ``
    ImageJ's description ``unit=micron`` (or um, µm, nm, mm, cm) with the XResolution tag (pixels
    per unit).
``MetaMorph``
    MetaMorph / MetaSeries (ImageXpress) description XML: ``<prop id="spatial-calibration-x"
    value="0.65"/>`` with ``spatial-calibration-units`` (um).
``Harmony index``
    Opera Phenix / Operetta exports: ``Index.idx.xml`` or ``Index.xml`` beside the images or in a
    folder above them (up to the plate folder, or the folder above an ``Images`` folder that was
    given): ``<ImageResolutionX Unit="m">6.5E-07</ImageResolutionX>``.
``TIFF resolution``
    XResolution with ResolutionUnit inch or centimeter. The "no unit" resolution (tifffile and
    many writers put 1/1 there) says nothing and is ignored, and so is a value outside
    ``PLAUSIBLE_UM`` (a 72 dpi "photo" default would be 353 µm per pixel).

Pixels are assumed square: when X and Y differ, X is used and the difference is logged. A source
that is present but unreadable is logged and skipped, never guessed.

Each layout names its reader (``LayoutSpec.pixel_size``): ``file_pixel_size`` (the TIFF header),
``harmony_export_pixel_size`` (the header, then the Harmony index) or ``no_pixel_size``. What a
layout writes for ``synth`` lives with the layout (``neurorg_core.layouts``).
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tifffile

from neurorg_core.errors import NeuroRGError

log = logging.getLogger(__name__)

PLAUSIBLE_UM = (0.01, 100.0)
"""A microscope's pixel, µm: from super-resolution (~0.01) to a 1x objective on a big sensor."""

HARMONY_INDEX_NAMES = ("Index.idx.xml", "Index.xml")

_UM_PER_UNIT = {
    "m": 1e6, "meter": 1e6, "metre": 1e6, "cm": 1e4, "centimeter": 1e4, "mm": 1e3, "millimeter": 1e3,
    "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "pm": 1e-6, "a": 1e-4, "angstrom": 1e-4, "inch": 25400.0,
    "in": 25400.0,
}
_RESOLUTION_UNIT_UM = {2: 25400.0, 3: 10000.0}   # TIFF ResolutionUnit: 2 inch, 3 centimeter


@dataclass(frozen=True)
class PixelSize:
    """µm per pixel and where it was read."""

    um: float
    source: str   # "user" | "OME-XML" | "ImageJ" | "MetaMorph" | "Harmony index" | "TIFF resolution"


def check_pixel_size(value: Any) -> float:
    """A user's pixel size as a float, µm per pixel.

    Raises
    ------
    NeuroRGError
        If it is not a finite number greater than 0.
    """
    try:
        um = float(value)
    except (TypeError, ValueError):
        um = math.nan
    if not math.isfinite(um) or um <= 0:
        raise NeuroRGError(f"pixel size {value!r} is not usable; expected a number of µm per pixel > 0, "
                           "e.g. 0.65")
    return um


def _unit_um(unit: str | None) -> float | None:
    """µm per ``unit`` (µm, um, micron, \\u00B5m, nm, mm, m ...), or None when unknown."""
    if not unit:
        return None
    key = unit.strip().replace("\\u00B5", "u").replace("\\u00b5", "u")
    key = key.replace("µ", "u").replace("μ", "u").replace("Å", "a").lower()
    return _UM_PER_UNIT.get(key)


def _plausible(um: float, source: str, where: Path) -> PixelSize | None:
    lo, hi = PLAUSIBLE_UM
    if not math.isfinite(um) or not lo <= um <= hi:
        log.info("%s: %s pixel size %.4g µm ignored (outside %g-%g µm)", where.name, source, um, lo, hi)
        return None
    return PixelSize(float(um), source)


def _square(x: float, y: float | None, source: str, where: Path) -> float:
    if y is not None and math.isfinite(y) and not math.isclose(x, y, rel_tol=1e-3):
        log.warning("%s: %s pixels are %.4g x %.4g µm; using X (%.4g µm) as the pixel size",
                    where.name, source, x, y, x)
    return x


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _from_ome(tif: tifffile.TiffFile, path: Path) -> PixelSize | None:
    text = tif.ome_metadata
    if not text:
        return None
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        log.warning("%s: OME-XML cannot be parsed (%s); pixel size not read from it", path.name, exc)
        return None
    pixels = next((e for e in root.iter() if _local(e.tag) == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    scale = _unit_um(pixels.get("PhysicalSizeXUnit", "µm"))
    if scale is None:
        log.warning("%s: OME-XML PhysicalSizeXUnit %r is not a length unit I know", path.name,
                    pixels.get("PhysicalSizeXUnit"))
        return None
    try:
        x = float(pixels.attrib["PhysicalSizeX"]) * scale
        y_text = pixels.get("PhysicalSizeY")
        y_scale = _unit_um(pixels.get("PhysicalSizeYUnit", "µm")) or scale
        y = float(y_text) * y_scale if y_text else None
    except ValueError:
        log.warning("%s: OME-XML PhysicalSizeX %r is not a number", path.name, pixels.attrib["PhysicalSizeX"])
        return None
    return _plausible(_square(x, y, "OME-XML", path), "OME-XML", path)


def _resolution(page: Any, name: str) -> float | None:
    """Pixels per unit from an XResolution / YResolution tag, or None."""
    tag = page.tags.get(name)
    if tag is None:
        return None
    value = tag.value
    try:
        num, den = (value if isinstance(value, tuple) else (value, 1))[:2]
        return float(num) / float(den) if num and den else None
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def _from_imagej(tif: tifffile.TiffFile, path: Path) -> PixelSize | None:
    meta = tif.imagej_metadata or {}
    scale = _unit_um(str(meta.get("unit", "")))
    if scale is None:
        return None
    page = tif.pages.first
    xres, yres = _resolution(page, "XResolution"), _resolution(page, "YResolution")
    if not xres:
        return None
    x = scale / xres
    y = scale / yres if yres else None
    return _plausible(_square(x, y, "ImageJ", path), "ImageJ", path)


def _from_metamorph(description: str, path: Path) -> PixelSize | None:
    text = description.strip()
    if not text.startswith("<MetaData>"):
        return None
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        log.warning("%s: MetaMorph description cannot be parsed (%s)", path.name, exc)
        return None
    props = {p.get("id", ""): p.get("value", "") for p in root.iter("prop")}
    if props.get("spatial-calibration-state", "on").lower() in ("off", "false", "0"):
        return None
    if "spatial-calibration-x" not in props:
        return None
    scale = _unit_um(props.get("spatial-calibration-units", "um"))
    if scale is None:
        log.info("%s: MetaMorph calibration unit %r is not a length; pixel size unknown", path.name,
                 props.get("spatial-calibration-units"))
        return None
    try:
        x = float(props["spatial-calibration-x"]) * scale
        y = float(props["spatial-calibration-y"]) * scale if props.get("spatial-calibration-y") else None
    except ValueError:
        log.warning("%s: MetaMorph spatial-calibration-x %r is not a number", path.name,
                    props["spatial-calibration-x"])
        return None
    return _plausible(_square(x, y, "MetaMorph", path), "MetaMorph", path)


def _from_tiff_resolution(tif: tifffile.TiffFile, path: Path) -> PixelSize | None:
    page = tif.pages.first
    unit_tag = page.tags.get("ResolutionUnit")
    scale = _RESOLUTION_UNIT_UM.get(int(unit_tag.value) if unit_tag is not None else 2)
    xres = _resolution(page, "XResolution")
    if scale is None or not xres:
        return None   # "no unit": the default 1/1 says nothing
    yres = _resolution(page, "YResolution")
    return _plausible(_square(scale / xres, scale / yres if yres else None, "TIFF resolution", path),
                      "TIFF resolution", path)


def tiff_pixel_size(path: Path, *, skip_plain_resolution: bool = False) -> PixelSize | None:
    """The pixel size a TIFF's header gives (OME-XML, ImageJ, MetaMorph, then TIFF resolution).

    ``skip_plain_resolution`` leaves out the plain XResolution tags (when a more specific source,
    the Harmony index, is to be tried before them). Unreadable metadata is logged and skipped.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            found = None
            if tif.is_ome:
                found = _from_ome(tif, path)
            if found is None and tif.is_imagej:
                found = _from_imagej(tif, path)
            if found is None:
                found = _from_metamorph(tif.pages.first.description or "", path)
            if found is None and not skip_plain_resolution:
                found = _from_tiff_resolution(tif, path)
            return found
    except (ValueError, OSError, EOFError, KeyError, IndexError, TypeError) as exc:
        log.warning("%s: pixel size not read (%s)", path.name, exc)
        return None


def _index_files(first: Path, root: Path) -> Iterable[Path]:
    """Harmony index files beside ``first`` or in a folder above it, up to ``root`` (and the
    folder above ``root`` when ``root`` is an export's ``Images`` folder)."""
    stop = root.parent if root.name.lower() == "images" else root
    folder = first.parent
    while True:
        for name in HARMONY_INDEX_NAMES:
            candidate = folder / name
            if candidate.is_file():
                yield candidate
        if folder == stop or folder == folder.parent or not folder.is_relative_to(stop):
            return
        folder = folder.parent


def harmony_pixel_size(first: Path, root: Path) -> PixelSize | None:
    """``ImageResolutionX`` (with its ``Unit``) from the Harmony index nearest to ``first``."""
    for index in _index_files(first, root):
        x = y = None
        try:
            for _, elem in ET.iterparse(index, events=("end",)):
                name = _local(elem.tag)
                if name in ("ImageResolutionX", "ImageResolutionY"):
                    scale = _unit_um(elem.get("Unit", "m"))
                    if scale is None:
                        log.warning("%s: %s unit %r is not a length unit I know", index.name, name,
                                    elem.get("Unit"))
                        break
                    value = float((elem.text or "").strip()) * scale
                    x, y = (value, y) if name.endswith("X") else (x, value)
                    if x is not None and y is not None:
                        break
                elem.clear()
        except (ET.ParseError, OSError, ValueError) as exc:
            log.warning("%s: pixel size not read from the Harmony index (%s)", index.name, exc)
            continue
        if x is not None:
            return _plausible(_square(x, y, "Harmony index", index), "Harmony index", index)
    return None


def file_pixel_size(first: Path, root: Path) -> PixelSize | None:
    """A plate's pixel size from its first field's TIFF header (OME-XML, ImageJ, MetaMorph, TIFF
    resolution); None for other files or when no metadata gives it (never a guess).

    The ``pixel_size`` reader of most layouts (``LayoutSpec.pixel_size``); ``root`` is unused.
    """
    if first.suffix.lower() not in (".tif", ".tiff"):
        return None
    return tiff_pixel_size(first)


def harmony_export_pixel_size(first: Path, root: Path) -> PixelSize | None:
    """A Harmony (Opera Phenix / Operetta) export's pixel size: the TIFF's own OME-XML, ImageJ or
    MetaMorph metadata, else ``Index.idx.xml`` / ``Index.xml`` (searched from ``first``'s folder
    up to ``root``), else the TIFF resolution tags. The operetta layout's ``pixel_size`` reader.
    """
    if first.suffix.lower() not in (".tif", ".tiff"):
        return None
    found = tiff_pixel_size(first, skip_plain_resolution=True) or harmony_pixel_size(first, root)
    return found or tiff_pixel_size(first)


def no_pixel_size(first: Path, root: Path) -> PixelSize | None:
    """The ``pixel_size`` reader of a layout whose files hold no pixel size (the npy release)."""
    return None
