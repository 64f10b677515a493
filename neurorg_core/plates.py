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
images and exposes the shape, axes and compression in the header without decoding pixels.
Compressed TIFFs (LZW, deflate/zlib, JPEG, zstd, PackBits, ...) are decoded by tifffile through
``imagecodecs``. A TIFF's axes are honoured: a z-stack (Z) or a time series (T) is refused with a
message, never taken for channels; channels are C (ImageJ, OME), S (samples, RGB) or an unnamed
page axis of at most ``MAX_CHANNELS`` pages. Per-channel files written alike (same size, every
non-pixel byte identical, uncompressed) have their header parsed once per plate (``_TiffReader``):
parsing is most of the cost of reading a small TIFF. Every read error raises ``NeuroRGError``
naming the file (and well).

The pixel limit (``Config.max_pixels``) counts every value a file would decode: pages x samples x
height x width, from the header, before any pixel is decoded. The plate's pixel size (µm per
pixel) is read from the first field's metadata (``neurorg_core.pixelsize``) unless given.

A ``.zip`` is extracted safely (``neurorg_core.archive``). Without ``work_dir`` the extraction is a
temporary folder owned by the ``Plate``: ``Plate.close()`` (or leaving ``with plate:``, or the plate
being garbage-collected, or the process ending) removes it. With ``work_dir`` the extraction is
kept there, keyed by the zip's path, size and modification time, and belongs to the caller (the
app). Either way ``Plate.source`` is the zip, and ``Plate.root`` the folder the files are read from.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import struct
import tempfile
import weakref
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
import tifffile
from PIL import Image

from neurorg_core.archive import MAX_ZIP_BYTES, ZipLimits, extract_zip, extract_zip_keyed
from neurorg_core.config import load_config
from neurorg_core.errors import NeuroRGError, printable
from neurorg_core.pixelsize import PixelSize, check_pixel_size, read_pixel_size
from neurorg_core.schema import CHANNELS, LAYOUTS, Layout
from neurorg_core.wells import format_well, parse_well, plate_format_for

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CHANNEL_MAPS", "FieldRef", "MAX_ZIP_BYTES", "Plate", "ZipLimits", "extract_zip",
           "load_plate", "resolve_channel_map"]

DEFAULT_CHANNEL_MAPS: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "imagexpress": MappingProxyType({"nucleus": "w1", "neuron": "w2", "microglia": "w3"}),
    "operetta": MappingProxyType({"nucleus": "ch1", "neuron": "ch2", "microglia": "ch3"}),
    "tiff": MappingProxyType({"nucleus": "0", "neuron": "1", "microglia": "2"}),
    "npy": MappingProxyType({"nucleus": "0", "neuron": "1", "microglia": "2"}),
})
"""Role -> channel id used when no ``channel_map`` is given."""

MAX_CHANNELS = 8
"""An unnamed page axis (tifffile's I / Q) this short or shorter is a channel axis; a longer one is
a stack, refused. A channel-first / channel-last guess for PNG uses the same bound."""

SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))

_CHANNEL_AXES = "CSIQE"
"""tifffile axis letters that may hold the channels: C channel, S sample (RGB), I / Q an unnamed
page sequence, E wavelength. Y and X are the image; every other axis (Z depth, T time, ...) is a
stack that NeuroRG does not reduce for you."""
_STACK_NAMES = {"Z": "z-stack", "T": "time series", "R": "tile/region series", "A": "angle series",
                "P": "phase series", "H": "lifetime histogram", "L": "exposure series",
                "V": "event series", "M": "mosaic"}

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
                  KeyError, MemoryError, RuntimeError, NotImplementedError)


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

@dataclass(frozen=True)
class _Header:
    """What an image file's header says, before any pixel is decoded."""

    shape: tuple[int, ...]   # singleton stack axes dropped, e.g. (H, W), (C, H, W), (H, W, S)
    dtype: np.dtype
    axes: str                # one tifffile letter per axis of ``shape`` (Y, X, C, S, Z, T, ...)
    kind: tuple[Any, ...]    # what decoding depends on: files of one kind decode alike
    compression: str = ""    # "" when uncompressed


def _png_header(path: Path) -> _Header:
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
    axes = "YX" if len(shape) == 2 else "YXS"
    return _Header(shape=shape, dtype=np.dtype(dtype), axes=axes, kind=("png", mode, shape))


