"""Run the GPU-path code on whatever ``KERAS_BACKEND`` this process has (tensorflow, jax, torch).

Checks, printing what it finds (exit status 1 on a failed check): the device query and what
``--backend auto`` picks; a Keras predictor of an efficientnet_tiny bundle (float32 and bf16);
the device augmentation; a few compiled train steps (``trainloop.fit_member``, jit as
``devices.resolve_jit`` decides) of a small network in float32 and bf16, reading uint8 batches
from a crop-cache entry. Small on purpose: it proves the code paths run on a backend, it does not
time them (``train_speed.py`` and ``inference.py`` do).

Usage::

    KERAS_BACKEND=jax python benchmarks/backend_check.py
    KERAS_BACKEND=torch python benchmarks/backend_check.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout  # noqa: E402


def check(ok: bool, what: str) -> bool:
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
    return ok


def main() -> int:
    import keras

    from neurorg_core.cropcache import CropCache, CropSource
    from neurorg_core.devices import describe_device, resolve_backend, resolve_jit, visible_accelerators
    from neurorg_core.inference import Predictor
    from neurorg_core.model import build_model, save_bundle
    from neurorg_core.train import AUGMENTATION
    from neurorg_core.trainloop import FluorescenceAugment, Runtime, fit_member

    found = visible_accelerators()
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}: {describe_device(found)}; "
          f"auto runs {resolve_backend('auto')}")
    good = True
    tmp = Path(tempfile.mkdtemp(prefix="backend_check_"))
    keras.utils.set_random_seed(0)
    bundle = save_bundle(tmp / "b", [build_model("efficientnet_tiny", 32, mean=[0.2] * 3, std=[0.2] * 3)],
                         [{"name": "fold1", "fold": 1}], kind="ensemble", arch="efficientnet_tiny", input_size=32,
                         extra={"crop_geometry": {"mode": "tiles", "crop_edge_px": 32, "pixel_size_um": None}})
    x = np.random.default_rng(0).random((10, 32, 32, 3), dtype=np.float32) * 0.5
    p32 = Predictor(bundle, backend="keras", batch_size=4).predict(x)
    p16 = Predictor(bundle, backend="keras", batch_size=4, precision="bfloat16").predict(x)
    good &= check(p32.shape == (1, 10, 6) and np.allclose(p32.sum(-1), 1, atol=1e-5), "keras predictor float32")
    good &= check(float(np.abs(p16 - p32).max()) < 0.05,
                  f"keras predictor bfloat16 (max |bf16 - float32| {np.abs(p16 - p32).max():.2e})")

    u8 = np.random.default_rng(1).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    a = np.asarray(FluorescenceAugment(AUGMENTATION, 3)(u8, training=True))
    b = np.asarray(FluorescenceAugment(AUGMENTATION, 3)(u8, training=True))
    good &= check(a.shape == u8.shape and 0 <= a.min() and a.max() <= 1 and np.array_equal(a, b)
                  and np.abs(a - u8 / 255.0).max() > 0.05, "device augmentation: range, seed, changes crops")

    labels = np.repeat(np.arange(6), 16)
    crops = np.random.default_rng(2).integers(0, 40, (96, 16, 16, 3), dtype=np.uint8)
    crops[..., 1] += (labels * 40).astype(np.uint8)[:, None, None]
    entry = CropCache(tmp / "cache", 2**30).write(
        "p", "k", [(crops, np.asarray([f"W{i}" for i in range(96)]))], {f"W{i}": int(labels[i]) for i in range(96)}, {})
    source = CropSource([(entry.crops, entry.labels)])
    jit = resolve_jit(None, keras.backend.backend(), found)
    for precision in ("float32", "bfloat16"):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((16, 16, 3))
        h = keras.layers.Normalization(mean=[0.2] * 3, variance=[0.04] * 3)(inputs)
        h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, activation="relu")(h))
        net = keras.Model(inputs, keras.layers.Dense(6, activation="softmax", name="predictions")(h))
        t0 = time.perf_counter()
        weights, history = fit_member(
            net, source, source, epochs=2, batch_size=16, optimizer=keras.optimizers.Adam(1e-2),
            loss=keras.losses.CategoricalCrossentropy(), augmentation=AUGMENTATION,
            runtime=Runtime(keras.backend.backend(), describe_device(found), precision, jit),
            rng=np.random.default_rng(0), seed=0,
            metrics=lambda pr: {"crop_acc": float((pr.argmax(1) == labels).mean()), "loss": 0.0, "well_acc": 0.0},
            rank=lambda m: (m["crop_acc"],), report=lambda m: None, name=precision)
        good &= check(len(history) == 2 and all(np.isfinite(w).all() and w.dtype == np.float32 for w in weights),
                      f"fit_member {precision}, jit_compile {jit}: {len(history)} epochs in "
                      f"{time.perf_counter() - t0:.0f} s, val crop acc {[h['crop_acc'] for h in history]}")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
