"""Read a plate of images from a folder or a .zip, whatever the microscope wrote.

``load_plate(path)`` lists the files, detects the layout, maps the channel ids in the file names
to the roles in ``schema.CHANNELS`` and reads the first field's header for its shape and dtype.
Pixels are read later, one field at a time, by ``Plate.read_field`` / ``Plate.iter_fields``.

Layouts (detected from the file names; folders are searched recursively):

``imagexpress``
    ``<anything>_<well>_s<site>_w<channel><optional GUID>.tif``, one 2-D TIFF per channel,
    e.g. ``180706_A01_s5_w1B9D0A1F2-5C3E-4A57-9E6D-2F1B0C8D7E6A.tif``. ``_s<site>`` may be
    absent when a well has one site. Channel ids ``w1``, ``w2``, ...; default roles
    w1 = nucleus, w2 = neuron, w3 = microglia.
``operetta`` (Opera Phenix / Operetta, Harmony export)
    ``r<row>c<col>f<field>p<plane>-ch<channel>sk1fk1fl1.tiff``, one 2-D TIFF per channel. Only one
    focal plane is read: the lowest plane number found (p01 in a normal export); files of other
    planes are ignored and logged. Channel ids ``ch1``, ...; default ch1/ch2/ch3.
``tiff``
    ``<well>_s<site>.tif|tiff|png`` (an optional ``<anything>_`` prefix is allowed), one
    multi-channel image per field, channel-last (H, W, C) or channel-first (C, H, W). Channel
    ids are the sample indices ``0``, ``1``, ``2``. PNG must be 8-bit RGB (Pillow cannot read
    16-bit colour PNG faithfully, so it is refused rather than silently truncated).
``npy`` (the study's release)
    ``{class}_Plate_{n}.npy`` arrays of shape (N, H, W, C), each with ``{class}_Plate_{n}.csv``
    beside it whose ``well`` column gives the well of each of the N fields. The class in the file
    name becomes ``Plate.labels[well]``. Arrays are memory-mapped. A folder holding several
    plate numbers needs ``plate=n``.

TIFF is read with tifffile (not Pillow) because it reads 16-bit, multi-page and channel-first
images and exposes the shape in the header without decoding pixels. Per-channel files written
alike (same size, every non-pixel byte identical) have their header parsed once per plate
(``_TiffReader``): parsing is most of the cost of reading a small TIFF. Every read error raises
``NeuroRGError`` naming the file (and well).
"""

from __future__ import annotations

import logging
import re
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
import tifffile
from PIL import Image

from neurorg_core.config import load_config
from neurorg_core.errors import NeuroRGError
from neurorg_core.schema import CHANNELS, LAYOUTS, Layout
from neurorg_core.wells import format_well, parse_well, plate_format_for

log = logging.getLogger(__name__)

DEFAULT_CHANNEL_MAPS: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "imagexpress": MappingProxyType({"nucleus": "w1", "neuron": "w2", "microglia": "w3"}),
    "operetta": MappingProxyType({"nucleus": "ch1", "neuron": "ch2", "microglia": "ch3"}),
    "tiff": MappingProxyType({"nucleus": "0", "neuron": "1", "microglia": "2"}),
    "npy": MappingProxyType({"nucleus": "0", "neuron": "1", "microglia": "2"}),
})
"""Role -> channel id used when no ``channel_map`` is given."""

MAX_ZIP_BYTES = 64 * 1024**3
"""Largest total uncompressed size (bytes) we agree to extract from a zip: 64 GiB."""

MAX_CHANNELS = 8
"""A multi-channel image axis this short or shorter is a channel axis; longer is a spatial axis."""

SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))

_IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
_WELL = r"[A-Za-z]{1,2}\d{1,2}"
_IMAGEXPRESS = re.compile(
    rf"^(?P<prefix>.*?)_(?P<well>{_WELL})(?:_s(?P<site>\d+))?_w(?P<ch>\d+?)"
    r"(?P<guid>[0-9A-Fa-f]{8}-[0-9A-Fa-f-]+)?\.tiff?$",
    re.IGNORECASE,
)
_OPERETTA = re.compile(
    r"^r(?P<row>\d{1,2})c(?P<col>\d{1,2})f(?P<field>\d+)p(?P<plane>\d+)-ch(?P<ch>\d+)"
    r"sk\d+fk\d+fl\d+\.tiff?$",
    re.IGNORECASE,
)
_MULTI = re.compile(rf"^(?:.*_)?(?P<well>{_WELL})_s(?P<site>\d+)\.(?:tiff?|png)$", re.IGNORECASE)
_NPY = re.compile(r"^(?P<cls>\d+)_Plate_(?P<n>\d+)\.npy$", re.IGNORECASE)
_PATTERNS = {"imagexpress": _IMAGEXPRESS, "operetta": _OPERETTA, "tiff": _MULTI, "npy": _NPY}
_EXPECTED = (
    "ImageXpress <name>_<well>_s<site>_w<ch>.tif, Harmony r01c01f01p01-ch1sk1fk1fl1.tiff, "
    "<well>_s<site>.tif|png (multi-channel) or {class}_Plate_{n}.npy + .csv"
)
# Errors a third-party decoder raises on a truncated or corrupt file (re-raised as NeuroRGError).
_DECODE_ERRORS = (ValueError, OSError, EOFError, SyntaxError, struct.error, zlib.error, IndexError,
                  KeyError, MemoryError)


