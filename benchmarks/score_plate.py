"""Scoring throughput: raw inference vs end-to-end ``run_plate``, and re-opening a scored plate.

Prints
  (a) the fast inference path's raw crops/s (``inference.Predictor``, LiteRT) on the bundle;
  (b) end-to-end scoring of a 96-well (or --wells 384) synthetic screen at 15 crops/well into a fresh
      result store, in crops/s, and its ratio to (a) (goal >= 80 %). With ``--rounds N``, (a) and
      (b) alternate N times (so both see the same machine) and the medians are printed. (b) also
      gives the process's CPU seconds beside the inference worker threads (reading, hashing,
      cropping, cache writes, scoring, the store: the work that competes with inference for the
      cores), a figure that a busy machine changes much less than the wall-clock ratio;
  (c) seconds to re-open the scored plate from the store (open + ``load_plate_results``; goal < 1 s),
      and the time of a fully cached re-score (no inference).

Usage::

    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/score_plate.py [--model data/models/demo/ensemble] [--rounds 5]
    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/score_plate.py --tiny   # no demo bundle: a random
                                                                     # efficientnet_tiny bundle
    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/score_plate.py --tiny --tiny-input 32   # inference ~4x
                                                # cheaper per crop: the fixed steps weigh as on a faster CPU
    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/score_plate.py --tiny --tiny-input 32 --inference-threads 1
        # and one inference thread: a core is left for reading and the store, as on a machine with
        # more cores than the predictor's 2 worker threads
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout  # noqa: E402

from neurorg_core.config import load_config  # noqa: E402
from neurorg_core.inference import Predictor, PredictorCache  # noqa: E402
from neurorg_core.model import Bundle, build_model, load_bundle, save_bundle  # noqa: E402
from neurorg_core.pipeline import ScoreOptions, hash_field, run_plate  # noqa: E402
from neurorg_core.results import load_plate_results  # noqa: E402
from neurorg_core.platemap import load_plate_map  # noqa: E402
from neurorg_core.plates import load_plate  # noqa: E402
from neurorg_core.store import ResultStore  # noqa: E402
from neurorg_core.synth import write_synthetic_plates  # noqa: E402


def tiny_bundle(folder: Path, members: int = 4, input_size: int = 64) -> Bundle:
    """A random-weight efficientnet_tiny ensemble (for when the demo bundle is not there)."""
    import keras

    models = []
    for k in range(members):
        keras.utils.set_random_seed(k)
        models.append(build_model("efficientnet_tiny", input_size))
    return save_bundle(folder, models, [{"name": f"fold{k + 1}", "fold": k + 1} for k in range(members)],
                       kind="ensemble", arch="efficientnet_tiny", input_size=input_size,
                       extra={"crop_geometry": {"mode": "tiles", "crop_edge_px": 2 * input_size}})


class ThreadsPredictorCache(PredictorCache):
    """A ``PredictorCache`` whose LiteRT predictors run ``threads`` worker threads (the app's: 2)."""

    def __init__(self, threads: int) -> None:
        super().__init__()
        self.threads = threads

    def predictor(self, bundle: Bundle, backend="auto", precision="float32", **kwargs) -> Predictor:
        key = (backend, precision, bundle.id, self.threads)
        return self.get_or_make(key, lambda: Predictor(bundle, backend=backend, precision=precision,
                                                       threads=self.threads, **kwargs))


def raw_rate(bundle: Bundle, n_crops: int, predictor: Predictor | None = None) -> tuple[float, float]:
    """Crops per second through every member, crops already in memory (after a warm-up), all
    submitted at once in whole model batches: the best case, with no gap between calls; and the
    process's CPU seconds per crop meanwhile."""
    predictor = predictor if predictor is not None else Predictor(bundle)
    s = bundle.input_size
    crops = np.random.default_rng(0).random((n_crops, s, s, 3), dtype=np.float32)
    predictor.predict(crops[: predictor.batch_size * 2])  # warm-up
    c0, t0 = time.process_time(), time.perf_counter()
    step = 4 * predictor.batch_size
    for pending in [predictor.submit(crops[a:a + step]) for a in range(0, n_crops, step)]:
        pending.result()
    return n_crops / (time.perf_counter() - t0), (time.process_time() - c0) / n_crops


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def inference_threads_cpu() -> float:
    """CPU seconds the predictors' worker threads (``neurorg-litert-*``) have used so far, from
    /proc (Linux; nan elsewhere). The process's CPU minus theirs is the work done beside inference."""
    import threading

    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for t in threading.enumerate():
        if t.name.startswith("neurorg-litert") and t.native_id is not None:
            try:
                stat = Path(f"/proc/self/task/{t.native_id}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                return float("nan")
            total += (int(stat[11]) + int(stat[12])) / tick
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="bundle folder (default: the demo ensemble)")
    p.add_argument("--tiny", action="store_true", help="benchmark a random efficientnet_tiny bundle")
    p.add_argument("--tiny-input", type=int, default=64,
                   help="the --tiny bundle's input edge, px (32: ~4x less inference per crop, the same reading, "
                        "hashing and store work: how a CPU with ~4x faster inference, such as one with "
                        "AVX-512, sees the steps beside inference)")
    # the demo recipe (demo.DemoRecipe): 4 fields of 256 px per well
    p.add_argument("--size", type=int, default=256, help="field edge of the synthetic plate, pixels")
    p.add_argument("--fields", type=int, default=4, help="fields per well")
    p.add_argument("--wells", type=int, default=96, choices=(96, 384), help="plate format")
    p.add_argument("--layout", default="imagexpress", help="synthetic plate layout (imagexpress: 3 files per field)")
    p.add_argument("--raw-crops", type=int,
                   help="crops for (a) (default: as many as the plate has, so (a) and (b) time windows of "
                        "about the same length: this machine's speed drifts by +-25 %% within a minute)")
    p.add_argument("--rounds", type=int, default=1, help="alternate (a) and (b) this many times")
    p.add_argument("--inference-threads", type=int,
                   help="LiteRT worker threads for (a) and (b) (default: the app's 2); 1 on a 2-core machine "
                        "leaves a core to reading, hashing and the store, as on a machine with spare cores")
    p.add_argument("--switch-interval-ms", type=float,
                   help="sys.setswitchinterval for the run, ms (Python's default 5): how long a thread may "
                        "hold the GIL while another waits for it")
    p.add_argument("--no-header-reuse", action="store_true",
                   help="parse every TIFF header with tifffile (as for files with per-file metadata)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    print(f"GIL switch interval {1000 * sys.getswitchinterval():g} ms")
    if args.no_header_reuse:
        from neurorg_core import tiffreuse

        tiffreuse.TiffReader.GIVE_UP = 0

    with tempfile.TemporaryDirectory(prefix="neurorg-bench-") as tmp:
        work = Path(tmp)
        if args.tiny:
            bundle = tiny_bundle(work / "bundle", input_size=args.tiny_input)
        else:
            bundle = load_bundle(Path(args.model) if args.model else load_config().model_dir / "ensemble")
        print(f"bundle {bundle.id}: {bundle.card['architecture']}, {len(bundle.members)} members, "
              f"input {bundle.input_size} px")
        # what the app keeps between plates; built (and converted) untimed
        predictors = PredictorCache() if args.inference_threads is None else ThreadsPredictorCache(
            args.inference_threads)
        predictor = predictors.predictor(bundle)
        print(f"{predictor.threads} inference worker threads, {os.cpu_count()} CPUs")
        print(f"load average before: {load_average()}")

        folder = write_synthetic_plates(work / "plates", seed=0, n_wells=args.wells, n_fields=args.fields,
                                        size=args.size, layout=args.layout, kind="screen")[0]
        plate = load_plate(folder)
        plate_map = load_plate_map(folder / "platemap.csv")
        plate_crops = len(plate.wells()) * ScoreOptions().crops_per_well
        t0 = time.perf_counter()
        for _, pixels in plate.iter_fields():
            hash_field(pixels)
        read_s = time.perf_counter() - t0
        print(f"    reading + hashing the plate's {len(plate.fields)} fields alone: {read_s:.2f} s "
              f"(the CPU the reader thread takes from inference on this machine)")
        ratios, raws, e2es, besides = [], [], [], []
        for r in range(args.rounds):
            rate, raw_cpu = raw_rate(bundle, args.raw_crops or plate_crops, predictor)
            print(f"(a) raw inference: {rate:.1f} crops/s through {len(bundle.members)} members "
                  f"({rate * len(bundle.members):.1f} crop x member/s), CPU {1e3 * raw_cpu:.2f} ms per crop")
            db = work / f"bench{r}.duckdb"
            plate = load_plate(folder)   # fresh: no TIFF header remembered from the pass above
            n_files = sum(len(plate.files_of(ref)) for ref in plate.fields)
            with ResultStore(db) as store:
                c0, i0, t0 = time.process_time(), inference_threads_cpu(), time.perf_counter()
                result = run_plate(plate, plate_map, bundle, store, name="bench", predictors=predictors)
                elapsed = time.perf_counter() - t0   # the run is stored (committed)
                if hasattr(store, "release"):   # the checkpoint after the commit (an older checkout: inside)
                    store.release()
                released, cpu = time.perf_counter() - t0, time.process_time() - c0
                beside = cpu - (inference_threads_cpu() - i0)
            e2e = result.n_crops / elapsed
            ratios.append(100 * e2e / rate)
            raws.append(rate)
            e2es.append(e2e)
            besides.append(beside)
            print(f"(b) end to end: {result.n_wells} wells, {result.n_crops} crops in {elapsed:.2f} s = "
                  f"{e2e:.1f} crops/s, {ratios[-1]:.0f} % of raw (goal >= 80 %); file released at "
                  f"{released:.2f} s; CPU {cpu:.2f} s, of it "
                  f"{beside:.2f} s beside the inference threads; {plate.reused_headers} of {n_files} files "
                  f"read through a reused header; load {load_average()}")
        if args.rounds > 1:
            print(f"medians of {args.rounds} rounds: raw {statistics.median(raws):.0f} crops/s, end to end "
                  f"{statistics.median(e2es):.0f} crops/s, {statistics.median(ratios):.0f} % of raw "
                  f"(range {min(ratios):.0f}-{max(ratios):.0f} %); CPU beside the inference threads "
                  f"{statistics.median(besides):.2f} s (range {min(besides):.2f}-{max(besides):.2f})")

        t0 = time.perf_counter()
        with ResultStore(db, read_only=True) as store:
            store.load_well_scores("bench")
            t1 = time.perf_counter()
            res = load_plate_results(store, "bench")
        t2 = time.perf_counter()
        print(f"(c) re-open the scored plate: {t2 - t0:.3f} s in all = open + well table "
              f"{t1 - t0:.3f} s, then load_plate_results (store reads + QC, {len(res.treatments)} "
              f"treatment tests, {len(res.fits)} 4PL fits) {t2 - t1:.3f} s (goal < 1 s)")
        with ResultStore(db) as store:
            t0 = time.perf_counter()
            again = run_plate(load_plate(folder), plate_map, bundle, store, name="bench", predictors=predictors)
            cached = time.perf_counter() - t0
        print(f"    cached re-score: {cached:.2f} s, {again.cache_hits} fields from the cache, "
              f"{again.inferred_crops} crops inferred")
        print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
