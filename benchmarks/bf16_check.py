"""bfloat16 vs float32 inference on the demo screen: probability differences and called classes.

Renders the demo recipe's screening plate (``DemoRecipe.screen_seed``), cuts every well's crops as
scoring does, and runs the shipped demo ensemble three ways: LiteRT float32, Keras float32 and
Keras bfloat16 (``kerasrun.with_precision``). Prints the largest |difference| per crop and per well
(``scoring.aggregate_wells``, the screen's rule), and how many wells' called class changes.

Usage::

    python benchmarks/bf16_check.py [--model data/models/demo/ensemble] [--work-dir /tmp/bf16]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "data" / "models" / "demo" / "ensemble"))
    p.add_argument("--work-dir")
    args = p.parse_args()

    from neurorg_core.cropsets import crops_as_float, load_screen_crops
    from neurorg_core.demo import DemoRecipe
    from neurorg_core.devices import describe_device, visible_accelerators
    from neurorg_core.inference import Predictor
    from neurorg_core.kerasrun import BF16_TOLERANCE, BF16_WELL_TOLERANCE
    from neurorg_core.model import load_bundle
    from neurorg_core.preprocess import CropGeometry
    from neurorg_core.scoring import aggregate_wells
    from neurorg_core.synth import write_synthetic_plates

    recipe = DemoRecipe()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bf16_"))
    folder = work / f"screen_seed{recipe.screen_seed}"
    plate = (sorted(folder.iterdir())[0] if folder.is_dir() else
             write_synthetic_plates(folder, seed=recipe.screen_seed, n_plates=1, kind="screen",
                                    n_fields=recipe.n_fields, size=recipe.field_size,
                                    params=recipe.synth_params())[0])
    bundle = load_bundle(args.model)
    screen = load_screen_crops(plate, bundle.input_size, CropGeometry.from_card(bundle.card))
    x = crops_as_float(screen.crops)
    print(f"{describe_device(visible_accelerators())}; {len(np.unique(screen.wells))} wells, {len(x)} crops, "
          f"{len(bundle.members)} members; load average {os.getloadavg()[0]:.1f}")
    probs = {}
    for name, kw in (("litert float32", {"backend": "litert"}), ("keras float32", {"backend": "keras"}),
                     ("keras bfloat16", {"backend": "keras", "precision": "bfloat16"})):
        pred = Predictor(bundle, **kw)
        t0 = time.perf_counter()
        probs[name] = pred.predict(x)
        print(f"{name}: {len(x) * len(bundle.members) / (time.perf_counter() - t0):.0f} crops/s")
    ref = probs["litert float32"]
    wells_ref = aggregate_wells(ref, screen.wells)
    for name in ("keras float32", "keras bfloat16"):
        got = probs[name]
        wells = aggregate_wells(got, screen.wells)
        changed = int((wells.called != wells_ref.called).sum())
        print(f"{name} vs litert float32: max |crop p| {np.abs(got - ref).max():.2e}, max |well p| "
              f"{np.abs(wells.probs - wells_ref.probs).max():.2e}, called class changed in {changed} of "
              f"{len(wells.wells)} wells")
    print(f"stated bf16 tolerance: {BF16_TOLERANCE} per crop probability, {BF16_WELL_TOLERANCE} per well mean")


if __name__ == "__main__":
    main()
