"""Leave-plate-out ensemble training: folds, augmentation, the training loop, the bundle.

Folds follow the study: plates are dealt round-robin into (at most) 4 folds, so 5 plates give
{1, 5}, {2}, {3}, {4}; each fold's member trains on the other plates and validates on its own.
The weights of the best validation epoch are kept and restored at the end (the study tracked
them but saved the last epoch's).

Crops are cut once per plate and crop geometry into the crop cache on disk and streamed back in
batches (``cropsets.load_crop_set``, ``cropcache``), so plates larger than memory train. The loop
(``trainloop.fit_member``: ``train_on_batch`` on the TensorFlow, JAX or torch backend) trains in
bf16 mixed precision where the device computes it; the augmentation (``augment.AUGMENTATION``:
flips, 90 degree rotations, per-channel gain and offset, blur, noise) runs on a GPU inside the
compiled train step, on the CPU in numpy on the loader's threads, overlapped with the step
(``TrainRuntime``; on the CPU float32, not XLA-compiled on TensorFlow).

Evaluation of a trained bundle (accuracy, kappa, McNemar, the fit reference) is in ``evaluate.py``;
the shipped demo build in ``demo.py``.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from neurorg_core.augment import AUGMENTATION
from neurorg_core.cropcache import CropSource
from neurorg_core.cropsets import CropSet, crops_as_float, load_crop_set, well_labels
from neurorg_core.devices import (AugmentChoice, PrecisionChoice, describe_device, keras_backend,
                                  resolve_augment_on, resolve_jit, resolve_loader_workers, resolve_precision,
                                  visible_accelerators)
from neurorg_core.errors import NeuroRGError
from neurorg_core.model import (Bundle, build_model, check_architecture, round_weights_to_float16, save_bundle,
                                set_model_weights)
from neurorg_core.preprocess import INTENSITY_METHOD, CropGeometry
from neurorg_core.schema import CHANNELS, CROPS_PER_WELL, N_CLASSES
from neurorg_core.scoring import aggregate_wells

log = logging.getLogger(__name__)

MAX_FOLDS = 4
ChannelChoice = Literal["all", "nucleus", "neuron", "microglia"]


# --- folds ----------------------------------------------------------------------------------

def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(name))]


def fold_split(plate_names: Sequence[str]) -> list[list[str]]:
    """Validation plates of each leave-plate-out fold.

    Plates are sorted naturally (plate_2 before plate_10) and dealt round-robin into
    ``min(4, n)`` folds: 5 plates -> [[1, 5], [2], [3], [4]] (the study's split), 6 ->
    [[1, 5], [2, 6], [3], [4]], 3 -> [[1], [2], [3]]. One plate gives one fold whose
    validation is a held-out set of that plate's wells (see ``split_wells``).

    Raises
    ------
    NeuroRGError
        With no plates, or with a plate named twice.
    """
    names = [str(p) for p in plate_names]
    if not names:
        raise NeuroRGError("no training plates given; expected at least one")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise NeuroRGError(f"plate names must be unique; {', '.join(dupes)} appear more than once")
    ordered = sorted(names, key=_natural_key)
    k = min(MAX_FOLDS, len(ordered))
    return [ordered[i::k] for i in range(k)]


def split_wells(cs: CropSet, every: int = 4) -> tuple[CropSet, CropSet]:
    """Hold out every ``every``-th well of each class (by well order): (train, validation)."""
    val_wells = set()
    for k in np.unique(cs.labels):
        wells_k = sorted(set(cs.wells[cs.labels == k]), key=_natural_key)
        val_wells.update(wells_k[every - 1::every] or wells_k[-1:])
    mask = np.isin(cs.wells, sorted(val_wells))
    if mask.all():
        raise NeuroRGError(f"plate {cs.plate} has too few wells to hold some out for validation",
                           path=cs.source)
    return cs.subset(~mask), cs.subset(mask)


# --- training -------------------------------------------------------------------------------

OPTIMIZER = "AdamW"
"""The ``keras.optimizers`` class ``build_optimizer`` makes."""

WARMUP_EPOCHS = 1
"""Epochs of linear learning-rate warm-up from 0 before the cosine decay (``build_optimizer``)."""

SELECTION = "best validation crop accuracy (ties: lower validation loss), restored at the end"
"""What ``selection_key`` ranks epochs by; ``train_member`` keeps the best epoch's weights."""


def selection_key(metrics: dict) -> tuple[float, float]:
    """Rank of an epoch by its validation metrics (higher is better): crop accuracy, then -loss."""
    return (metrics["crop_acc"], -metrics["loss"])


@dataclass(frozen=True)
class TrainSettings:
    """How a member is trained (recorded on the model card as ``training``).

    ``optimizer``, ``schedule``, ``selection`` and ``augmentation`` are read-only descriptions
    built from what the code does (``OPTIMIZER``, ``WARMUP_EPOCHS``, ``SELECTION``,
    ``AUGMENTATION``); they are written on the card beside the settings.
    """

    arch: str = "efficientnet_tiny"
    input_size: int = 64               # pixels
    crop_edge_px: int = 128            # tile edge in the training plates' pixels (resized to input_size)
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 3e-3        # peak, reached after the warm-up
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    bn_momentum: float = 0.9
    crops_per_well: int = CROPS_PER_WELL
    seed: int = 0

    @property
    def optimizer(self) -> str:
        return OPTIMIZER

    @property
    def schedule(self) -> str:
        return f"{WARMUP_EPOCHS} epoch linear warm-up, then cosine decay to 0"

    @property
    def selection(self) -> str:
        return SELECTION

    @property
    def augmentation(self) -> str:
        return AUGMENTATION.describe()

    def as_dict(self) -> dict:
        """The card's ``training`` entry: every setting and description, in the card's order."""
        keys = ("arch", "input_size", "crop_edge_px", "epochs", "batch_size", "optimizer", "learning_rate",
                "weight_decay", "schedule", "label_smoothing", "bn_momentum", "selection", "augmentation",
                "crops_per_well", "seed")
        return {k: getattr(self, k) for k in keys}


def learning_rate_schedule(settings: TrainSettings, steps_per_epoch: int) -> Any:
    """Linear warm-up from 0 to ``settings.learning_rate`` over ``WARMUP_EPOCHS``, then a cosine
    decay to 0 at the last step (a Keras schedule: step -> learning rate)."""
    import keras

    total = steps_per_epoch * settings.epochs
    warmup = steps_per_epoch * WARMUP_EPOCHS
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=max(total - warmup, 1), alpha=0.0,
        warmup_target=settings.learning_rate, warmup_steps=warmup)


