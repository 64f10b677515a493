"""The training crop cache (written once per plate and crop geometry, read back memory-mapped),
its size bound, and the streaming loader: order, threads, and a dataset bigger than the memory
the process may use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from neurorg_core.config import REPO_ROOT
from neurorg_core.cropcache import BatchLoader, CropCache, CropSource
from neurorg_core.cropsets import _cut_wells, load_crop_set
from neurorg_core.errors import NeuroRGError
from neurorg_core.preprocess import CropGeometry, plate_cropping

EDGE32 = CropGeometry("tiles", 32)


@pytest.fixture(scope="module")
def plate_dir(tmp_path_factory) -> Path:
    from neurorg_core.synth import write_synthetic_plates

    return write_synthetic_plates(tmp_path_factory.mktemp("plates"), seed=1, n_plates=1, n_fields=1, size=64)[0]


def _file_stamps(cache: CropCache) -> dict[str, int]:
    return {d.name: (d / "crops.u8").stat().st_mtime_ns for d in cache.entries()}


def test_crops_are_cut_once_per_plate_and_geometry_and_read_back_memory_mapped(plate_dir, tmp_path):
    from neurorg_core.plates import load_plate

    cache = CropCache(tmp_path / "crops", 2**30)
    cs = load_crop_set(plate_dir, 32, geometry=EDGE32, crops_per_well=4, cache=cache)
    assert isinstance(cs.crops, np.memmap) and not cs.crops.flags.writeable
    plate = load_plate(plate_dir)
    wells = sorted(set(cs.wells), key=list(cs.wells).index)
    expected, ws = _cut_wells(plate, plate_cropping(plate, EDGE32), wells, 32, 4)
    np.testing.assert_array_equal(cs.crops, expected)                 # exactly the crops scoring cuts
    np.testing.assert_array_equal(cs.wells, ws)
    assert len(cs.labels) == 240 and sorted(np.bincount(cs.labels).tolist()) == [40] * 6

    stamps = _file_stamps(cache)
    again = load_crop_set(plate_dir, 32, geometry=EDGE32, crops_per_well=4, cache=cache)
    assert _file_stamps(cache) == stamps and len(stamps) == 1         # read, not cut again
    np.testing.assert_array_equal(again.crops, cs.crops)
    assert again.fingerprint == cs.fingerprint

    load_crop_set(plate_dir, 32, geometry=CropGeometry("tiles", 64), crops_per_well=4, cache=cache)
    load_crop_set(plate_dir, 32, geometry=EDGE32, crops_per_well=2, cache=cache)
    assert len(cache.entries()) == 3                                   # a geometry / crop count is an entry
    meta = json.loads((cache.entries()[-1] / "meta.json").read_text())
    assert meta["crops_per_well"] == 2 and meta["shape"] == [120, 32, 32, 3]

    field = plate.files_of(plate.fields[0])[0]                         # a changed file: cut again
    os.utime(field, ns=(field.stat().st_atime_ns, field.stat().st_mtime_ns + 10**9))
    load_crop_set(plate_dir, 32, geometry=EDGE32, crops_per_well=4, cache=cache)
    assert len(cache.entries()) == 4


def _chunks(n: int, per: int = 500, edge: int = 64):
    """Crop i is filled with i % 251; its well is W<i // 10>."""
    for a in range(0, n, per):
        idx = np.arange(a, min(n, a + per))
        crops = np.broadcast_to((idx % 251).astype(np.uint8)[:, None, None, None], (len(idx), edge, edge, 3))
        yield crops.copy(), np.asarray([f"W{i // 10}" for i in idx])


