"""Leave-plate-out ensemble training and evaluation.

Folds follow the study: plates are dealt round-robin into (at most) 4 folds, so 5 plates give
{1, 5}, {2}, {3}, {4}; each fold's member trains on the other plates and validates on its own.
The weights of the best validation epoch are kept and restored at the end (the study tracked
them but saved the last epoch's).

Crops are read once into memory at the model's input size as uint8 (60 wells x 15 crops of
64 px = 11 MB per plate); augmentation (flips, 90 degree rotations, per-channel gain and offset,
blur, noise) is done in numpy per batch.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
from scipy import ndimage

from neurorg_core.errors import NeuroRGError
from neurorg_core.model import (Bundle, build_model, check_architecture, load_bundle,
                                round_weights_to_float16, save_bundle, set_model_weights)
from neurorg_core.preprocess import INTENSITY_METHOD, CropGeometry, crops_from_field, plate_cropping
from neurorg_core.schema import CHANNELS, CLASS, CROPS_PER_WELL, N_CLASSES, WELL
from neurorg_core.scoring import call_wells

log = logging.getLogger(__name__)

MAX_FOLDS = 4
PLATE_MAP_NAMES = ("platemap.csv", "platemap.tsv", "plate_map.csv", "plate_map.tsv")
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


# --- crops in memory --------------------------------------------------------------------------

@dataclass
class CropSet:
    """The crops of one plate's labelled wells, held in memory as uint8."""

    plate: str
    fingerprint: str          # content hash of the plate's first field and plate map (identity)
    source: Path
    crops: np.ndarray         # uint8 (n, s, s, 3), CHANNELS order
    labels: np.ndarray        # int64 (n,), class 0..5
    wells: np.ndarray         # str (n,), "A01"

    def subset(self, mask: np.ndarray) -> "CropSet":
        return CropSet(self.plate, self.fingerprint, self.source, self.crops[mask], self.labels[mask],
                       self.wells[mask])


def find_plate_map(folder: str | Path) -> Path:
    """The plate map inside a plate folder (``platemap.csv`` or similar)."""
    base = Path(folder)
    for name in PLATE_MAP_NAMES:
        if (base / name).is_file():
            return base / name
    raise NeuroRGError(f"no plate map in {base}; expected one of {', '.join(PLATE_MAP_NAMES)} "
                       "with a Metadata_Class column for training", path=base)


def plate_labels(plate: Any, folder: str | Path) -> dict[str, int]:
    """Well -> class label: ``Plate.labels`` (npy layout) or the plate map's ``Metadata_Class``."""
    if plate.labels:
        return {w: int(k) for w, k in plate.labels.items()}
    from neurorg_core.platemap import load_plate_map

    path = find_plate_map(folder)
    df = load_plate_map(path)
    known = df[df[CLASS].notna()]
    if known.empty:
        raise NeuroRGError("plate map has no Metadata_Class labels; training and evaluation need "
                           "class-labelled wells (0-5)", path=path)
    return {str(w): int(k) for w, k in zip(known[WELL], known[CLASS])}


def load_crop_set(path: str | Path, input_size: int, *, geometry: CropGeometry,
                  crops_per_well: int = CROPS_PER_WELL) -> CropSet:
    """Read every labelled well of a plate into memory as uint8 crops at ``input_size`` px.

    Parameters
    ----------
    path
        Plate folder (any layout ``plates.load_plate`` reads) with a class-labelled plate map,
        or the study's npy release.
    input_size
        Model input edge, pixels.
    geometry
        What one crop holds (the model's crop edge and pixel size); the plate is cut exactly as
        scoring cuts it (``preprocess.plate_cropping``), intensity scaling included.
    crops_per_well
        Crops taken per well (spread over its fields, see ``preprocess.plan_crops``).
    """
    from neurorg_core.plates import load_plate

    plate = load_plate(path)
    cropping = plate_cropping(plate, geometry)
    labels = plate_labels(plate, path)
    imaged = set(plate.wells())
    wells = [w for w in plate.wells() if w in labels]
    if not wells:
        raise NeuroRGError(f"none of the {len(imaged)} imaged wells has a class label", path=path)
    crops, ys, ws = [], [], []
    for well in wells:
        refs = plate.fields_of(well)
        plan = cropping.plan(len(refs), plate.field_shape, crops_per_well)
        for i, ref in enumerate(refs):
            field_img = plate.read_field(ref)
            c = crops_from_field(field_img, plan, i, input_size, cropping.intensity)
            if len(c):
                crops.append(np.rint(np.clip(c, 0.0, 1.0) * 255.0).astype(np.uint8))
                ys += [labels[well]] * len(c)
                ws += [well] * len(c)
    out = CropSet(plate.name, plate_fingerprint(plate, labels), Path(path), np.concatenate(crops),
                  np.asarray(ys, np.int64), np.asarray(ws))
    log.info("%s: %d crops from %d labelled wells", plate.name, len(out.labels), len(wells))
    return out


