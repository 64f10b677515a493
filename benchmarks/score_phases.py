"""Where the time of ``run_plate`` goes: timers around each step of scoring one plate.

Wraps the pipeline's steps (plate-map checks, hashing and cropping on the reader thread, each
inference call, cache writes, scoring, the store write) with wall-clock timers and scores a
96-well synthetic screen into a fresh store ``--runs`` times. Reader-thread steps run while
inference runs, so their times overlap the inference calls'; so does the plate-map match
(``_match_plate_map``, on a helper thread) and ``code_version`` (git, beside inference).

Usage::

    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/score_phases.py [--model data/models/demo/ensemble]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout  # noqa: E402

import neurorg_core.inference as inference  # noqa: E402
import neurorg_core.pipeline as pipeline  # noqa: E402
import neurorg_core.plate_inference as plate_inference  # noqa: E402
import neurorg_core.store as store  # noqa: E402
from neurorg_core.config import load_config  # noqa: E402
from neurorg_core.model import load_bundle  # noqa: E402
from neurorg_core.platemap import load_plate_map  # noqa: E402
from neurorg_core.plates import load_plate  # noqa: E402
from neurorg_core.synth import write_synthetic_plates  # noqa: E402

TIMES: dict[str, list[float]] = {}


def timed(owner: object, name: str, label: str) -> None:
    """Replace ``owner.name`` by a wrapper adding each call's seconds to ``TIMES[label]`` (nothing
    when ``owner`` has no such name: an older checkout timed with this script)."""
    if not hasattr(owner, name):
        return
    f = getattr(owner, name)

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return f(*args, **kwargs)
        finally:
            TIMES.setdefault(label, []).append(time.perf_counter() - t0)

    setattr(owner, name, wrapper)


MARKS: dict[str, float] = {}


def mark_inference_span() -> None:
    """Note the first ``Predictor.submit`` and the last ``Pending.result`` of a run (wall clock):
    before the first, inference has not started; after the last, only the save is left."""
    submit, result = inference.Predictor.submit, inference.Pending.result

    def first_submit(self, crops):
        MARKS.setdefault("first_submit", time.perf_counter())
        return submit(self, crops)

    def last_result(self):
        out = result(self)
        MARKS["last_result"] = time.perf_counter()
        return out

    inference.Predictor.submit = first_submit
    inference.Pending.result = last_result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="bundle folder (default: the demo ensemble)")
    p.add_argument("--runs", type=int, default=2)
    args = p.parse_args()
    # the run's named steps (plate_inference: steps 1-3; pipeline: steps 4-5), and the per-field
    # work inside them (on the reader thread while inference runs); each module's own calls are timed
    steps = {plate_inference: ("_plan", "plate_map_for", "_match_plate_map", "plate_cropping", "hash_field",
                               "field_channel_stats", "crops_from_field"),
             pipeline: ("infer_plate", "_all_crop_probs", "_channel_scores", "score_crop_probs", "fit_stats",
                        "_check_fit", "code_version", "save_plate")}
    for module, names in steps.items():
        for name in names:
            timed(module, name, f"{module.__name__.split('.')[-1]}.{name}")
    mark_inference_span()
    timed(inference.Pending, "result", "inference: waiting for results")
    for name in ("cached_keys", "put_predictions", "save_run"):
        timed(store.ResultStore, name, f"store.{name}")

    bundle = load_bundle(Path(args.model) if args.model else load_config().model_dir / "ensemble")
    with tempfile.TemporaryDirectory(prefix="neurorg-phases-") as tmp:
        work = Path(tmp)
        folder = write_synthetic_plates(work / "plates", seed=0, n_wells=96, n_fields=4, size=256,
                                        layout="imagexpress", kind="screen")[0]
        plate_map = load_plate_map(folder / "platemap.csv")
        predictors = inference.PredictorCache()
        predictors.predictor(bundle)  # built (and members converted) before timing, kept for the runs
        for run in range(args.runs):
            TIMES.clear()
            with store.ResultStore(work / f"run{run}.duckdb") as st:
                plate = load_plate(folder)
                MARKS.clear()
                t0 = time.perf_counter()
                result = pipeline.run_plate(plate, plate_map, bundle, st, name="bench", predictors=predictors)
                t1 = time.perf_counter()
                total = t1 - t0
            before, after = MARKS["first_submit"] - t0, t1 - MARKS["last_result"]
            print(f"run {run + 1}: {result.n_crops} crops in {total:.2f} s = {before:.3f} s before the first "
                  f"inference batch + {total - before - after:.2f} s inference + {after:.3f} s after its last result")
            for label, seconds in sorted(TIMES.items(), key=lambda kv: -sum(kv[1])):
                print(f"    {label:42s} {len(seconds):5d} calls {sum(seconds):7.3f} s")
            waited = sum(TIMES.get("inference: waiting for results", []))
            serial = sum(sum(TIMES.get(k, [])) for k in ("plate_inference._plan", "pipeline.save_plate"))
            print(f"    serial steps (plan + save_plate) {serial:.3f} s = {100 * serial / max(waited, 1e-9):.1f} % "
                  f"of the time spent waiting for inference ({waited:.3f} s); goal < 10 %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
