"""A campaign's throughput: N synthetic plates scored serially (``run_plate`` one by one, one process)
and on a local Ray with W workers (``campaign.run_campaign``), each into a fresh result store.

Prints both throughputs in crops/s (crops per model member; the demo ensemble has 4), Ray's start-up
(``ray.init`` and the worker actors, not counted in the Ray throughput) separately, their ratio,
and the largest difference between the two stores' well tables (expected 0: same predictions).

The serial side is given its best case: one ``PredictorCache`` for all plates (the models are
loaded once, as the app does), so the ratio is Ray's cost against the fastest single process.

Usage::

    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/campaign.py [--plates 8] [--workers 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout  # noqa: E402

from neurorg_core.campaign import plates_from_paths, run_campaign  # noqa: E402
from neurorg_core.config import REPO_ROOT  # noqa: E402
from neurorg_core.inference import PredictorCache  # noqa: E402
from neurorg_core.model import Bundle, load_bundle  # noqa: E402
from neurorg_core.pipeline import ScoreOptions, run_plate  # noqa: E402
from neurorg_core.platemap import load_plate_map  # noqa: E402
from neurorg_core.plates import load_plate  # noqa: E402
from neurorg_core.store import ResultStore  # noqa: E402
from neurorg_core.synth import write_synthetic_plates  # noqa: E402


def serial(plates: list[Path], bundle: Bundle, db: Path, options: ScoreOptions) -> tuple[float, int]:
    """Seconds and crops for ``run_plate`` over the plates, one after the other."""
    predictors = PredictorCache()
    crops = 0
    t0 = time.perf_counter()
    with ResultStore(db) as store:
        for p in plates:
            with load_plate(p) as plate:
                r = run_plate(plate, load_plate_map(p / "platemap.csv"), bundle, store, name=p.name,
                              options=options, predictors=predictors)
            crops += r.n_crops
    return time.perf_counter() - t0, crops


def on_ray(plates: list[Path], bundle: Bundle, db: Path, options: ScoreOptions, workers: int
           ) -> tuple[float, float, float, float]:
    """(ray.init seconds, worker start seconds, scoring seconds, writer seconds) of the campaign on a
    local Ray."""
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("NEURORG_", "TF_"))}})
    init_s = time.perf_counter() - t0
    try:
        with ResultStore(db) as store:
            result = run_campaign(plates_from_paths(plates), bundle, store, options=options, workers=workers)
    finally:
        ray.shutdown()
    if result.failed:
        raise SystemExit(f"plates failed: {result.failed}")
    return init_s, result.ray_startup_s, result.elapsed_s - result.ray_startup_s, result.writer_s


def max_diff(a: Path, b: Path, names: list[str]) -> float:
    worst = 0.0
    with ResultStore(a, read_only=True) as x, ResultStore(b, read_only=True) as y:
        for n in names:
            p, q = x.load_well_scores(n), y.load_well_scores(n)
            num = p.select_dtypes("number").columns
            worst = max(worst, float(np.nanmax(np.abs(p[num].to_numpy(float) - q[num].to_numpy(float)))))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO_ROOT / "data" / "models" / "demo" / "ensemble"))
    ap.add_argument("--plates", type=int, default=8)
    ap.add_argument("--wells", type=int, choices=(96, 384), default=96)
    ap.add_argument("--fields", type=int, default=4)
    ap.add_argument("--size", type=int, default=256, help="field edge, pixels")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="serial and Ray alternately, this many times each")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    bundle = load_bundle(args.model, kind="ensemble")
    options = ScoreOptions()
    with tempfile.TemporaryDirectory(prefix="neurorg-campaign-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        plates = write_synthetic_plates(root / "plates", seed=31, n_plates=args.plates, n_wells=args.wells,
                                        n_fields=args.fields, size=args.size, kind="screen", n_workers=2)
        print(f"rendered {args.plates} plates ({args.wells} wells, {args.fields} x {args.size} px fields) "
              f"in {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.2f}")
        names = [p.name for p in plates]
        for k in range(args.repeats):
            # each store in its own folder: the campaign's Parquet files (next to the store) are not shared
            s_db, r_db = root / f"serial{k}" / "s.duckdb", root / f"ray{k}" / "r.duckdb"
            s_time, crops = serial(plates, bundle, s_db, options)
            init_s, actors_s, r_time, writer_s = on_ray(plates, bundle, r_db, options, args.workers)
            s_rate, r_rate = crops / s_time, crops / r_time
            print(f"[{k + 1}] serial run_plate: {s_time:.1f} s, {s_rate:.0f} crops/s ({crops} crops x "
                  f"{len(bundle.members)} members)")
            print(f"[{k + 1}] Ray, {args.workers} workers: {r_time:.1f} s, {r_rate:.0f} crops/s; start-up "
                  f"{init_s + actors_s:.1f} s (ray.init {init_s:.1f} s, workers {actors_s:.1f} s), not counted; "
                  f"the writer merged for {writer_s:.1f} s ({writer_s / len(plates):.2f} s per plate)")
            print(f"[{k + 1}] Ray / serial throughput: {100 * r_rate / s_rate:.1f} %; with start-up "
                  f"{100 * crops / (r_time + init_s + actors_s) / s_rate:.1f} %; well tables differ by at most "
                  f"{max_diff(s_db, r_db, names):.2e}; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