def _tiff_source(tif: tifffile.TiffFile) -> Any:
    """What holds the image: the page itself for a one-page file (skips tifffile's series
    detection, a third of the read time of a small ImageXpress file), else the first series (a
    multi-page stack, an ImageJ hyperstack or an OME file)."""
    pages = tif.pages
    return pages.first if len(pages) == 1 else tif.series[0]


def _tiff_header(tif: tifffile.TiffFile) -> _Header:
    """Shape, axes, dtype, compression and kind of the image ``_tiff_source`` would decode."""
    source = _tiff_source(tif)
    shape = tuple(int(d) for d in source.shape)
    axes = str(source.axes)
    if len(axes) != len(shape):
        axes = "Q" * (len(shape) - 2) + "YX"
    keep = [i for i, (a, n) in enumerate(zip(axes, shape)) if n != 1 or a in "YX"]
    shape, axes = tuple(shape[i] for i in keep), "".join(axes[i] for i in keep)  # ImageJ's T/Z of 1
    page = tif.pages.first
    compression = int(getattr(page, "compression", 1))
    try:
        name = "" if compression == 1 else tifffile.COMPRESSION(compression).name
    except ValueError:
        name = f"compression code {compression}"
    kind = ("tiff", compression, int(getattr(page, "predictor", 1)), int(getattr(page, "planarconfig", 1)),
            bool(getattr(page, "is_tiled", False)), int(getattr(page, "photometric", 1)),
            tif.byteorder, str(source.dtype), shape, axes, len(tif.pages))
    return _Header(shape=shape, dtype=np.dtype(source.dtype), axes=axes, kind=kind, compression=name)


def _image_header(path: Path) -> _Header:
    """What an image file's header says (no pixels decoded)."""
    if path.suffix.lower() == ".png":
        return _png_header(path)
    try:
        with tifffile.TiffFile(path) as tif:
            return _tiff_header(tif)
    except _DECODE_ERRORS as exc:
        raise NeuroRGError(f"not a readable TIFF image ({exc})", path=path) from exc


def _check_values(path: Path, shape: tuple[int, ...], max_pixels: int) -> None:
    """Refuse a file that would decode to more than ``max_pixels`` values (every page and sample)."""
    total = math.prod(shape)
    if total > max_pixels:
        dims = " x ".join(map(str, shape))
        what = "pixels" if len(shape) == 2 else "pixel values (every page and sample counted)"
        raise NeuroRGError(
            f"image is {dims} = {total} {what}, more than the limit of {max_pixels} "
            "(Config.max_pixels / NEURORG_MAX_PIXELS); checked before decoding", path=path,
        )


def _check_axes(path: Path, header: _Header) -> None:
    """Refuse a stack (Z, T, ...) or an unnamed page axis too long to be channels."""
    for axis, n in zip(header.axes, header.shape):
        if axis in "YX":
            continue
        if axis not in _CHANNEL_AXES:
            what = _STACK_NAMES.get(axis, f"stack along axis {axis}")
            raise NeuroRGError(
                f"image is a {what} of {n} planes (axes {header.axes}, shape {header.shape}), not "
                "channels; NeuroRG scores one plane per field: export one plane per field (e.g. "
                "the in-focus plane or a maximum projection), with the channels as C or as "
                "separate files", path=path,
            )
        if axis in "IQ" and n > MAX_CHANNELS:
            raise NeuroRGError(
                f"image is a stack of {n} pages (axes {header.axes}, shape {header.shape}); at most "
                f"{MAX_CHANNELS} pages are read as channels. Export one plane per field", path=path,
            )


def _check_header(path: Path, header: _Header, max_pixels: int) -> None:
    if len(header.shape) < 2:
        raise NeuroRGError(f"image has shape {header.shape}; expected (H, W), (H, W, C) or (C, H, W)",
                           path=path)
    _check_axes(path, header)
    _check_values(path, header.shape, max_pixels)
    if header.dtype not in SUPPORTED_DTYPES:
        raise NeuroRGError(f"pixel type {header.dtype} is not supported; expected 8- or 16-bit",
                           path=path)