def plate_fingerprint(plate: Any, labels: dict[str, int]) -> str:
    """A labelled plate's identity whatever its name or folder: SHA-256 of the first labelled
    well's first field's pixels and of the class labels (first 16 hex digits)."""
    first = next(w for w in plate.wells() if w in labels)
    digest = hashlib.sha256(np.ascontiguousarray(plate.read_field(plate.fields_of(first)[0])).tobytes())
    digest.update(repr(sorted(labels.items())).encode())
    return digest.hexdigest()[:16]


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


# --- augmentation ---------------------------------------------------------------------------

def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fluorescence-minded augmentation of a uint8 batch -> float32 [0, 1].

    Random flips and 90 degree rotations (orientation carries no meaning), per-channel gain
    (log-normal, sd 0.2) and offset (-0.03..0.05) like staining / exposure differences between
    plates, Gaussian blur (sigma 0.3-1.0 px, 30 % of crops) like focus, and additive noise
    (sd 0-0.03).
    """
    x = batch.astype(np.float32) / 255.0
    n = len(x)
    for i in range(n):
        k = int(rng.integers(4))
        xi = np.rot90(x[i], k, axes=(0, 1))
        if rng.random() < 0.5:
            xi = xi[:, ::-1]
        x[i] = xi
    blur = rng.random(n) < 0.3
    for i in np.flatnonzero(blur):
        x[i] = ndimage.gaussian_filter(x[i], sigma=(rng.uniform(0.3, 1.0),) * 2 + (0.0,))
    gain = np.exp(rng.normal(0.0, 0.2, (n, 1, 1, 3))).astype(np.float32)
    offset = rng.uniform(-0.03, 0.05, (n, 1, 1, 3)).astype(np.float32)
    noise_sd = rng.uniform(0.0, 0.03, (n, 1, 1, 1)).astype(np.float32)
    x = x * gain + offset + rng.standard_normal(x.shape, dtype=np.float32) * noise_sd
    return np.clip(x, 0.0, 1.0)


# --- training -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainSettings:
    """How a member is trained (recorded on the model card)."""

    arch: str = "efficientnet_tiny"
    input_size: int = 64               # pixels
    crop_edge_px: int = 128            # tile edge in the training plates' pixels (resized to input_size)
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "AdamW"
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    schedule: str = "1 epoch linear warm-up, then cosine decay to 0"
    label_smoothing: float = 0.0
    bn_momentum: float = 0.9
    selection: str = "best validation crop accuracy (ties: lower validation loss), restored at the end"
    augmentation: str = ("flips, 90 deg rotations, per-channel gain (log-normal sd 0.2) and offset "
                         "(-0.03..0.05), Gaussian blur sigma 0.3-1.0 px on 30 % of crops, noise sd 0-0.03")
    crops_per_well: int = CROPS_PER_WELL
    seed: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class MemberResult:
    model: Any
    info: dict = field(default_factory=dict)


def _as_float(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 255.0


def _predict(model: Any, crops_u8: np.ndarray, batch: int = 128) -> np.ndarray:
    out = [model.predict_on_batch(_as_float(crops_u8[a:a + batch])) for a in range(0, len(crops_u8), batch)]
    return np.concatenate([np.asarray(o) for o in out]) if out else np.zeros((0, N_CLASSES), np.float32)


def well_calls(probs: np.ndarray, wells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-well calls from crop probabilities (n, 6).

    Returns (well names, arg-max of the mean probability, plurality vote of crop arg-maxes;
    ties go to the lower class).
    """
    names = np.unique(wells)
    means = np.zeros((len(names), N_CLASSES))
    votes = np.zeros((len(names), N_CLASSES), np.int64)
    crop_calls = probs.argmax(1)
    for i, w in enumerate(names):
        sel = wells == w
        means[i] = probs[sel].mean(0)
        votes[i] = np.bincount(crop_calls[sel], minlength=N_CLASSES)
    return (names, call_wells(means, votes, "mean_probability").astype(np.int64),
            call_wells(means, votes, "plurality").astype(np.int64))