def build_optimizer(settings: TrainSettings, steps_per_epoch: int) -> Any:
    """``OPTIMIZER`` with ``settings.weight_decay`` on ``learning_rate_schedule``."""
    import keras

    return getattr(keras.optimizers, OPTIMIZER)(learning_rate=learning_rate_schedule(settings, steps_per_epoch),
                                                 weight_decay=settings.weight_decay)


@dataclass(frozen=True)
class TrainRuntime:
    """How training runs on this machine (not what it learns: that is ``TrainSettings``).

    ``precision``: ``auto`` = bf16 mixed precision where every accelerator computes bf16, float32
    on the CPU. ``jit_compile``: None = auto (``devices.resolve_jit``: always on JAX, with an
    accelerator on TensorFlow and torch). ``augment_on``: ``auto`` = in the compiled step on an
    accelerator, in numpy on the loader threads on the CPU (``devices.resolve_augment_on``).
    ``loader_workers`` threads read (and, on the loader, augment) ``prefetch`` batches ahead; None =
    auto (``devices.resolve_loader_workers``: 2 with the augmentation on the device, half the cores
    with it on the loader).
    """

    precision: PrecisionChoice = "auto"
    jit_compile: bool | None = None
    loader_workers: int | None = None
    prefetch: int = 4
    augment_on: AugmentChoice = "auto"

    def resolve(self, accelerators: Callable[[], Sequence[Any]] = visible_accelerators) -> Any:
        """The ``trainloop.Runtime`` for this machine's Keras backend and devices."""
        from neurorg_core.trainloop import Runtime

        found = tuple(accelerators())
        backend = keras_backend()
        augment_on = resolve_augment_on(self.augment_on, found)
        return Runtime(backend, describe_device(found), resolve_precision(self.precision, found),
                       resolve_jit(self.jit_compile, backend, found),
                       loader_workers=resolve_loader_workers(self.loader_workers, augment_on),
                       prefetch=self.prefetch, augment_on=augment_on)


