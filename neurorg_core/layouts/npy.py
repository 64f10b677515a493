"""The study's release: ``{class}_Plate_{n}.npy`` arrays (N, H, W, C) with a ``.csv`` of wells.

Each array holds the fields of one class of one plate; ``{class}_Plate_{n}.csv`` beside it has a
``well`` column giving the well of each of the N rows. The class in the file name becomes
``Plate.labels[well]``. Arrays are memory-mapped. A folder holding several plate numbers needs
``plate=n``. Channel ids are the sample indices ``0``, ``1``, ``2``; the files carry no pixel size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd

from neurorg_core.errors import NeuroRGError
from neurorg_core.images import DECODE_ERRORS, ImageHeader, check_dtype, check_values, open_npy
from neurorg_core.layouts.base import (
    FieldReader,
    FieldRef,
    Hit,
    LayoutSpec,
    Listing,
    PlateGeometry,
    Source,
    WriteTarget,
)
from neurorg_core.pixelsize import no_pixel_size
from neurorg_core.schema import N_CLASSES
from neurorg_core.wells import format_well, parse_well


class NpyReader(FieldReader):
    """Reads rows of the plate's memory-mapped arrays (opened on first use, kept by the plate)."""

    checks_files = False   # load_plate checked every array's shape and dtype; rows are plain memory

    def __init__(self, geometry: PlateGeometry) -> None:
        self.geometry = geometry
        self.arrays: dict[Path, np.ndarray] = {}

    def read(self, src: Source) -> np.ndarray:
        path = src.files[""]
        if path not in self.arrays:
            self.arrays[path] = open_npy(path)
        try:
            field = np.asarray(self.arrays[path][src.index])
        except DECODE_ERRORS as exc:
            raise NeuroRGError(f"row {src.index} cannot be read ({exc})", path=path) from exc
        self.geometry.check_field(path, field.shape[:2], field.dtype)
        return np.ascontiguousarray(field[..., self.geometry.channel_order()])

    def check_file(self, path: Path) -> ImageHeader:
        raise NotImplementedError("npy plates are checked when loaded")


def _choose_plate(root: Path, hits: list[Hit], plate: int | None) -> int:
    numbers = sorted({int(m.group("n")) for _, m in hits})
    if plate is None:
        if len(numbers) > 1:
            raise NeuroRGError(
                f"folder holds plates {', '.join(map(str, numbers))}; choose one (plate=n, "
                "or put each plate in its own folder)", path=root,
            )
        return numbers[0]
    if plate not in numbers:
        raise NeuroRGError(f"plate {plate} not found; plates here: {', '.join(map(str, numbers))}",
                           path=root)
    return plate


def _open_array(path: Path, max_pixels: int) -> np.ndarray:
    arr = open_npy(path)
    if arr.ndim != 4:
        raise NeuroRGError(f"array has shape {arr.shape}; expected (N, H, W, C)", path=path)
    check_dtype(path, arr.dtype)
    check_values(path, tuple(arr.shape[1:]), max_pixels)
    return arr


def _wells_column(csv_path: Path, n_rows: int, array_name: str) -> pd.Series:
    """The ``well`` (or ``Metadata_Well``) column of an array's CSV, one row per field."""
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise NeuroRGError(f"cannot read the CSV ({exc})", path=csv_path) from exc
    cols = {c.strip().lower(): c for c in table.columns}
    col = cols.get("well") or cols.get("metadata_well")
    if col is None:
        raise NeuroRGError(f"no 'well' column; columns are {list(table.columns)}", path=csv_path)
    if len(table) != n_rows:
        raise NeuroRGError(
            f"{len(table)} rows but {array_name} holds {n_rows} fields; expected one row "
            "per field", path=csv_path,
        )
    return table[col]


@dataclass(frozen=True, kw_only=True, eq=False)
class NpyLayout(LayoutSpec):
    """Class-labelled ``{class}_Plate_{n}.npy`` arrays + ``.csv`` (training plates only)."""

    def list_fields(self, root: Path, hits: list[Hit], *, plate: int | None, max_pixels: int) -> Listing:
        number = _choose_plate(root, hits, plate)
        chosen = sorted(((p, m) for p, m in hits if int(m.group("n")) == number),
                        key=lambda pm: int(pm[1].group("cls")))
        sources: dict[FieldRef, Source] = {}
        labels: dict[str, int] = {}
        seen_in: dict[str, Path] = {}
        shape_ref: tuple[Path, tuple[int, ...], np.dtype] | None = None
        for path, m in chosen:
            arr = _open_array(path, max_pixels)
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
            counts: dict[str, int] = {}
            for i, text in enumerate(_wells_column(csv_path, arr.shape[0], path.name)):
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
                sources[FieldRef(well, row, column, counts[well])] = Source(
                    files=MappingProxyType({"": path}), index=i)
                labels[well] = int(m.group("cls"))
        assert shape_ref is not None
        _, shape, dtype = shape_ref
        return Listing(sources=sources, channel_ids=tuple(str(i) for i in range(shape[2])), dtype=dtype,
                       field_shape=(shape[0], shape[1]), first_files=(), labels=labels,
                       name=f"Plate_{number}")

    def field_reader(self, geometry: PlateGeometry) -> FieldReader:
        return NpyReader(geometry)

    # --- writing: arrays made first, each well's rows written into them, CSVs last -------------

    @staticmethod
    def _paths(target: WriteTarget, cls: int) -> tuple[Path, Path]:
        stem = target.folder / f"{cls}_Plate_{target.plate_number}"
        return stem.with_suffix(".npy"), stem.with_suffix(".csv")

    @staticmethod
    def _wells_of(target: WriteTarget) -> dict[int, list[str]]:
        """Class -> its wells in plate order (each class's array lists them so)."""
        if target.labels is None:
            raise NeuroRGError("the npy layout stores each well's class; only training plates have them")
        out: dict[int, list[str]] = {k: [] for k in range(N_CLASSES)}
        for well, cls in zip(target.wells, target.labels):
            out[int(cls)].append(well)
        return out

    def begin_plate(self, target: WriteTarget) -> None:
        for cls, wells in self._wells_of(target).items():
            arr = np.lib.format.open_memmap(self._paths(target, cls)[0], mode="w+", dtype=target.dtype,
                                            shape=(len(wells) * target.n_fields, target.size, target.size, 3))
            del arr

    def write_well(self, target: WriteTarget, well: str, fields: np.ndarray) -> None:
        for cls, wells in self._wells_of(target).items():
            if well in wells:
                slot = wells.index(well)
                arr = np.load(self._paths(target, cls)[0], mmap_mode="r+")
                arr[slot * target.n_fields:(slot + 1) * target.n_fields] = fields
                arr.flush()
                del arr
                return
        raise NeuroRGError(f"well {well} is not among the plate's wells", path=target.folder)

    def end_plate(self, target: WriteTarget) -> None:
        for cls, wells in self._wells_of(target).items():
            pd.DataFrame({"well": [w for w in wells for _ in range(target.n_fields)]}).to_csv(
                self._paths(target, cls)[1], index=False)


NPY = NpyLayout(
    name="npy",
    pattern=re.compile(r"^(?P<cls>\d+)_Plate_(?P<n>\d+)\.npy$", re.IGNORECASE),
    example="{class}_Plate_{n}.npy + .csv",
    default_channels=MappingProxyType({"nucleus": "0", "neuron": "1", "microglia": "2"}),
    pixel_size=no_pixel_size,
    dtypes=(np.dtype(np.uint8),),
    labelled=True,
    several_plates=True,
)
"""The study's release (8-bit, class-labelled training plates)."""