def _decode_failed(path: Path, header: _Header, exc: Exception) -> NeuroRGError:
    detail = str(exc) or type(exc).__name__
    if "imagecodecs" in detail:
        return NeuroRGError(
            f"image is {header.compression} compressed and the imagecodecs package that decodes "
            f"it is missing ({detail}); install dependencies.txt", path=path,
        )
    if header.compression:
        return NeuroRGError(
            f"image is truncated or corrupt, or its {header.compression} compression cannot be "
            f"decoded ({detail})", path=path,
        )
    return NeuroRGError(f"image is truncated or corrupt ({detail})", path=path)


def _read_image(path: Path, max_pixels: int) -> tuple[np.ndarray, _Header]:
    """Decode one image file after checking its header (size against ``max_pixels``, axes,
    dtype); returns the pixels (shaped as ``header.shape``) and the header."""
    if path.suffix.lower() == ".png":
        header = _png_header(path)
        _check_header(path, header, max_pixels)
        try:
            with Image.open(path) as im:
                return np.asarray(im).reshape(header.shape), header
        except Image.DecompressionBombError as exc:
            raise NeuroRGError(f"image is too large to decode safely ({exc})", path=path) from exc
        except _DECODE_ERRORS as exc:
            raise _decode_failed(path, header, exc) from exc
    img, header, _ = _read_tiff(path, max_pixels)
    return img, header


def _read_tiff(path: Path, max_pixels: int, *, want_layout: bool = False,
               data: bytearray | None = None) -> tuple[np.ndarray, _Header, _TiffLayout | None]:
    """Decode a TIFF with tifffile after checking its header; with ``want_layout``, also its
    ``_TiffLayout`` when it has a reusable one (``data``: the file's bytes if already read)."""
    try:
        tif = tifffile.TiffFile(path)
    except _DECODE_ERRORS as exc:
        raise NeuroRGError(f"not a readable TIFF image ({exc})", path=path) from exc
    with tif:
        try:
            header = _tiff_header(tif)
        except _DECODE_ERRORS as exc:
            raise NeuroRGError(f"not a readable TIFF image ({exc})", path=path) from exc
        _check_header(path, header, max_pixels)
        try:
            img = _tiff_source(tif).asarray().reshape(header.shape)
        except _DECODE_ERRORS as exc:
            raise _decode_failed(path, header, exc) from exc
        return img, header, (_tiff_layout(tif, path, img, data) if want_layout else None)


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
    the file's bytes when the caller has read them already (else they are read here). A
    compressed file never has one: its bytes on disk are not its pixels."""
    pages = tif.pages
    native = "<" if np.little_endian else ">"
    if len(pages) != 1 or img.ndim != 2 or (img.dtype.itemsize > 1 and tif.byteorder != native):
        return None
    page = pages.first
    if not (isinstance(page, tifffile.TiffPage) and page.compression == 1 and page.predictor == 1
            and page.samplesperpixel == 1 and page.is_final and len(page.dataoffsets) > 0
            and page.nbytes == img.nbytes):
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
        """``_read_image(path, max_pixels)``'s pixels, through a remembered header when one fits."""
        if path.suffix.lower() not in (".tif", ".tiff"):
            return _read_image(path, max_pixels)[0]
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
        img, _, tif_layout = _read_tiff(path, max_pixels, data=data,
                                        want_layout=sum(map(len, self.layouts.values())) < self.MAX_LAYOUTS)
        if tif_layout is not None:
            self.layouts.setdefault(tif_layout.size, []).append(tif_layout)
        return img


def _spatial(header: _Header, path: Path) -> tuple[int, int]:
    """(H, W) of a 2-D image or of a multi-channel (H, W, C) / (C, H, W) image."""
    shape = header.shape
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        axis = _channel_axis(header, path)
        return (shape[0], shape[1]) if axis == -1 else (shape[1], shape[2])
    raise NeuroRGError(f"image has shape {shape} (axes {header.axes}); expected (H, W), (H, W, C) or "
                       "(C, H, W)", path=path)


