"""A plate of images from a folder or a .zip, whatever the microscope wrote: ``load_plate``.

``load_plate(path)`` lists the files (folders are searched recursively; hidden entries and
``__MACOSX`` are skipped), asks the layout registry which instrument wrote them
(``neurorg_core.layouts``: ImageXpress, Operetta / Opera Phenix, multi-channel TIFF / PNG, the
study's npy release), maps the channel ids in the file names to the roles in ``schema.CHANNELS``
and reads the first field's header for its shape and dtype. Pixels are read later, one field at a
time, by ``Plate.read_field`` / ``Plate.iter_fields``, through the layout's field reader.

Where the rest lives: a layout's file names, channel roles, listing, reader and (for ``synth``)
writer in ``neurorg_core.layouts``; image headers, axes, pixel-limit checks and decoding in
``neurorg_core.images``; the TIFF header reuse in ``neurorg_core.tiffreuse``; zip extraction in
``neurorg_core.archive``; the pixel size's metadata in ``neurorg_core.pixelsize``. Every read
error raises ``NeuroRGError`` naming the file (and well).

A ``.zip`` is extracted safely (``archive.extract_plate_zip``). Without ``work_dir`` the
extraction is a temporary folder owned by the ``Plate``: ``Plate.close()`` (or leaving ``with
plate:``, or the plate being garbage-collected, or the process ending) removes it. With
``work_dir`` the extraction is kept there, keyed by the zip's path and version (``cache.file_version``),
and belongs to the caller (the app). Either way ``Plate.source`` is the zip, and ``Plate.root``
the folder the files are read from.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from neurorg_core.archive import MAX_ZIP_BYTES, ZipLimits, extract_plate_zip
from neurorg_core.cache import file_version
from neurorg_core.config import load_config
from neurorg_core.errors import NeuroRGError, printable
from neurorg_core.images import with_well
from neurorg_core.layouts import (
    FieldRef,
    LayoutSpec,
    Listing,
    PlateGeometry,
    Source,
    detect_layout,
    layout_names,
    layout_spec,
)
from neurorg_core.pixelsize import PixelSize, check_pixel_size
from neurorg_core.schema import CHANNELS
from neurorg_core.wells import format_well, parse_well, plate_format_for

log = logging.getLogger(__name__)

__all__ = ["FieldRef", "MAX_ZIP_BYTES", "Plate", "ZipLimits", "load_plate"]


def _listing_stamp(dirs: list[Path], files: list[Path]) -> tuple[Any, ...]:
    """The version (``cache.file_version``) of every listed folder (adding, removing or renaming a
    file changes its folder's) and of a few files (the first field's, whose header a Plate keeps)."""
    return (tuple((str(d), file_version(d.stat())) for d in dirs),
            tuple((str(f), file_version(f.stat())) for f in files))


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
        self, *, name: str, source: Path, root: Path, spec: LayoutSpec, listing: Listing,
        channel_map: Mapping[str, str], max_pixels: int, pixel_size: PixelSize | None,
        folders: tuple[Path, ...], owned_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.root = root
        self.spec = spec
        self.layout: str = spec.name      # a built-in or registered layout's name
        self.channel_ids = listing.channel_ids
        self.channel_map = dict(channel_map)
        self.dtype = np.dtype(listing.dtype)
        self.field_shape = listing.field_shape
        self.fields: tuple[FieldRef, ...] = tuple(
            sorted(listing.sources, key=lambda f: (f.row, f.col, f.field))
        )
        self.labels = dict(listing.labels)
        self.max_pixels = max_pixels
        self.pixel_size_um: float | None = pixel_size.um if pixel_size else None
        self.pixel_size_source: str | None = pixel_size.source if pixel_size else None
        self.plate_format: int = plate_format_for([(f.row, f.col) for f in self.fields])
        self._sources = listing.sources
        self._by_well: dict[str, list[FieldRef]] = {}
        for ref in self.fields:
            self._by_well.setdefault(ref.well, []).append(ref)
        self._reader = spec.field_reader(PlateGeometry(
            name=name, channel_ids=self.channel_ids, channel_map=MappingProxyType(self.channel_map),
            dtype=self.dtype, field_shape=self.field_shape, max_pixels=max_pixels))
        self._listing = (folders, listing.first_files)
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
            if self.source.is_file():   # a zip: its version, and its extraction still there
                return ("zip", file_version(self.source.stat()), self.root.is_dir())
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
        """Files read so far through a TIFF header parsed once for the plate (``tiffreuse``)."""
        return self._reader.reused_headers

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

    def _source(self, ref: FieldRef) -> Source:
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
            return self._reader.read(src)
        except NeuroRGError as exc:
            raise with_well(exc, ref.well) from exc

    def iter_fields(self) -> Iterator[tuple[FieldRef, np.ndarray]]:
        """Every field in (row, col, field) order with its pixels, one at a time."""
        for ref in self.fields:
            yield ref, self.read_field(ref)

    def check_files(self) -> list[str]:
        """Check every file's header, and decode one field of each kind of file.

        A *kind* is what decoding depends on: format, compression, predictor, tiling, byte order,
        dtype, shape and axes. Headers alone cannot tell whether a file can be decoded (an LZW
        file needs the codec; a JPEG file may be corrupt), so one field holding the first file of
        each kind is read in full: "no problems" means the plate can really be read.

        Returns
        -------
        list of str
            One line per problem (unreadable or truncated file, a stack, too many pixels, wrong
            size, wrong bit depth, wrong channel count, values that are not brightness,
            undecodable pixels), each naming the file and well; empty when the plate can be read.
        """
        problems: list[str] = []
        if not self._reader.checks_files:
            return problems   # everything was checked at load time (npy: rows are plain memory)
        kinds_of: dict[FieldRef, set[tuple[Any, ...]]] = {}
        broken: set[FieldRef] = set()
        n_files = 0
        for ref in self.fields:
            for path in self.files_of(ref):
                n_files += 1
                try:
                    kinds_of.setdefault(ref, set()).add(self._reader.check_file(path).kind)
                except NeuroRGError as exc:
                    problems.append(str(with_well(exc, ref.well)))
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



# --- listing and loading -----------------------------------------------------------------------

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
    extraction = extract_plate_zip(path, work_dir=work_dir, limits=limits)
    return extraction.root, (extraction.root if extraction.owned else None)


def _plate_pixel_size(user: float | None, spec: LayoutSpec, listing: Listing, root: Path) -> PixelSize | None:
    """The user's pixel size, else the one the layout's reader finds in the first field's file."""
    if user is not None:
        return PixelSize(user, "user")
    if not listing.first_files:
        return None   # a layout without per-field files (npy) has no metadata to read
    first = listing.first_files[0]
    found = spec.pixel_size(first, root)
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
        ``w1``, ``ch5``, or a sample index ``0``); defaults per layout in its
        ``LayoutSpec.default_channels`` (``layouts.layout_spec(name)``).
    max_pixels
        Most pixel values one file may decode to (pages x samples x height x width); default
        ``Config().max_pixels``.
    work_dir
        Where a zip is extracted, keyed by the zip's path and version and reused while the
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
    limits = replace(zip_limits or ZipLimits(), max_bytes=max_zip_bytes)
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
    """``load_plate`` once the plate's folder is known: list, detect, list the fields, map the
    channels, read the pixel size."""
    files, dirs = _list_files(root)
    spec, hits = detect_layout(path, files)
    if plate is not None and not spec.several_plates:
        numbered = " / ".join(n for n in layout_names() if layout_spec(n).several_plates)
        raise NeuroRGError(f"plate={plate} applies to {numbered} folders only; this is {spec.name}",
                           path=path)
    listing = spec.list_fields(root, hits, plate=plate, max_pixels=max_pixels)
    cmap = spec.resolve_channel_map(listing.channel_ids, channel_map, path)
    spec.check_complete(listing, cmap, path)
    return Plate(
        name=listing.name or (path.stem if path.is_file() else path.name), source=path, root=root,
        spec=spec, listing=listing, channel_map=cmap, max_pixels=max_pixels,
        pixel_size=_plate_pixel_size(user_pixel, spec, listing, root), folders=tuple(dirs),
        owned_dir=owned,
    )