def _labels(n: int) -> dict[str, int]:
    return {f"W{w}": w % 6 for w in range(n // 10 + 1)}


def test_the_cache_keeps_to_its_size_dropping_the_least_recently_used(tmp_path):
    one = 100 * 64 * 64 * 3
    cache = CropCache(tmp_path, max_bytes=int(2.5 * one))
    for name in ("a", "b", "c"):
        cache.write(name, "k", _chunks(100), _labels(100), {})
    assert [d.name for d in cache.entries()] == ["b-k", "c-k"]
    assert cache.lookup("a", "k") is None and cache.lookup("c", "k") is not None   # oldest went
    assert cache.nbytes() <= 2.5 * one
    big = CropCache(tmp_path / "small", max_bytes=1)
    entry = big.write("x", "k", _chunks(50), _labels(50), {})
    assert entry.crops.shape == (50, 64, 64, 3)                       # the entry just written stays


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    cache = CropCache(tmp_path, 2**30)

    def broken():
        yield from _chunks(100, per=50)
        raise NeuroRGError("field B03 cannot be read")

    with pytest.raises(NeuroRGError, match="B03"):
        cache.write("p", "k", broken(), _labels(100), {})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(NeuroRGError, match="expected more than 0"):
        CropCache(tmp_path, 0)


def test_loader_reads_batches_in_the_order_asked_whatever_the_threads(tmp_path):
    cache = CropCache(tmp_path, 2**30)
    a = cache.write("a", "k", _chunks(70, edge=8), _labels(70), {})
    b = cache.write("b", "k", _chunks(50, edge=8), _labels(50), {})
    source = CropSource([(a.crops, a.labels), (b.crops, b.labels)])
    assert len(source) == 120 and source.crop_shape == (8, 8, 3)
    order = np.random.default_rng(0).permutation(120)
    expected = np.concatenate([np.asarray(a.crops), np.asarray(b.crops)])[order]
    for workers in (1, 3):
        got = list(BatchLoader(source, 32, workers=workers, prefetch=2).batches(order))
        assert [len(x) for x, _ in got] == [32, 32, 32, 24]
        np.testing.assert_array_equal(np.concatenate([x for x, _ in got]), expected)
        np.testing.assert_array_equal(np.concatenate([y for _, y in got]),
                                      np.concatenate([a.labels, b.labels])[order])
    assert BatchLoader(source, 32, prefetch=2).buffer_bytes == 3 * 32 * 8 * 8 * 3


def test_loader_transforms_batches_ahead_of_the_caller_within_its_buffer(tmp_path):
    """With a transform (the augmentation on the loader) the threads transform the next
    ``prefetch`` batches while the caller still holds the first, and no more than those; the
    batches come back transformed, in order, numbered from ``first``."""
    import threading

    entry = CropCache(tmp_path, 2**30).write("a", "k", _chunks(100, edge=8), _labels(100), {})
    source = CropSource([(entry.crops, entry.labels)])
    prefetch = 3
    called: list[int] = []
    lock, ahead = threading.Lock(), threading.Event()

    def transform(crops: np.ndarray, number: int) -> np.ndarray:
        with lock:
            called.append(number)
            if len(called) == prefetch + 1:
                ahead.set()
        return crops.astype(np.float32) + 1000.0 * number

    loader = BatchLoader(source, 10, workers=2, prefetch=prefetch, transform=transform)
    order = np.arange(100)
    gen = loader.batches(order, first=20)
    x0, _ = next(gen)
    assert ahead.wait(60), f"the loader did not transform ahead of the caller: {called}"
    assert sorted(called) == [20, 21, 22, 23]            # batch 20 held, 21-23 ready, 24 not started
    rest = list(gen)
    got = [x0] + [x for x, _ in rest]
    assert all(x.dtype == np.float32 for x in got) and len(got) == 10
    for k, x in enumerate(got):
        np.testing.assert_array_equal(x, np.asarray(entry.crops[10 * k:10 * k + 10], np.float32) + 1000.0 * (20 + k))
    assert loader.buffer_bytes == (prefetch + 1) * 10 * 8 * 8 * 3 * 4      # float32 batches


LIMITED = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from neurorg_core.cropcache import BatchLoader, CropCache, CropSource

    cap = int(sys.argv[2])
    vm_data = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmData"))
    resource.setrlimit(resource.RLIMIT_DATA, (vm_data + cap, vm_data + cap))
    entry = CropCache(sys.argv[1], 2**40).lookup("big", "k")
    try:
        np.array(entry.crops)                      # the whole dataset does not fit
        print("whole: loaded")
    except MemoryError:
        print("whole: refused")
    loader = BatchLoader(CropSource([(entry.crops, entry.labels)]), 256, workers=2, prefetch=4)
    order = np.random.default_rng(1).permutation(len(entry.labels))
    pixel_sum = label_sum = n = 0
    for x, y in loader.batches(order):
        pixel_sum += int(x[:, 5, 7, 2].astype(np.int64).sum())
        label_sum += int(y.sum())
        n += len(x)
    print("streamed", n, pixel_sum, label_sum, loader.buffer_bytes)
""")


def test_a_dataset_bigger_than_the_memory_allowed_streams_through_the_loader(tmp_path):
    """A 221 MB cache entry read by a process whose heap may grow by 96 MB at most (RLIMIT_DATA:
    the memory map of the cache is not counted, what is copied out of it is)."""
    n = 18_000                                                  # 18,000 x 64 x 64 x 3 = 221 MB
    cap = 96 * 2**20
    entry = CropCache(tmp_path, 2**40).write("big", "k", _chunks(n), _labels(n), {})
    assert entry.nbytes > 2 * cap
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OPENBLAS_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    out = subprocess.run([sys.executable, "-c", LIMITED, str(tmp_path), str(cap)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")
    assert lines[0] == "whole: refused"                          # the cap is real
    _, count, pixel_sum, label_sum, buffer = lines[1].split()
    assert int(count) == n
    assert int(pixel_sum) == int((np.arange(n) % 251).sum())     # every crop came through, once
    assert int(label_sum) == int(sum((i // 10) % 6 for i in range(n)))
    assert int(buffer) == 5 * 256 * 64 * 64 * 3 < cap


LIMITED_SPLIT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from neurorg_core.cropcache import BatchLoader, CropCache, CropSource
    from neurorg_core.cropsets import CropSet

    cap = int(sys.argv[2])
    vm_data = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmData"))
    resource.setrlimit(resource.RLIMIT_DATA, (vm_data + cap, vm_data + cap))
    entry = CropCache(sys.argv[1], 2**40).lookup("big", "k")
    whole = CropSet("big", "f", sys.argv[1], entry.crops, entry.labels, entry.wells)
    train = whole.subset(np.char.endswith(entry.wells.astype(str), "3") == False)   # wells W..3 held out
    loader = BatchLoader(CropSource([(train.crops, train.labels)]), 256, workers=2, prefetch=4)
    order = np.random.default_rng(1).permutation(len(train.labels))
    pixel_sum = n = 0
    for x, y in loader.batches(order):
        pixel_sum += int(x[:, 5, 7, 2].astype(np.int64).sum())
        n += len(x)
    print("streamed", n, pixel_sum)
""")


def test_one_plate_split_into_training_and_validation_wells_still_streams(tmp_path):
    """A single plate's training wells (``CropSet.subset``, as ``train.split_wells`` takes them) read
    from a 221 MB cache entry by a process whose heap may grow by 96 MB at most: no copy of the rows."""
    n = 18_000
    cap = 96 * 2**20
    CropCache(tmp_path, 2**40).write("big", "k", _chunks(n), _labels(n), {})
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OPENBLAS_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    out = subprocess.run([sys.executable, "-c", LIMITED_SPLIT, str(tmp_path), str(cap)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    kept = [i for i in range(n) if not str(i // 10).endswith("3")]
    assert out.stdout.split() == ["streamed", str(len(kept)), str(sum(i % 251 for i in kept))]
    assert 0.8 * n < len(kept) < n