@dataclass
class MemberResult:
    model: Any
    info: dict = field(default_factory=dict)


def _predict(model: Any, source: CropSource, batch: int = 128) -> np.ndarray:
    out = [np.asarray(model.predict_on_batch(crops_as_float(x))) for x in source.chunks(batch)]
    return np.concatenate(out) if out else np.zeros((0, N_CLASSES), np.float32)


def _val_metrics(probs: np.ndarray, cs_list: Sequence[CropSet]) -> dict:
    labels = np.concatenate([c.labels for c in cs_list])
    crop_acc = float((probs.argmax(1) == labels).mean())
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0))))
    correct = total = 0
    start = 0
    for c in cs_list:
        p = probs[start:start + len(c.labels)]
        start += len(c.labels)
        wells = aggregate_wells(p, c.wells)      # the screen's per-well rule (scoring.py)
        correct += int((wells.called == well_labels(c.labels, c.wells, wells.wells)).sum())
        total += len(wells.wells)
    return {"crop_acc": round(crop_acc, 4), "loss": round(loss, 4),
            "well_acc": round(correct / max(total, 1), 4)}


def channel_stats(crops: np.ndarray | CropSource) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation ([0, 1] units) of uint8 crops, in two passes over
    chunks of about 4 M values (what ``numpy.std`` computes, without holding the crops in memory)."""
    source = crops if isinstance(crops, CropSource) else CropSource([(crops, np.zeros(len(crops)))])
    rows = max(1, 2**22 // source.crop_bytes)
    n = len(source) * source.crop_bytes // source.crop_shape[-1]
    total = sum(c.reshape(-1, c.shape[-1]).sum(0, dtype=np.float64) for c in source.chunks(rows))
    mean = total / n
    sq = sum((((c.reshape(-1, c.shape[-1]) - mean) ** 2).sum(0)) for c in source.chunks(rows))
    std = np.sqrt(sq / n) / 255.0
    return (mean / 255.0).tolist(), np.maximum(std, 1e-3).tolist()


def train_member(train: Sequence[CropSet], val: Sequence[CropSet], settings: TrainSettings, *,
                 channels: Sequence[str] = CHANNELS, seed_offset: int = 0, name: str = "member",
                 progress: Callable[[str], None] | None = None,
                 runtime: TrainRuntime = TrainRuntime()) -> MemberResult:
    """Train one model on ``train`` crops, selecting the epoch by ``val`` crops.

    Returns the model with the best validation epoch's weights restored and rounded to storage
    precision (float16 kernels), and an info dict for the card (history, best epoch, metrics).
    """
    import keras

    from neurorg_core.trainloop import fit_member

    report = progress if progress is not None else log.info
    source = CropSource([(c.crops, c.labels) for c in train])
    val_source = CropSource([(c.crops, c.labels) for c in val])
    chans = tuple(channels)
    idx = [CHANNELS.index(ch) for ch in chans]
    mean, std = channel_stats(source)
    seed = settings.seed * 1000 + seed_offset
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(settings.arch, settings.input_size, chans, [mean[i] for i in idx], [std[i] for i in idx])
    steps = math.ceil(len(source) / settings.batch_size)
    for layer in model.layers:  # short runs: let batch-norm statistics follow the weights faster
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = settings.bn_momentum
    resolved = runtime.resolve()
    log.info("%s: training on %s, %s, jit_compile %s, augmentation on the %s", name, resolved.device,
             resolved.precision, resolved.jit_compile, resolved.augment_on)
    best_weights, history = fit_member(
        model, source, val_source, epochs=settings.epochs, batch_size=settings.batch_size,
        optimizer=build_optimizer(settings, steps),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=settings.label_smoothing),
        augmentation=AUGMENTATION, runtime=resolved, rng=rng, seed=seed,
        metrics=lambda probs: _val_metrics(probs, val), rank=selection_key, report=report, name=name)
    set_model_weights(model, best_weights)
    round_weights_to_float16(model)
    final = _val_metrics(_predict(model, val_source), val)
    best_epoch = max(history, key=selection_key)["epoch"]
    info = {"name": name, "best_epoch": best_epoch, "history": history,
            "metrics": {"validation": final}, "n_train_crops": int(len(source)),
            "normalization_source": "mean / std over the training crops", "runtime": resolved.as_dict()}
    return MemberResult(model, info)


def _plate_entries(sets: Sequence[CropSet]) -> list[dict]:
    return [{"name": c.plate, "fingerprint": c.fingerprint, "n_crops": int(len(c.labels)),
             "n_wells": int(len(np.unique(c.wells)))} for c in sets]


def training_geometry(plates: Sequence[str | Path], crop_edge_px: int) -> CropGeometry:
    """The crop geometry a bundle trained on ``plates`` records: tiles of ``crop_edge_px`` pixels of
    the first plate, at its pixel size where the files give it (the other plates are cut at the
    same physical size)."""
    from neurorg_core.plates import load_plate

    px = load_plate(plates[0]).pixel_size_um if plates else None
    return CropGeometry("tiles", int(crop_edge_px), px)


def load_training_sets(plates: Sequence[str | Path], input_size: int, geometry: CropGeometry,
                       crops_per_well: int = CROPS_PER_WELL) -> list[CropSet]:
    """Load each plate folder's labelled crops; plate names must be distinct."""
    sets = [load_crop_set(p, input_size, geometry=geometry, crops_per_well=crops_per_well) for p in plates]
    fold_split([c.plate for c in sets])  # validates names
    return sets


