"""What the prediction cache's snapshot costs at the head of every run, as the store grows.

Every run starts with ``ResultStore.cached_keys`` (the cached (field hash, member id, crop key) of
its members, which each field is tested against). This script grows one store to 0, 50 and 200
plates' worth of predictions (synthetic rows: the demo ensemble's member ids and the crop keys of
a real run of a 96-well synthetic screen, with new field hashes per plate) and, at each size,
times side by side in one process:

- ``cached_keys``: the old snapshot (a Python ``set`` of tuples, computed inline here with the
  query the store ran before) and the new one (``CachedKeys``, fingerprints in numpy);
- the head of a run: ``run_plate`` from its call until the first inference batch is submitted
  (the run is stopped there, so nothing is stored and the plate stays uncached); "old" swaps the
  old snapshot in, with the ``frozenset`` copy ``infer_plate`` made of it;
- a membership test (``key in snapshot``) per key, and the pickled size of each snapshot (what a
  campaign sends to each Ray worker).

Medians of ``--reps`` repetitions, old and new alternating.

Usage::

    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/cache_lookup.py [--reps 5] [--sizes 0 50 200]
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout  # noqa: E402

import neurorg_core.inference as inference  # noqa: E402
import neurorg_core.pipeline as pipeline  # noqa: E402
from neurorg_core.config import load_config  # noqa: E402
from neurorg_core.model import load_bundle  # noqa: E402
from neurorg_core.platemap import load_plate_map  # noqa: E402
from neurorg_core.plates import load_plate  # noqa: E402
from neurorg_core.prediction_keys import CachedKeys  # noqa: E402
from neurorg_core.store import PredictionRow, ResultStore  # noqa: E402
from neurorg_core.synth import write_synthetic_plates  # noqa: E402


def old_cached_keys(store: ResultStore, model_ids: Sequence[str]) -> set[tuple[str, str, str]]:
    """The snapshot as the store made it before ``CachedKeys``: every key as a tuple in a set."""
    if not model_ids:
        return set()
    ids = pa.table({"m": pa.array(list(model_ids), pa.string())})
    with store._cursor() as cur:
        cur.register("ids", ids)
        rows = cur.execute('SELECT "Field_Hash", "Model_ID", crop_key FROM predictions '
                           'WHERE "Model_ID" IN (SELECT m FROM ids)').fetchall()
    return {(h, m, k) for h, m, k in rows}


class _HeadReached(Exception):
    """Raised at the first inference batch: the head of the run is over."""


def time_head(variant: str, plate_dir: Path, bundle, store: ResultStore, predictors) -> float:
    """Seconds from ``run_plate``'s call to its first ``Predictor.submit`` (the run stops there)."""
    submit = inference.Predictor.submit
    snapshot = ResultStore.cached_keys
    reached: list[float] = []

    def first_submit(self, crops):
        reached.append(time.perf_counter())
        raise _HeadReached

    inference.Predictor.submit = first_submit
    if variant == "old":   # the old head: the set of tuples, then infer_plate's frozenset copy of it
        ResultStore.cached_keys = lambda self, ids: frozenset(old_cached_keys(self, ids))
    try:
        plate = load_plate(plate_dir)
        plate_map = load_plate_map(plate_dir / "platemap.csv")
        t0 = time.perf_counter()
        try:
            pipeline.run_plate(plate, plate_map, bundle, store, name="bench", predictors=predictors)
        except _HeadReached:
            pass
        return reached[0] - t0
    finally:
        inference.Predictor.submit = submit
        ResultStore.cached_keys = snapshot


def median_ms(f: Callable[[], object], reps: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times), out


def lookup_us(snapshot, keys: Sequence[tuple[str, str, str]]) -> float:
    t0 = time.perf_counter()
    hits = sum(k in snapshot for k in keys)
    assert hits == len(keys), (hits, len(keys))
    return 1e6 * (time.perf_counter() - t0) / len(keys)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="bundle folder (default: the demo ensemble)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--sizes", type=int, nargs="+", default=[0, 50, 200], help="plates' worth of predictions")
    args = p.parse_args()
    bundle = load_bundle(Path(args.model) if args.model else load_config().model_dir / "ensemble")
    ids = [m.id for m in bundle.members]
    with tempfile.TemporaryDirectory(prefix="neurorg-cache-lookup-") as tmp:
        work = Path(tmp)
        plate_dir = write_synthetic_plates(work / "plates", seed=0, n_wells=96, n_fields=4, size=256,
                                           layout="imagexpress", kind="screen")[0]
        predictors = inference.PredictorCache()
        predictors.predictor(bundle)   # built before timing, kept for the runs
        # one real inference of the plate: its rows are the template of every synthetic plate
        seed = pipeline.infer_plate(load_plate(plate_dir), load_plate_map(plate_dir / "platemap.csv"), bundle,
                                    cached_keys=CachedKeys(), name="seed", predictors=predictors)
        template = seed.uncommitted
        print(f"# one plate = {len(template)} predictions ({len(seed.fields)} fields x {len(ids)} members; "
              f"crop keys {sorted({r.crop_key for r in template})})")
        print(f"# medians of {args.reps} repetitions; old and new alternate\n")
        print("| plates in store | keys | cached_keys old (set) | new (CachedKeys) | head of a run old | new "
              "| `in` per key old | new | pickled old | new |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        store = ResultStore(work / "store.duckdb")
        held = 0
        for size in sorted(args.sizes):
            while held < size:   # grow the store in batches of 10 plates
                batch = min(10, size - held)
                rows: list[PredictionRow] = []
                for _ in range(batch):
                    tag = uuid.uuid4().hex[:8]
                    rows += [dataclasses.replace(r, field_hash=tag + r.field_hash[8:]) for r in template]
                store.put_predictions(rows)
                held += batch
            old_ms, old = median_ms(lambda: old_cached_keys(store, ids), args.reps)
            new_ms, new = median_ms(lambda: store.cached_keys(ids), args.reps)
            assert len(old) == len(new)
            heads: dict[str, list[float]] = {"old": [], "new": []}
            for _ in range(args.reps):
                for variant in ("old", "new"):
                    heads[variant].append(time_head(variant, plate_dir, bundle, store, predictors))
            head_old, head_new = (1000 * statistics.median(heads[v]) for v in ("old", "new"))
            probe = sorted(old)[:: max(1, len(old) // 20_000)] if old else []
            per_old = f"{lookup_us(frozenset(old), probe):.2f} us" if probe else "-"
            per_new = f"{lookup_us(new, probe):.2f} us" if probe else "-"
            size_old = len(pickle.dumps(frozenset(old))) / 1e6
            size_new = len(pickle.dumps(new)) / 1e6
            print(f"| {size} | {len(new):,} | {old_ms:.0f} ms | {new_ms:.0f} ms | {head_old:.0f} ms "
                  f"| {head_new:.0f} ms | {per_old} | {per_new} | {size_old:.1f} MB | {size_new:.1f} MB |", flush=True)
        store.close()
        predictors.clear()
    return 0


if __name__ == "__main__":
    sys.exit(main())
