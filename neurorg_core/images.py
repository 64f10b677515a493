"""One image file: its header, the checks made before decoding, and its pixels.

TIFF is read with tifffile (not Pillow) because it reads 16-bit, multi-page and channel-first
images and exposes the shape, axes and compression in the header without decoding pixels.
Compressed TIFFs (LZW, deflate/zlib, JPEG, zstd, PackBits, ...) are decoded by tifffile through
``imagecodecs``. PNG is read with Pillow and must be 8-bit (grey, RGB, RGBA) or 16-bit grey:
Pillow cannot read 16-bit colour PNG faithfully, so it is refused rather than silently truncated.
``.npy`` arrays are memory-mapped (``open_npy``).

A TIFF's axes are honoured: a z-stack (Z) or a time series (T) is refused with a message, never
taken for channels; channels are C (ImageJ, OME), S (samples, RGB) or an unnamed page axis of at
most ``MAX_CHANNELS`` pages. The pixel limit (``Config.max_pixels``) counts every value a file
would decode: pages x samples x height x width, from the header, before any pixel is decoded.

Every problem raises ``NeuroRGError`` naming the file (``with_well`` adds the well).
"""

from __future__ import annotations

import logging
import math
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from neurorg_core.errors import NeuroRGError, printable

log = logging.getLogger(__name__)

MAX_CHANNELS = 8
"""An unnamed page axis (tifffile's I / Q) this short or shorter is a channel axis; a longer one is
a stack, refused. A channel-first / channel-last guess for PNG uses the same bound."""

SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))

CHANNEL_AXES = "CSIQE"
"""tifffile axis letters that may hold the channels: C channel, S sample (RGB), I / Q an unnamed
page sequence, E wavelength. Y and X are the image; every other axis (Z depth, T time, ...) is a
stack that NeuroRG does not reduce for you."""
_STACK_NAMES = {"Z": "z-stack", "T": "time series", "R": "tile/region series", "A": "angle series",
                "P": "phase series", "H": "lifetime histogram", "L": "exposure series",
                "V": "event series", "M": "mosaic"}

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
"""File suffixes that hold images (a plate listing with none of them has no images at all)."""

DECODE_ERRORS = (ValueError, OSError, EOFError, SyntaxError, struct.error, zlib.error, IndexError,
                 KeyError, MemoryError, RuntimeError, NotImplementedError)
"""Errors a third-party decoder raises on a truncated or corrupt file (re-raised as NeuroRGError)."""


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, before any pixel is decoded."""

    shape: tuple[int, ...]   # singleton stack axes dropped, e.g. (H, W), (C, H, W), (H, W, S)
    dtype: np.dtype
    axes: str                # one tifffile letter per axis of ``shape`` (Y, X, C, S, Z, T, ...)
    kind: tuple[Any, ...]    # what decoding depends on: files of one kind decode alike
    compression: str = ""    # "" when uncompressed


# --- headers -----------------------------------------------------------------------------------

def png_header(path: Path) -> ImageHeader:
    """A PNG's shape and dtype from its header (16-bit colour refused)."""
    try:
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
            rawmode = im.tile[0][3] if im.tile and isinstance(im.tile[0][3], str) else ""
    except Image.DecompressionBombError as exc:
        raise NeuroRGError(f"image is too large to decode safely ({exc})", path=path) from exc
    except DECODE_ERRORS as exc:
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
    _check_png_complete(path)
    axes = "YX" if len(shape) == 2 else "YXS"
    return ImageHeader(shape=shape, dtype=np.dtype(dtype), axes=axes, kind=("png", mode, shape))


def _check_png_complete(path: Path) -> None:
    """Refuse a PNG that ends before its IEND chunk (a truncated copy), walking the chunk list:
    a few reads, nothing decoded."""
    try:
        with open(path, "rb") as f:
            size, at = os.fstat(f.fileno()).st_size, 8
            while at + 8 <= size:
                f.seek(at)
                length, kind = struct.unpack(">I4s", f.read(8))
                if kind == b"IEND":
                    return
                at += 12 + length   # length, type, data, CRC
    except OSError as exc:
        raise NeuroRGError(f"not a readable PNG image ({exc})", path=path) from exc
    raise NeuroRGError(f"image is truncated: the file ends at byte {size} before the PNG's end "
                       "(an interrupted copy?); copy the file again", path=path)


BRIGHTNESS_PHOTOMETRICS = (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB,
                           tifffile.PHOTOMETRIC.YCBCR)
"""TIFF photometric interpretations whose decoded values are brightness (tifffile converts JPEG's
YCbCr to RGB). Others (MinIsWhite: 0 is white; Palette: colour indices; CMYK, CIELab, ...) decode
to numbers that are not, and are refused rather than read as fluorescence. A file without the
tag is read as MINISBLACK, as libtiff does (tifffile would say MINISWHITE)."""