def _channel_axis(header: _Header, path: Path) -> int:
    """-1 for channel-last (H, W, C), 0 for channel-first (C, H, W): from the axes when the
    header names Y and X (TIFF), else guessed from the sizes (C <= ``MAX_CHANNELS``)."""
    shape, axes = header.shape, header.axes
    if len(axes) == 3 and axes[1:] == "YX" and axes[0] in _CHANNEL_AXES:
        return 0
    if len(axes) == 3 and axes[:2] == "YX" and axes[2] in _CHANNEL_AXES:
        return -1
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
    if exc.path is not None:
        shown = printable(Path(exc.path).name) + ": "
        if message.startswith(shown):
            message = message[len(shown):]
    return NeuroRGError(message, path=exc.path, well=well)


def _header_of(path: Path, well: str) -> _Header:
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

def _listing_stamp(dirs: list[Path], files: list[Path]) -> tuple[Any, ...]:
    """The mtime of every listed folder (adding, removing or renaming a file changes its folder's
    mtime) and the size and mtime of a few files (the first field's, whose header a Plate keeps)."""
    stats = [(f, f.stat()) for f in files]
    return (tuple((str(d), d.stat().st_mtime_ns) for d in dirs),
            tuple((str(f), st.st_size, st.st_mtime_ns) for f, st in stats))


