"""How saving a run grows with the store.

Scores the demo plate once (96 wells, 4 fields of 256 px, ImageXpress files), then stores that
inference again and again with ``pipeline.save_plate`` into one result store, each time under a new
plate name and new field hashes (so every save adds its 1,408 prediction rows, as a new plate would).
Every 50 plates it prints the median ``save_plate`` time and the median DETACH (DuckDB's checkpoint,
which every write operation ends with) over the last 10 saves, and the file's size.

Usage::

    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/store_growth.py [--plates 600]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout  # noqa: E402

from neurorg_core import pipeline  # noqa: E402
from neurorg_core.config import load_config  # noqa: E402
from neurorg_core.model import load_bundle  # noqa: E402
from neurorg_core.plate_inference import infer_plate  # noqa: E402
from neurorg_core.platemap import load_plate_map  # noqa: E402
from neurorg_core.plates import load_plate  # noqa: E402
from neurorg_core.prediction_keys import CachedKeys  # noqa: E402
from neurorg_core.store import ResultStore  # noqa: E402
from neurorg_core.synth import write_synthetic_plates  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plates", type=int, default=600, help="plates to store")
    p.add_argument("--model", help="bundle folder (default: the demo ensemble)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    bundle = load_bundle(Path(args.model) if args.model else load_config().model_dir / "ensemble")
    detaches: list[float] = []
    detach = ResultStore._detach

    def timed_detach(self: ResultStore) -> None:
        t0 = time.perf_counter()
        detach(self)
        detaches.append(time.perf_counter() - t0)

    ResultStore._detach = timed_detach   # type: ignore[method-assign]
    with tempfile.TemporaryDirectory(prefix="neurorg-growth-") as tmp:
        work = Path(tmp)
        folder = write_synthetic_plates(work / "plates", seed=0, n_wells=96, n_fields=4, size=256,
                                        layout="imagexpress", kind="screen")[0]
        inference = infer_plate(load_plate(folder), load_plate_map(folder / "platemap.csv"), bundle,
                                cached_keys=CachedKeys())
        db = work / "growth.duckdb"
        store = ResultStore(db)
        saves: list[tuple[float, float]] = []
        t_start = time.time()
        for i in range(args.plates):
            rows = tuple(dataclasses.replace(r, field_hash=f"{i:05d}{r.field_hash[5:]}") for r in inference.uncommitted)
            plate = dataclasses.replace(inference, name=f"p{i}", uncommitted=rows)
            detaches.clear()
            t0 = time.perf_counter()
            pipeline.save_plate(store, plate, bundle, version="bench")
            saves.append((time.perf_counter() - t0, detaches[-1]))
            if (i + 1) % 50 == 0:
                last = saves[-10:]
                print(f"{i + 1:5d} plates stored: save_plate {1000 * statistics.median(s for s, _ in last):5.0f} ms, "
                      f"of it DETACH {1000 * statistics.median(d for _, d in last):4.0f} ms; file "
                      f"{db.stat().st_size / 1e6:6.1f} MB ({time.time() - t_start:.0f} s)", flush=True)
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
