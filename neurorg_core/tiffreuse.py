"""Reading a plate's 2-D TIFFs fast: a header tifffile parsed once serves the files written alike.

Parsing a small TIFF's header in tifffile costs far more than reading its pixels (0.39 of 0.44 ms
for a 256 px 16-bit file). Files an instrument or tifffile writes for one plate usually differ
only in their pixels, so after tifffile has read one, a file of the same size whose every
non-pixel byte is identical is read straight from its bytes (``TiffTemplate``). Anything else
(compressed, multi-page, per-file metadata such as time stamps, a truncated file) is read by
tifffile as before (``images.read_image``), with the same checks and messages.

``TiffReader`` is per plate: a per-channel layout's field reader owns one (``layouts.storage``),
and ``Plate.reused_headers`` reports how many files it served. Its memory is bounded: at most
``MAX_TEMPLATES`` templates, each the size of a file's non-pixel bytes (a few hundred bytes for
an instrument's TIFF, a few kilobytes with a long description).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from neurorg_core.images import read_image, read_tiff

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TiffTemplate:
    """Where the pixels of a plain 2-D TIFF sit, and every other byte of the file.

    A file whose bytes outside ``[offset, offset + nbytes)`` equal ``head`` and ``tail`` has
    exactly the header tifffile parsed for this template (a TIFF's tags are a function of those
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


def tiff_template(tif: tifffile.TiffFile, path: Path, img: np.ndarray,
                  data: bytearray | None = None) -> TiffTemplate | None:
    """The template of a one-page, uncompressed, single-sample 2-D TIFF in native byte order, if
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
    template = TiffTemplate(size=len(data), offset=offset, nbytes=nbytes, head=bytes(data[:offset]),
                            tail=bytes(data[offset + nbytes:]), dtype=np.dtype(img.dtype),
                            shape=(int(img.shape[0]), int(img.shape[1])))
    same = template.pixels(data)
    return template if same is not None and np.array_equal(same, img) else None


class TiffReader:
    """Reads one plate's image files, reusing the parsed header of TIFFs written the same way.

    The threads reading one plate (the app's sessions) may share it: templates are only ever
    added, so a race at worst parses a header twice or keeps one template more than the limit.
    """

    MAX_TEMPLATES = 16   # distinct headers remembered per plate; files past that go to tifffile
    GIVE_UP = 32         # after this many misses in a row, stop trying (per-file metadata)

    def __init__(self) -> None:
        self.templates: dict[int, list[TiffTemplate]] = {}   # file size -> templates of that size
        self.n_templates = 0
        self.reused = 0   # files read through a remembered header
        self.misses = 0   # files in a row that had a same-size template but another header

    def _bytes_if_known(self, path: Path) -> tuple[list[TiffTemplate] | None, bytearray | None]:
        """The templates of the file's size and, when there are some, the file's bytes.

        One open: the size comes from the open file (fstat) and the bytes are read with one
        ``readinto`` into a buffer one byte longer, so a file that grew meanwhile reads longer
        than any template (a short read only makes it shorter: tifffile reads it then). A separate
        stat, then ``read_bytes`` and a copy into a bytearray, cost ~15 % more of the reader
        thread's time per file. A file that cannot be opened or read gives no bytes: tifffile
        reads it next and reports the problem, naming the file.
        """
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                candidates = self.templates.get(size)
                if not candidates:
                    return None, None
                data = bytearray(size + 1)
                got = f.readinto(data) or 0
        except OSError:
            return None, None
        del data[got:]
        return candidates, data

    def read(self, path: Path, max_pixels: int) -> np.ndarray:
        """``images.read_image(path, max_pixels)``'s pixels, through a remembered header when
        one fits."""
        if path.suffix.lower() not in (".tif", ".tiff"):
            return read_image(path, max_pixels)[0]
        candidates, data = self._bytes_if_known(path) if self.misses < self.GIVE_UP else (None, None)
        if candidates:
            for template in candidates:
                pixels = template.pixels(data) if template.shape[0] * template.shape[1] <= max_pixels else None
                if pixels is not None:
                    self.reused += 1
                    self.misses = 0
                    return pixels
            self.misses += 1
        learn = self.n_templates < self.MAX_TEMPLATES
        img, _, template = read_tiff(
            path, max_pixels,
            while_open=(lambda tif, pixels: tiff_template(tif, path, pixels, data)) if learn else None)
        if template is not None:
            self.templates.setdefault(template.size, []).append(template)
            self.n_templates += 1
        return img
