"""Training crops on disk: a cache written once per plate and crop geometry, streamed back in batches.

A labelled plate's crops are cut once (``cropsets.load_crop_set``) into a cache entry, a folder
``<plate>-<key>/`` under ``CropCache.folder`` (``NEURORG_CROP_CACHE``, default
``<data dir>/cache/crops``)::

    crops.u8     uint8 crops (n, s, s, 3), C order, no header: read back as a read-only memory map
    index.npz    labels (n,) int64 and wells (n,) str
    meta.json    the plate, its fingerprint, the shape, and what the key was made of

The key hashes everything that decides what the crops hold: ``CACHE_VERSION``, the plate's files
(path and ``cache.file_version`` of every field's files; a zip's own), its channel map, its class
labels, the crop geometry, the plate's tile edge and intensity scaling, the input size and crops
per well. A changed file, map or geometry is a new key (a new entry); nothing is ever rewritten
in place. An entry is written into a temporary folder and renamed into place, so a half-written
entry is never read, and two processes cutting the same plate keep one. Past ``max_bytes`` the
least recently used entries are removed (the one just written is kept).

``CropSource`` joins several plates' crops into one indexable dataset without copying them, and
``BatchLoader`` reads its batches in a given order on worker threads into a bounded buffer
(``buffer_bytes``), so a dataset larger than memory trains: only the batches in flight are held.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from neurorg_core.cache import file_version
from neurorg_core.config import Config, load_config
from neurorg_core.errors import NeuroRGError

log = logging.getLogger(__name__)

CACHE_VERSION = "crops/1"
"""Part of every key: bump when cutting, resizing or intensity scaling changes what a crop holds."""
CROPS_FILE = "crops.u8"
INDEX_FILE = "index.npz"
META_FILE = "meta.json"


@dataclass(frozen=True)
class CachedCrops:
    """One cache entry, opened: ``crops`` is a read-only memory map of ``crops.u8``."""

    path: Path
    crops: np.ndarray       # uint8 (n, s, s, 3), np.memmap
    labels: np.ndarray      # int64 (n,)
    wells: np.ndarray       # str (n,)
    meta: dict

    @property
    def nbytes(self) -> int:
        return int(self.crops.nbytes)


def _open_entry(folder: Path) -> CachedCrops:
    meta = json.loads((folder / META_FILE).read_text())
    shape = tuple(int(v) for v in meta["shape"])
    crops = np.memmap(folder / CROPS_FILE, dtype=np.uint8, mode="r", shape=shape)
    with np.load(folder / INDEX_FILE) as index:
        labels, wells = index["labels"].astype(np.int64), index["wells"].astype(str)
    if len(labels) != shape[0] or len(wells) != shape[0]:
        raise NeuroRGError(f"crop cache entry holds {shape[0]} crops but {len(labels)} labels; delete the "
                           "folder to cut the plate again", path=folder)
    return CachedCrops(folder, crops, labels, wells, meta)


def _entry_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


class CropCache:
    """The crop cache in ``folder``, holding at most ``max_bytes`` on disk (owned by whoever trains:
    the CLI and ``build_demo`` use ``from_config()``)."""

    def __init__(self, folder: str | Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise NeuroRGError(f"crop cache size {max_bytes} bytes; expected more than 0 "
                               "(NEURORG_CROP_CACHE_GB)")
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)

    @classmethod
    def from_config(cls, config: Config | None = None) -> CropCache:
        cfg = config if config is not None else load_config()
        return cls(cfg.crop_cache_dir, int(cfg.crop_cache_gb * 2**30))

    def entries(self) -> list[Path]:
        """Entry folders, least recently used first."""
        if not self.folder.is_dir():
            return []
        found = [d for d in self.folder.iterdir() if d.is_dir() and (d / META_FILE).is_file()]
        return sorted(found, key=lambda d: (d / META_FILE).stat().st_mtime_ns)

    def nbytes(self) -> int:
        return sum(_entry_bytes(d) for d in self.entries())

    def lookup(self, name: str, key: str) -> CachedCrops | None:
        """The entry of ``key`` (its use recorded for pruning), or None."""
        folder = self.folder / f"{_safe(name)}-{key}"
        if not (folder / META_FILE).is_file():
            return None
        os.utime(folder / META_FILE)
        log.info("%s: crops from the cache (%s)", name, folder)
        return _open_entry(folder)

    def write(self, name: str, key: str, chunks: Iterable[tuple[np.ndarray, np.ndarray]],
              labels: dict[str, int], meta: dict[str, Any]) -> CachedCrops:
        """Write an entry from ``chunks`` of (uint8 crops (k, s, s, 3), their wells (k,)), one chunk
        in memory at a time; each crop's label is ``labels[well]``. Returns it opened.

        Raises
        ------
        NeuroRGError
            If the cache folder cannot be written (full disk, permissions): nothing half-written stays.
        """
        final = self.folder / f"{_safe(name)}-{key}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.folder))
        except OSError as exc:
            raise NeuroRGError(f"cannot write the crop cache ({exc.strerror or exc}); set NEURORG_CROP_CACHE "
                               "to a writable folder", path=self.folder) from exc
        try:
            shape = _write_chunks(tmp, chunks, labels)
            (tmp / META_FILE).write_text(json.dumps({**meta, "shape": list(shape), "key": key}, indent=1))
            try:
                tmp.rename(final)
            except OSError:       # another process wrote the same entry first: keep theirs
                if not (final / META_FILE).is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise NeuroRGError(f"cannot write the crop cache ({exc.strerror or exc}); free disk space or set "
                               "NEURORG_CROP_CACHE", path=self.folder) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.prune(keep=final)
        log.info("%s: %d crops cut into the cache (%s)", name, shape[0], final)
        return _open_entry(final)

    def prune(self, keep: Path | None = None) -> list[Path]:
        """Remove the least recently used entries until the cache holds at most ``max_bytes``
        (``keep`` stays whatever its size). Returns the folders removed."""
        entries = self.entries()
        sizes = {d: _entry_bytes(d) for d in entries}
        total = sum(sizes.values())
        removed = []
        for d in entries:
            if total <= self.max_bytes:
                break
            if d == keep:
                continue
            shutil.rmtree(d, ignore_errors=True)
            total -= sizes[d]
            removed.append(d)
            log.info("crop cache over %.1f GiB: removed %s", self.max_bytes / 2**30, d.name)
        return removed


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))[:64] or "plate"


def _write_chunks(folder: Path, chunks: Iterable[tuple[np.ndarray, np.ndarray]],
                  labels: dict[str, int]) -> tuple[int, ...]:
    shape: tuple[int, ...] | None = None
    n = 0
    wells: list[np.ndarray] = []
    with open(folder / CROPS_FILE, "wb") as f:
        for crops, ws in chunks:
            crops = np.ascontiguousarray(crops, dtype=np.uint8)
            if shape is None:
                shape = crops.shape[1:]
            elif crops.shape[1:] != shape:
                raise NeuroRGError(f"crops of shape {crops.shape[1:]} after {shape}; expected one crop shape")
            f.write(crops.tobytes())
            n += len(crops)
            wells.append(np.asarray(ws, str))
    if shape is None:
        raise NeuroRGError("no crops to cache; expected at least one labelled well", path=folder)
    all_wells = np.concatenate(wells)
    np.savez(folder / INDEX_FILE, labels=np.asarray([labels[w] for w in all_wells], np.int64), wells=all_wells)
    return (n, *shape)


def crop_cache_key(plate: Any, cropping: Any, input_size: int, crops_per_well: int,
                   labels: dict[str, int]) -> str:
    """The cache key of a plate cut for a model (see the module doc): 20 hex digits."""
    h = hashlib.sha256()
    for part in (CACHE_VERSION, sorted(plate.channel_map.items()), sorted(labels.items()),
                 cropping.geometry.as_card(), cropping.edge, cropping.intensity.bits,
                 cropping.pixel_size_um, int(input_size), int(crops_per_well)):
        h.update(repr(part).encode())
    source = Path(plate.source)
    if source.is_file():        # a zip: its own version (its extraction is new each time)
        h.update(repr((str(source.resolve()), file_version(source.stat()))).encode())
    else:
        for ref in plate.fields:
            for f in plate.files_of(ref):
                h.update(repr((str(f.resolve()), file_version(f.stat()))).encode())
    return h.hexdigest()[:20]


# --- streaming batches ----------------------------------------------------------------------

class CropSource:
    """Several crop arrays (memory maps or in memory) and their labels as one dataset, uncopied.

    Row ``i`` of the source is row ``i - offset[k]`` of part ``k``, in the order given.
    """

    def __init__(self, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        if not parts:
            raise NeuroRGError("no crops to train on; expected at least one plate's crops")
        self.parts = [(c, np.asarray(y, np.int64)) for c, y in parts]
        shapes = {c.shape[1:] for c, _ in self.parts}
        if len(shapes) != 1:
            raise NeuroRGError(f"plates give crops of different shapes {sorted(shapes)}; expected one")
        self.crop_shape: tuple[int, ...] = shapes.pop()
        self.offsets = np.cumsum([0] + [len(c) for c, _ in self.parts])
        self.labels = np.concatenate([y for _, y in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def crop_bytes(self) -> int:
        return int(np.prod(self.crop_shape))

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 crops (k, s, s, 3) and labels (k,) of ``rows``, in that order; each part is read in
        ascending row order (sequential on disk)."""
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), *self.crop_shape), np.uint8)
        part = np.searchsorted(self.offsets, rows, side="right") - 1
        for k in np.unique(part):
            where = np.flatnonzero(part == k)
            local = rows[where] - self.offsets[k]
            order = np.argsort(local, kind="stable")
            out[where[order]] = self.parts[k][0][local[order]]
        return out, self.labels[rows]

    def chunks(self, rows_per_chunk: int = 2048) -> Iterator[np.ndarray]:
        """Every crop in order, ``rows_per_chunk`` at a time (for statistics and validation)."""
        for crops, _ in self.parts:
            for a in range(0, len(crops), rows_per_chunk):
                yield np.asarray(crops[a:a + rows_per_chunk])


