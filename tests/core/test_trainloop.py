"""The GPU training path run on the CPU backend of the same code: augmentation on the device (against
scipy), the same augmentation in numpy on the loader (against scipy and the device layer's
statistics), the epoch batches from the crop cache, the runtime choices for a device, and a
compiled (XLA) bf16 train step."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from scipy import ndimage  # noqa: E402

from neurorg_core.augment import AUGMENTATION, Augmentation, LoaderAugment, augment_batch  # noqa: E402
from neurorg_core.cropcache import BatchLoader, CropSource  # noqa: E402
from neurorg_core.devices import Accelerator  # noqa: E402
from neurorg_core.errors import NeuroRGError  # noqa: E402
from neurorg_core.train import TrainRuntime  # noqa: E402

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


def _augment_numpy(x: np.ndarray, params: Augmentation = AUGMENTATION, seed: int = 0) -> np.ndarray:
    return augment_batch(x, np.random.default_rng(seed), params)


def test_loader_augmentation_moves_by_the_squares_symmetries_and_blurs_like_scipy():
    spot = np.zeros((1, 16, 16, 3), np.uint8)
    spot[0, 2, 3, :] = 255
    out = _augment_numpy(np.repeat(spot, 400, 0), PLAIN, seed=1)
    peaks = [tuple(int(v) for v in np.unravel_index(np.argmax(o[..., 0]), (16, 16))) for o in out]
    expected = {tuple(int(v) for v in np.unravel_index(np.argmax(d), (16, 16))) for d in _dihedral(spot[0, ..., 0])}
    counts = {p: peaks.count(p) for p in expected}
    assert set(peaks) == expected and min(counts.values()) > 25       # all 8, each about 1/8 of 400
    x = np.random.default_rng(2).integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    xf = x.astype(np.float32) / 255.0
    blur = Augmentation(gain_log_sd=0.0, offset=(0.0, 0.0), blur_sigma_px=(0.7, 0.7), blur_fraction=1.0,
                        noise_sd_max=0.0)
    out = _augment_numpy(x, blur, seed=4)
    for a, b in zip(xf, out):
        ref = [ndimage.gaussian_filter(v, sigma=(0.7, 0.7, 0.0), mode="reflect") for v in _dihedral(a)]
        assert min(float(np.abs(r - b).max()) for r in ref) < 1e-5
    a, b = _augment_numpy(x, seed=5), _augment_numpy(x, seed=5)
    assert a.dtype == np.float32 and a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)


def _summary(out: np.ndarray, flat: np.ndarray) -> dict[str, float]:
    """Statistics of augmented crops of one grey level (``flat``: which crops were not blurred)."""
    means = out.mean(axis=(1, 2))                                      # per crop and channel
    return {"mean": float(means.mean()), "gain_sd": float(means.std()),
            "noise_sd": float(out.std(axis=(1, 2)).mean()), "blurred": float(1.0 - flat.mean())}


def test_loader_and_device_augmentation_draw_the_same_distribution():
    """2,000 crops through both paths with the same parameters: the brightness they give (gain and
    offset), its spread, the noise and the share of blurred crops agree with each other and with
    the numbers worked out from ``AUGMENTATION`` by hand."""
    n, p = 2000, AUGMENTATION
    grey = np.full((n, 8, 8, 3), 128, np.uint8)
    checker = ((np.indices((8, 8)).sum(0) % 2) * 200 + 20).astype(np.uint8)
    checks = np.repeat(np.repeat(checker[None, :, :, None], 3, axis=3), n, axis=0)
    no_blur = Augmentation(blur_fraction=0.0)
    blur_only = Augmentation(gain_log_sd=0.0, offset=(0.0, 0.0), noise_sd_max=0.0)

    phases = [checker / 255.0, checker[::-1] / 255.0]     # its symmetries: itself or its inverse phase

    def flat(out):   # a checkerboard stays one of its two phases under any symmetry unless blurred
        return np.min([np.abs(out - v[None, :, :, None]).max(axis=(1, 2, 3)) for v in phases], axis=0) < 1e-4

    loader = {**_summary(_augment_numpy(grey, no_blur, seed=1), np.ones(n)),
              "blurred": 1.0 - flat(_augment_numpy(checks, blur_only, seed=2)).mean()}
    device = {**_summary(_augment(grey, no_blur, seed=1), np.ones(n)),
              "blurred": 1.0 - flat(_augment(checks, blur_only, seed=2)).mean()}
    level = 128 / 255
    gain_mean, gain_var = np.exp(p.gain_log_sd ** 2 / 2), np.exp(p.gain_log_sd ** 2) * (np.exp(p.gain_log_sd ** 2) - 1)
    hand = {"mean": level * gain_mean + sum(p.offset) / 2,
            "gain_sd": float(np.sqrt(level ** 2 * gain_var + (p.offset[1] - p.offset[0]) ** 2 / 12)),
            "noise_sd": p.noise_sd_max / 2, "blurred": p.blur_fraction}
    tolerance = {"mean": 0.01, "gain_sd": 0.01, "noise_sd": 0.002, "blurred": 0.04}
    for key, tol in tolerance.items():
        assert loader[key] == pytest.approx(hand[key], abs=tol), (key, loader, hand)
        assert device[key] == pytest.approx(hand[key], abs=tol), (key, device, hand)
        assert loader[key] == pytest.approx(device[key], abs=tol), (key, loader, device)


def test_loader_augment_numbers_batches_so_threads_do_not_change_the_stream(tmp_path):
    from neurorg_core.trainloop import epoch_batches

    crops = np.random.default_rng(3).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    source = CropSource([(crops, np.arange(40) % 6)])
    runs = []
    for workers in (1, 3):
        loader = BatchLoader(source, 8, workers=workers, prefetch=2, transform=LoaderAugment(AUGMENTATION, 9))
        gen = epoch_batches(loader, np.random.default_rng(7), steps=5)
        runs.append([next(gen)[0] for _ in range(10)])                   # two epochs
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    first, second = runs[0][:5], runs[0][5:]
    rng = np.random.default_rng(7)
    order = rng.permutation(40) % 40
    np.testing.assert_array_equal(first[0], LoaderAugment(AUGMENTATION, 9)(crops[order[:8]], 0))
    order2 = rng.permutation(40) % 40
    np.testing.assert_array_equal(second[0], LoaderAugment(AUGMENTATION, 9)(crops[order2[:8]], 5))  # numbered on
    assert all(x.dtype == np.float32 and x.max() <= 1.0 for x in first)


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
    assert (gpu.augment_on, cpu.augment_on) == ("device", "loader")        # auto: the step on a GPU
    assert "compiled train step" in gpu.as_dict()["augmentation"] and "loader" in cpu.as_dict()["augmentation"]
    assert TrainRuntime(augment_on="device").resolve(lambda: ()).augment_on == "device"
    assert TrainRuntime(augment_on="loader").resolve(lambda: (Accelerator("gpu", "x"),)).augment_on == "loader"
    assert gpu.loader_workers == 2 and cpu.loader_workers == max(1, (os.cpu_count() or 2) // 2)
    assert TrainRuntime(loader_workers=3).resolve(lambda: ()).loader_workers == 3
    with pytest.raises(NeuroRGError, match="expected 1 or more"):
        TrainRuntime(loader_workers=0).resolve(lambda: ())
    with pytest.raises(NeuroRGError, match="auto, loader, device"):
        TrainRuntime(augment_on="gpu").resolve(lambda: ())                  # type: ignore[arg-type]


def _small_net():
    """A 3-layer classifier shaped like ours (input normalisation, a head named "predictions"): XLA
    compiles its train step in seconds on 2 cores, where an EfficientNet takes minutes."""
    import keras

    inputs = keras.Input((16, 16, 3), dtype="float32")
    x = keras.layers.Normalization(mean=[0.2] * 3, variance=[0.04] * 3)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(6, activation="softmax", name="predictions")(x))


def _fit_plain_signal(runtime):
    """``fit_member`` for 5 epochs on 192 crops whose class is the neuron channel's brightness:
    (net, source, labels, best weights, history)."""
    import keras

    from neurorg_core.trainloop import fit_member

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 32)
    crops = rng.integers(0, 40, (192, 16, 16, 3), dtype=np.uint8)
    crops[..., 1] += (labels * 40).astype(np.uint8)[:, None, None]       # class = neuron brightness
    source = CropSource([(crops, labels)])
    keras.utils.set_random_seed(0)
    net = _small_net()

    def metrics(probs):
        return {"crop_acc": float((probs.argmax(1) == labels).mean()), "loss": 0.0, "well_acc": 0.0}

    weights, history = fit_member(
        net, source, source, epochs=5, batch_size=16, optimizer=keras.optimizers.Adam(2e-2),
        loss=keras.losses.CategoricalCrossentropy(), augmentation=AUGMENTATION, runtime=runtime, rng=rng,
        seed=0, metrics=metrics, rank=lambda m: (m["crop_acc"], -m["loss"]), report=lambda m: None, name="t")
    return net, source, labels, weights, history


def test_compiled_bf16_train_step_with_device_augmentation_runs_on_the_cpu():
    """The GPU configuration (XLA-compiled step, bf16 mixed precision, augmentation inside the step)
    forced on the CPU: it learns a plain signal, and the best epoch's weights come back float32."""
    from neurorg_core.kerasrun import compute_dtypes
    from neurorg_core.trainloop import Runtime, predict_source, training_model

    net, source, labels, weights, history = _fit_plain_signal(Runtime("tensorflow", "CPU", "bfloat16", True))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert max(h["crop_acc"] for h in history) > 0.45                    # it learned (chance: 1/6)
    assert all(w.dtype == np.float32 for w in weights)
    net.set_weights(weights)
    assert set(compute_dtypes(net).values()) == {"float32"}              # the model saved stays float32
    best = max(history, key=lambda h: h["crop_acc"])["crop_acc"]
    probs = predict_source(training_model(net, AUGMENTATION, 0), source)
    assert float((probs.argmax(1) == labels).mean()) == pytest.approx(best, abs=1e-6)   # best epoch restored


