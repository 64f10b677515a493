"""How far an imported study model is from efficientnet_pytorch: max |difference| of probabilities.

Reads a folder written by ``tests/data/study_b0/make_study_reference.py --no-archive`` (fold
state_dicts, ``normalize_parameters.pkl``, the small ``plate/`` and ``reference.json`` with the
original network's probabilities), imports the folds with ``import-study``'s code (no torch), runs
the bundle on the same fields with Keras and with the LiteRT path, and prints the largest difference
per member. With ``--tf-padding`` it also builds the same network with TensorFlow's "same" padding
(what ``keras.applications`` does), to show what the static padding is worth.

Usage (the B5 check of the README; torch only in .venv-torch, never in the project's environment)::

    python -m neurorg_core synth --out /tmp/study_b5 --seed 15 --layout npy --fields 1 --size 1200
    .venv-torch/bin/python tests/data/study_b0/make_study_reference.py --plate /tmp/study_b5/plate_01 \\
        --out /tmp/study_b5/ref --arch efficientnet-b5 --folds 1 --wells-per-class 1 --bn-fields 12 \\
        --head-steps 30 --batch 2 --no-archive
    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/study_equivalence.py /tmp/study_b5/ref --tf-padding
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout  # noqa: E402

from neurorg_core import torch_efficientnet  # noqa: E402
from neurorg_core.inference import Predictor  # noqa: E402
from neurorg_core.plates import load_plate  # noqa: E402
from neurorg_core.preprocess import scale_intensity  # noqa: E402
from neurorg_core.study import import_study  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="make_study_reference.py --no-archive output")
    p.add_argument("--backends", nargs="+", default=["keras", "litert"], choices=("keras", "litert"))
    p.add_argument("--tf-padding", action="store_true",
                   help="also run the network with TensorFlow 'same' padding at the input size")
    args = p.parse_args()

    ref = json.loads((args.folder / "reference.json").read_text())
    arch = ref["arch"].replace("-", "_")
    size = int(ref["input_size"])
    expected = np.asarray(ref["probabilities"], np.float64)
    plate = load_plate(args.folder / "plate")
    refs = {(r.well, r.field): r for r in plate.fields}
    x = np.stack([scale_intensity(plate.read_field(refs[(f["well"], f["field"])])) for f in ref["fields"]])
    files = [args.folder / s["file"] for s in ref["state_dicts"]]
    print(f"{ref['arch']} at {size} px, {len(files)} fold(s), {len(x)} field(s); reference made with "
          f"torch {ref['versions']['torch']}, efficientnet_pytorch {ref['versions']['efficientnet_pytorch']}")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        bundle = import_study(files, args.folder / "normalize_parameters.pkl", Path(tmp) / "bundle", arch=arch,
                              input_size=size)
        print(f"import: {time.perf_counter() - t:.0f} s")
        for backend in args.backends:
            t = time.perf_counter()
            got = Predictor(bundle, backend=backend, threads=1).predict(x)
            diff = np.abs(got - expected).max(axis=(1, 2))
            print(f"{backend}: max |p - p_torch| per member {', '.join(f'{d:.2e}' for d in diff)} "
                  f"({time.perf_counter() - t:.0f} s incl. conversion)")
        p0 = expected[:, :, 0]
        print(f"reference P(control) per field: {np.round(p0, 3).tolist()}")
        if args.tf_padding:
            variant = arch.removeprefix("efficientnet_")
            saved = torch_efficientnet.TORCH_PARAMS[variant]
            torch_efficientnet.TORCH_PARAMS[variant] = (*saved[:2], size)   # "same" at the input size
            try:
                other = import_study(files, args.folder / "normalize_parameters.pkl", Path(tmp) / "tf_same",
                                     arch=arch, input_size=size)
                got = Predictor(other, backend="keras").predict(x)
            finally:
                torch_efficientnet.TORCH_PARAMS[variant] = saved
            print(f"TensorFlow 'same' padding instead: max |p - p_torch| {np.abs(got - expected).max():.2e}")


if __name__ == "__main__":
    main()
