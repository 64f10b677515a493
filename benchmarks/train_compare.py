"""Old vs new training loop on the demo recipe's folds, side by side: validation accuracy and time.

Each fold's member is trained twice on the same plates, folds, settings and seed: once by a
reference checkout's ``train.train_member`` (e.g. the commit before the crop cache and the
compiled loop: crops in memory, numpy augmentation, a ``train_on_batch`` loop) and once by this
checkout's. Each run is its own process (one after the other, so they never share the cores);
the plates are rendered once (``DemoRecipe``'s training plates: seed 1, plate_01..05, 256 px,
4 fields). Printed per fold and implementation: best-epoch validation crop and well accuracy,
training seconds (first epoch, which includes graph tracing, and the mean of the others).

Usage::

    git archive 7c97e4a neurorg_core | tar -x -C /tmp/ref      # the old code, anywhere
    python benchmarks/train_compare.py --reference /tmp/ref --folds 1 2 --epochs 20 --work-dir /tmp/demo_plates
    python benchmarks/train_compare.py --reference /tmp/ref --folds 1 --epochs 3 --rounds 2   # time: old new new old
    python benchmarks/train_compare.py --sides new --folds 1 --epochs 20                      # this checkout only
    python benchmarks/train_compare.py --reference /tmp/ref --seed 1 --unseen-seed 31   # other seed, +300 wells each
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKER = """
import json, logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.WARNING)
from neurorg_core.train import TrainSettings, _fold_data, fold_split, load_training_sets, train_member, training_geometry
import numpy as np
import neurorg_core.train as T
work, fold, epochs, seed, test = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
dirs = sorted(p for p in (work / "train_seed1").iterdir() if p.is_dir())
st = TrainSettings(epochs=epochs, seed=seed)
t0 = time.perf_counter()
geometry = training_geometry(dirs, st.crop_edge_px)
sets = load_training_sets(dirs, st.input_size, geometry, st.crops_per_well)
load_s = time.perf_counter() - t0
tr, va = _fold_data(sets, fold_split([c.plate for c in sets])[fold - 1])
t0 = time.perf_counter()
res = train_member(tr, va, st, seed_offset=fold, name=f"fold{fold}", progress=lambda m: None)
train_s = time.perf_counter() - t0
unseen = {}
if test:   # the member on plates no fold saw (another seed), each side's own crop loading and well rule
    tsets = load_training_sets(sorted(p for p in Path(test).iterdir() if p.is_dir()), st.input_size, geometry,
                               st.crops_per_well)
    if hasattr(T, "CropSource"):
        probs = T._predict(res.model, T.CropSource([(c.crops, c.labels) for c in tsets]))
    else:
        probs = T._predict(res.model, np.concatenate([c.crops for c in tsets]))
    unseen = T._val_metrics(probs, tsets)
    unseen["n_wells"] = sum(len(np.unique(c.wells)) for c in tsets)
h = res.info["history"]
print("RESULT " + json.dumps({"fold": fold, "load_s": round(load_s, 1), "train_s": round(train_s, 1),
                              "best_epoch": res.info["best_epoch"], "validation": res.info["metrics"]["validation"],
                              "unseen": unseen,
                              "first_epoch_s": h[0]["seconds"],
                              "other_epochs_mean_s": round(sum(r["seconds"] for r in h[1:]) / max(1, len(h) - 1), 1),
                              "epoch_s": [r["seconds"] for r in h],
                              "augment_on": res.info.get("runtime", {}).get("augment_on", "numpy, in the loop"),
                              "n_train_crops": sum(len(c.labels) for c in tr), "val_plates": [c.plate for c in va]}))
"""


def render(work: Path, test_seed: int | None) -> Path | None:
    """The demo recipe's training plates (once), and as many plates of ``test_seed`` (unseen by
    every fold) when asked; returns the unseen plates' folder."""
    from neurorg_core.demo import DemoRecipe
    from neurorg_core.synth import write_synthetic_plates

    recipe = DemoRecipe()
    for folder, seed in ((work / "train_seed1", recipe.train_seed),
                         (work / f"unseen_seed{test_seed}", test_seed)):
        if seed is not None and not folder.is_dir():
            write_synthetic_plates(folder, seed=seed, n_plates=recipe.n_train_plates, n_fields=recipe.n_fields,
                                   size=recipe.field_size, params=recipe.synth_params())
    return None if test_seed is None else work / f"unseen_seed{test_seed}"


def run(repo: Path, work: Path, fold: int, epochs: int, cache: Path, seed: int, test: Path | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(repo), "TF_CPP_MIN_LOG_LEVEL": "2", "NEURORG_CROP_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", WORKER, str(work), str(fold), str(epochs), str(seed), str(test or "")],
                         env=env, capture_output=True, text=True, cwd=repo)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{repo} fold {fold} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", help="a checkout (folder holding neurorg_core/) of the old code")
    p.add_argument("--sides", nargs="+", choices=("old", "new"), default=["old", "new"],
                   help="which implementations to run (new alone needs no --reference)")
    p.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--work-dir", default="/tmp/neurorg_train_compare")
    p.add_argument("--seed", type=int, default=0, help="TrainSettings.seed (the demo recipe's is 0)")
    p.add_argument("--unseen-seed", type=int,
                   help="also score each member on 5 demo-recipe plates of this seed, which no fold trains "
                        "or selects on (300 more wells per member)")
    p.add_argument("--rounds", type=int, default=1,
                   help="runs of each side per fold, alternated old-new, new-old, ... (against load drift)")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    work = Path(args.work_dir)
    unseen = render(work, args.unseen_seed)
    print(f"load average before: {os.getloadavg()}", flush=True)
    if "old" in args.sides and not args.reference:
        p.error("--reference is needed to run the old side")
    sides = tuple((label, repo) for label, repo in (("old", Path(args.reference or ".")), ("new", ROOT))
                  if label in args.sides)
    for fold in args.folds:
        for label, repo in [side for r in range(args.rounds) for side in (sides if r % 2 == 0 else sides[::-1])]:
            before = os.getloadavg()[0]
            t = time.perf_counter()
            r = run(repo, work, fold, args.epochs, work / f"crop_cache_{label}", args.seed, unseen)
            v, u = r["validation"], r["unseen"]
            print(f"fold {fold} {label}: val well acc {v['well_acc']:.4f}, crop acc {v['crop_acc']:.4f}, best epoch "
                  f"{r['best_epoch']}, train {r['train_s']:.0f} s (epoch 1 {r['first_epoch_s']:.0f} s, others "
                  f"{r['other_epochs_mean_s']:.1f} s), load crops {r['load_s']:.0f} s, {r['n_train_crops']} "
                  f"train crops; process {time.perf_counter() - t:.0f} s; load avg {before:.1f} -> "
                  f"{os.getloadavg()[0]:.1f}"
                  + (f"; unseen plates: well acc {u['well_acc']:.4f} of {u['n_wells']}, crop acc {u['crop_acc']:.4f}"
                     if u else ""),
                  flush=True)
            print("  " + json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
