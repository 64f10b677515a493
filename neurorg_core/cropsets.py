"""Labelled crops for training and evaluation, streamed from the crop cache on disk.

A plate's crops are cut exactly as scoring cuts them (``preprocess.plate_cropping``: the model's
crop geometry, intensity scaling included), resized to the model's input, and written once as
uint8 into the crop cache (``cropcache.CropCache``: once per plate and crop geometry); a
``CropSet`` holds them as a read-only memory map, so plates larger than memory can be trained on.
Labels come from ``Plate.labels`` (npy layout) or the plate folder's plate map
(``Metadata_Class``). A labelled plate is identified by its content (``plate_fingerprint``), not
its name, so evaluation knows which plates a bundle trained on.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from neurorg_core.cropcache import CropCache, crop_cache_key
from neurorg_core.errors import NeuroRGError
from neurorg_core.preprocess import CropGeometry, PlateCropping, crops_from_field, plate_cropping
from neurorg_core.schema import CLASS, CROPS_PER_WELL, WELL

log = logging.getLogger(__name__)

PLATE_MAP_NAMES = ("platemap.csv", "platemap.tsv", "plate_map.csv", "plate_map.tsv")


@dataclass
class CropSet:
    """The crops of one plate's labelled wells, as uint8 (a memory map of the crop cache, or in memory)."""

    plate: str
    fingerprint: str          # content hash of the plate's first field and plate map (identity)
    source: Path
    crops: np.ndarray         # uint8 (n, s, s, 3), CHANNELS order; np.memmap from load_crop_set
                              # (CropRows, rows of one, after subset)
    labels: np.ndarray        # int64 (n,), class 0..5
    wells: np.ndarray         # str (n,), "A01"

    def subset(self, mask: np.ndarray) -> "CropSet":
        """The crops where ``mask`` is true; a memory-mapped set stays on disk (``CropRows``)."""
        rows = np.flatnonzero(mask)
        crops = CropRows(self.crops, rows) if isinstance(self.crops, (np.memmap, CropRows)) else self.crops[rows]
        return CropSet(self.plate, self.fingerprint, self.source, crops, self.labels[rows], self.wells[rows])


class CropRows:
    """Some rows of a crop array (a crop cache memory map), uncopied: indexing reads only the rows
    asked for. ``CropSet.subset`` holds one for a memory-mapped set, so a single plate split into
    training and validation wells (``train.split_wells``) still streams from disk
    (``cropcache.CropSource`` reads it as it reads a memory map)."""

    def __init__(self, base: Any, rows: np.ndarray) -> None:
        self.base = base
        self.rows = np.asarray(rows, np.int64)
        self.shape: tuple[int, ...] = (len(self.rows), *base.shape[1:])
        self.dtype = base.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> np.ndarray:
        """Rows by index, slice, index array or mask (rows only: take a crop's pixels from the result)."""
        return np.asarray(self.base[self.rows[key]])

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = np.asarray(self.base[self.rows])
        return out if dtype is None else out.astype(dtype)


def find_plate_map(folder: str | Path) -> Path:
    """The plate map inside a plate folder (``platemap.csv`` or similar)."""
    base = Path(folder)
    for name in PLATE_MAP_NAMES:
        if (base / name).is_file():
            return base / name
    raise NeuroRGError(f"no plate map in {base}; expected one of {', '.join(PLATE_MAP_NAMES)} "
                       "with a Metadata_Class column for training", path=base)


def plate_labels(plate: Any, folder: str | Path) -> dict[str, int]:
    """Well -> class label: ``Plate.labels`` (npy layout) or the plate map's ``Metadata_Class``."""
    if plate.labels:
        return {w: int(k) for w, k in plate.labels.items()}
    from neurorg_core.platemap import load_plate_map

    path = find_plate_map(folder)
    df = load_plate_map(path)
    known = df[df[CLASS].notna()]
    if known.empty:
        raise NeuroRGError("plate map has no Metadata_Class labels; training and evaluation need "
                           "class-labelled wells (0-5)", path=path)
    return {str(w): int(k) for w, k in zip(known[WELL], known[CLASS])}