@dataclass(frozen=True)
class FieldRef:
    """One imaged field (site) of a well."""

    well: str   # "A01"
    row: int    # 1-based, A = 1
    col: int    # 1-based
    field: int  # 1-based site / field index within the well


@dataclass(frozen=True)
class _Source:
    """Where a field's pixels live: per-channel files, one multi-channel file, or an npy row."""

    files: Mapping[str, Path]   # channel id -> file (per-channel layouts); {"": file} otherwise
    index: int = -1             # row of the npy array, -1 for image files


# --- low-level readers -----------------------------------------------------------------------

def _check_pixels(path: Path, shape: tuple[int, int], max_pixels: int) -> None:
    h, w = shape
    if h * w > max_pixels:
        raise NeuroRGError(
            f"image is {h} x {w} = {h * w} pixels, more than the limit of {max_pixels} "
            "(Config.max_pixels / NEURORG_MAX_PIXELS)", path=path,
        )


def _png_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
            rawmode = im.tile[0][3] if im.tile and isinstance(im.tile[0][3], str) else ""
    except Image.DecompressionBombError as exc:
        raise NeuroRGError(f"image is too large to decode safely ({exc})", path=path) from exc
    except _DECODE_ERRORS as exc:
        raise NeuroRGError(f"not a readable PNG image ({exc})", path=path) from exc
    if mode in ("RGB", "RGBA") and ";16" in rawmode:
        raise NeuroRGError(
            "16-bit colour PNG cannot be read without losing precision; save the field as a "
            "16-bit TIFF instead", path=path,
        )
    shapes = {"L": ((h, w), np.uint8), "I;16": ((h, w), np.uint16), "I;16B": ((h, w), np.uint16),
              "RGB": ((h, w, 3), np.uint8), "RGBA": ((h, w, 4), np.uint8)}
    if mode not in shapes:
        raise NeuroRGError(
            f"PNG mode {mode!r} is not supported; expected 8-bit grey/RGB/RGBA or 16-bit grey",
            path=path,
        )
    shape, dtype = shapes[mode]
    return shape, np.dtype(dtype)


def _tiff_source(tif: tifffile.TiffFile) -> Any:
    """What holds the image: the page itself for a one-page file (skips tifffile's series
    detection, a third of the read time of a small ImageXpress file), else the first series (a
    multi-page stack, an ImageJ hyperstack or an OME file)."""
    pages = tif.pages
    return pages.first if len(pages) == 1 else tif.series[0]


def _tiff_shape(tif: tifffile.TiffFile) -> tuple[tuple[int, ...], np.dtype]:
    series = _tiff_source(tif)
    shape = tuple(int(d) for d in series.shape)
    while len(shape) > 2 and shape[0] == 1:   # ImageJ hyperstacks carry singleton T/Z axes
        shape = shape[1:]
    return shape, np.dtype(series.dtype)