class Plate:
    """A plate of imaged fields, read lazily one field at a time.

    Build it with ``load_plate``; the attributes are described in docs/ARCHITECTURE.md.
    ``read_field`` returns (H, W, 3) in the native dtype with the last axis in
    ``schema.CHANNELS`` order (nucleus, neuron, microglia).

    A plate read from a zip without a ``work_dir`` owns its temporary extraction: ``close()``
    removes it (so does leaving ``with load_plate(zip) as plate:``, garbage collection and the
    end of the process).
    """

    def __init__(
        self, *, name: str, source: Path, layout: Layout, channel_ids: tuple[str, ...],
        channel_map: dict[str, str], dtype: np.dtype, field_shape: tuple[int, int],
        sources: dict[FieldRef, _Source], labels: dict[str, int], max_pixels: int,
        root: Path | None = None, pixel_size: PixelSize | None = None,
        listing: tuple[tuple[Path, ...], tuple[Path, ...]] = ((), ()), owned_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.root = root if root is not None else source
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
        self.pixel_size_um: float | None = pixel_size.um if pixel_size else None
        self.pixel_size_source: str | None = pixel_size.source if pixel_size else None
        self.plate_format: int = plate_format_for([(f.row, f.col) for f in self.fields])
        self._sources = sources
        self._by_well: dict[str, list[FieldRef]] = {}
        for ref in self.fields:
            self._by_well.setdefault(ref.well, []).append(ref)
        self._arrays: dict[Path, np.ndarray] = {}   # open npy memory maps
        self._tiffs = _TiffReader()                 # per-channel 2-D TIFFs
        self._listing = listing
        self._stamp = self._current_stamp()
        self._cleanup = (weakref.finalize(self, shutil.rmtree, str(owned_dir), True)
                         if owned_dir is not None else None)

    def __repr__(self) -> str:
        return (f"Plate({self.name!r}, layout={self.layout}, wells={len(self._by_well)}, "
                f"fields={len(self.fields)}, shape={self.field_shape}, dtype={self.dtype})")

    # --- ownership and freshness ---------------------------------------------------------------

    def close(self) -> None:
        """Remove the temporary zip extraction this plate owns (nothing otherwise). The plate
        cannot read fields afterwards."""
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> Plate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _current_stamp(self) -> tuple[Any, ...] | None:
        dirs, files = self._listing
        try:
            if self.source.is_file():   # a zip: its version is its size and mtime, and its extraction
                st = self.source.stat()
                return ("zip", int(st.st_size), int(st.st_mtime_ns), self.root.is_dir())
            return _listing_stamp(list(dirs), list(files))
        except OSError:
            return None

    def is_current(self) -> bool:
        """Whether the files on disk still match this plate's listing: the zip has its size and
        modification time (and its extraction is still there), or no file was added, removed or
        renamed in the plate's folders (their mtimes) and the first field's files are unchanged.
        A few ``stat`` calls, no listing: cheap enough to check on every use of a cached plate."""
        return self._stamp is not None and self._current_stamp() == self._stamp

    @property
    def signature(self) -> str:
        """A short key of the listing this plate was built from (changes when ``is_current``
        turns False): for caches of things read from the plate."""
        return hashlib.blake2b(repr((str(self.source), self._stamp)).encode(), digest_size=8).hexdigest()

    # --- wells, fields, files --------------------------------------------------------------------

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
            Naming the file and well when a file is unreadable, truncated, too large, a stack, or
            its shape / dtype differs from the plate's ``field_shape`` / ``dtype``.
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
        img, header = _read_image(path, self.max_pixels)
        if img.ndim != 3:
            raise NeuroRGError(
                f"image has shape {img.shape} (axes {header.axes}); expected "
                f"{len(self.channel_ids)} channels as (H, W, C) or (C, H, W)", path=path,
            )
        if _channel_axis(header, path) == 0:
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

    # --- checks ----------------------------------------------------------------------------------

    def _check_header_of(self, path: Path) -> _Header:
        """A file's header, checked against the plate (raises NeuroRGError naming the file)."""
        header = _image_header(path)
        _check_header(path, header, self.max_pixels)
        shape = header.shape
        if self.layout == "tiff":
            if len(shape) != 3:
                raise NeuroRGError(f"image has shape {shape} (axes {header.axes}); expected (H, W, C) "
                                   "or (C, H, W)", path=path)
            n_ch = shape[_channel_axis(header, path)]
            if n_ch != len(self.channel_ids):
                raise NeuroRGError(f"image has {n_ch} channels; the plate's first field has "
                                   f"{len(self.channel_ids)}", path=path)
        elif len(shape) != 2:
            raise NeuroRGError(f"image has shape {shape} (axes {header.axes}); expected a "
                               "single-channel 2-D image", path=path)
        self._check(path, _spatial(header, path), header.dtype)
        return header

    def check_files(self) -> list[str]:
        """Check every file's header, and decode one field of each kind of file.

        A *kind* is what decoding depends on: format, compression, predictor, tiling, byte order,
        dtype, shape and axes. Headers alone cannot tell whether a file can be decoded (an LZW
        file needs the codec; a JPEG file may be corrupt), so one field holding the first file of
        each kind is read in full: "no problems" means the plate can really be read.

        Returns
        -------
        list of str
            One line per problem (unreadable file, a stack, too many pixels, wrong size, wrong
            bit depth, wrong channel count, undecodable pixels), each naming the file and well;
            empty when the plate can be read.
        """
        problems: list[str] = []
        if self.layout == "npy":
            return problems   # headers were checked at load time; rows are plain memory
        kinds_of: dict[FieldRef, set[tuple[Any, ...]]] = {}
        broken: set[FieldRef] = set()
        n_files = 0
        for ref in self.fields:
            for path in self.files_of(ref):
                n_files += 1
                try:
                    kinds_of.setdefault(ref, set()).add(self._check_header_of(path).kind)
                except NeuroRGError as exc:
                    problems.append(str(_with_well(exc, ref.well)))
                    broken.add(ref)
        first_of_kind: dict[tuple[Any, ...], FieldRef] = {}
        for ref, kinds in kinds_of.items():   # fields in plate order; broken ones are reported
            if ref not in broken:
                for kind in kinds:
                    first_of_kind.setdefault(kind, ref)
        to_decode = list(dict.fromkeys(first_of_kind.values()))
        for ref in to_decode:
            try:
                self.read_field(ref)
            except NeuroRGError as exc:
                problems.append(str(exc))
        log.info("%s: checked %d files' headers, decoded %d field(s) for %d kind(s) of file",
                 self.name, n_files, len(to_decode), len(first_of_kind))
        return problems

    def summary(self) -> dict[str, Any]:
        """JSON-able description: layout, format, wells, fields per well, channels, dtype, shape,
        pixel size (µm per pixel, None when unknown) and where it was read."""
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
            "pixel_size_um": self.pixel_size_um,
            "pixel_size_source": self.pixel_size_source,
            "labels": dict(self.labels),
        }


# --- layout detection and listing -------------------------------------------------------------

