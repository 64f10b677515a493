"""What the result store's "open the file only for one operation" rule costs.

Scores the app's demo plate (96-well synthetic screen, 4 fields of 256 px, the shipped ensemble)
into a fresh store, then times, each many times: one read operation on its own (the file is
attached and detached around it), the same read inside a held ``session()`` (no open), an open +
detach with nothing read, ``load_plate_results`` on the plate (what the app does on first view),
and committing one batch of 64 fields' predictions (what ``run_plate`` does while scoring).

Run from the repo root: ``python -m benchmarks.store_open [--repeats 30]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from neurorg_core.config import load_config
from neurorg_core.model import load_bundle
from neurorg_core.pipeline import run_plate
from neurorg_core.results import load_plate_results
from neurorg_core.platemap import load_plate_map
from neurorg_core.plates import load_plate
from neurorg_core.store import PredictionRow, ResultStore
from neurorg_core.synth import write_synthetic_plates

PLATE = "DEMO synthetic screen"


def _ms(fn, repeats: int) -> str:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return (f"median {1000 * statistics.median(times):6.1f} ms  min {1000 * min(times):6.1f}  "
            f"max {1000 * max(times):6.1f}  ({repeats}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="neurorg_store_bench_"))
    folder = write_synthetic_plates(tmp / "plates", seed=201, n_wells=96, n_fields=4, size=256,
                                    kind="screen")[0]
    bundle = load_bundle(load_config().model_dir / "ensemble", kind="ensemble")
    store = ResultStore(tmp / "store.duckdb")
    run_plate(load_plate(folder), load_plate_map(folder / "platemap.csv"), bundle, store, name=PLATE)
    size = (tmp / "store.duckdb").stat().st_size
    print(f"store: 1 plate, {store.count_predictions()} cached predictions, {size / 1e6:.1f} MB")
    n = args.repeats
    print(f"ResultStore(path) (connect + check schema) {_ms(lambda: ResultStore(tmp / 'store.duckdb'), 5)}")
    print(f"attach + detach, nothing read             {_ms(_open_close(store), n)}")
    print(f"list_plates, file attached for it         {_ms(store.list_plates, n)}")
    with store.session():
        print(f"list_plates inside a held session()       {_ms(store.list_plates, n)}")
    print(f"load_well_scores, file attached for it    {_ms(lambda: store.load_well_scores(PLATE), n)}")
    print(f"load_plate_results (5 reads, own opens)   {_ms(lambda: load_plate_results(store, PLATE), max(5, n // 3))}")
    with store.session():
        print(f"load_plate_results inside one session()   {_ms(lambda: load_plate_results(store, PLATE), max(5, n // 3))}")
    rng = np.random.default_rng(0)
    batch = iter(range(10 ** 6))

    def put() -> None:
        k = next(batch)
        store.put_predictions([PredictionRow(f"bench-{k}-{i}", f"m{i % 4}", "k", rng.random((15, 6), np.float32))
                               for i in range(64 * 4)])

    print(f"put_predictions, 64 fields x 4 members    {_ms(put, max(5, n // 3))}")


def _open_close(store: ResultStore):
    def run() -> None:
        with store.session():
            pass
    return run


if __name__ == "__main__":
    main()