BatchTransform = Callable[[np.ndarray, int], np.ndarray]
"""uint8 crops of a batch and the batch's number in the run -> float32 crops of the same shape
(``augment.LoaderAugment``); run on the loader's threads."""


class BatchLoader:
    """Batches of a ``CropSource`` in a given order, read ahead by ``workers`` threads.

    At most ``prefetch`` batches are read ahead of the one the caller holds, so the memory held is
    bounded by ``buffer_bytes`` whatever the size of the dataset. The order of the batches is the
    order asked, whatever the threads' timing (reproducible training). With a ``transform`` (the
    augmentation on the loader) each thread also applies it to the batches it reads, so the
    transform of the next batches overlaps the caller's work on this one; the batches are then
    float32.
    """

    def __init__(self, source: CropSource, batch_size: int, *, workers: int = 2, prefetch: int = 4,
                 transform: BatchTransform | None = None) -> None:
        if batch_size < 1 or workers < 1 or prefetch < 1:
            raise NeuroRGError(f"batch size {batch_size}, workers {workers}, prefetch {prefetch}; expected >= 1")
        self.source = source
        self.batch_size = int(batch_size)
        self.workers = int(workers)
        self.prefetch = int(prefetch)
        self.transform = transform

    @property
    def buffer_bytes(self) -> int:
        """The most crop bytes the loader holds at once: the batches read ahead plus the caller's
        (uint8, or float32 with a ``transform``)."""
        return (self.prefetch + 1) * self.batch_size * self.source.crop_bytes * (4 if self.transform else 1)

    def _read(self, rows: np.ndarray, number: int) -> tuple[np.ndarray, np.ndarray]:
        crops, labels = self.source.take(rows)
        return (crops if self.transform is None else self.transform(crops, number)), labels

    def batches(self, order: np.ndarray, first: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(crops, labels) of consecutive ``batch_size`` slices of ``order`` (the last may be short);
        the batches are numbered from ``first`` for the ``transform``."""
        order = np.asarray(order, np.int64)
        starts = range(0, len(order), self.batch_size)
        pending: collections.deque[Future] = collections.deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="neurorg-crops") as pool:
            it = iter(starts)
            try:
                for k, a in enumerate(it):
                    pending.append(pool.submit(self._read, order[a:a + self.batch_size], first + k))
                    if len(pending) > self.prefetch:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for f in pending:
                    f.cancel()
