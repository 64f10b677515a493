"""The GPU training path run on the CPU backend of the same code: augmentation on the device (against
scipy), the epoch batches from the crop cache, the runtime choices for a device, and a compiled
(XLA) bf16 train step."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from scipy import ndimage  # noqa: E402

from neurorg_core.cropcache import BatchLoader, CropSource  # noqa: E402
from neurorg_core.devices import Accelerator  # noqa: E402
from neurorg_core.train import AUGMENTATION, Augmentation, TrainRuntime  # noqa: E402

PLAIN = Augmentation(gain_log_sd=0.0, offset=(0.0, 0.0), blur_fraction=0.0, noise_sd_max=0.0)


def _augment(x: np.ndarray, params: Augmentation = AUGMENTATION, seed: int = 0) -> np.ndarray:
    from neurorg_core.trainloop import FluorescenceAugment

    layer = FluorescenceAugment(params, seed)
    return np.asarray(layer(x, training=True))


def _dihedral(a: np.ndarray) -> list[np.ndarray]:
    views = [np.rot90(a, k, axes=(0, 1)) for k in range(4)]
    return views + [v[:, ::-1] for v in views]


def test_device_augmentation_keeps_range_shape_and_is_reproducible():
    from neurorg_core.trainloop import FluorescenceAugment

    x = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    a, b, c = _augment(x, seed=5), _augment(x, seed=5), _augment(x, seed=6)
    assert a.dtype == np.float32 and a.shape == x.shape
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)                                # a seed gives one stream
    assert np.abs(a - c).max() > 0.05
    plain = np.asarray(FluorescenceAugment(AUGMENTATION, 0)(x, training=False))
    np.testing.assert_array_equal(plain, x.astype(np.float32) / 255.0)   # validation: scaling only


def test_device_augmentation_moves_a_spot_by_the_squares_symmetries():
    spot = np.zeros((1, 16, 16, 3), np.uint8)
    spot[0, 2, 3, :] = 255
    out = _augment(np.repeat(spot, 40, 0), seed=1)
    peaks = {tuple(int(v) for v in np.unravel_index(np.argmax(o[..., 0]), (16, 16))) for o in out}
    expected = {tuple(int(v) for v in np.unravel_index(np.argmax(d), (16, 16))) for d in _dihedral(spot[0, ..., 0])}
    assert len(expected) == 8 and peaks <= expected and len(peaks) >= 6


def test_device_augmentation_reads_its_numbers_and_blurs_like_scipy():
    x = np.random.default_rng(2).integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    xf = x.astype(np.float32) / 255.0
    out = _augment(x, PLAIN, seed=3)                  # no gain, offset, blur or noise: symmetries only
    for a, b in zip(xf, out):
        assert any(np.allclose(v, b, atol=1e-6) for v in _dihedral(a))
    blur = Augmentation(gain_log_sd=0.0, offset=(0.0, 0.0), blur_sigma_px=(0.7, 0.7), blur_fraction=1.0,
                        noise_sd_max=0.0)
    out = _augment(x, blur, seed=4)                   # every crop blurred at sigma 0.7, as scipy does
    for a, b in zip(xf, out):
        ref = [ndimage.gaussian_filter(v, sigma=(0.7, 0.7, 0.0), mode="reflect") for v in _dihedral(a)]
        assert min(float(np.abs(r - b).max()) for r in ref) < 1e-5
    assert not np.allclose(_augment(x, seed=3), _augment(x, PLAIN, seed=3), atol=0.01)   # AUGMENTATION adds more


def test_epoch_batches_are_full_and_follow_the_seeded_order(tmp_path):
    from neurorg_core.trainloop import epoch_batches

    crops = np.arange(50, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    source = CropSource([(crops[:30], np.arange(30) % 6), (crops[30:], np.arange(20) % 6)])
    gen = epoch_batches(BatchLoader(source, 8, prefetch=2), np.random.default_rng(7), steps=7)
    batches = [next(gen) for _ in range(14)]                          # two epochs of 7 full batches
    assert all(x.shape == (8, 4, 4, 3) and y.shape == (8, 6) for x, y in batches)
    rng = np.random.default_rng(7)
    for epoch in range(2):
        order = rng.permutation(56) % 50
        got = np.concatenate([x[:, 0, 0, 0] for x, _ in batches[7 * epoch:7 * epoch + 7]])
        np.testing.assert_array_equal(got, order)
        labels = np.concatenate([y.argmax(1) for _, y in batches[7 * epoch:7 * epoch + 7]])
        np.testing.assert_array_equal(labels, np.concatenate([np.arange(30) % 6, np.arange(20) % 6])[order])


def test_runtime_follows_the_device_it_is_given():
    gpu = TrainRuntime().resolve(lambda: (Accelerator("gpu", "NVIDIA H200", 141 * 2**30, bf16=True),))
    cpu = TrainRuntime().resolve(lambda: ())
    assert (gpu.precision, gpu.jit_compile) == ("bfloat16", True)
    assert (cpu.precision, cpu.jit_compile) == ("float32", False)       # TensorFlow on 2 cores
    assert "NVIDIA H200" in gpu.device and "CPU" in cpu.device
    forced = TrainRuntime(precision="bfloat16", jit_compile=True).resolve(lambda: ())
    assert (forced.precision, forced.jit_compile) == ("bfloat16", True)


def _small_net():
    """A 3-layer classifier shaped like ours (input normalisation, a head named "predictions"): XLA
    compiles its train step in seconds on 2 cores, where an EfficientNet takes minutes."""
    import keras

    inputs = keras.Input((16, 16, 3), dtype="float32")
    x = keras.layers.Normalization(mean=[0.2] * 3, variance=[0.04] * 3)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(6, activation="softmax", name="predictions")(x))


def test_compiled_bf16_train_step_with_device_augmentation_runs_on_the_cpu():
    """The GPU configuration (XLA-compiled step, bf16 mixed precision, augmentation inside the step)
    forced on the CPU: it learns a plain signal, and the best epoch's weights come back float32."""
    import keras

    from neurorg_core.kerasrun import compute_dtypes
    from neurorg_core.trainloop import Runtime, fit_member, predict_source, training_model

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 32)
    crops = rng.integers(0, 40, (192, 16, 16, 3), dtype=np.uint8)
    crops[..., 1] += (labels * 40).astype(np.uint8)[:, None, None]       # class = neuron brightness
    source = CropSource([(crops, labels)])
    keras.utils.set_random_seed(0)
    net = _small_net()
    runtime = Runtime("tensorflow", "CPU", "bfloat16", True)

    def metrics(probs):
        return {"crop_acc": float((probs.argmax(1) == labels).mean()), "loss": 0.0, "well_acc": 0.0}

    weights, history = fit_member(
        net, source, source, epochs=5, batch_size=16, optimizer=keras.optimizers.Adam(2e-2),
        loss=keras.losses.CategoricalCrossentropy(), augmentation=AUGMENTATION, runtime=runtime, rng=rng,
        seed=0, metrics=metrics, rank=lambda m: (m["crop_acc"], -m["loss"]), report=lambda m: None, name="t")
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert max(h["crop_acc"] for h in history) > 0.45                    # it learned (chance: 1/6)
    assert all(w.dtype == np.float32 for w in weights)
    net.set_weights(weights)
    assert set(compute_dtypes(net).values()) == {"float32"}              # the model saved stays float32
    best = max(history, key=lambda h: h["crop_acc"])["crop_acc"]
    probs = predict_source(training_model(net, AUGMENTATION, 0), source)
    assert float((probs.argmax(1) == labels).mean()) == pytest.approx(best, abs=1e-6)   # best epoch restored
