"""What every instrument layout provides (``LayoutSpec``) and the small types layouts share.

A layout is one frozen object: how its file names look (``pattern``, ``parse``, ``file_name``),
which channel ids play which role by default (``default_channels``), how its files are listed
into fields and read (``list_fields``, ``field_reader``), where its pixel size is read
(``pixel_size``, a reader from ``neurorg_core.pixelsize``) and how ``synth`` writes it
(``begin_plate``, ``write_well``, ``end_plate``, ``file_tags``). Most instruments write one 2-D
TIFF per channel and build on ``storage.PerChannelLayout``; see docs/ARCHITECTURE.md, "Adding an
instrument layout".
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from neurorg_core.errors import NeuroRGError
from neurorg_core.images import SUPPORTED_DTYPES, ImageHeader
from neurorg_core.pixelsize import PixelSize
from neurorg_core.schema import CHANNELS

log = logging.getLogger(__name__)

Hit = tuple[Path, re.Match[str]]
"""A listed file whose name matched a layout's pattern, with the match."""

WELL_PATTERN = r"[A-Za-z]{1,2}\d{1,2}"
"""A well as file names spell it (``A01``, ``a1``, ``AF48``), for layouts' patterns."""


@dataclass(frozen=True)
class FieldRef:
    """One imaged field (site) of a well."""

    well: str   # "A01"
    row: int    # 1-based, A = 1
    col: int    # 1-based
    field: int  # 1-based site / field index within the well


@dataclass(frozen=True)
class FileKey:
    """What one file's name says (``LayoutSpec.parse``): its well, field and channel.

    ``channel`` is the text the name holds (``"2"`` of ``_w2``); the layout turns it into a
    channel id with ``LayoutSpec.channel_id`` (``"w2"``). Files of a multi-channel layout have
    no channel (``""``). ``plane`` is a focal plane in the name (Harmony's ``p01``): of several,
    only the lowest is read.
    """

    row: int
    col: int
    field: int
    channel: str = ""
    plane: int = 0


@dataclass(frozen=True)
class Source:
    """Where a field's pixels live: per-channel files, one multi-channel file, or an npy row."""

    files: Mapping[str, Path]   # channel id -> file (per-channel layouts); {"": file} otherwise
    index: int = -1             # row of the npy array, -1 for image files


@dataclass(frozen=True)
class Listing:
    """What a layout found in a plate's files (``LayoutSpec.list_fields``).

    ``dtype``, ``field_shape`` and ``channel_ids`` come from the first field's header (or the
    arrays' shapes); ``first_files`` are the first field's files (its pixel size is read from
    the first of them, and a Plate is stale when any of them changes).
    """

    sources: Mapping[FieldRef, Source]
    channel_ids: tuple[str, ...]
    dtype: np.dtype
    field_shape: tuple[int, int]
    first_files: tuple[Path, ...]
    labels: Mapping[str, int] = field(default_factory=dict)
    name: str | None = None       # the plate's name when the files give one (npy), else None