def test_train_step_with_augmentation_on_the_loader_learns_and_keeps_the_best_epoch():
    """The CPU configuration (float32, no XLA, numpy augmentation on the loader threads): it learns a
    plain signal, validation sees the crops scaled only, and the best epoch's weights come back."""
    from neurorg_core.trainloop import Runtime, predict_source

    net, source, labels, weights, history = _fit_plain_signal(
        Runtime("tensorflow", "CPU", "float32", False, augment_on="loader"))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert max(h["crop_acc"] for h in history) > 0.45                    # it learned (chance: 1/6)
    assert history[-1]["train_loss"] < history[0]["train_loss"]         # the epoch's mean step loss
    net.set_weights(weights)
    best = max(history, key=lambda h: h["crop_acc"])["crop_acc"]
    probs = predict_source(net, source, float_input=True)
    assert float((probs.argmax(1) == labels).mean()) == pytest.approx(best, abs=1e-6)   # best epoch restored
    assert not net.compiled                                               # the saved network stays uncompiled


def test_a_seed_gives_the_same_training_whatever_the_loader_threads():
    """Seeding stays as it was: the CPU configuration trained twice with the same seed, once with one
    loader thread and once with three, gives the same per-epoch losses and the same best weights."""
    from neurorg_core.trainloop import Runtime

    one = _fit_plain_signal(Runtime("tensorflow", "CPU", "float32", False, loader_workers=1, augment_on="loader"))
    three = _fit_plain_signal(Runtime("tensorflow", "CPU", "float32", False, loader_workers=3, augment_on="loader"))
    assert [h["train_loss"] for h in one[4]] == [h["train_loss"] for h in three[4]]
    for a, b in zip(one[3], three[3]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