def _list_files(root: Path) -> tuple[list[Path], list[Path]]:
    """Every file under ``root`` (sorted) and every folder searched, skipping hidden entries and
    ``__MACOSX``; symbolic links to folders are not followed."""
    files: list[Path] = []
    dirs: list[Path] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        dirs.append(folder)
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.startswith(".") or entry.name == "__MACOSX":
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file():
                        files.append(Path(entry.path))
        except OSError as exc:
            raise NeuroRGError(f"cannot list the folder ({exc.strerror})", path=folder) from exc
    return sorted(files), dirs


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
    channel_map: Mapping[str, str] | None, max_pixels: int, **plate_kwargs: Any,
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
        _check_values(path, tuple(arr.shape[1:]), max_pixels)
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
        name=f"Plate_{plate}", layout="npy", channel_ids=ids, channel_map=cmap,
        dtype=dtype, field_shape=(shape[0], shape[1]), sources=sources, labels=labels,
        max_pixels=max_pixels, root=root, **plate_kwargs,
    )


def _check_text_path(path: Path) -> None:
    """Refuse a plate path that is not valid UTF-8: its name and source are stored as text."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NeuroRGError(
            f"the path {printable(str(path))!r} is not valid UTF-8 text (bytes shown as \\x.. "
            "escapes); the plate's name and source are stored as text, so rename the folder or "
            "zip (e.g. convmv -f latin1 -t utf8) and try again. File names inside a plate may be "
            "anything", path=path,
        ) from exc


def _open_root(path: Path, work_dir: str | Path | None, limits: ZipLimits) -> tuple[Path, Path | None]:
    """The folder to list for ``path`` and the temporary extraction the Plate will own (if any)."""
    if not path.exists():
        raise NeuroRGError("no such file or folder", path=path)
    if not path.is_file():
        return path, None
    if path.suffix.lower() != ".zip":
        raise NeuroRGError("expected a folder of images or a .zip", path=path)
    if work_dir is not None:
        return extract_zip_keyed(path, work_dir, limits=limits), None
    dest = Path(tempfile.mkdtemp(prefix="neurorg_zip_"))
    try:
        extract_zip(path, dest, limits=limits)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest, dest


def _multi_channel_sources(hits: list[tuple[Path, re.Match[str]]]) -> dict[FieldRef, _Source]:
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
    return sources


def _first_field(sources: dict[FieldRef, _Source]) -> tuple[FieldRef, Path]:
    ref = min(sources, key=lambda f: (f.row, f.col, f.field))
    return ref, sorted(sources[ref].files.values())[0]


def _first_header(layout: Layout, first: Path, well: str, max_pixels: int) -> _Header:
    """The first field's header, checked: the plate's dtype, field shape and channels come from it."""
    header = _header_of(first, well)
    try:
        _check_header(first, header, max_pixels)
        if layout == "tiff" and len(header.shape) != 3:
            raise NeuroRGError(
                f"image has shape {header.shape} (axes {header.axes}); expected several channels "
                "as (H, W, C) or (C, H, W)", path=first,
            )
        if layout != "tiff" and len(header.shape) != 2:
            raise NeuroRGError(f"image has shape {header.shape} (axes {header.axes}); expected a "
                               "single-channel 2-D image", path=first)
    except NeuroRGError as exc:
        raise _with_well(exc, well) from exc
    return header


def _plate_pixel_size(user: float | None, first: Path, layout: Layout, root: Path) -> PixelSize | None:
    if user is not None:
        return PixelSize(user, "user")
    found = read_pixel_size(first, layout=layout, root=root)
    if found is None:
        log.info("%s: pixel size unknown (no OME-XML, ImageJ, MetaMorph, Harmony index or TIFF "
                 "resolution found)", printable(first.name))
    else:
        log.info("pixel size %.4g µm (%s)", found.um, found.source)
    return found


def load_plate(
    path: str | Path,
    channel_map: Mapping[str, str] | None = None,
    *,
    max_pixels: int | None = None,
    work_dir: str | Path | None = None,
    plate: int | None = None,
    max_zip_bytes: int = MAX_ZIP_BYTES,
    pixel_size_um: float | None = None,
    zip_limits: ZipLimits | None = None,
) -> Plate:
    """List a plate's files (folder, searched recursively, or .zip) and detect its layout.

    Only the file listing and the first field's header are read here; pixels are read by
    ``Plate.read_field``.

    Parameters
    ----------
    path
        A folder or a ``.zip`` file. The path must be valid UTF-8 (it is stored as the plate's
        source); the names of the files inside may be anything.
    channel_map
        Role -> channel id overrides, e.g. ``{"nucleus": "w2"}`` (ids as in the file names:
        ``w1``, ``ch5``, or a sample index ``0``); defaults per layout in ``DEFAULT_CHANNEL_MAPS``.
    max_pixels
        Most pixel values one file may decode to (pages x samples x height x width); default
        ``Config().max_pixels``.
    work_dir
        Where a zip is extracted, keyed by the zip's path, size and mtime and reused while the
        zip is unchanged (``archive.extract_zip_keyed``); the caller owns it. Default: a
        temporary folder owned by the returned Plate (``Plate.close()`` removes it).
    plate
        Plate number ``n`` to read when an npy folder holds several ``*_Plate_{n}.npy`` plates.
    max_zip_bytes
        Largest total uncompressed size of a zip, bytes.
    pixel_size_um
        The pixel size in µm per pixel, given by the user: it wins over the files' metadata
        (``Plate.pixel_size_source`` "user"). Default: read from the metadata, None when unknown.
    zip_limits
        Compression-ratio and free-space limits of a zip (``archive.ZipLimits``).

    Raises
    ------
    NeuroRGError
        Naming the file (and well): empty folder or zip, unsafe zip or zip bomb, unknown layout,
        a channel missing for a field, wrong channel count, a z-stack or time series, unreadable
        first field, too many pixels, a non-UTF-8 plate path, a bad pixel size, ...
    """
    path = Path(path)
    _check_text_path(path)
    max_pixels = load_config().max_pixels if max_pixels is None else int(max_pixels)
    user_pixel = check_pixel_size(pixel_size_um) if pixel_size_um is not None else None
    base = zip_limits or ZipLimits()
    limits = ZipLimits(max_bytes=max_zip_bytes, max_member_ratio=base.max_member_ratio,
                       max_total_ratio=base.max_total_ratio, ratio_floor=base.ratio_floor,
                       reserve_bytes=base.reserve_bytes)
    root, owned = _open_root(path, work_dir, limits)
    try:
        result = _load_listed(path, root, owned, channel_map, max_pixels, plate, user_pixel)
    except BaseException:
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)
        raise
    log.info("loaded %r", result)
    return result


def _load_listed(path: Path, root: Path, owned: Path | None, channel_map: Mapping[str, str] | None,
                 max_pixels: int, plate: int | None, user_pixel: float | None) -> Plate:
    """``load_plate`` once the plate's folder is known: list, detect, read the first header."""
    name = path.stem if path.is_file() else path.name
    files, dirs = _list_files(root)
    layout, hits = _detect_layout(path, files)
    if layout == "npy":
        return _load_npy_plate(root, hits, plate, channel_map, max_pixels, source=path,
                               owned_dir=owned, listing=(tuple(dirs), ()),
                               pixel_size=PixelSize(user_pixel, "user") if user_pixel else None)
    if plate is not None:
        raise NeuroRGError(f"plate={plate} applies to npy folders only; this is {layout}", path=path)

    if layout == "tiff":
        sources = _multi_channel_sources(hits)
        first_ref, first = _first_field(sources)
        header = _first_header(layout, first, first_ref.well, max_pixels)
        ids = tuple(str(i) for i in range(header.shape[_channel_axis(header, first)]))
    else:
        per_channel = _per_channel_sources(root, layout, hits)
        ids = tuple(sorted({c for files_ in per_channel.values() for c in files_}, key=_natural))
        sources = {ref: _Source(files=MappingProxyType(f)) for ref, f in per_channel.items()}
        first_ref, first = _first_field(sources)
        header = _first_header(layout, first, first_ref.well, max_pixels)
    field_shape = _spatial(header, first)

    cmap = resolve_channel_map(layout, ids, channel_map, path)
    if layout != "tiff":
        _check_complete({r: dict(s.files) for r, s in sources.items()}, cmap, path)
    return Plate(
        name=name, source=path, root=root, layout=layout, channel_ids=ids, channel_map=cmap,
        dtype=header.dtype, field_shape=field_shape, sources=sources, labels={},
        max_pixels=max_pixels, pixel_size=_plate_pixel_size(user_pixel, first, layout, root),
        listing=(tuple(dirs), tuple(sources[first_ref].files.values())), owned_dir=owned,
    )