@dataclass(frozen=True)
class PlateGeometry:
    """What every field of a plate must match; a field reader checks each field against it."""

    name: str
    channel_ids: tuple[str, ...]
    channel_map: Mapping[str, str]   # role -> channel id, for each of schema.CHANNELS
    dtype: np.dtype
    field_shape: tuple[int, int]
    max_pixels: int

    def check_field(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        """Refuse a field whose (H, W) or pixel type differs from the plate's."""
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

    def channel_order(self) -> list[int]:
        """Sample indices of the roles in ``CHANNELS`` order (layouts whose ids are indices)."""
        return [int(self.channel_map[r]) for r in CHANNELS]


class FieldReader:
    """Reads the fields of one plate (made by ``LayoutSpec.field_reader``, owned by the Plate).

    A reader may keep per-plate state (a TIFF header cache, open memory maps); the threads
    reading one plate share it.
    """

    checks_files = True
    """Whether ``check_file`` applies (False where load_plate already checked everything)."""

    def read(self, src: Source) -> np.ndarray:
        """(H, W, 3) pixels in the plate's dtype, last axis in ``CHANNELS`` order."""
        raise NotImplementedError

    def check_file(self, path: Path) -> ImageHeader:
        """One file's header, checked against the plate (raises NeuroRGError naming the file)."""
        raise NotImplementedError

    @property
    def reused_headers(self) -> int:
        """Files read through a header parsed once for the plate (``tiffreuse``); 0 if none."""
        return 0


@dataclass(frozen=True)
class WriteTarget:
    """One synthetic plate as ``synth`` writes it in a layout (picklable: worker processes write
    wells with it)."""

    folder: Path
    plate_name: str                     # "plate_01"
    plate_number: int                   # 1
    wells: tuple[str, ...]              # every imaged well, plate order
    labels: tuple[int, ...] | None      # the class of each of ``wells`` on training plates, else None
    n_fields: int
    size: int                           # field edge, pixels
    dtype: np.dtype                     # uint8, or uint16 for 12- and 16-bit data
    pixel_size_um: float                # µm per pixel, recorded in the files' metadata


def no_tags(pixel_size_um: float) -> Mapping[str, Any]:
    """``file_tags`` of a layout whose image files carry no pixel size."""
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True, eq=False)
class LayoutSpec:
    """One instrument layout: file names, default channel roles, reading and writing.

    Subclasses fill in the storage (``list_fields``, ``field_reader``, ``write_well``):
    ``storage.PerChannelLayout`` (one 2-D file per channel), ``storage.MultiChannelLayout``
    (one multi-channel file per field) and ``npy.NpyLayout`` (the study's arrays).

    Attributes
    ----------
    name
        The layout's name (``Plate.layout``, the store's ``Layout`` column, ``synth --layout``).
    pattern
        Matches the name (not the path) of each of the layout's files; other files are ignored.
    example
        The file names, as an error message lists them ("ImageXpress <name>_<well>_s<site>_w<ch>.tif").
    default_channels
        Role -> channel id, for each of ``schema.CHANNELS``, used when no channel map is given.
    channel_prefix
        Channel ids are ``<prefix><number>`` (``w`` -> ``w1``); a user's ``"2"`` becomes ``w2``.
        Empty for ids that are bare sample indices (``0``, ``1``, ``2``).
    pixel_size
        ``(first file, plate folder) -> PixelSize | None``: a reader from ``neurorg_core.pixelsize``.
    dtypes
        Pixel types the layout's files can hold when ``synth`` writes them.
    labelled
        Whether the files carry each well's class (training plates only; ``Plate.labels``).
    several_plates
        Whether one folder may hold several numbered plates (``load_plate(..., plate=n)``).
    file_tags
        ``pixel size (µm) -> extra tifffile.imwrite arguments`` recording it (MetaMorph
        description, TIFF resolution, ...), for ``synth``; ``no_tags`` when the files hold none.
    """

    name: str
    pattern: re.Pattern[str]
    example: str
    default_channels: Mapping[str, str]
    channel_prefix: str = ""
    pixel_size: Callable[[Path, Path], PixelSize | None]
    dtypes: tuple[np.dtype, ...] = SUPPORTED_DTYPES
    labelled: bool = False
    several_plates: bool = False
    file_tags: Callable[[float], Mapping[str, Any]] = no_tags

    def __post_init__(self) -> None:
        if set(self.default_channels) != set(CHANNELS):
            raise ValueError(f"layout {self.name}: default_channels must map each of {CHANNELS}")
        object.__setattr__(self, "default_channels",
                           MappingProxyType({r: self.default_channels[r] for r in CHANNELS}))

    # --- names and channel ids --------------------------------------------------------------------

    def match(self, file_name: str) -> re.Match[str] | None:
        """The pattern's match of one file name, or None when the file is not the layout's."""
        return self.pattern.match(file_name)

    def channel_id(self, text: str) -> str:
        """A channel id as the plate's files spell it: ``"2"`` -> ``"w2"`` (prefix ``w``); ids
        are compared lower-case."""
        s = str(text).strip().lower()
        if s.isdigit() and self.channel_prefix:
            return f"{self.channel_prefix}{int(s)}"
        return s

    def resolve_channel_map(self, channel_ids: tuple[str, ...], channel_map: Mapping[str, str] | None,
                            where: Path) -> dict[str, str]:
        """Role -> channel id for a plate, from the layout's defaults and the user's overrides.

        Without ``channel_map`` the files must hold exactly the layout's default ids. With it,
        the given roles override the defaults and every id used must be among ``channel_ids``.

        Raises
        ------
        NeuroRGError
            Unknown role, id not found in the files (the message lists the ids found), or two
            roles mapped to one id.
        """
        default = self.default_channels
        found = ", ".join(channel_ids)
        if channel_map is None:
            if set(channel_ids) != set(default.values()):
                raise NeuroRGError(
                    f"found channels {found}; the {self.name} default is "
                    + ", ".join(f"{r}={i}" for r, i in default.items())
                    + "; give a channel map (CLI: --channels nucleus=ID,neuron=ID,microglia=ID)",
                    path=where,
                )
            return {r: default[r] for r in CHANNELS}
        unknown = sorted(set(channel_map) - set(CHANNELS))
        if unknown:
            raise NeuroRGError(f"unknown channel role(s) {unknown}; roles are {', '.join(CHANNELS)}",
                               path=where)
        merged = {**default, **{r: self.channel_id(v) for r, v in channel_map.items()}}
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

    # --- reading ---------------------------------------------------------------------------------

    def list_fields(self, root: Path, hits: list[Hit], *, plate: int | None, max_pixels: int) -> Listing:
        """The plate's fields from its matching files (and the first field's header)."""
        raise NotImplementedError

    def check_complete(self, listing: Listing, channel_map: Mapping[str, str], where: Path) -> None:
        """Refuse a listing that lacks a file the channel map needs (per-channel layouts)."""

    def field_reader(self, geometry: PlateGeometry) -> FieldReader:
        """A reader of this plate's fields (one per Plate)."""
        raise NotImplementedError

    # --- writing (synth) ---------------------------------------------------------------------------

    def begin_plate(self, target: WriteTarget) -> None:
        """Before any well is written (in the main process)."""

    def write_well(self, target: WriteTarget, well: str, fields: np.ndarray) -> None:
        """Write one well's fields, (n_fields, H, W, 3) in ``target.dtype`` and ``CHANNELS``
        order (may run in a worker process)."""
        raise NotImplementedError

    def end_plate(self, target: WriteTarget) -> None:
        """After every well is written (in the main process): plate-level files such as an index."""