def _fold_data(sets: Sequence[CropSet], val_names: Sequence[str]) -> tuple[list[CropSet], list[CropSet]]:
    if len(sets) == 1:
        tr, va = split_wells(sets[0])
        return [tr], [va]
    return ([c for c in sets if c.plate not in val_names], [c for c in sets if c.plate in val_names])


def train_bundle(plates: Sequence[str | Path], out: str | Path, settings: TrainSettings = TrainSettings(),
                 *, channels: ChannelChoice = "all", sets: Sequence[CropSet] | None = None,
                 geometry: CropGeometry | None = None, extra: dict | None = None,
                 runtime: TrainRuntime = TrainRuntime()) -> Bundle:
    """Train a leave-plate-out bundle and save it.

    Parameters
    ----------
    plates
        Plate folders with class labels (ignored when ``sets`` is given).
    out
        Bundle folder to write.
    settings
        Architecture, input size (px), epochs, optimiser, seed.
    channels
        ``"all"``: a 3-channel ensemble, one member per fold (``fold_split``). A channel name:
        a single-channel bundle with one member, trained on the first fold's training plates.
    sets
        Already-loaded crops (to share them between several bundles; give their ``geometry`` too).
    geometry
        The crop geometry ``sets`` were cut with; default ``training_geometry(plates, ...)``.
    extra
        More card fields (provenance).
    runtime
        Precision, compilation, where the augmentation runs and loader threads (``TrainRuntime``); recorded on the card as
        ``training_runtime``.
    """
    check_architecture(settings.arch)
    if channels not in ("all", *CHANNELS):
        raise NeuroRGError(f"channels {channels!r} is not one of all, {', '.join(CHANNELS)}")
    if sets is not None and geometry is None:
        raise NeuroRGError("crops given without their crop geometry; expected geometry= with sets=")
    geometry = geometry or training_geometry(plates, settings.crop_edge_px)
    data = list(sets) if sets is not None else load_training_sets(plates, settings.input_size, geometry,
                                                                   settings.crops_per_well)
    if data and data[0].crops.shape[1] != settings.input_size:
        raise NeuroRGError(f"crops are {data[0].crops.shape[1]} px; settings ask {settings.input_size} px")
    folds = fold_split([c.plate for c in data])
    models, infos = [], []
    single = channels != "all"
    plan = [(1, folds[0], (channels,))] if single else [(i + 1, f, CHANNELS) for i, f in enumerate(folds)]
    for fold, val_names, chans in plan:
        tr, va = _fold_data(data, val_names)
        name = chans[0] if single else f"fold{fold}"
        log.info("%s: train on %s, validate on %s", name, ", ".join(c.plate for c in tr),
                 ", ".join(c.plate for c in va) + (" (held-out wells)" if len(data) == 1 else ""))
        res = train_member(tr, va, settings, channels=chans, seed_offset=fold, name=name, runtime=runtime)
        res.info.update({"fold": None if single else fold, "train_plates": [c.plate for c in tr],
                         "val_plates": [] if len(data) == 1 else [c.plate for c in va]})
        models.append(res.model)
        infos.append(res.info)
    card_extra = {
        "training": settings.as_dict(),
        "training_runtime": infos[0]["runtime"],
        "training_plates": _plate_entries(data),
        "folds": [{"fold": i + 1, "val_plates": f} for i, f in enumerate(folds)],
        **geometry_card(geometry, data),
        **(extra or {}),
    }
    return save_bundle(out, models, infos, kind="single_channel" if single else "ensemble",
                       arch=settings.arch, input_size=settings.input_size, extra=card_extra)