def check_tiff_file(tif: tifffile.TiffFile, path: Path) -> None:
    """Refuse a TIFF whose pixels the header shows cannot be read faithfully, nothing decoded:
    pixel data running past the end of the file (a truncated copy: decoders do not all notice,
    a truncated JPEG decodes to grey rows and an LZW strip without its end code decodes whole),
    or a photometric interpretation whose values are not brightness."""
    page = tif.pages.first
    tag = page.tags.get(262) if isinstance(page, tifffile.TiffPage) else None   # PhotometricInterpretation
    photometric = int(tag.value) if tag is not None else int(tifffile.PHOTOMETRIC.MINISBLACK)
    if photometric not in BRIGHTNESS_PHOTOMETRICS:
        try:
            name = tifffile.PHOTOMETRIC(photometric).name
        except ValueError:
            name = f"code {photometric}"
        raise NeuroRGError(
            f"photometric interpretation {name} stores values that are not brightness (MINISWHITE: "
            "0 is white; PALETTE: colour indices); expected MINISBLACK grey or RGB. Export the "
            "field as plain grey levels", path=path,
        )
    size = tif.filehandle.size
    try:
        end = max((o + n for page in tif.pages for o, n in zip(page.dataoffsets, page.databytecounts)),
                  default=0)
    except DECODE_ERRORS as exc:
        raise NeuroRGError(f"not a readable TIFF image ({exc})", path=path) from exc
    if end > size:
        raise NeuroRGError(f"image is truncated: its header puts pixel data up to byte {end}, but the file "
                           f"is {size} bytes long (an interrupted copy or upload?); copy the file again",
                           path=path)


def _tiff_source(tif: tifffile.TiffFile) -> Any:
    """What holds the image: the page itself for a one-page file (skips tifffile's series
    detection, a third of the read time of a small ImageXpress file), else the first series (a
    multi-page stack, an ImageJ hyperstack or an OME file)."""
    pages = tif.pages
    return pages.first if len(pages) == 1 else tif.series[0]


def tiff_header(tif: tifffile.TiffFile) -> ImageHeader:
    """Shape, axes, dtype, compression and kind of the image ``tif`` holds (no pixels decoded)."""
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
    return ImageHeader(shape=shape, dtype=np.dtype(source.dtype), axes=axes, kind=kind, compression=name)


def image_header(path: Path) -> ImageHeader:
    """What an image file's header says (no pixels decoded)."""
    if path.suffix.lower() == ".png":
        return png_header(path)
    try:
        tif = tifffile.TiffFile(path)
    except DECODE_ERRORS as exc:
        raise NeuroRGError(f"not a readable TIFF image ({exc})", path=path) from exc
    with tif:
        try:
            header = tiff_header(tif)
        except DECODE_ERRORS as exc:
            raise NeuroRGError(f"not a readable TIFF image ({exc})", path=path) from exc
        check_tiff_file(tif, path)
        return header


def header_of(path: Path, well: str) -> ImageHeader:
    """``image_header(path)``, its errors naming ``well`` too."""
    try:
        return image_header(path)
    except NeuroRGError as exc:
        raise with_well(exc, well) from exc


# --- checks before decoding ----------------------------------------------------------------------

def check_values(path: Path, shape: tuple[int, ...], max_pixels: int) -> None:
    """Refuse a file that would decode to more than ``max_pixels`` values (every page and sample)."""
    total = math.prod(shape)
    if total > max_pixels:
        dims = " x ".join(map(str, shape))
        what = "pixels" if len(shape) == 2 else "pixel values (every page and sample counted)"
        raise NeuroRGError(
            f"image is {dims} = {total} {what}, more than the limit of {max_pixels} "
            "(Config.max_pixels / NEURORG_MAX_PIXELS); checked before decoding", path=path,
        )


def _check_axes(path: Path, header: ImageHeader) -> None:
    """Refuse a stack (Z, T, ...) or an unnamed page axis too long to be channels."""
    for axis, n in zip(header.axes, header.shape):
        if axis in "YX":
            continue
        if axis not in CHANNEL_AXES:
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


def check_header(path: Path, header: ImageHeader, max_pixels: int) -> None:
    """Refuse an image that is not 2-D or 3-D, is a stack, has too many pixels or an unsupported
    pixel type (8- and 16-bit unsigned are read)."""
    if len(header.shape) < 2:
        raise NeuroRGError(f"image has shape {header.shape}; expected (H, W), (H, W, C) or (C, H, W)",
                           path=path)
    _check_axes(path, header)
    check_values(path, header.shape, max_pixels)
    if header.dtype not in SUPPORTED_DTYPES:
        raise NeuroRGError(f"pixel type {header.dtype} is not supported; expected 8- or 16-bit",
                           path=path)