def _well_labels(labels: np.ndarray, wells: np.ndarray, names: np.ndarray) -> np.ndarray:
    return np.asarray([labels[wells == w][0] for w in names], np.int64)


def _val_metrics(probs: np.ndarray, cs_list: Sequence[CropSet]) -> dict:
    labels = np.concatenate([c.labels for c in cs_list])
    crop_acc = float((probs.argmax(1) == labels).mean())
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0))))
    correct = total = 0
    start = 0
    for c in cs_list:
        p = probs[start:start + len(c.labels)]
        start += len(c.labels)
        names, mean_call, _ = well_calls(p, c.wells)
        truth = _well_labels(c.labels, c.wells, names)
        correct += int((mean_call == truth).sum())
        total += len(names)
    return {"crop_acc": round(crop_acc, 4), "loss": round(loss, 4),
            "well_acc": round(correct / max(total, 1), 4)}


def channel_stats(crops_u8: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation ([0, 1] units) of uint8 crops."""
    flat = crops_u8.reshape(-1, crops_u8.shape[-1])
    mean = flat.mean(0, dtype=np.float64) / 255.0
    std = flat.std(0, dtype=np.float64) / 255.0
    return mean.tolist(), np.maximum(std, 1e-3).tolist()


def train_member(train: Sequence[CropSet], val: Sequence[CropSet], settings: TrainSettings, *,
                 channels: Sequence[str] = CHANNELS, seed_offset: int = 0, name: str = "member",
                 progress: Callable[[str], None] | None = None) -> MemberResult:
    """Train one model on ``train`` crops, selecting the epoch by ``val`` crops.

    Returns the model with the best validation epoch's weights restored and rounded to storage
    precision (float16 kernels), and an info dict for the card (history, best epoch, metrics).
    """
    import keras

    report = progress if progress is not None else log.info
    x = np.concatenate([c.crops for c in train])
    y = np.concatenate([c.labels for c in train])
    chans = tuple(channels)
    idx = [CHANNELS.index(ch) for ch in chans]
    mean, std = channel_stats(x[..., idx])
    seed = settings.seed * 1000 + seed_offset
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(settings.arch, settings.input_size, chans, mean, std)
    steps = math.ceil(len(x) / settings.batch_size)
    total = steps * settings.epochs
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=max(total - steps, 1), alpha=0.0,
        warmup_target=settings.learning_rate, warmup_steps=steps)
    for layer in model.layers:  # short runs: let batch-norm statistics follow the weights faster
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = settings.bn_momentum
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=settings.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=settings.label_smoothing),
        jit_compile=False,  # XLA compilation of the train step costs minutes on 2 cores
    )
    onehot = np.eye(N_CLASSES, dtype=np.float32)
    x_val = np.concatenate([c.crops for c in val])
    best: tuple[float, float] | None = None
    best_weights: list[np.ndarray] = []
    history = []
    for epoch in range(1, settings.epochs + 1):
        t0 = time.perf_counter()
        order = rng.permutation(steps * settings.batch_size) % len(x)  # full batches only
        losses = []
        for a in range(0, len(order), settings.batch_size):
            sel = order[a:a + settings.batch_size]
            losses.append(float(model.train_on_batch(augment(x[sel], rng), onehot[y[sel]])))
        metrics = _val_metrics(_predict(model, x_val), val)
        row = {"epoch": epoch, "train_loss": round(float(np.mean(losses)), 4), **metrics,
               "seconds": round(time.perf_counter() - t0, 1)}
        history.append(row)
        score = (metrics["crop_acc"], -metrics["loss"])
        improved = best is None or score > best
        if improved:
            best = score
            best_weights = [np.array(w) for w in model.get_weights()]
        report(f"{name} epoch {epoch}/{settings.epochs}: train loss {row['train_loss']:.3f}, "
               f"val crop acc {metrics['crop_acc']:.3f}, well acc {metrics['well_acc']:.3f}, "
               f"val loss {metrics['loss']:.3f} ({row['seconds']:.0f} s){' *best' if improved else ''}")
    set_model_weights(model, best_weights)
    round_weights_to_float16(model)
    final = _val_metrics(_predict(model, x_val), val)
    best_epoch = max(history, key=lambda r: (r["crop_acc"], -r["loss"]))["epoch"]
    info = {"name": name, "best_epoch": best_epoch, "history": history,
            "metrics": {"validation": final}, "n_train_crops": int(len(x)),
            "normalization_source": "mean / std over the training crops"}
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
                 geometry: CropGeometry | None = None, extra: dict | None = None) -> Bundle:
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
        res = train_member(tr, va, settings, channels=chans, seed_offset=fold, name=name)
        res.info.update({"fold": None if single else fold, "train_plates": [c.plate for c in tr],
                         "val_plates": [] if len(data) == 1 else [c.plate for c in va]})
        models.append(res.model)
        infos.append(res.info)
    card_extra = {
        "training": settings.as_dict(),
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
                                extra: dict | None = None) -> Bundle:
    """One single-channel member per channel, each trained on fold 1's training plates."""
    folds = fold_split([c.plate for c in sets])
    tr, va = _fold_data(sets, folds[0])
    models, infos = [], []
    for i, ch in enumerate(channels):
        res = train_member(tr, va, settings, channels=(ch,), seed_offset=100 + i, name=ch)
        res.info.update({"fold": None, "train_plates": [c.plate for c in tr],
                         "val_plates": [] if len(sets) == 1 else [c.plate for c in va]})
        models.append(res.model)
        infos.append(res.info)
    card_extra = {"training": settings.as_dict(), "training_plates": _plate_entries(sets),
                  "folds": [{"fold": 1, "val_plates": folds[0]}], **geometry_card(geometry, sets),
                  **(extra or {})}
    return save_bundle(out, models, infos, kind="single_channel", arch=settings.arch,
                       input_size=settings.input_size, extra=card_extra)


# --- evaluation -----------------------------------------------------------------------------

def _confusion(truth: np.ndarray, pred: np.ndarray) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(truth, pred, labels=list(range(N_CLASSES))).tolist()


def _kappa(truth: np.ndarray, pred: np.ndarray) -> float | None:
    from sklearn.metrics import cohen_kappa_score

    if len(np.unique(np.concatenate([truth, pred]))) < 2:
        return None
    return round(float(cohen_kappa_score(truth, pred)), 4)


def score_crops(probs: np.ndarray, labels: np.ndarray, wells: np.ndarray) -> dict:
    """Crop- and well-level accuracy of crop probabilities (n, 6) against class labels.

    Well calls are the arg-max of the mean probability (``well_acc``) and, as in the study, the
    plurality vote of crop calls (``well_acc_vote``). Confusion matrices: rows truth, columns call.
    """
    names, mean_call, vote_call = well_calls(probs, wells)
    truth_w = _well_labels(labels, wells, names)
    crop_call = probs.argmax(1)
    return {
        "n_crops": int(len(labels)), "n_wells": int(len(names)),
        "crop_acc": round(float((crop_call == labels).mean()), 4),
        "well_acc": round(float((mean_call == truth_w).mean()), 4),
        "well_acc_vote": round(float((vote_call == truth_w).mean()), 4),
        "wells_correct": int((mean_call == truth_w).sum()),
        "crop_kappa": _kappa(labels, crop_call), "well_kappa": _kappa(truth_w, mean_call),
        "crop_confusion": _confusion(labels, crop_call),
        "well_confusion": _confusion(truth_w, mean_call),
    }


def _well_correct(probs: np.ndarray, labels: np.ndarray, wells: np.ndarray) -> np.ndarray:
    names, mean_call, _ = well_calls(probs, wells)
    return mean_call == _well_labels(labels, wells, names)


def evaluate_bundle(plates: Sequence[str | Path], bundle: Bundle, *, predictor: Any = None,
                    sets: Sequence[CropSet] | None = None) -> dict:
    """Crop / well accuracy, confusion matrices, Cohen's kappa and McNemar for a bundle.

    A plate is recognised by its content fingerprint (not its name). If it was a fold's
    validation plate, that fold's member is scored on it (``cross_validation``: per fold and
    pooled, as in the study). Plates no member trained on are ``unseen``: scored with the
    ensemble (mean probability over members) and with each member alone; McNemar's test
    compares the ensemble with the best single member over the unseen wells (well level).
    Plates some member trained on are listed but not scored (that would be training accuracy).

    Returns
    -------
    dict
        JSON-able: ``plates`` (status of each), ``cross_validation``, ``unseen``.
    """
    from neurorg_core.inference import Predictor
    from neurorg_core.stats import mcnemar

    pred = predictor if predictor is not None else Predictor(bundle)
    geometry = CropGeometry.from_card(bundle.card)
    data = list(sets) if sets is not None else [load_crop_set(p, bundle.input_size, geometry=geometry)
                                                for p in plates]
    entries = bundle.card["members"]
    trained_on = {fp for e in entries for fp in _train_fingerprints(bundle, e)}
    report: dict[str, Any] = {"model_id": bundle.id, "plates": []}
    cv: dict[int, list[tuple[np.ndarray, CropSet]]] = {}
    unseen: list[tuple[np.ndarray, CropSet]] = []
    for cs in data:
        probs = pred.predict(_as_float(cs.crops))
        val_members = [k for k, e in enumerate(entries) if cs.fingerprint in _val_fingerprints(bundle, e)]
        if val_members:
            status = "validation of " + ", ".join(entries[k]["name"] for k in val_members)
            for k in val_members:
                cv.setdefault(k, []).append((probs[k], cs))
        elif cs.fingerprint in trained_on:
            status = "training (not scored)"
        else:
            status = "unseen"
            unseen.append((probs, cs))
        report["plates"].append({"plate": cs.plate, "source": str(cs.source), "fingerprint": cs.fingerprint,
                                 "status": status})
        log.info("evaluate: %s (%s) is %s", cs.plate, cs.source, status)
    if cv:
        folds = {}
        pooled_p, pooled_y, pooled_w = [], [], []
        for k, items in sorted(cv.items()):
            p = np.concatenate([i[0] for i in items])
            y = np.concatenate([i[1].labels for i in items])
            w = np.concatenate([np.char.add(f"{i[1].fingerprint}:", i[1].wells.astype(str)) for i in items])
            folds[entries[k]["name"]] = score_crops(p, y, w)
            pooled_p.append(p), pooled_y.append(y), pooled_w.append(w)
        report["cross_validation"] = {
            "folds": folds,
            "pooled": score_crops(np.concatenate(pooled_p), np.concatenate(pooled_y), np.concatenate(pooled_w)),
        }
    if unseen:
        p_all = np.concatenate([u[0] for u in unseen], axis=1)          # (M, n, 6)
        y = np.concatenate([u[1].labels for u in unseen])
        w = np.concatenate([np.char.add(f"{u[1].fingerprint}:", u[1].wells.astype(str)) for u in unseen])
        members = {e["name"]: score_crops(p_all[k], y, w) for k, e in enumerate(entries)}
        section: dict[str, Any] = {"plates": [u[1].plate for u in unseen], "members": members}
        if bundle.kind == "ensemble":
            ens = p_all.mean(0)
            section["ensemble"] = score_crops(ens, y, w)
            best = max(range(len(entries)), key=lambda k: members[entries[k]["name"]]["well_acc"])
            e_ok, m_ok = _well_correct(ens, y, w), _well_correct(p_all[best], y, w)
            b, c = int((e_ok & ~m_ok).sum()), int((~e_ok & m_ok).sum())
            section["mcnemar_ensemble_vs_best_member"] = {"member": entries[best]["name"],
                                                          **mcnemar(b, c)}
        report["unseen"] = section
    return report


def calibrate_fit_reference(plates: Sequence[str | Path], bundle: Bundle, *, work_dir: str | Path,
                            backend: str = "litert") -> dict[str, Any]:
    """Score reference plates with ``bundle`` and pool what it saw into its ``fit_reference``.

    The plates should be ones no member trained on (held-out plates of the same assay, imaged as
    the model's crop geometry expects), with plate maps naming control and disease wells. Each is
    scored by ``pipeline.run_plate`` into a temporary store under ``work_dir``, so the reference is
    computed exactly as every later run's check is.

    Returns
    -------
    dict
        The card's ``fit_reference``: ``fitcheck.FitStats`` as a dict, plus the plates used.
    """
    from neurorg_core.fitcheck import pool_stats
    from neurorg_core.pipeline import run_plate
    from neurorg_core.plates import load_plate
    from neurorg_core.platemap import load_plate_map
    from neurorg_core.store import ResultStore

    if not plates:
        raise NeuroRGError("no reference plates given; expected plates the model did not train on")
    trained_on = {fp for e in bundle.card.get("members", []) for fp in _train_fingerprints(bundle, e)}
    parts = []
    with ResultStore(Path(work_dir) / "calibrate.duckdb") as store:
        for path in plates:
            plate = load_plate(path)
            if trained_on and _is_training_plate(plate, path, trained_on):
                raise NeuroRGError("a member of the model trained on this plate; the fit reference needs "
                                   "plates it has not seen", path=path)
            res = run_plate(plate, load_plate_map(find_plate_map(path)), bundle, store, backend=backend)  # type: ignore[arg-type]
            parts.append(res.fit_stats)
            log.info("fit reference: %s scored (%d wells)", path, res.n_wells)
    return {**pool_stats(parts).as_dict(), "plates": [str(p) for p in plates]}


def _is_training_plate(plate: Any, path: str | Path, trained_on: set[str]) -> bool:
    """Whether a plate's fingerprint is one the bundle trained on (plates without class labels
    cannot have been training plates)."""
    try:
        labels = plate_labels(plate, path)
    except NeuroRGError:
        return False
    return plate_fingerprint(plate, labels) in trained_on


def _val_fingerprints(bundle: Bundle, entry: dict) -> list[str]:
    by_name = {p["name"]: p["fingerprint"] for p in bundle.card.get("training_plates", [])}
    return [by_name[n] for n in entry.get("val_plates", []) if n in by_name]


def _train_fingerprints(bundle: Bundle, entry: dict) -> list[str]:
    by_name = {p["name"]: p["fingerprint"] for p in bundle.card.get("training_plates", [])}
    return [by_name[n] for n in entry.get("train_plates", []) if n in by_name]


def format_report(report: dict) -> str:
    """A short human-readable summary of ``evaluate_bundle``'s report."""
    lines = [f"model {report['model_id']}"]
    for p in report["plates"]:
        lines.append(f"  {p['plate']} ({p['source']}): {p['status']}")
    cv = report.get("cross_validation")
    if cv:
        for name, m in cv["folds"].items():
            lines.append(f"  cross-validation {name}: crop {m['crop_acc']:.1%}, well {m['well_acc']:.1%} "
                         f"(vote {m['well_acc_vote']:.1%}), n = {m['n_wells']} wells")
        m = cv["pooled"]
        lines.append(f"  cross-validation pooled: crop {m['crop_acc']:.1%}, well {m['well_acc']:.1%} "
                     f"({m['wells_correct']}/{m['n_wells']}), kappa {m['well_kappa']}")
    un = report.get("unseen")
    if un:
        if "ensemble" in un:
            m = un["ensemble"]
            lines.append(f"  unseen plates, ensemble: crop {m['crop_acc']:.1%}, well {m['well_acc']:.1%} "
                         f"({m['wells_correct']}/{m['n_wells']}; vote {m['well_acc_vote']:.1%}), "
                         f"well kappa {m['well_kappa']}")
        for name, m in un["members"].items():
            lines.append(f"  unseen plates, {name}: crop {m['crop_acc']:.1%}, well {m['well_acc']:.1%}")
        mc = un.get("mcnemar_ensemble_vs_best_member")
        if mc:
            lines.append(f"  McNemar ensemble vs {mc['member']}: b = {mc['b']}, c = {mc['c']}, "
                         f"chi2 = {mc['chi2']:.2f}, p = {mc['p']:.3g}")
    return "\n".join(lines)


# --- the shipped demo bundle ----------------------------------------------------------------

@dataclass(frozen=True)
class DemoRecipe:
    """How ``build-demo`` makes ``data/models/demo`` (recorded on both cards)."""

    train_seed: int = 1            # training plates: plate_01..plate_05 of this seed
    n_train_plates: int = 5
    test_seeds: tuple[int, ...] = (101, 102)   # never used in training
    screen_seed: int = 201
    field_size: int = 256          # pixels; 4 fields -> 2 x 2 grid of 128 px tiles -> 64 px crops
    n_fields: int = 4
    ensemble_epochs: int = 20        # a fold member was still improving at 12-17 (2026-11-24 trial)
    single_channel_epochs: int = 5
    cell_severity_sd: float = 0.10  # synth default 0.15: see ``synth_params``
    well_severity_sd: float = 0.02  # synth default 0.03

    def synth_params(self):
        """The synthetic assay used for the demo: the defaults with less cell-to-cell and
        well-to-well severity spread, so a small CPU-trained model can call wells reliably."""
        from dataclasses import replace

        from neurorg_core.synth import DEFAULT_PARAMS

        return replace(DEFAULT_PARAMS, cell_severity_sd=self.cell_severity_sd,
                       well_severity_sd=self.well_severity_sd)

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def load_screen_crops(path: str | Path, input_size: int, geometry: CropGeometry) -> CropSet:
    """Crops of every imaged well of a plate (labels -1: a screening plate has none)."""
    from neurorg_core.plates import load_plate

    plate = load_plate(path)
    cropping = plate_cropping(plate, geometry)
    crops, ws = [], []
    for well in plate.wells():
        refs = plate.fields_of(well)
        plan = cropping.plan(len(refs), plate.field_shape)
        for i, ref in enumerate(refs):
            c = crops_from_field(plate.read_field(ref), plan, i, input_size, cropping.intensity)
            crops.append(np.rint(np.clip(c, 0.0, 1.0) * 255.0).astype(np.uint8))
            ws += [well] * len(c)
    x = np.concatenate(crops)
    return CropSet(plate.name, "", Path(path), x, np.full(len(x), -1, np.int64), np.asarray(ws))


def per_well_p_control(probs: np.ndarray, wells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(well names, mean class-0 probability per well) from crop probabilities (n, 6)."""
    names = np.unique(wells)
    return names, np.asarray([probs[wells == w, 0].mean() for w in names])


def build_demo(out: str | Path, work_dir: str | Path, *, settings: TrainSettings | None = None,
               recipe: DemoRecipe = DemoRecipe(), reuse: bool = False) -> dict:
    """Render synthetic plates, train the demo ensemble and single-channel bundle, evaluate.

    Writes ``out/ensemble`` (one 3-channel member per fold) and ``out/single_channel``
    (nucleus, neuron, microglia), each with its converted LiteRT files, and puts the evaluation
    on unseen-seed plates and the single-channel Pearson comparison on a screening plate into
    the cards. Plates are rendered under ``work_dir`` (not shipped). ``reuse=True`` keeps
    bundles already trained in ``out`` and only (re-)evaluates them.

    Returns
    -------
    dict
        ``ensemble`` and ``single_channel`` metrics, as written on the cards.
    """
    from neurorg_core.inference import Predictor
    from neurorg_core.model import update_card
    from neurorg_core.stats import channel_correlation
    from neurorg_core.synth import DEFAULT_PARAMS, write_synthetic_plates

    st = settings or TrainSettings(epochs=recipe.ensemble_epochs)
    work = Path(work_dir)
    out = Path(out)
    t0 = time.perf_counter()
    params = recipe.synth_params()
    train_dirs = write_synthetic_plates(work / f"train_seed{recipe.train_seed}", seed=recipe.train_seed,
                                        n_plates=recipe.n_train_plates, n_fields=recipe.n_fields,
                                        size=recipe.field_size, params=params)
    test_dirs = [d for s in recipe.test_seeds for d in write_synthetic_plates(
        work / f"test_seed{s}", seed=s, n_plates=1, n_fields=recipe.n_fields, size=recipe.field_size,
        params=params)]
    screen_dir = write_synthetic_plates(work / f"screen_seed{recipe.screen_seed}", seed=recipe.screen_seed,
                                        n_plates=1, n_fields=recipe.n_fields, size=recipe.field_size,
                                        kind="screen", params=params)[0]
    log.info("rendered %d training, %d test and 1 screening plate in %.0f s", len(train_dirs),
             len(test_dirs), time.perf_counter() - t0)
    geometry = training_geometry(train_dirs, st.crop_edge_px)
    sets = load_training_sets(train_dirs, st.input_size, geometry, st.crops_per_well)
    provenance = {
        "demo_recipe": recipe.as_dict(),
        "synth_params": (f"neurorg_core.synth.DEFAULT_PARAMS except cell_severity_sd "
                         f"{recipe.cell_severity_sd} (default {DEFAULT_PARAMS.cell_severity_sd}) and "
                         f"well_severity_sd {recipe.well_severity_sd} (default "
                         f"{DEFAULT_PARAMS.well_severity_sd})"),
        "why_tiny": ("efficientnet_tiny (EfficientNet compound-scaled below B0: width 0.5, depth 0.5, "
                     "0.67 M parameters) because 7 B0 members would be ~113 MB (over the 40 MB git "
                     "limit) and B0 trains at half the speed on 2 CPU cores; the study used "
                     "ImageNet-pretrained B5 at 1200 px."),
        "command": "python -m neurorg_core build-demo --out data/models/demo",
    }
    if reuse and (out / "ensemble" / "card.json").is_file():
        ens = load_bundle(out / "ensemble")
        log.info("reusing the trained ensemble %s", ens.id)
    else:
        ens = train_bundle([], out / "ensemble", st, sets=sets, geometry=geometry, extra=provenance)
    if reuse and (out / "single_channel" / "card.json").is_file():
        sc = load_bundle(out / "single_channel")
        log.info("reusing the trained single-channel bundle %s", sc.id)
    else:
        single_st = TrainSettings(**{**st.as_dict(), "epochs": recipe.single_channel_epochs})
        sc = train_single_channel_bundle(out / "single_channel", single_st, sets, geometry=geometry,
                                         extra=provenance)
    log.info("trained both bundles after %.0f s", time.perf_counter() - t0)

    ens_pred = Predictor(ens)
    test_sets = [load_crop_set(d, st.input_size, geometry=geometry) for d in test_dirs]
    ens_report = evaluate_bundle([], ens, predictor=ens_pred, sets=[*sets, *test_sets])
    log.info("ensemble:\n%s", format_report(ens_report))
    sc_pred = Predictor(sc)
    sc_report = evaluate_bundle([], sc, predictor=sc_pred, sets=[*sets, *test_sets])
    log.info("single-channel:\n%s", format_report(sc_report))

    screen = load_screen_crops(screen_dir, st.input_size, geometry)
    x = _as_float(screen.crops)
    names, p_ens = per_well_p_control(ens_pred.predict(x).mean(0), screen.wells)
    sc_probs = sc_pred.predict(x)
    pearson = {}
    for k, m in enumerate(sc.members):
        _, p_ch = per_well_p_control(sc_probs[k], screen.wells)
        c = channel_correlation(p_ens, p_ch)
        pearson[m.name] = {"r": round(c["r"], 4), "p": float(f"{c['p']:.3g}"), "n_wells": c["n"]}
    log.info("screening plate, P(control) per well vs ensemble: %s", pearson)
    seconds = round(time.perf_counter() - t0)
    if reuse:  # only evaluated now: keep the training run's build time
        seconds = int(ens.card.get("metrics", {}).get("build_seconds", seconds))
    ens_metrics = {"evaluation": ens_report, "build_seconds": seconds,
                   "summary": _summary(ens_report)}
    ens = update_card(ens, metrics=ens_metrics)
    sc_metrics = {"evaluation": sc_report, "screen_pearson_vs_ensemble": pearson,
                  "screen_plate": f"seed {recipe.screen_seed}", "reference_ensemble": ens.id,
                  "build_seconds": seconds}
    update_card(sc, metrics=sc_metrics)
    return {"ensemble": ens_metrics, "single_channel": sc_metrics}


def _summary(report: dict) -> dict:
    out: dict[str, Any] = {}
    if "cross_validation" in report:
        p = report["cross_validation"]["pooled"]
        out["cross_validation_pooled"] = {k: p[k] for k in ("crop_acc", "well_acc", "well_acc_vote")}
    if "unseen" in report and "ensemble" in report["unseen"]:
        e = report["unseen"]["ensemble"]
        out["unseen_ensemble"] = {k: e[k] for k in ("crop_acc", "well_acc", "well_acc_vote", "n_wells")}
    return out
