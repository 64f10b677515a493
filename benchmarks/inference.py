"""Crops/s of plain ``keras.Model.predict`` vs our fast path (``inference.Predictor``, LiteRT).

Both run the same one-member bundle on the same random crops; the fast path's probabilities
are compared with Keras's (max |difference|). Each timing is the best of ``--repeats`` runs,
measured after a warm-up call. The machine is shared, so run it when it is quiet.

Usage::

    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/inference.py --arch efficientnet_b0 --input-size 224 --n 256
    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/inference.py --model data/models/demo/ensemble --n 512
    # the study's model: an imported B5 (import-study) at its 1200 px input, or a random one
    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/inference.py --model STUDY_BUNDLE --n 4 --repeats 1
    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/inference.py --arch efficientnet_pytorch_b5 --input-size 1200 --n 4 --repeats 1

Batch sizes default to ``inference.default_batch_size`` (16 crops up to 256 px, 1 at 1200 px; Keras
twice that). The peak resident memory of the process is printed too.

Then the device rows: the device Keras runs on (``devices.describe_device``: a GPU when the Keras
backend sees one), Keras with the batch sized for that device (``Predictor(backend="keras")``'s
default: ``devices.accelerator_batch_size`` on a GPU), Keras in bfloat16 (``--precision``;
max |bf16 - float32|), and what ``--backend auto`` picks here. ``KERAS_BACKEND`` chooses the backend.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout  # noqa: E402

from neurorg_core.devices import describe_device, visible_accelerators  # noqa: E402
from neurorg_core.inference import Predictor, default_batch_size  # noqa: E402
from neurorg_core.model import (TORCH_ARCHITECTURES, build_model, load_bundle,  # noqa: E402
                                round_weights_to_float16, save_bundle)


def _best(fn, repeats: int) -> tuple[float, np.ndarray]:
    fn()  # warm-up (graph tracing, interpreter setup)
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="efficientnet_b0")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--n", type=int, default=256, help="crops per timed run")
    p.add_argument("--model", help="an existing bundle (its members are timed together)")
    p.add_argument("--batch-size", type=int, help="model.predict batch size (default: twice the LiteRT batch, "
                   "at most 32)")
    p.add_argument("--fast-batch", type=int, help="LiteRT interpreter batch size (default: "
                   "inference.default_batch_size of the input size)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 row (slow on CPUs without bf16)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            bundle = load_bundle(args.model)
        else:
            import keras

            keras.utils.set_random_seed(0)
            model = build_model(args.arch, args.input_size)
            imported = args.arch in TORCH_ARCHITECTURES
            head = model.get_layer("fc" if imported else "predictions")  # a random head that is not near-uniform
            kernel, bias = head.get_weights()
            head.set_weights([np.random.default_rng(0).normal(0, 0.5, kernel.shape).astype("float32"), bias])
            if not imported:
                round_weights_to_float16(model)
            bundle = save_bundle(Path(tmp) / "b", [model], [{"name": "m", "fold": 1}], kind="ensemble",
                                 arch=args.arch, input_size=args.input_size,
                                 weights_dtype="float32" if imported else "float16")
        s = bundle.input_size
        args.fast_batch = args.fast_batch or default_batch_size(s)
        args.batch_size = args.batch_size or min(32, 2 * args.fast_batch)
        x = np.random.default_rng(1).random((args.n, s, s, 3), dtype=np.float32)
        keras_pred = Predictor(bundle, backend="keras", batch_size=args.batch_size)
        t0 = time.perf_counter()
        cache = None if args.model else Path(tmp) / "lite"   # a shipped bundle has its own cache
        fast = Predictor(bundle, threads=args.threads, batch_size=args.fast_batch, cache_dir=cache)
        convert_s = time.perf_counter() - t0
        tk, pk = _best(lambda: keras_pred.predict(x), args.repeats)
        tf_, pf = _best(lambda: fast.predict(x), args.repeats)
        tk2, _ = _best(lambda: keras_pred.predict(x), 1)   # load drift check
        n = args.n * len(bundle.members)
        print(f"model: {bundle.card['architecture']} at {s} px, {len(bundle.members)} member(s), "
              f"{args.n} crops, {os.cpu_count()} CPU cores")
        print(f"keras model.predict (batch {args.batch_size}): {n / tk:8.1f} crops/s  "
              f"(again at the end: {n / tk2:.1f})")
        print(f"LiteRT fast path ({args.threads} x 1-thread interpreters, batch {args.fast_batch}): "
              f"{n / tf_:8.1f} crops/s")
        print(f"speed-up: {tk / tf_:.2f}x   max |p_fast - p_keras| = {np.abs(pf - pk).max():.2e}   "
              f"(one-time conversion {convert_s:.0f} s)")
        print(f"per crop: Keras {tk / n:.2f} s, LiteRT {tf_ / n:.2f} s; peak resident memory "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")
        _device_rows(bundle, x, pk, n, args)


def _device_rows(bundle, x: np.ndarray, reference: np.ndarray, n: int, args: argparse.Namespace) -> None:
    """Keras on the device the Keras backend sees, batch sized for it; bf16; what auto picks."""
    found = visible_accelerators()
    print(f"device: {describe_device(found)}")
    dev = Predictor(bundle, backend="keras")
    td, pd_ = _best(lambda: dev.predict(x), args.repeats)
    print(f"keras on the device (batch {dev.batch_size}, float32): {n / td:8.1f} crops/s   "
          f"max |p - p_keras| = {np.abs(pd_ - reference).max():.2e}")
    if not args.no_bf16:
        half = Predictor(bundle, backend="keras", precision="bfloat16")
        th, ph = _best(lambda: half.predict(x), args.repeats)
        print(f"keras on the device (batch {half.batch_size}, bfloat16): {n / th:8.1f} crops/s   "
              f"max |p_bf16 - p_float32| = {np.abs(ph - reference).max():.2e}")
    auto = Predictor(bundle, backend="auto") if found else None
    print(f"--backend auto runs: {auto.backend if auto else 'litert'} "
          f"({'a GPU is visible' if found else 'no GPU visible to the Keras backend'})")


if __name__ == "__main__":
    main()