def check_dtype(path: Path, dtype: np.dtype, what: str = "array dtype") -> None:
    """Refuse a pixel type other than uint8 / uint16."""
    if np.dtype(dtype) not in SUPPORTED_DTYPES:
        raise NeuroRGError(f"{what} {dtype} is not supported; expected uint8 or uint16", path=path)


# --- axes ----------------------------------------------------------------------------------------

def channel_axis(header: ImageHeader, path: Path) -> int:
    """-1 for channel-last (H, W, C), 0 for channel-first (C, H, W): from the axes when the
    header names Y and X (TIFF), else guessed from the sizes (C <= ``MAX_CHANNELS``)."""
    shape, axes = header.shape, header.axes
    if len(axes) == 3 and axes[1:] == "YX" and axes[0] in CHANNEL_AXES:
        return 0
    if len(axes) == 3 and axes[:2] == "YX" and axes[2] in CHANNEL_AXES:
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


def spatial_shape(header: ImageHeader, path: Path) -> tuple[int, int]:
    """(H, W) of a 2-D image or of a multi-channel (H, W, C) / (C, H, W) image."""
    shape = header.shape
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        axis = channel_axis(header, path)
        return (shape[0], shape[1]) if axis == -1 else (shape[1], shape[2])
    raise NeuroRGError(f"image has shape {shape} (axes {header.axes}); expected (H, W), (H, W, C) or "
                       "(C, H, W)", path=path)


def n_channels(header: ImageHeader, path: Path) -> int:
    """Channels of a multi-channel image (its channel axis' length)."""
    return header.shape[channel_axis(header, path)]


# --- decoding ------------------------------------------------------------------------------------

def _decode_failed(path: Path, header: ImageHeader, exc: Exception) -> NeuroRGError:
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


def read_image(path: Path, max_pixels: int) -> tuple[np.ndarray, ImageHeader]:
    """Decode one image file after checking its header (size against ``max_pixels``, axes,
    dtype); returns the pixels (shaped as ``header.shape``) and the header."""
    if path.suffix.lower() == ".png":
        header = png_header(path)
        check_header(path, header, max_pixels)
        try:
            with Image.open(path) as im:
                return np.asarray(im).reshape(header.shape), header
        except Image.DecompressionBombError as exc:
            raise NeuroRGError(f"image is too large to decode safely ({exc})", path=path) from exc
        except DECODE_ERRORS as exc:
            raise _decode_failed(path, header, exc) from exc
    img, header, _ = read_tiff(path, max_pixels)
    return img, header


def read_tiff(path: Path, max_pixels: int, *,
              while_open: Callable[[tifffile.TiffFile, np.ndarray], Any] | None = None,
              ) -> tuple[np.ndarray, ImageHeader, Any]:
    """Decode a TIFF with tifffile after checking its header.

    ``while_open(tif, pixels)`` is called before the file is closed, and its result returned
    third (None without it): the header-reuse reader (``tiffreuse``) learns the file's layout
    there, from the same parse.
    """
    try:
        tif = tifffile.TiffFile(path)
    except DECODE_ERRORS as exc:
        raise NeuroRGError(f"not a readable TIFF image ({exc})", path=path) from exc
    with tif:
        try:
            header = tiff_header(tif)
        except DECODE_ERRORS as exc:
            raise NeuroRGError(f"not a readable TIFF image ({exc})", path=path) from exc
        check_header(path, header, max_pixels)
        check_tiff_file(tif, path)
        try:
            img = _tiff_source(tif).asarray().reshape(header.shape)
        except DECODE_ERRORS as exc:
            raise _decode_failed(path, header, exc) from exc
        return img, header, (while_open(tif, img) if while_open is not None else None)


def open_npy(path: Path) -> np.ndarray:
    """An ``.npy`` array, memory-mapped read-only (no pickles)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except DECODE_ERRORS as exc:
        raise NeuroRGError(f"not a readable .npy array, or truncated ({exc})", path=path) from exc


# --- messages --------------------------------------------------------------------------------------

def with_well(exc: NeuroRGError, well: str) -> NeuroRGError:
    """The same error, its message now naming the well too ("file, well A01: problem")."""
    if exc.well is not None:
        return exc
    message = str(exc)
    if exc.path is not None:
        shown = printable(Path(exc.path).name) + ": "
        if message.startswith(shown):
            message = message[len(shown):]
    return NeuroRGError(message, path=exc.path, well=well)
