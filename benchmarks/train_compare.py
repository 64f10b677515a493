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
work, fold, epochs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
dirs = sorted(p for p in (work / "train_seed1").iterdir() if p.is_dir())
st = TrainSettings(epochs=epochs)
t0 = time.perf_counter()
sets = load_training_sets(dirs, st.input_size, training_geometry(dirs, st.crop_edge_px), st.crops_per_well)
load_s = time.perf_counter() - t0
tr, va = _fold_data(sets, fold_split([c.plate for c in sets])[fold - 1])
t0 = time.perf_counter()
res = train_member(tr, va, st, seed_offset=fold, name=f"fold{fold}", progress=lambda m: None)
train_s = time.perf_counter() - t0
h = res.info["history"]
print("RESULT " + json.dumps({"fold": fold, "load_s": round(load_s, 1), "train_s": round(train_s, 1),
                              "best_epoch": res.info["best_epoch"], "validation": res.info["metrics"]["validation"],
                              "first_epoch_s": h[0]["seconds"],
                              "other_epochs_mean_s": round(sum(r["seconds"] for r in h[1:]) / max(1, len(h) - 1), 1),
                              "epoch_s": [r["seconds"] for r in h],
                              "augment_on": res.info.get("runtime", {}).get("augment_on", "numpy, in the loop"),
                              "n_train_crops": sum(len(c.labels) for c in tr), "val_plates": [c.plate for c in va]}))
"""


def render(work: Path) -> None:
    from neurorg_core.demo import DemoRecipe
    from neurorg_core.synth import write_synthetic_plates

    recipe = DemoRecipe()
    if (work / "train_seed1").is_dir():
        return
    write_synthetic_plates(work / "train_seed1", seed=recipe.train_seed, n_plates=recipe.n_train_plates,
                           n_fields=recipe.n_fields, size=recipe.field_size, params=recipe.synth_params())


def run(repo: Path, work: Path, fold: int, epochs: int, cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(repo), "TF_CPP_MIN_LOG_LEVEL": "2", "NEURORG_CROP_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", WORKER, str(work), str(fold), str(epochs)], env=env,
                         capture_output=True, text=True, cwd=repo)
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
    p.add_argument("--rounds", type=int, default=1,
                   help="runs of each side per fold, alternated old-new, new-old, ... (against load drift)")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    work = Path(args.work_dir)
    render(work)
    print(f"load average before: {os.getloadavg()}", flush=True)
    if "old" in args.sides and not args.reference:
        p.error("--reference is needed to run the old side")
    sides = tuple((label, repo) for label, repo in (("old", Path(args.reference or ".")), ("new", ROOT))
                  if label in args.sides)
    for fold in args.folds:
        for label, repo in [side for r in range(args.rounds) for side in (sides if r % 2 == 0 else sides[::-1])]:
            before = os.getloadavg()[0]
            t = time.perf_counter()
            r = run(repo, work, fold, args.epochs, work / f"crop_cache_{label}")
            v = r["validation"]
            print(f"fold {fold} {label}: val well acc {v['well_acc']:.4f}, crop acc {v['crop_acc']:.4f}, best epoch "
                  f"{r['best_epoch']}, train {r['train_s']:.0f} s (epoch 1 {r['first_epoch_s']:.0f} s, others "
                  f"{r['other_epochs_mean_s']:.1f} s), load crops {r['load_s']:.0f} s, {r['n_train_crops']} "
                  f"train crops; process {time.perf_counter() - t:.0f} s; load avg {before:.1f} -> "
                  f"{os.getloadavg()[0]:.1f}",
                  flush=True)
            print("  " + json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