def load_crop_set(path: str | Path, input_size: int, *, geometry: CropGeometry,
                  crops_per_well: int = CROPS_PER_WELL, cache: CropCache | None = None) -> CropSet:
    """Every labelled well of a plate as uint8 crops at ``input_size`` px, from the crop cache.

    The first call for a plate, geometry, input size and crops per well cuts the plate into the
    cache (one well in memory at a time); later calls read the cache entry (``cropcache``).

    Parameters
    ----------
    path
        Plate folder (any layout ``plates.load_plate`` reads) with a class-labelled plate map,
        or the study's npy release.
    input_size
        Model input edge, pixels.
    geometry
        What one crop holds (the model's crop edge and pixel size); the plate is cut exactly as
        scoring cuts it (``preprocess.plate_cropping``), intensity scaling included.
    crops_per_well
        Crops taken per well (spread over its fields, see ``preprocess.plan_crops``).
    cache
        The crop cache; default ``CropCache.from_config()`` (``NEURORG_CROP_CACHE``).
    """
    from neurorg_core.plates import load_plate

    plate = load_plate(path)
    cropping = plate_cropping(plate, geometry)
    labels = plate_labels(plate, path)
    imaged = set(plate.wells())
    wells = [w for w in plate.wells() if w in labels]
    if not wells:
        raise NeuroRGError(f"none of the {len(imaged)} imaged wells has a class label", path=path)
    fingerprint = plate_fingerprint(plate, labels)
    store = cache if cache is not None else CropCache.from_config()
    key = crop_cache_key(plate, cropping, input_size, crops_per_well, {w: labels[w] for w in wells})
    entry = store.lookup(plate.name, key)
    if entry is None:
        meta = {"plate": plate.name, "fingerprint": fingerprint, "source": str(path),
                "crop_geometry": geometry.as_card(), "tile_edge_px": cropping.edge,
                "intensity_bits": cropping.intensity.bits, "input_size": int(input_size),
                "crops_per_well": int(crops_per_well)}
        entry = store.write(plate.name, key, _iter_wells(plate, cropping, wells, input_size, crops_per_well),
                            labels, meta)
    log.info("%s: %d crops from %d labelled wells", plate.name, len(entry.labels), len(wells))
    return CropSet(plate.name, fingerprint, Path(path), entry.crops, entry.labels, entry.wells)


def load_screen_crops(path: str | Path, input_size: int, geometry: CropGeometry,
                      crops_per_well: int = CROPS_PER_WELL) -> CropSet:
    """Crops of every imaged well of a plate (labels -1: a screening plate has none)."""
    from neurorg_core.plates import load_plate

    plate = load_plate(path)
    crops, ws = _cut_wells(plate, plate_cropping(plate, geometry), plate.wells(), input_size, crops_per_well)
    return CropSet(plate.name, "", Path(path), crops, np.full(len(crops), -1, np.int64), ws)


def _iter_wells(plate: Any, cropping: PlateCropping, wells: Sequence[str], input_size: int,
                crops_per_well: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per field: uint8 crops (k, s, s, 3) of ``wells``, cut exactly as scoring cuts them, and their well."""
    for well in wells:
        refs = plate.fields_of(well)
        plan = cropping.plan(len(refs), plate.field_shape, crops_per_well)
        for i, ref in enumerate(refs):
            c = crops_from_field(plate.read_field(ref), plan, i, input_size, cropping.intensity)
            yield np.rint(np.clip(c, 0.0, 1.0) * 255.0).astype(np.uint8), np.asarray([well] * len(c))


def _cut_wells(plate: Any, cropping: PlateCropping, wells: Sequence[str], input_size: int,
               crops_per_well: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 crops (n, s, s, 3) of ``wells`` in memory, and each crop's well."""
    parts = list(_iter_wells(plate, cropping, wells, input_size, crops_per_well))
    return np.concatenate([c for c, _ in parts]), np.concatenate([w for _, w in parts])


def plate_fingerprint(plate: Any, labels: dict[str, int]) -> str:
    """A labelled plate's identity whatever its name or folder: SHA-256 of the first labelled
    well's first field's pixels and of the class labels (first 16 hex digits)."""
    first = next(w for w in plate.wells() if w in labels)
    digest = hashlib.sha256(np.ascontiguousarray(plate.read_field(plate.fields_of(first)[0])).tobytes())
    digest.update(repr(sorted(labels.items())).encode())
    return digest.hexdigest()[:16]


def crops_as_float(x: np.ndarray) -> np.ndarray:
    """uint8 crops -> float32 [0, 1], the models' input."""
    return x.astype(np.float32) / 255.0


def well_labels(labels: np.ndarray, wells: np.ndarray, names: np.ndarray) -> np.ndarray:
    """The class label of each well in ``names`` (from its first crop)."""
    return np.asarray([labels[wells == w][0] for w in names], np.int64)
