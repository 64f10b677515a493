"""Milliseconds to open a plate: listing it from scratch, checking a cached plate is still current,
and the app's cached ``resources.plate`` call (which checks it on every use).

Writes a 384-well ImageXpress-style plate (4 fields x 3 channels = 4,608 small TIFFs, in one
``TimePoint_1`` folder as MetaXpress writes them) and the same plate as a zip, then times:

- ``load_plate(folder)``: list, detect the layout, read the first header (what every uncached
  open costs);
- ``Plate.is_current()``: the freshness check a cached plate gets on each use (stat of the listed
  folders and of the first field's files, or of the zip);
- ``resources.plate(path)`` on a cache hit (folder and zip), as the app's pages call it.

Run from the repo root: ``python -m benchmarks.open_plate [--repeats 20]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import tifffile

from neurorg_core.plates import load_plate


def _write_plate(folder: Path) -> Path:
    images = folder / "TimePoint_1"
    images.mkdir(parents=True)
    img = np.zeros((64, 64), np.uint16)
    for r in "ABCDEFGHIJKLMNOP":
        for c in range(1, 25):
            for s in range(1, 5):
                for w in (1, 2, 3):
                    tifffile.imwrite(images / f"bench_{r}{c:02d}_s{s}_w{w}.tif", img)
    return folder


def _ms(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = _write_plate(root / "plate")
        zpath = root / "plate.zip"
        with zipfile.ZipFile(zpath, "w") as zf:
            for p in sorted((folder / "TimePoint_1").iterdir()):
                zf.write(p, f"plate/TimePoint_1/{p.name}")
        os.environ["NEURORG_DATA_DIR"] = str(root / "data")

        from dashboard import resources   # after NEURORG_DATA_DIR: the extraction goes there

        plate = load_plate(folder)
        print(f"plate: {len(plate.wells())} wells, {len(plate.fields)} fields, "
              f"{3 * len(plate.fields)} files")
        rows = [
            ("load_plate(folder), uncached", lambda: load_plate(folder)),
            ("Plate.is_current(), folder", plate.is_current),
        ]
        zplate = load_plate(zpath, work_dir=root / "work")
        rows.append(("Plate.is_current(), zip", zplate.is_current))
        resources.plate(folder)
        resources.plate(zpath)
        rows.append(("resources.plate(folder), cache hit", lambda: resources.plate(folder)))
        rows.append(("resources.plate(zip), cache hit", lambda: resources.plate(zpath)))
        for name, fn in rows:
            median, best = _ms(fn, args.repeats)
            print(f"{name:40s} median {median:8.3f} ms   best {best:8.3f} ms")


if __name__ == "__main__":
    main()
