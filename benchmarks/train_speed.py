"""Training crops/s for an architecture, input size, Keras backend and device, and the input
pipeline's own crops/s with the model taken out.

Random uint8 crops are written once into a crop-cache entry (``cropcache.CropCache``) under
``--work-dir``, then these figures are printed:

1. **loader**: ``cropcache.BatchLoader`` alone (crop cache memory map -> uint8 batches, one-hot
   labels), the input pipeline with no model;
2. **loader + augmentation on the loader**: the same loader whose threads also augment each batch
   in numpy (``augment.LoaderAugment``: the CPU's path), still no model;
3. **loader + augmentation on the device**: uint8 batches through ``trainloop.FluorescenceAugment``
   (compiled as the train step is: the GPU's path), still no model;
4. **train**: the real member's compiled train step (``trainloop.training_step`` and
   ``train_steps``: ``keras.Model.train_on_batch`` over the loader's batches, as ``train`` runs it)
   as ``train.TrainRuntime`` sets it up on this machine (precision, jit, where the augmentation
   runs; ``--augment-on`` overrides) for ``--steps`` steps after 2 warm-up steps that trace /
   compile the step.

The backend is Keras's (``KERAS_BACKEND=tensorflow|jax|torch``); the device is what it sees
(``devices.describe_device``). Nothing here is asserted: it prints numbers.

Usage::

    python benchmarks/train_speed.py --arch efficientnet_tiny --input-size 64 --batch-size 32
    KERAS_BACKEND=jax python benchmarks/train_speed.py --arch efficientnet_b0 --input-size 224 --batch-size 128
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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="efficientnet_tiny")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--crops", type=int, default=3600, help="crops in the cache (the demo's 4 plates: 3600)")
    p.add_argument("--steps", type=int, default=40, help="timed train steps")
    p.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    p.add_argument("--jit", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--workers", type=int, default=None, help="loader threads (default: TrainRuntime's choice)")
    p.add_argument("--augment-on", default="auto", choices=("auto", "loader", "device"))
    p.add_argument("--work-dir", help="where the crop cache entry is written (default: a temporary folder)")
    p.add_argument("--skip-train", action="store_true", help="only the input pipeline figures")
    args = p.parse_args()

    import keras

    from neurorg_core.cropcache import BatchLoader, CropCache, CropSource
    from neurorg_core.model import build_model
    from neurorg_core.train import AUGMENTATION, TrainRuntime, TrainSettings, build_optimizer
    from neurorg_core.augment import LoaderAugment
    from neurorg_core.trainloop import augmentation_step, epoch_batches, measure_loader, train_steps, training_step

    runtime = TrainRuntime(precision=args.precision, jit_compile={"auto": None, "on": True, "off": False}[args.jit],
                           loader_workers=args.workers, augment_on=args.augment_on).resolve()
    s, n, bs = args.input_size, args.crops, args.batch_size
    print(f"{args.arch} at {s} px, batch {bs}; {runtime.device}; precision {runtime.precision}, "
          f"jit_compile {runtime.jit_compile}, augmentation on the {runtime.augment_on}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="train_speed_"))
    cache = CropCache(work, 2**40)
    key = f"{n}x{s}"
    entry = cache.lookup("bench", key)
    if entry is None:
        rng = np.random.default_rng(0)

        def chunks():
            for a in range(0, n, 256):
                k = min(256, n - a)
                yield rng.integers(0, 256, (k, s, s, 3), dtype=np.uint8), np.asarray([f"W{(a + i) % 60}" for i in range(k)])

        entry = cache.write("bench", key, chunks(), {f"W{w}": w % 6 for w in range(60)}, {})
    source = CropSource([(entry.crops, entry.labels)])
    loader = BatchLoader(source, bs, workers=runtime.loader_workers, prefetch=runtime.prefetch)
    steps = -(-n // bs)
    rng = np.random.default_rng(1)
    loader_rate = measure_loader(loader, rng, min(steps, 100))
    print(f"loader: {loader_rate:,.0f} crops/s")
    on_loader = BatchLoader(source, bs, workers=runtime.loader_workers, prefetch=runtime.prefetch,
                            transform=LoaderAugment(AUGMENTATION, 0))
    loader_aug_rate = measure_loader(on_loader, rng, min(steps, 100))
    print(f"loader + augmentation on the loader threads (numpy, {runtime.loader_workers} threads): "
          f"{loader_aug_rate:,.0f} crops/s")

    augment = augmentation_step(AUGMENTATION, 0, runtime.jit_compile)
    gen = epoch_batches(loader, rng, steps)
    augment(next(gen)[0])                                   # trace / compile
    t0 = time.perf_counter()
    done = 0
    for _ in range(min(steps, 50)):
        x, _ = next(gen)
        np.asarray(augment(x))
        done += len(x)
    aug_rate = done / (time.perf_counter() - t0)
    print(f"loader + augmentation on the device: {aug_rate:,.0f} crops/s")
    pipeline = loader_aug_rate if runtime.augment_on == "loader" else aug_rate
    if args.skip_train:
        return

    keras.utils.set_random_seed(0)
    model = build_model(args.arch, s)
    from neurorg_core.kerasrun import with_precision

    st = TrainSettings(arch=args.arch, input_size=s, batch_size=bs, epochs=2)
    wrapper, loader = training_step(with_precision(model, runtime.precision), source, batch_size=bs,
                                    optimizer=build_optimizer(st, steps),
                                    loss=keras.losses.CategoricalCrossentropy(), augmentation=AUGMENTATION,
                                    runtime=runtime, seed=0)
    t0 = time.perf_counter()
    batches = epoch_batches(loader, rng, args.steps)
    train_steps(wrapper, batches, 2)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_steps(wrapper, batches, args.steps)
    train_rate = args.steps * bs / (time.perf_counter() - t0)
    print(f"train: {train_rate:,.0f} crops/s ({args.steps} steps after a {warm:.0f} s warm-up that traces the step)")
    print(f"input pipeline / train: loader {loader_rate / train_rate:.0f}x, loader + augmentation on the "
          f"{runtime.augment_on} (what trains here) {pipeline / train_rate:.1f}x; on the loader "
          f"{loader_aug_rate / train_rate:.1f}x, on the device {aug_rate / train_rate:.1f}x")


if __name__ == "__main__":
    main()