def _image_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of an image file, from its header only (no pixels decoded)."""
    if path.suffix.lower() == ".png":
        return _png_header(path)
    try:
        with tifffile.TiffFile(path) as tif:
            return _tiff_shape(tif)
    except _DECODE_ERRORS as exc:
        raise NeuroRGError(f"not a readable TIFF image ({exc})", path=path) from exc


def _check_header(path: Path, shape: tuple[int, ...], dtype: np.dtype, max_pixels: int) -> None:
    if len(shape) < 2:
        raise NeuroRGError(f"image has shape {shape}; expected (H, W), (H, W, C) or (C, H, W)", path=path)
    _check_pixels(path, _spatial(shape, path), max_pixels)
    if dtype not in SUPPORTED_DTYPES:
        raise NeuroRGError(f"pixel type {dtype} is not supported; expected 8- or 16-bit", path=path)


def _read_image(path: Path, max_pixels: int) -> np.ndarray:
    """Decode one image file after checking its header (size against ``max_pixels``, dtype)."""
    if path.suffix.lower() == ".png":
        shape, dtype = _png_header(path)
        _check_header(path, shape, dtype, max_pixels)
        try:
            with Image.open(path) as im:
                return np.asarray(im).reshape(shape)
        except Image.DecompressionBombError as exc:
            raise NeuroRGError(f"image is too large to decode safely ({exc})", path=path) from exc
        except _DECODE_ERRORS as exc:
            raise NeuroRGError(f"image is truncated or corrupt ({exc})", path=path) from exc
    return _read_tiff(path, max_pixels)[0]


def _read_tiff(path: Path, max_pixels: int, *, want_layout: bool = False,
               data: bytearray | None = None) -> tuple[np.ndarray, _TiffLayout | None]:
    """Decode a TIFF with tifffile after checking its header; with ``want_layout``, also its
    ``_TiffLayout`` when it has a reusable one (``data``: the file's bytes if already read)."""
    try:
        tif = tifffile.TiffFile(path)
    except _DECODE_ERRORS as exc:
        raise NeuroRGError(f"not a readable TIFF image ({exc})", path=path) from exc
    with tif:
        try:
            shape, dtype = _tiff_shape(tif)
        except _DECODE_ERRORS as exc:
            raise NeuroRGError(f"not a readable TIFF image ({exc})", path=path) from exc
        _check_header(path, shape, dtype, max_pixels)
        try:
            img = _tiff_source(tif).asarray().reshape(shape)
        except _DECODE_ERRORS as exc:
            raise NeuroRGError(f"image is truncated or corrupt ({exc})", path=path) from exc
        return img, (_tiff_layout(tif, path, img, data) if want_layout else None)


@dataclass(frozen=True)
class _TiffLayout:
    """Where the pixels of a plain 2-D TIFF sit, and every other byte of the file.

    A file whose bytes outside ``[offset, offset + nbytes)`` equal ``head`` and ``tail`` has
    exactly the header tifffile parsed for this layout (a TIFF's tags are a function of those
    bytes), so its pixels are the row-major (H, W) array at ``offset``.
    """

    size: int
    offset: int
    nbytes: int
    head: bytes
    tail: bytes
    dtype: np.dtype
    shape: tuple[int, int]

    def pixels(self, data: bytearray) -> np.ndarray | None:
        """The pixels of ``data`` (a whole file) if it is laid out like this; else None."""
        end = self.offset + self.nbytes
        view = memoryview(data)
        if len(data) != self.size or view[:self.offset] != self.head or view[end:] != self.tail:
            return None
        return np.frombuffer(data, self.dtype, self.shape[0] * self.shape[1], self.offset).reshape(self.shape)


def _tiff_layout(tif: tifffile.TiffFile, path: Path, img: np.ndarray,
                 data: bytearray | None = None) -> _TiffLayout | None:
    """The layout of a one-page, uncompressed, single-sample 2-D TIFF in native byte order, if
    ``tif`` is one (and no tag or IFD byte lies inside its pixel data); else None. ``data`` is
    the file's bytes when the caller has read them already (else they are read here)."""
    pages = tif.pages
    native = "<" if np.little_endian else ">"
    if len(pages) != 1 or img.ndim != 2 or (img.dtype.itemsize > 1 and tif.byteorder != native):
        return None
    page = pages.first
    if not (isinstance(page, tifffile.TiffPage) and page.samplesperpixel == 1 and page.is_final
            and len(page.dataoffsets) > 0 and page.nbytes == img.nbytes):
        return None
    offset, nbytes = int(page.dataoffsets[0]), int(page.nbytes)
    entry, count, pointer = (20, 8, 8) if tif.is_bigtiff else (12, 2, 4)
    spans = [(int(page.offset), int(page.offset) + count + entry * len(page.tags) + pointer)]  # the IFD
    for tag in page.tags.values():
        spans.append((int(tag.offset), int(tag.offset) + entry))
        spans.append((int(tag.valueoffset), int(tag.valueoffset) + int(tag.valuebytecount)))
    if any(a < offset + nbytes and offset < b for a, b in spans):
        return None
    if not data:
        try:
            data = bytearray(path.read_bytes())
        except OSError:
            return None
    if offset + nbytes > len(data):
        return None
    layout = _TiffLayout(size=len(data), offset=offset, nbytes=nbytes, head=bytes(data[:offset]),
                         tail=bytes(data[offset + nbytes:]), dtype=np.dtype(img.dtype),
                         shape=(int(img.shape[0]), int(img.shape[1])))
    same = layout.pixels(data)
    return layout if same is not None and np.array_equal(same, img) else None


class _TiffReader:
    """Reads a plate's 2-D TIFFs, reusing the parsed header of files written the same way.

    Parsing a small TIFF's header in tifffile costs far more than reading its pixels (0.39 of
    0.44 ms for a 256 px 16-bit file here). Files an instrument or tifffile writes for one plate
    usually differ only in their pixels, so after tifffile has read one, a file of the same size
    whose every non-pixel byte is identical is read straight from its bytes (``_TiffLayout``).
    Anything else (compressed, multi-page, per-file metadata such as time stamps, a truncated
    file) is read by tifffile as before, with the same checks and messages.
    """

    MAX_LAYOUTS = 16   # distinct headers remembered per plate; files past that go to tifffile
    GIVE_UP = 32       # after this many misses in a row, stop trying (per-file metadata)

    def __init__(self) -> None:
        self.layouts: dict[int, list[_TiffLayout]] = {}
        self.reused = 0   # files read through a remembered header
        self.misses = 0   # files in a row that had a same-size layout but another header

    def read(self, path: Path, max_pixels: int) -> np.ndarray:
        """``_read_image(path, max_pixels)``, through a remembered header when one fits."""
        if path.suffix.lower() not in (".tif", ".tiff"):
            return _read_image(path, max_pixels)
        try:
            size = path.stat().st_size
        except OSError:
            size = -1
        candidates = self.layouts.get(size) if self.misses < self.GIVE_UP else None
        data = None
        if candidates:
            try:
                data = bytearray(path.read_bytes())
            except OSError:   # tifffile below reports it, naming the file
                data = bytearray()
            for layout in candidates:
                pixels = layout.pixels(data) if layout.shape[0] * layout.shape[1] <= max_pixels else None
                if pixels is not None:
                    self.reused += 1
                    self.misses = 0
                    return pixels
            self.misses += 1
        img, tif_layout = _read_tiff(path, max_pixels, data=data,
                                     want_layout=sum(map(len, self.layouts.values())) < self.MAX_LAYOUTS)
        if tif_layout is not None:
            self.layouts.setdefault(tif_layout.size, []).append(tif_layout)
        return img


def _spatial(shape: tuple[int, ...], path: Path) -> tuple[int, int]:
    """(H, W) of a 2-D image or of a multi-channel (H, W, C) / (C, H, W) image."""
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        axis = _channel_axis(shape, path)
        return (shape[0], shape[1]) if axis == -1 else (shape[1], shape[2])
    raise NeuroRGError(f"image has shape {shape}; expected (H, W), (H, W, C) or (C, H, W)", path=path)


def _channel_axis(shape: tuple[int, ...], path: Path) -> int:
    """-1 for channel-last (H, W, C), 0 for channel-first (C, H, W)."""
    first, last = shape[0], shape[-1]
    if last <= MAX_CHANNELS < first:
        return -1
    if first <= MAX_CHANNELS < last:
        return 0
    raise NeuroRGError(
        f"cannot tell the channel axis of shape {shape}; expected (H, W, C) or (C, H, W) with "
        f"C <= {MAX_CHANNELS} and H, W > {MAX_CHANNELS}", path=path,
    )


def _with_well(exc: NeuroRGError, well: str) -> NeuroRGError:
    """The same error, its message now naming the well too ("file, well A01: problem")."""
    if exc.well is not None:
        return exc
    message = str(exc)
    if exc.path is not None and message.startswith(f"{Path(exc.path).name}: "):
        message = message[len(Path(exc.path).name) + 2:]
    return NeuroRGError(message, path=exc.path, well=well)


def _header_of(path: Path, well: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        return _image_header(path)
    except NeuroRGError as exc:
        raise _with_well(exc, well) from exc


def _open_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except _DECODE_ERRORS as exc:
        raise NeuroRGError(f"not a readable .npy array, or truncated ({exc})", path=path) from exc


# --- the plate -------------------------------------------------------------------------------

class Plate:
    """A plate of imaged fields, read lazily one field at a time.

    Build it with ``load_plate``; the attributes are described in docs/ARCHITECTURE.md.
    ``read_field`` returns (H, W, 3) in the native dtype with the last axis in
    ``schema.CHANNELS`` order (nucleus, neuron, microglia).
    """

    def __init__(
        self, *, name: str, source: Path, layout: Layout, channel_ids: tuple[str, ...],
        channel_map: dict[str, str], dtype: np.dtype, field_shape: tuple[int, int],
        sources: dict[FieldRef, _Source], labels: dict[str, int], max_pixels: int,
    ) -> None:
        self.name = name
        self.source = source
        self.layout: Layout = layout
        self.channel_ids = channel_ids
        self.channel_map = dict(channel_map)
        self.dtype = np.dtype(dtype)
        self.field_shape = field_shape
        self.fields: tuple[FieldRef, ...] = tuple(
            sorted(sources, key=lambda f: (f.row, f.col, f.field))
        )
        self.labels = dict(labels)
        self.max_pixels = max_pixels
        self.pixel_size_um: float | None = None       # µm per pixel, where the files say
        self.pixel_size_source: str | None = None
        self.plate_format: int = plate_format_for([(f.row, f.col) for f in self.fields])
        self._sources = sources
        self._by_well: dict[str, list[FieldRef]] = {}
        for ref in self.fields:
            self._by_well.setdefault(ref.well, []).append(ref)
        self._arrays: dict[Path, np.ndarray] = {}   # open npy memory maps
        self._tiffs = _TiffReader()                 # per-channel 2-D TIFFs

    def __repr__(self) -> str:
        return (f"Plate({self.name!r}, layout={self.layout}, wells={len(self._by_well)}, "
                f"fields={len(self.fields)}, shape={self.field_shape}, dtype={self.dtype})")

    @property
    def reused_headers(self) -> int:
        """Files read so far through a TIFF header parsed once for the plate (``_TiffReader``)."""
        return self._tiffs.reused

    def wells(self) -> list[str]:
        """Imaged wells, sorted by (row, column)."""
        return list(self._by_well)

    def fields_of(self, well: str) -> list[FieldRef]:
        """The well's fields sorted by field index (any accepted well spelling)."""
        key = format_well(*parse_well(well))
        if key not in self._by_well:
            raise NeuroRGError(f"well {key} is not imaged on plate {self.name}", path=self.source)
        return list(self._by_well[key])

    def files_of(self, ref: FieldRef) -> list[Path]:
        """The files read for a field: one per role in ``CHANNELS`` order, or the one file."""
        files = self._source(ref).files
        if "" in files:
            return [files[""]]
        return [files[self.channel_map[role]] for role in CHANNELS]

    def _source(self, ref: FieldRef) -> _Source:
        if ref not in self._sources:
            raise NeuroRGError(f"field {ref.field} is not imaged on plate {self.name}", well=ref.well)
        return self._sources[ref]

    def read_field(self, ref: FieldRef) -> np.ndarray:
        """Pixels of one field.

        Returns
        -------
        numpy.ndarray
            (H, W, 3) in the plate's dtype (uint8 or uint16); last axis nucleus, neuron, microglia.

        Raises
        ------
        NeuroRGError
            Naming the file and well when a file is unreadable, truncated, too large, or its
            shape / dtype differs from the plate's ``field_shape`` / ``dtype``.
        """
        src = self._source(ref)
        try:
            if self.layout == "npy":
                return self._read_npy(src)
            if self.layout == "tiff":
                return self._read_multi(src.files[""])
            return self._read_per_channel(src)
        except NeuroRGError as exc:
            raise _with_well(exc, ref.well) from exc

    def iter_fields(self) -> Iterator[tuple[FieldRef, np.ndarray]]:
        """Every field in (row, col, field) order with its pixels, one at a time."""
        for ref in self.fields:
            yield ref, self.read_field(ref)

    def _check(self, path: Path, shape: tuple[int, int], dtype: np.dtype) -> None:
        if tuple(shape) != tuple(self.field_shape):
            raise NeuroRGError(
                f"field is {shape[0]} x {shape[1]} pixels but the plate's fields are "
                f"{self.field_shape[0]} x {self.field_shape[1]}; every field of a plate must "
                "have the same size", path=path,
            )
        if dtype != self.dtype:
            raise NeuroRGError(
                f"pixel type is {dtype} but the plate's is {self.dtype}; every field must have "
                "the same bit depth", path=path,
            )

    def _read_per_channel(self, src: _Source) -> np.ndarray:
        planes = []
        for role in CHANNELS:
            path = src.files[self.channel_map[role]]
            img = self._tiffs.read(path, self.max_pixels)
            if img.ndim != 2:
                raise NeuroRGError(
                    f"image has shape {img.shape}; expected a single-channel 2-D image for "
                    f"channel {self.channel_map[role]} ({role})", path=path,
                )
            self._check(path, img.shape, img.dtype)
            planes.append(img)
        return np.stack(planes, axis=-1)

    def _read_multi(self, path: Path) -> np.ndarray:
        img = _read_image(path, self.max_pixels)
        if img.ndim != 3:
            raise NeuroRGError(
                f"image has shape {img.shape}; expected {len(self.channel_ids)} channels as "
                "(H, W, C) or (C, H, W)", path=path,
            )
        if _channel_axis(img.shape, path) == 0:
            img = np.moveaxis(img, 0, -1)
        if img.shape[-1] != len(self.channel_ids):
            raise NeuroRGError(
                f"image has {img.shape[-1]} channels; the plate's first field has "
                f"{len(self.channel_ids)}", path=path,
            )
        self._check(path, img.shape[:2], img.dtype)
        return np.ascontiguousarray(img[..., [int(self.channel_map[r]) for r in CHANNELS]])

    def _read_npy(self, src: _Source) -> np.ndarray:
        path = src.files[""]
        if path not in self._arrays:
            self._arrays[path] = _open_npy(path)
        arr = self._arrays[path]
        try:
            field = np.asarray(arr[src.index])
        except _DECODE_ERRORS as exc:
            raise NeuroRGError(f"row {src.index} cannot be read ({exc})", path=path) from exc
        self._check(path, field.shape[:2], field.dtype)
        return np.ascontiguousarray(field[..., [int(self.channel_map[r]) for r in CHANNELS]])

    def check_files(self) -> list[str]:
        """Read every file's header (no pixels) and list every problem found.

        Returns
        -------
        list of str
            One line per problem (unreadable file, wrong size, wrong bit depth, wrong channel
            count), each naming the file and well; empty when all fields look readable.
        """
        problems: list[str] = []
        if self.layout == "npy":
            return problems   # headers were checked at load time
        for ref in self.fields:
            for path in self.files_of(ref):
                try:
                    shape, dtype = _image_header(path)
                    if self.layout == "tiff":
                        if len(shape) != 3:
                            raise NeuroRGError(f"image has shape {shape}; expected (H, W, C) or (C, H, W)",
                                               path=path)
                        n_ch = shape[_channel_axis(shape, path)]
                        if n_ch != len(self.channel_ids):
                            raise NeuroRGError(f"image has {n_ch} channels; the plate's first field "
                                               f"has {len(self.channel_ids)}", path=path)
                    elif len(shape) != 2:
                        raise NeuroRGError(f"image has shape {shape}; expected a single-channel 2-D "
                                           "image", path=path)
                    spatial = _spatial(shape, path)
                    _check_pixels(path, spatial, self.max_pixels)
                    self._check(path, spatial, dtype)
                except NeuroRGError as exc:
                    problems.append(str(_with_well(exc, ref.well)))
        return problems

    def summary(self) -> dict[str, Any]:
        """JSON-able description: layout, format, wells, fields per well, channels, dtype, shape."""
        per_well = {w: len(refs) for w, refs in self._by_well.items()}
        return {
            "name": self.name,
            "source": str(self.source),
            "layout": self.layout,
            "plate_format": self.plate_format,
            "n_wells": len(per_well),
            "n_fields": len(self.fields),
            "wells": self.wells(),
            "fields_per_well": per_well,
            "channel_ids": list(self.channel_ids),
            "channel_map": dict(self.channel_map),
            "dtype": str(self.dtype),
            "field_shape": list(self.field_shape),
            "labels": dict(self.labels),
        }


# --- zip -------------------------------------------------------------------------------------

def _unsafe_member(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "'..' leaves the extraction folder"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return None


def extract_zip(zip_path: str | Path, dest: str | Path, *, max_bytes: int = MAX_ZIP_BYTES) -> Path:
    """Extract a zip safely into ``dest`` (created; must be empty if it exists).

    Every member is checked before anything is written: an absolute path, a ``..`` component
    or a symbolic link refuses the whole zip, and so does a total uncompressed size above
    ``max_bytes``. A failure part-way removes what was extracted.

    Returns
    -------
    pathlib.Path
        ``dest``.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise NeuroRGError(f"not a readable zip file ({exc})", path=zip_path) from exc
    with zf:
        infos = zf.infolist()
        bad = [f"{i.filename!r} ({why})" for i in infos if (why := _unsafe_member(i))]
        if bad:
            raise NeuroRGError(
                f"refusing the whole zip, nothing extracted: unsafe member(s) {', '.join(bad[:5])}"
                + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""), path=zip_path,
            )
        files = [i for i in infos if not i.is_dir()]
        if not files:
            raise NeuroRGError("the zip is empty; expected the plate's image files", path=zip_path)
        total = sum(i.file_size for i in files)
        if total > max_bytes:
            raise NeuroRGError(
                f"the zip expands to {total} bytes, more than the limit of {max_bytes} bytes",
                path=zip_path,
            )
        if dest.exists() and any(dest.iterdir()):
            raise NeuroRGError(f"extraction folder {dest} is not empty", path=zip_path)
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        try:
            for info in files:
                target = (root / info.filename.replace("\\", "/")).resolve()
                if not target.is_relative_to(root):
                    raise NeuroRGError(f"member {info.filename!r} leaves the extraction folder",
                                       path=zip_path)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            shutil.rmtree(dest, ignore_errors=True)
            raise NeuroRGError(f"zip member is corrupt ({exc})", path=zip_path) from exc
        except NeuroRGError:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    log.info("extracted %d files (%d bytes) from %s into %s", len(files), total, zip_path.name, dest)
    return dest


# --- layout detection and listing -------------------------------------------------------------

def _list_files(root: Path) -> list[Path]:
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root).parts
        if any(part.startswith(".") or part == "__MACOSX" for part in rel):
            continue
        if p.is_file():
            out.append(p)
    return sorted(out)


def _natural(ident: str) -> tuple[str, int]:
    m = re.match(r"^([a-z]*)(\d+)$", ident)
    return (m.group(1), int(m.group(2))) if m else (ident, -1)


def _detect_layout(root: Path, files: list[Path]) -> tuple[Layout, list[tuple[Path, re.Match[str]]]]:
    matches: dict[str, list[tuple[Path, re.Match[str]]]] = {k: [] for k in LAYOUTS}
    for p in files:
        for layout, pattern in _PATTERNS.items():
            m = pattern.match(p.name)
            if m:
                matches[layout].append((p, m))
                break
    found = {k: v for k, v in matches.items() if v}
    if not found:
        images = [p.name for p in files if p.suffix.lower() in _IMAGE_SUFFIXES]
        if not images:
            raise NeuroRGError(
                f"no image files found (searched subfolders; {len(files)} other files); "
                f"expected {_EXPECTED}", path=root,
            )
        raise NeuroRGError(
            f"no file name matches a known layout (e.g. {', '.join(images[:3])}); expected {_EXPECTED}",
            path=root,
        )
    if len(found) > 1:
        parts = ", ".join(f"{k} ({len(v)} files, e.g. {v[0][0].name})" for k, v in found.items())
        raise NeuroRGError(f"folder mixes layouts: {parts}; put one plate per folder", path=root)
    layout, hits = next(iter(found.items()))
    return layout, hits   # type: ignore[return-value]


def _norm_id(layout: str, ident: str) -> str:
    s = str(ident).strip().lower()
    if s.isdigit() and layout == "imagexpress":
        return f"w{int(s)}"
    if s.isdigit() and layout == "operetta":
        return f"ch{int(s)}"
    return s


def resolve_channel_map(
    layout: Layout, channel_ids: tuple[str, ...], channel_map: Mapping[str, str] | None, where: Path,
) -> dict[str, str]:
    """Role -> channel id for a plate, from the layout's defaults and the user's overrides.

    Without ``channel_map`` the files must hold exactly the layout's default ids. With it, the
    given roles override the defaults and every id used must be among ``channel_ids``.

    Raises
    ------
    NeuroRGError
        Unknown role, id not found in the files (the message lists the ids found), or two roles
        mapped to one id.
    """
    default = DEFAULT_CHANNEL_MAPS[layout]
    found = ", ".join(channel_ids)
    if channel_map is None:
        if set(channel_ids) != set(default.values()):
            raise NeuroRGError(
                f"found channels {found}; the {layout} default is "
                + ", ".join(f"{r}={i}" for r, i in default.items())
                + "; give a channel map (CLI: --channels nucleus=ID,neuron=ID,microglia=ID)",
                path=where,
            )
        return {r: default[r] for r in CHANNELS}
    unknown = sorted(set(channel_map) - set(CHANNELS))
    if unknown:
        raise NeuroRGError(f"unknown channel role(s) {unknown}; roles are {', '.join(CHANNELS)}",
                           path=where)
    merged = {**default, **{r: _norm_id(layout, v) for r, v in channel_map.items()}}
    missing = [f"{r}={i}" for r, i in merged.items() if i not in channel_ids]
    if missing:
        raise NeuroRGError(
            f"channel id(s) {', '.join(missing)} not in the files; ids found: {found}", path=where
        )
    if len(set(merged.values())) != len(CHANNELS):
        raise NeuroRGError(f"two roles share one channel: {merged}; each role needs its own id",
                           path=where)
    unused = [i for i in channel_ids if i not in merged.values()]
    if unused:
        log.info("%s: channel(s) %s not used", where.name, ", ".join(unused))
    return {r: merged[r] for r in CHANNELS}


def _per_channel_sources(
    root: Path, layout: Layout, hits: list[tuple[Path, re.Match[str]]],
) -> dict[FieldRef, dict[str, Path]]:
    if layout == "operetta":
        planes = sorted({int(m.group("plane")) for _, m in hits})
        if len(planes) > 1:
            log.info("%s: planes %s found; reading plane p%02d only", root.name, planes, planes[0])
        hits = [(p, m) for p, m in hits if int(m.group("plane")) == planes[0]]
    out: dict[FieldRef, dict[str, Path]] = {}
    for path, m in hits:
        if layout == "operetta":
            row, col = int(m.group("row")), int(m.group("col"))
            site, ch = int(m.group("field")), f"ch{int(m.group('ch'))}"
        else:
            row, col = parse_well(m.group("well"))
            site, ch = int(m.group("site") or 1), f"w{int(m.group('ch'))}"
        try:
            ref = FieldRef(format_well(row, col), row, col, site)
        except NeuroRGError as exc:
            raise NeuroRGError(f"bad well in file name ({exc})", path=path) from exc
        files = out.setdefault(ref, {})
        if ch in files:
            raise NeuroRGError(
                f"two files for field {site} channel {ch}: {files[ch].relative_to(root)} and "
                f"{path.relative_to(root)}; put one plate (one time point, one z-step) per folder",
                path=path, well=ref.well,
            )
        files[ch] = path
    return out


def _check_complete(sources: dict[FieldRef, dict[str, Path]], channel_map: dict[str, str],
                    root: Path) -> None:
    """Every field must have a file for every mapped channel (checked from the listing)."""
    broken = []
    for ref in sorted(sources, key=lambda f: (f.row, f.col, f.field)):
        have = sources[ref]
        lacking = [f"{i} ({r})" for r, i in channel_map.items() if i not in have]
        if lacking:
            example = next(iter(have.values())).name
            broken.append((ref, lacking, example))
    if broken:
        ref, lacking, example = broken[0]
        more = f"; {len(broken) - 1} more field(s) lack channels" if len(broken) > 1 else ""
        raise NeuroRGError(
            f"field {ref.field} has no file for channel {', '.join(lacking)} (found e.g. {example})"
            + more, path=root, well=ref.well,
        )


def _load_npy_plate(
    root: Path, hits: list[tuple[Path, re.Match[str]]], plate: int | None,
    channel_map: Mapping[str, str] | None, max_pixels: int,
) -> Plate:
    numbers = sorted({int(m.group("n")) for _, m in hits})
    if plate is None:
        if len(numbers) > 1:
            raise NeuroRGError(
                f"folder holds plates {', '.join(map(str, numbers))}; choose one (plate=n, "
                "or put each plate in its own folder)", path=root,
            )
        plate = numbers[0]
    if plate not in numbers:
        raise NeuroRGError(f"plate {plate} not found; plates here: {', '.join(map(str, numbers))}",
                           path=root)
    chosen = sorted(((p, m) for p, m in hits if int(m.group("n")) == plate),
                    key=lambda pm: int(pm[1].group("cls")))
    sources: dict[FieldRef, _Source] = {}
    labels: dict[str, int] = {}
    seen_in: dict[str, Path] = {}
    shape_ref: tuple[Path, tuple[int, ...], np.dtype] | None = None
    for path, m in chosen:
        cls = int(m.group("cls"))
        arr = _open_npy(path)
        if arr.ndim != 4:
            raise NeuroRGError(f"array has shape {arr.shape}; expected (N, H, W, C)", path=path)
        if arr.dtype not in SUPPORTED_DTYPES:
            raise NeuroRGError(f"array dtype {arr.dtype} is not supported; expected uint8 or uint16",
                               path=path)
        _check_pixels(path, (arr.shape[1], arr.shape[2]), max_pixels)
        if shape_ref is None:
            shape_ref = (path, arr.shape[1:], arr.dtype)
        elif (arr.shape[1:], arr.dtype) != shape_ref[1:]:
            raise NeuroRGError(
                f"fields are {arr.shape[1:]} {arr.dtype} but {shape_ref[0].name} holds "
                f"{shape_ref[1]} {shape_ref[2]}; every field of a plate must match", path=path,
            )
        csv_path = path.with_suffix(".csv")
        if not csv_path.exists():
            raise NeuroRGError(f"no {csv_path.name} beside it giving each row's well", path=path)
        try:
            table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
        except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise NeuroRGError(f"cannot read the CSV ({exc})", path=csv_path) from exc
        cols = {c.strip().lower(): c for c in table.columns}
        col = cols.get("well") or cols.get("metadata_well")
        if col is None:
            raise NeuroRGError(f"no 'well' column; columns are {list(table.columns)}", path=csv_path)
        if len(table) != arr.shape[0]:
            raise NeuroRGError(
                f"{len(table)} rows but {path.name} holds {arr.shape[0]} fields; expected one row "
                "per field", path=csv_path,
            )
        counts: dict[str, int] = {}
        for i, text in enumerate(table[col]):
            try:
                row, column = parse_well(text)
            except NeuroRGError as exc:
                raise NeuroRGError(f"row {i + 2}: {exc}", path=csv_path) from exc
            well = format_well(row, column)
            if seen_in.get(well, path) != path:
                raise NeuroRGError(
                    f"well appears in both {seen_in[well].name} and {path.name}; a well has one "
                    "class", path=csv_path, well=well,
                )
            seen_in[well] = path
            counts[well] = counts.get(well, 0) + 1
            ref = FieldRef(well, row, column, counts[well])
            sources[ref] = _Source(files=MappingProxyType({"": path}), index=i)
            labels[well] = cls
    assert shape_ref is not None
    _, shape, dtype = shape_ref
    ids = tuple(str(i) for i in range(shape[2]))
    cmap = resolve_channel_map("npy", ids, channel_map, root)
    return Plate(
        name=f"Plate_{plate}", source=root, layout="npy", channel_ids=ids, channel_map=cmap,
        dtype=dtype, field_shape=(shape[0], shape[1]), sources=sources, labels=labels,
        max_pixels=max_pixels,
    )


def load_plate(
    path: str | Path,
    channel_map: Mapping[str, str] | None = None,
    *,
    max_pixels: int | None = None,
    work_dir: str | Path | None = None,
    plate: int | None = None,
    max_zip_bytes: int = MAX_ZIP_BYTES,
) -> Plate:
    """List a plate's files (folder, searched recursively, or .zip) and detect its layout.

    Only the file listing and the first field's header are read here; pixels are read by
    ``Plate.read_field``.

    Parameters
    ----------
    path
        A folder or a ``.zip`` file.
    channel_map
        Role -> channel id overrides, e.g. ``{"nucleus": "w2"}`` (ids as in the file names:
        ``w1``, ``ch5``, or a sample index ``0``); defaults per layout in ``DEFAULT_CHANNEL_MAPS``.
    max_pixels
        Largest field (H x W pixels) to accept; default ``Config().max_pixels``.
    work_dir
        Where a zip is extracted (a fresh sub-folder is made); default a fresh temp folder.
    plate
        Plate number ``n`` to read when an npy folder holds several ``*_Plate_{n}.npy`` plates.
    max_zip_bytes
        Largest total uncompressed size of a zip, bytes.

    Raises
    ------
    NeuroRGError
        Naming the file (and well): empty folder or zip, unsafe zip, unknown layout, a channel
        missing for a field, wrong channel count, unreadable first field, too many pixels, ...
    """
    path = Path(path)
    max_pixels = load_config().max_pixels if max_pixels is None else int(max_pixels)
    name = path.stem if path.suffix.lower() == ".zip" else path.name
    if not path.exists():
        raise NeuroRGError("no such file or folder", path=path)
    if path.is_file():
        if path.suffix.lower() != ".zip":
            raise NeuroRGError("expected a folder of images or a .zip", path=path)
        if work_dir is not None:
            Path(work_dir).mkdir(parents=True, exist_ok=True)
        dest = Path(tempfile.mkdtemp(prefix=f"neurorg_{name}_", dir=work_dir))
        try:
            root = extract_zip(path, dest, max_bytes=max_zip_bytes)
        except NeuroRGError:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    else:
        root = path
    files = _list_files(root)
    layout, hits = _detect_layout(path, files)
    if layout == "npy":
        result = _load_npy_plate(root, hits, plate, channel_map, max_pixels)
        log.info("loaded %r", result)
        return result
    if plate is not None:
        raise NeuroRGError(f"plate={plate} applies to npy folders only; this is {layout}", path=path)

    if layout == "tiff":
        sources: dict[FieldRef, _Source] = {}
        for p, m in hits:
            row, col = parse_well(m.group("well"))
            ref = FieldRef(format_well(row, col), row, col, int(m.group("site")))
            if ref in sources:
                raise NeuroRGError(
                    f"two files for field {ref.field}: {sources[ref].files[''].name} and {p.name}",
                    path=p, well=ref.well,
                )
            sources[ref] = _Source(files=MappingProxyType({"": p}))
        first_ref = min(sources, key=lambda f: (f.row, f.col, f.field))
        first = sources[first_ref].files[""]
        shape, dtype = _header_of(first, first_ref.well)
        if len(shape) != 3:
            raise NeuroRGError(
                f"image has shape {shape}; expected several channels as (H, W, C) or (C, H, W)",
                path=first, well=first_ref.well,
            )
        axis = _channel_axis(shape, first)
        ids = tuple(str(i) for i in range(shape[axis]))
        field_shape = _spatial(shape, first)
    else:
        per_channel = _per_channel_sources(root, layout, hits)
        ids = tuple(sorted({c for files_ in per_channel.values() for c in files_}, key=_natural))
        sources = {ref: _Source(files=MappingProxyType(f)) for ref, f in per_channel.items()}
        first_ref = min(sources, key=lambda f: (f.row, f.col, f.field))
        first = next(iter(sorted(sources[first_ref].files.values())))
        shape, dtype = _header_of(first, first_ref.well)
        if len(shape) != 2:
            raise NeuroRGError(f"image has shape {shape}; expected a single-channel 2-D image",
                               path=first, well=first_ref.well)
        field_shape = (shape[0], shape[1])

    cmap = resolve_channel_map(layout, ids, channel_map, path)
    if layout != "tiff":
        _check_complete({r: dict(s.files) for r, s in sources.items()}, cmap, path)
    _check_pixels(first, field_shape, max_pixels)
    if dtype not in SUPPORTED_DTYPES:
        raise NeuroRGError(f"pixel type {dtype} is not supported; expected 8- or 16-bit", path=first)
    result = Plate(
        name=name, source=root, layout=layout, channel_ids=ids, channel_map=cmap, dtype=dtype,
        field_shape=field_shape, sources=sources, labels={}, max_pixels=max_pixels,
    )
    log.info("loaded %r", result)
    return result