def geometry_card(geometry: CropGeometry, sets: Sequence[CropSet]) -> dict[str, Any]:
    """The card fields that say how crops were made: crop geometry, intensity method, and whether
    every training plate was rendered by the synthetic assay."""
    from neurorg_core.synth import is_synthetic_plate

    return {"crop_geometry": geometry.as_card(), "intensity": {"method": INTENSITY_METHOD},
            "synthetic": bool(sets) and all(is_synthetic_plate(c.source) for c in sets),
            "well_call": "mean_probability"}


def train_single_channel_bundle(out: str | Path, settings: TrainSettings, sets: Sequence[CropSet],
                                channels: Sequence[str] = CHANNELS, *, geometry: CropGeometry,
                                extra: dict | None = None, runtime: TrainRuntime = TrainRuntime()) -> Bundle:
    """One single-channel member per channel, each trained on fold 1's training plates."""
    folds = fold_split([c.plate for c in sets])
    tr, va = _fold_data(sets, folds[0])
    models, infos = [], []
    for i, ch in enumerate(channels):
        res = train_member(tr, va, settings, channels=(ch,), seed_offset=100 + i, name=ch, runtime=runtime)
        res.info.update({"fold": None, "train_plates": [c.plate for c in tr],
                         "val_plates": [] if len(sets) == 1 else [c.plate for c in va]})
        models.append(res.model)
        infos.append(res.info)
    card_extra = {"training": settings.as_dict(), "training_runtime": infos[0]["runtime"],
                  "training_plates": _plate_entries(sets),
                  "folds": [{"fold": 1, "val_plates": folds[0]}], **geometry_card(geometry, sets),
                  **(extra or {})}
    return save_bundle(out, models, infos, kind="single_channel", arch=settings.arch,
                       input_size=settings.input_size, extra=card_extra)


