"""One member's training loop on any Keras backend and device: augmentation on the device or on
the loader, a compiled train step, bf16 mixed precision, crops streamed from the crop cache.

Where the augmentation (``augment.AUGMENTATION``) runs is ``Runtime.augment_on``:

- ``device`` (a GPU): the network trains inside a wrapper model that takes **uint8** crops (a
  quarter of float32's bytes to move to the device) and whose first layer,
  ``FluorescenceAugment``, scales them to [0, 1] and, in training only, augments them with
  ``keras.ops`` and ``keras.random``: inside the compiled train step (XLA on TensorFlow,
  ``jax.jit``, ``torch.compile``) on whatever device the step runs on.
- ``loader`` (the CPU): the loader's threads augment each batch in numpy
  (``augment.LoaderAugment``) while the step trains on the one before, and the network trains
  on the float32 batches as they come.

The loop is ``keras.Model.train_on_batch`` (the same compiled train step on all three backends)
over ``cropcache.BatchLoader`` batches, read ahead on threads into a bounded buffer. Not
``keras.Model.fit``: on TensorFlow it wraps a Python generator in ``tf.data.from_generator``, and a
step then took ~2.2x as long on the 2-core CPU (benchmarks/RESULTS.md, "Training loop"). After
every epoch ``BestEpoch`` scores the validation crops and keeps the best epoch's weights
(``train.selection_key``), as the loop before it did.

Precision: ``bfloat16`` trains a ``kerasrun.with_precision`` copy (float32 variables, bf16
arithmetic; input layers, head and augmentation float32); the best weights go back into the
float32 model that is saved.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402  (this module is imported only to train)
from keras import ops  # noqa: E402

from neurorg_core.augment import BLUR_RADIUS, LoaderAugment  # noqa: E402
from neurorg_core.cropcache import BatchLoader, CropSource  # noqa: E402
from neurorg_core.cropsets import crops_as_float  # noqa: E402
from neurorg_core.errors import NeuroRGError  # noqa: E402
from neurorg_core.kerasrun import with_precision  # noqa: E402
from neurorg_core.schema import N_CLASSES  # noqa: E402

log = logging.getLogger(__name__)

class FluorescenceAugment(keras.layers.Layer):
    """uint8 crops (n, s, s, c) -> float32 [0, 1]; in training, the fluorescence augmentation.

    Flips and 90 degree rotations (a random transpose and two random flips: the 8 symmetries of
    the square, equally likely), a Gaussian blur of random sigma on a share of the crops (separable,
    ``BLUR_RADIUS`` taps each side, edges mirrored like scipy's ``reflect``), per-channel gain and
    offset, additive noise, clipped to [0, 1]. ``params`` is an ``augment.Augmentation`` (the
    distribution ``augment.augment_batch`` draws from on the loader). Crops must be
    square. Random numbers come from a ``keras.random.SeedGenerator`` (part of the layer's state,
    so the compiled step stays reproducible for a seed).
    """

    def __init__(self, params: Any, seed: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.params = params
        self.seed = int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def call(self, x, training: bool = False):
        x = ops.cast(x, "float32") / 255.0
        return self._augment(x) if training else x

    def _augment(self, x):
        p, s = self.params, self.seed_generator
        n = ops.shape(x)[0]

        def pick(mask, a, b):
            return ops.where(ops.reshape(mask, (-1, 1, 1, 1)), a, b)

        turn = keras.random.uniform((n, 3), seed=s) < 0.5
        x = pick(turn[:, 0], ops.transpose(x, (0, 2, 1, 3)), x)
        x = pick(turn[:, 1], ops.flip(x, axis=1), x)
        x = pick(turn[:, 2], ops.flip(x, axis=2), x)
        sigma = keras.random.uniform((n, 1), *p.blur_sigma_px, seed=s)
        taps = ops.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype="float32")[None, :]
        w = ops.exp(-(taps ** 2) / (2.0 * sigma ** 2))
        w = w / ops.sum(w, axis=1, keepdims=True)
        blurred = _blur(_blur(x, w, axis=1), w, axis=2)
        x = pick(keras.random.uniform((n,), seed=s) < p.blur_fraction, blurred, x)
        channels = x.shape[-1]
        gain = ops.exp(keras.random.normal((n, 1, 1, channels), stddev=p.gain_log_sd, seed=s))
        offset = keras.random.uniform((n, 1, 1, channels), *p.offset, seed=s)
        noise_sd = keras.random.uniform((n, 1, 1, 1), 0.0, p.noise_sd_max, seed=s)
        x = x * gain + offset + keras.random.normal(ops.shape(x), seed=s) * noise_sd
        return ops.clip(x, 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "seed": self.seed}


def _blur(x, w, axis: int):
    """Per-crop 1-D convolution of ``x`` along ``axis`` (1 or 2) with weights ``w`` (n, 2r + 1),
    edges mirrored (a b c | c b a, scipy's ``reflect``)."""
    r, size = BLUR_RADIUS, x.shape[axis]

    def part(a: int, b: int):
        return x[:, a:b] if axis == 1 else x[:, :, a:b]

    padded = ops.concatenate([ops.flip(part(0, r), axis=axis), x, ops.flip(part(size - r, size), axis=axis)],
                             axis=axis)
    out = None
    for j in range(2 * r + 1):
        window = padded[:, j:j + size] if axis == 1 else padded[:, :, j:j + size]
        term = window * ops.reshape(w[:, j], (-1, 1, 1, 1))
        out = term if out is None else out + term
    return out


def training_model(model: Any, params: Any, seed: int) -> Any:
    """``model`` behind ``FluorescenceAugment``: uint8 crops in, the model's probabilities out."""
    inputs = keras.Input(model.input_shape[1:], dtype="uint8", name="crops_u8")
    x = FluorescenceAugment(params, seed, dtype="float32", name="augment")(inputs)
    return keras.Model(inputs, model(x), name=f"train_{model.name}")


@dataclass(frozen=True)
class Runtime:
    """How the loop runs on this machine (``train.TrainRuntime.resolve``); recorded on the card."""

    keras_backend: str
    device: str
    precision: str             # "float32" | "bfloat16"
    jit_compile: bool
    loader_workers: int = 2
    prefetch: int = 4
    augment_on: str = "device"     # "device" | "loader" (devices.resolve_augment_on)

    def as_dict(self) -> dict:
        where = ("on the device, in the compiled train step (trainloop.FluorescenceAugment)"
                 if self.augment_on == "device" else
                 "on the loader threads in numpy, overlapped with the train step (augment.LoaderAugment)")
        return {"keras_backend": self.keras_backend, "device": self.device, "precision": self.precision,
                "jit_compile": self.jit_compile, "augment_on": self.augment_on, "augmentation": where,
                "input": (f"crop cache memory maps, {self.loader_workers} reader threads, "
                          f"{self.prefetch} batches ahead (cropcache.BatchLoader)")}


def epoch_batches(loader: BatchLoader, rng: np.random.Generator, steps: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (uint8 crops, one-hot labels) batches: each epoch ``steps`` full batches in a fresh
    random order (rows drawn as ``rng.permutation(steps * batch) % n``, as before the cache)."""
    onehot = np.eye(N_CLASSES, dtype=np.float32)
    n = len(loader.source)
    epoch = 0
    while True:
        order = rng.permutation(steps * loader.batch_size) % n
        for x, y in loader.batches(order, first=epoch * steps):
            yield x, onehot[y]
        epoch += 1


def predict_source(model: Any, source: CropSource, batch: int = 128, *, float_input: bool = False) -> np.ndarray:
    """Probabilities (n, 6) of a model over every crop of ``source``, in order: a uint8-input model
    (``training_model``), or with ``float_input`` one that takes float32 [0, 1] crops."""
    out = [np.asarray(model.predict_on_batch(crops_as_float(x) if float_input else x), np.float32)
           for x in source.chunks(batch)]
    return np.concatenate(out) if out else np.zeros((0, N_CLASSES), np.float32)


class BestEpoch:
    """After each epoch: validation metrics, the history row, the best epoch's weights kept.

    ``model`` is the compiled model that trains (scored on the validation crops); ``net`` the
    network inside it whose weights are kept."""

    def __init__(self, model: Any, net: Any, val: CropSource, metrics: Callable[[np.ndarray], dict],
                 rank: Callable[[dict], tuple], epochs: int, report: Callable[[str], None], name: str,
                 float_input: bool = False):
        self.model = model
        self.net, self.val, self.metrics, self.rank = net, val, metrics, rank
        self.float_input = float_input
        self.epochs, self.report, self.name = epochs, report, name
        self.history: list[dict] = []
        self.best: tuple | None = None
        self.best_weights: list[np.ndarray] = []
        self._t0 = 0.0

    def on_epoch_begin(self, epoch: int) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, train_loss: float) -> None:
        metrics = self.metrics(predict_source(self.model, self.val, float_input=self.float_input))
        row = {"epoch": epoch + 1, "train_loss": round(float(train_loss), 4),
               **metrics, "seconds": round(time.perf_counter() - self._t0, 1)}
        self.history.append(row)
        score = self.rank(metrics)
        improved = self.best is None or score > self.best
        if improved:
            self.best = score
            self.best_weights = [np.array(w) for w in self.net.get_weights()]
        self.report(f"{self.name} epoch {row['epoch']}/{self.epochs}: train loss {row['train_loss']:.3f}, "
                    f"val crop acc {metrics['crop_acc']:.3f}, well acc {metrics['well_acc']:.3f}, "
                    f"val loss {metrics['loss']:.3f} ({row['seconds']:.0f} s){' *best' if improved else ''}")


def fit_member(model: Any, train: CropSource, val: CropSource, *, epochs: int, batch_size: int,
               optimizer: Any, loss: Any, augmentation: Any, runtime: Runtime, rng: np.random.Generator,
               seed: int, metrics: Callable[[np.ndarray], dict], rank: Callable[[dict], tuple],
               report: Callable[[str], None], name: str) -> tuple[list[np.ndarray], list[dict]]:
    """Train ``model`` (float32, built and seeded by the caller) for ``epochs`` full passes.

    Returns the best epoch's weights (in ``model``'s order) and the per-epoch history rows.
    """
    net = with_precision(model, runtime.precision)
    wrapper, loader = training_step(net, train, batch_size=batch_size, optimizer=optimizer, loss=loss,
                                    augmentation=augmentation, runtime=runtime, seed=seed)
    steps = max(1, -(-len(train) // batch_size))
    keeper = BestEpoch(wrapper, net, val, metrics, rank, epochs, report, name,
                       float_input=runtime.augment_on == "loader")
    batches = epoch_batches(loader, rng, steps)
    for epoch in range(epochs):
        keeper.on_epoch_begin(epoch)
        keeper.on_epoch_end(epoch, float(np.mean(train_steps(wrapper, batches, steps))))
    return keeper.best_weights, keeper.history


def train_steps(model: Any, batches: Iterator[tuple[np.ndarray, np.ndarray]], steps: int) -> list[float]:
    """``steps`` compiled train steps of ``model`` on the next batches; each step's loss."""
    return [float(model.train_on_batch(x, y)) for x, y in itertools.islice(batches, steps)]


def training_step(net: Any, train: CropSource, *, batch_size: int, optimizer: Any, loss: Any, augmentation: Any,
                  runtime: Runtime, seed: int) -> tuple[Any, BatchLoader]:
    """The compiled model ``fit_member`` trains and the loader that feeds it, for ``runtime.augment_on``:
    ``device``: ``training_model`` (uint8 in, augmentation in the step) fed uint8 batches;
    ``loader``: ``net`` behind a float32 input (so ``net`` itself stays uncompiled, as saved) fed
    batches the loader threads augmented."""
    on_loader = runtime.augment_on == "loader"
    if runtime.augment_on not in ("loader", "device"):
        raise NeuroRGError(f"augmentation place {runtime.augment_on!r}; expected loader or device")
    if on_loader:
        inputs = keras.Input(net.input_shape[1:], dtype="float32", name="crops_f32")
        model = keras.Model(inputs, net(inputs), name=f"train_{net.name}")
    else:
        model = training_model(net, augmentation, seed)
    model.compile(optimizer=optimizer, loss=loss, jit_compile=runtime.jit_compile)
    loader = BatchLoader(train, batch_size, workers=runtime.loader_workers, prefetch=runtime.prefetch,
                         transform=LoaderAugment(augmentation, seed) if on_loader else None)
    return model, loader


def measure_loader(loader: BatchLoader, rng: np.random.Generator, batches: int) -> float:
    """Crops/s the loader alone delivers (the input pipeline with the model taken out)."""
    gen = epoch_batches(loader, rng, max(1, -(-len(loader.source) // loader.batch_size)))
    next(gen)
    t0 = time.perf_counter()
    n = sum(len(next(gen)[0]) for _ in range(batches))
    return n / (time.perf_counter() - t0)


class _AugmentOnly(keras.Model):
    """The augmentation as a model of its own, always in training mode."""

    def __init__(self, params: Any, seed: int):
        super().__init__(name="augment_only")
        self.augment = FluorescenceAugment(params, seed, dtype="float32")

    def call(self, x, training: bool = False):
        return self.augment(x, training=True)


def augmentation_step(params: Any, seed: int, jit_compile: bool) -> Callable:
    """A compiled (where asked) function uint8 batch -> augmented float32 batch on the device, for
    measuring the augmentation without the model (benchmarks/train_speed.py)."""
    model = _AugmentOnly(params, seed)
    model.compile(jit_compile=jit_compile)
    return model.predict_on_batch
