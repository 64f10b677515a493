"""Build EfficientNet classifiers and save / load them as model bundles with a model card.

Size (~730 lines): the model card and its checks are most of it; building members and saving and
loading bundles share the card's fields, so they stay together.

A *bundle* is a folder holding ``card.json`` and one weights file per *member*::

    ensemble/
        card.json
        fold1.weights.npz   fold2.weights.npz   ...

Two kinds of bundle exist: a 3-channel ensemble (one member per leave-plate-out fold) and a
single-channel bundle (one member per channel: nucleus, neuron, microglia). Every member takes
the same input, float32 crops in [0, 1] shaped (n, s, s, 3) in ``schema.CHANNELS`` order; the
per-channel normalisation (training-crop mean / std) and, for single-channel members, the channel
selection both happen inside the model, so callers never special-case a member.

Kernels are stored as float16 (vectors: biases, batch-norm statistics, the input normalisation
stay float32). Training rounds its weights this way *before* evaluating
(``round_weights_to_float16``), so the metrics written on the card are those of exactly the
weights on disk, and a save / load round trip reproduces the outputs bit for bit.

Ids are content hashes: a member's id hashes its weights file and the card fields that define
its function (architecture, input size, channels, normalisation, classes); the bundle id hashes
the whole card (member ids, training settings, metrics).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from neurorg_core.errors import NeuroRGError
from neurorg_core.schema import CHANNELS, CLASS_NAMES, CONCENTRATIONS_UM, N_CLASSES

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "neurorg-bundle/1"
CARD_NAME = "card.json"
LITERT_PREFIX = "litert/"
"""Bundle-relative folder of the converted LiteRT files (``litert/<member id>.tflite``)."""
FILES = "files"
"""Card section: bundle-relative file path -> SHA-256 (hex) of every file of the bundle."""

Architecture = Literal[
    "efficientnet_tiny", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2",
    "efficientnet_b3", "efficientnet_b4", "efficientnet_b5",
    "efficientnet_pytorch_b0", "efficientnet_pytorch_b1", "efficientnet_pytorch_b2",
    "efficientnet_pytorch_b3", "efficientnet_pytorch_b4", "efficientnet_pytorch_b5",
]
TORCH_ARCHITECTURES: tuple[str, ...] = tuple(f"efficientnet_pytorch_b{i}" for i in range(6))
"""Imported efficientnet_pytorch models (the study's): their Keras twin is built by
``torch_efficientnet`` (static same padding), not by keras.applications."""
ARCHITECTURES: tuple[str, ...] = (
    "efficientnet_tiny", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2",
    "efficientnet_b3", "efficientnet_b4", "efficientnet_b5", *TORCH_ARCHITECTURES,
)
# (width coefficient, depth coefficient, dropout before the head): Tan & Le 2019 compound
# scaling, as in keras.applications; "tiny" scales *below* B0 (width 0.5, depth 0.5, 0.67 M
# parameters instead of 4.06 M) so that a 7-member demo fits in git and trains on 2 CPU cores.
_SCALING: dict[str, tuple[float, float, float]] = {
    "efficientnet_tiny": (0.5, 0.5, 0.2),
    "efficientnet_b0": (1.0, 1.0, 0.2),
    "efficientnet_b1": (1.0, 1.1, 0.2),
    "efficientnet_b2": (1.1, 1.2, 0.3),
    "efficientnet_b3": (1.2, 1.4, 0.3),
    "efficientnet_b4": (1.4, 1.8, 0.4),
    "efficientnet_b5": (1.6, 2.2, 0.4),
    **{f"efficientnet_pytorch_b{i}": (w, d, 0.0) for i, (w, d) in enumerate(
        ((1.0, 1.0), (1.0, 1.1), (1.1, 1.2), (1.2, 1.4), (1.4, 1.8), (1.6, 2.2)))},
}
BundleKind = Literal["ensemble", "single_channel"]


def check_architecture(arch: str) -> str:
    """Return ``arch`` if it is a known architecture name, else raise listing the allowed ones."""
    if arch not in _SCALING:
        raise NeuroRGError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    return arch


def check_channels(channels: Sequence[str]) -> tuple[str, ...]:
    """Validate a member's channel list: all three channels in order, or exactly one of them."""
    chans = tuple(channels)
    if chans == tuple(CHANNELS) or (len(chans) == 1 and chans[0] in CHANNELS):
        return chans
    raise NeuroRGError(
        f"channels {list(chans)!r} are not usable; expected all of {list(CHANNELS)} "
        f"or exactly one of {', '.join(CHANNELS)}"
    )


def _keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # imported lazily: the CLI and the store do not need TensorFlow

    return keras


def _channel_select_layer(index: int):
    keras = _keras()

    class SelectChannel(keras.layers.Layer):
        """Keep one channel of a (n, s, s, 3) crop: (n, s, s, 1)."""

        def __init__(self, index: int, **kwargs: Any):
            super().__init__(**kwargs)
            self.index = int(index)

        def call(self, x):
            return x[..., self.index:self.index + 1]

        def compute_output_shape(self, input_shape):
            return (*input_shape[:-1], 1)

        def get_config(self) -> dict:
            return {**super().get_config(), "index": self.index}

    return SelectChannel(index, name=f"select_{CHANNELS[index]}")


def build_model(
    arch: str,
    input_size: int,
    channels: Sequence[str] = CHANNELS,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    dropout: float | None = None,
):
    """Build an EfficientNet crop classifier with a 6-class softmax head.

    Parameters
    ----------
    arch
        One of ``ARCHITECTURES``: ``efficientnet_b0`` .. ``efficientnet_b5`` (keras.applications,
        random initialisation: no ImageNet download) or ``efficientnet_tiny`` (compound scaling
        below B0: width 0.5, depth 0.5).
    input_size
        Crop edge in pixels (the model takes (n, input_size, input_size, 3)).
    channels
        ``schema.CHANNELS`` for a 3-channel model, or one channel name for a single-channel model
        (which still takes 3-channel input and selects its channel itself).
    mean, std
        Per-channel mean / standard deviation of the training crops in [0, 1] units, one value
        per entry of ``channels``; stored in the model's Normalization layer. Default 0 / 1.
    dropout
        Dropout before the head; default the architecture's own.

    Returns
    -------
    keras.Model
        Input float32 (n, s, s, 3) in [0, 1]; output float32 (n, 6) softmax probabilities.
    """
    keras = _keras()
    from keras.src.applications.efficientnet import EfficientNet

    check_architecture(arch)
    chans = check_channels(channels)
    if not isinstance(input_size, (int, np.integer)) or input_size < 32:
        raise NeuroRGError(f"input size {input_size!r} px is too small; expected an integer >= 32")
    n_ch = len(chans)
    mean_arr = np.zeros(n_ch, np.float32) if mean is None else np.asarray(mean, np.float32)
    std_arr = np.ones(n_ch, np.float32) if std is None else np.asarray(std, np.float32)
    if mean_arr.shape != (n_ch,) or std_arr.shape != (n_ch,) or np.any(std_arr <= 0):
        raise NeuroRGError(
            f"normalisation mean {mean_arr.tolist()} / std {std_arr.tolist()} do not fit channels "
            f"{list(chans)}; expected {n_ch} values each with std > 0"
        )
    if arch in TORCH_ARCHITECTURES:
        if n_ch != 3:
            raise NeuroRGError(f"{arch} takes all three channels; expected channels {list(CHANNELS)}")
        from neurorg_core.torch_efficientnet import build_torch_efficientnet

        return build_torch_efficientnet(arch, int(input_size), mean_arr, std_arr)
    width, depth, default_dropout = _SCALING[arch]

    inputs = keras.Input((input_size, input_size, 3), dtype="float32", name="crops")
    x = inputs if n_ch == 3 else _channel_select_layer(CHANNELS.index(chans[0]))(inputs)
    backbone = EfficientNet(
        width, depth, input_size, default_dropout, name=arch, include_top=False, weights=None,
        input_tensor=x, pooling="avg",
    )
    features = backbone.output
    rate = default_dropout if dropout is None else float(dropout)
    if rate > 0:
        features = keras.layers.Dropout(rate, name="top_dropout")(features)
    outputs = keras.layers.Dense(N_CLASSES, activation="softmax", name="predictions")(features)
    model = keras.Model(inputs, outputs, name=f"{arch}_{'_'.join(chans) if n_ch == 1 else 'rgb'}")
    set_normalization(model, mean_arr, std_arr)
    return model


def _normalization_layer(model):
    keras = _keras()
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Normalization)]
    if len(layers) != 1:
        raise NeuroRGError(f"model {model.name} has {len(layers)} Normalization layers; expected 1")
    return layers[0]


def set_normalization(model, mean: Sequence[float], std: Sequence[float]) -> None:
    """Store per-channel mean / std ([0, 1] units) in the model's input Normalization layer.

    The EfficientNet stem first rescales by 1/255 (it expects 0..255 pixels), so the layer
    holds mean / 255 and (std / 255)^2: the net effect on a [0, 1] crop is (x - mean) / std.
    """
    layer = _normalization_layer(model)
    mean_arr = np.asarray(mean, np.float32) / 255.0
    var_arr = (np.asarray(std, np.float32) / 255.0) ** 2
    count = np.asarray(layer.get_weights()[2], np.float32)
    layer.set_weights([mean_arr, var_arr, count])
    layer.finalize_state()


def set_model_weights(model, weights: Sequence[np.ndarray]) -> None:
    """``model.set_weights`` that also refreshes the Normalization layer.

    Keras's Normalization layer computes with constant copies of its mean / variance made by
    ``finalize_state()``; plain ``set_weights`` updates the variables but not those copies.
    """
    model.set_weights(list(weights))
    _normalization_layer(model).finalize_state()


def get_normalization(model) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) in [0, 1] units, read back from the model's Normalization layer."""
    mean, var, _ = _normalization_layer(model).get_weights()
    return (np.ravel(mean) * 255.0).tolist(), (np.sqrt(np.ravel(var)) * 255.0).tolist()


def _storage_dtype(array: np.ndarray) -> type:
    """Kernels (ndim >= 2) are stored as float16; vectors (biases, batch-norm statistics and the
    input normalisation, whose variances underflow float16) stay float32."""
    return np.float16 if np.ndim(array) >= 2 else np.float32


def round_weights_to_float16(model) -> None:
    """Round the weights to what will be stored (kernels to float16, vectors kept), in place."""
    set_model_weights(model, [
        np.asarray(w).astype(_storage_dtype(w)).astype(np.float32) for w in model.get_weights()
    ])


# --- bundles --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    """One model of a bundle: a fold of the ensemble, or a single-channel model."""

    id: str
    name: str                    # "fold1" .. / "nucleus", "neuron", "microglia"
    fold: int | None             # 1-based fold index (ensemble), None for single-channel members
    channels: tuple[str, ...]
    input_size: int              # pixels
    arch: str
    weights_path: Path
    mean: tuple[float, ...]      # normalisation, [0, 1] units
    std: tuple[float, ...]
    val_plates: tuple[str, ...]  # plates this member never trained on (its validation plates)
    weights_sha256: str = ""     # SHA-256 of the weights file, verified when the bundle was loaded


@dataclass(frozen=True)
class Bundle:
    """A loaded, validated model bundle (weights are read lazily by ``load_member_model``)."""

    path: Path
    id: str
    card: dict
    members: tuple[Member, ...]

    @property
    def kind(self) -> str:
        return str(self.card["kind"])

    @property
    def input_size(self) -> int:
        return int(self.card["input_size"])


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _member_id(entry: dict, arch: str, input_size: int) -> str:
    ident = {
        "arch": arch, "input_size": input_size, "channels": entry["channels"],
        "normalization": entry["normalization"], "class_names": list(CLASS_NAMES),
        "weights_sha256": entry["weights_sha256"],
    }
    return _sha256(_canonical(ident))[:16]


def _bundle_id(card: dict) -> str:
    return _sha256(_canonical({k: v for k, v in card.items() if k != "id"}))[:16]


WeightsDtype = Literal["float16", "float32"]
WEIGHTS_DTYPE_LABELS = {"float16": "float16 kernels, float32 vectors", "float32": "float32"}
"""How a bundle stores its weights: float16 kernels (trained bundles, metrics measured on exactly
those) or everything float32 (imported models, which must match their original within 1e-4)."""


def _weights_bytes(model, weights_dtype: WeightsDtype = "float16") -> bytes:
    buf = io.BytesIO()
    arrays = {f"w{i:04d}": np.asarray(w).astype(_storage_dtype(w) if weights_dtype == "float16" else np.float32)
              for i, w in enumerate(model.get_weights())}
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def save_bundle(
    out_dir: str | Path,
    models: Sequence[Any],
    members: Sequence[dict],
    *,
    kind: BundleKind,
    arch: str,
    input_size: int,
    extra: dict | None = None,
    weights_dtype: WeightsDtype = "float16",
) -> Bundle:
    """Write a bundle folder (``card.json`` + weights per member, kernels in float16) and return it loaded.

    Parameters
    ----------
    out_dir
        Bundle folder; created if needed. An existing ``card.json`` there is replaced.
    models
        The Keras models, one per member (built by ``build_model``).
    members
        One dict per model with at least ``name`` and optionally ``fold``, ``train_plates``,
        ``val_plates``, ``best_epoch``, ``history``, ``metrics``; channels and normalisation
        are read from the model itself.
    kind
        ``"ensemble"`` (3-channel, one member per fold) or ``"single_channel"``.
    arch, input_size
        Architecture name and crop edge (pixels) shared by all members.
    extra
        More card fields (training settings, training plates, metrics, provenance).
    weights_dtype
        ``"float16"``: kernels stored as float16 (trained bundles); ``"float32"``: every weight
        stored as is (imported models).
    """
    if kind not in ("ensemble", "single_channel"):
        raise NeuroRGError(f"bundle kind {kind!r} is not ensemble or single_channel")
    if len(models) != len(members) or not models:
        raise NeuroRGError(f"{len(models)} models for {len(members)} member entries; expected equal, >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for model, info in zip(models, members):
        select = [layer for layer in model.layers if layer.name.startswith("select_")]
        chans = [select[0].name.removeprefix("select_")] if select else list(CHANNELS)
        mean, std = get_normalization(model)
        data = _weights_bytes(model, weights_dtype)
        fname = f"{info['name']}.weights.npz"
        tmp = out / (fname + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(out / fname)
        entry = {
            "name": str(info["name"]),
            "fold": info.get("fold"),
            "channels": chans,
            "normalization": {"mean": [round(float(v), 6) for v in mean],
                              "std": [round(float(v), 6) for v in std]},
            "weights": fname,
            "weights_sha256": _sha256(data),
            "n_params": int(model.count_params()),
        }
        for key in ("train_plates", "val_plates", "best_epoch", "history", "metrics", "source"):
            if key in info:
                entry[key] = info[key]
        entry["id"] = _member_id(entry, arch, input_size)
        entries.append(entry)
    card = {
        "format": BUNDLE_FORMAT,
        "kind": kind,
        "architecture": arch,
        "input_size": int(input_size),
        "channel_order": list(CHANNELS),
        "class_names": list(CLASS_NAMES),
        "concentrations_um": list(CONCENTRATIONS_UM),
        "weights_dtype": WEIGHTS_DTYPE_LABELS[weights_dtype],
        **(extra or {}),
        "members": entries,
        FILES: {e["weights"]: e["weights_sha256"] for e in entries},
    }
    card["id"] = _bundle_id(card)
    tmp = out / (CARD_NAME + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, allow_nan=False) + "\n")
    tmp.replace(out / CARD_NAME)
    log.info("wrote bundle %s (%s, %d members) to %s", card["id"], kind, len(entries), out)
    return load_bundle(out)


def update_card(bundle: Bundle, **fields: Any) -> Bundle:
    """Add or replace top-level card fields (e.g. ``metrics``), re-hash, rewrite, reload."""
    card = dict(bundle.card)
    for key in ("id", "members", "format", "architecture", "input_size", "class_names", FILES):
        if key in fields:
            raise NeuroRGError(f"card field {key!r} cannot be updated; rebuild the bundle instead"
                               + (" (files are recorded by record_files)" if key == FILES else ""))
    card.update(fields)
    return _rewrite_card(bundle, card)


def _rewrite_card(bundle: Bundle, card: dict) -> Bundle:
    card["id"] = _bundle_id(card)
    path = bundle.path / CARD_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return load_bundle(bundle.path)


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_files(bundle: Bundle, relative_paths: Sequence[str]) -> Bundle:
    """Record the SHA-256 of more files of the bundle (e.g. ``litert/<member id>.tflite``) in the
    card's ``files`` section, re-hash the bundle id, rewrite the card and reload it.

    Member ids do not change (they hash the weights, not the card); the bundle id does. Only
    call this for files you have verified (``inference.convert_bundle`` checks each LiteRT file
    against its member's Keras model before recording it).
    """
    card = json.loads(json.dumps(bundle.card))
    files = dict(card.get(FILES) or {m.weights_path.name: m.weights_sha256 for m in bundle.members})
    for rel in relative_paths:
        rel = Path(rel).as_posix()
        path = bundle.path / rel
        if not _is_inside(rel) or not path.is_file():
            raise NeuroRGError(f"cannot record {rel}: not a file inside the bundle folder {bundle.path}",
                               path=path)
        files[rel] = file_sha256(path)
    card[FILES] = dict(sorted(files.items()))
    return _rewrite_card(bundle, card)


def _is_inside(rel: str) -> bool:
    """A bundle-relative path that stays inside the bundle folder."""
    parts = Path(rel).parts
    return bool(parts) and not Path(rel).is_absolute() and ".." not in parts and "\\" not in rel


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _type_name(value: Any) -> str:
    return {str: "a string", bool: "true/false", int: "an integer", float: "a number", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


class _CardChecker:
    """Type checks of ``card.json`` fields: each failure names card.json, the field, what it
    holds and what was expected."""

    def __init__(self, card_path: Path):
        self.card_path = card_path

    def fail(self, field: str, value: Any, expected: str) -> NeuroRGError:
        shown = json.dumps(value)[:80] if _json_able(value) else repr(value)[:80]
        return NeuroRGError(f"field {field} is {shown} ({_type_name(value)}); expected {expected}",
                            path=self.card_path)

    def string(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(field, value, "a non-empty string")
        return value

    def integer(self, value: Any, field: str, minimum: int, unit: str = "") -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(field, value, f"an integer >= {minimum}{unit}")
        return value

    def numbers(self, value: Any, field: str, n: int, positive: bool = False) -> list[float]:
        ok = (isinstance(value, list) and len(value) == n
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                      and (v > 0 or not positive) for v in value))
        if not ok:
            raise self.fail(field, value, f"a list of {n} finite{' positive' if positive else ''} numbers")
        return [float(v) for v in value]

    def strings(self, value: Any, field: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(field, value, "a list of strings")
        return list(value)


def _json_able(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _check_files_section(card: dict, check: _CardChecker) -> dict[str, str]:
    """The card's ``files`` section (path -> SHA-256), type-checked; ``{}`` when absent."""
    if FILES not in card:
        return {}
    files = card[FILES]
    if not isinstance(files, dict):
        raise check.fail(FILES, files, "an object mapping file paths to SHA-256 hashes")
    for rel, digest in files.items():
        if not _is_inside(rel):
            raise check.fail(f"{FILES}[{rel!r}]", rel, "a path inside the bundle folder")
        if not _is_sha256(digest):
            raise check.fail(f"{FILES}[{rel!r}]", digest, "a SHA-256 hash (64 lower-case hex digits)")
    return dict(files)


def _check_member_entry(entry: Any, i: int, card: dict, check: _CardChecker) -> dict:
    """Type-check one member entry of the card; returns it."""
    where = f"members[{i}]"
    if not isinstance(entry, dict):
        raise check.fail(where, entry, "an object describing one member")
    missing = [k for k in ("name", "channels", "normalization", "weights", "weights_sha256", "id")
               if k not in entry]
    if missing:
        raise NeuroRGError(f"{where} lacks {', '.join(missing)}", path=check.card_path)
    name = check.string(entry["name"], f"{where}.name")
    where = f"members[{i}] ({name})"
    chans = check.strings(entry["channels"], f"{where}.channels")
    try:
        check_channels(chans)
    except NeuroRGError as exc:
        raise NeuroRGError(f"{where}.channels: {exc}", path=check.card_path) from exc
    if card["kind"] == "ensemble" and len(chans) != 3:
        raise NeuroRGError(f"ensemble member {name} uses channels {list(chans)}; expected all 3",
                           path=check.card_path)
    if card["kind"] == "single_channel" and len(chans) != 1:
        raise NeuroRGError(f"single-channel member {name} uses channels {list(chans)}; expected exactly "
                           f"one of {', '.join(CHANNELS)}", path=check.card_path)
    norm = entry["normalization"]
    if not isinstance(norm, dict) or "mean" not in norm or "std" not in norm:
        raise check.fail(f"{where}.normalization", norm, "an object with mean and std")
    check.numbers(norm["mean"], f"{where}.normalization.mean", len(chans))
    check.numbers(norm["std"], f"{where}.normalization.std", len(chans), positive=True)
    fname = check.string(entry["weights"], f"{where}.weights")
    if Path(fname).name != fname:
        raise check.fail(f"{where}.weights", fname, "a plain file name in the bundle folder")
    if not _is_sha256(entry["weights_sha256"]):
        raise check.fail(f"{where}.weights_sha256", entry["weights_sha256"],
                         "a SHA-256 hash (64 lower-case hex digits)")
    check.string(entry["id"], f"{where}.id")
    fold = entry.get("fold")
    if fold is not None:
        check.integer(fold, f"{where}.fold", 1)
    if "val_plates" in entry:
        check.strings(entry["val_plates"], f"{where}.val_plates")
    return entry


def _check_card(card: Any, card_path: Path) -> _CardChecker:
    """Type-check the card's top-level fields (members are checked one by one afterwards)."""
    if not isinstance(card, dict):
        raise NeuroRGError(f"model card is {_type_name(card)}; expected a JSON object", path=card_path)
    check = _CardChecker(card_path)
    missing = [k for k in ("format", "kind", "id", "architecture", "input_size", "class_names",
                           "members") if k not in card]
    if missing:
        raise NeuroRGError(f"model card lacks {', '.join(missing)}", path=card_path)
    if card["format"] != BUNDLE_FORMAT:
        raise NeuroRGError(f"model card format {card['format']!r}; expected {BUNDLE_FORMAT!r}", path=card_path)
    if card["kind"] not in ("ensemble", "single_channel"):
        raise NeuroRGError(f"bundle kind {card['kind']!r}; expected ensemble or single_channel", path=card_path)
    check.string(card["id"], "id")
    check.string(card["architecture"], "architecture")
    check.integer(card["input_size"], "input_size", 32, " (pixels)")
    names = check.strings(card["class_names"], "class_names")
    if names != list(CLASS_NAMES):
        raise NeuroRGError(
            f"model has {len(names)} classes {names}; expected {N_CLASSES} classes {list(CLASS_NAMES)}",
            path=card_path)
    if "concentrations_um" in card:
        conc = check.numbers(card["concentrations_um"], "concentrations_um", N_CLASSES)
        if conc != list(CONCENTRATIONS_UM):
            raise NeuroRGError(f"model concentrations {conc} uM; expected {list(CONCENTRATIONS_UM)}",
                               path=card_path)
    if not isinstance(card["members"], list):
        raise check.fail("members", card["members"], "a list of member objects")
    if not card["members"]:
        raise NeuroRGError("model card lists no members; expected at least one", path=card_path)
    return check


def check_bundle_kind(bundle: Bundle, expected: BundleKind, *, role: str = "") -> Bundle:
    """Return ``bundle`` if it is of the ``expected`` kind, else raise naming its folder.

    An ensemble (3-channel members, one per fold) scores plates; a single-channel bundle (one
    member per channel) only feeds the channel comparison. Giving one where the other is
    expected is refused instead of silently scoring with the wrong model.
    """
    if expected not in ("ensemble", "single_channel"):
        raise NeuroRGError(f"bundle kind {expected!r}; expected ensemble or single_channel")
    if bundle.kind == expected:
        return bundle
    members = ", ".join(m.name for m in bundle.members)
    what = {"ensemble": "an ensemble bundle (3-channel members, one per fold)",
            "single_channel": "a single-channel bundle (one member per channel)"}
    raise NeuroRGError(
        f"{bundle.path} is {what[bundle.kind]} with members {members}; {role or 'this step'} needs "
        f"{what[expected]}. Give the {'ensemble' if expected == 'ensemble' else 'single_channel'} "
        "folder of a model (e.g. data/models/demo/"
        f"{'ensemble' if expected == 'ensemble' else 'single_channel'})",
        path=bundle.path / CARD_NAME)


def load_bundle(path: str | Path, *, kind: BundleKind | None = None) -> Bundle:
    """Read and validate a bundle folder.

    Parameters
    ----------
    path
        The bundle folder (``card.json`` + weights files).
    kind
        ``"ensemble"`` or ``"single_channel"`` to refuse the other kind (see ``check_bundle_kind``).

    Raises
    ------
    NeuroRGError
        If the folder or ``card.json`` is missing, the card is not valid JSON, lacks fields or
        has a field of the wrong type (the message names card.json and the field), the classes
        differ from ``schema.CLASS_NAMES``, a weights file (or any other file whose hash the card
        records, except LiteRT conversions, which are converted again instead) is missing or
        does not match its recorded SHA-256, or the bundle is not of ``kind``.
    """
    folder = Path(path)
    card_path = folder / CARD_NAME
    if not folder.is_dir():
        raise NeuroRGError("model bundle folder does not exist; expected a folder with card.json",
                           path=folder)
    if not card_path.is_file():
        raise NeuroRGError(f"no {CARD_NAME} in model bundle folder {folder}; expected a bundle "
                           "written by `python -m neurorg_core train`", path=card_path)
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NeuroRGError(f"model card is not valid JSON ({exc})", path=card_path) from exc
    check = _check_card(card, card_path)
    try:
        arch = check_architecture(card["architecture"])
    except NeuroRGError as exc:
        raise NeuroRGError(str(exc), path=card_path) from exc
    input_size = card["input_size"]
    files = _check_files_section(card, check)
    members = []
    for i, raw in enumerate(card["members"]):
        entry = _check_member_entry(raw, i, card, check)
        name, fname, recorded_sha = entry["name"], entry["weights"], entry["weights_sha256"]
        wpath = folder / fname
        if not wpath.is_file():
            raise NeuroRGError(f"weights file of member {name} is missing from {folder}", path=wpath)
        if fname in files and files[fname] != recorded_sha:
            raise NeuroRGError(f"the card's files section and member {name} record different hashes "
                               f"for {fname}; the card was edited", path=card_path)
        actual = file_sha256(wpath)
        if actual != recorded_sha:
            raise NeuroRGError(
                f"weights hash {actual[:16]} does not match the card's {recorded_sha[:16]} for "
                f"member {name}; the file is corrupt or was replaced", path=wpath)
        if _member_id(entry, arch, input_size) != entry["id"]:
            raise NeuroRGError(f"member {name} id {entry['id']} does not match its content; "
                               "the card was edited", path=card_path)
        fold = entry.get("fold")
        norm = entry["normalization"]
        members.append(Member(
            id=entry["id"], name=name, fold=None if fold is None else int(fold),
            channels=tuple(entry["channels"]), input_size=input_size, arch=arch, weights_path=wpath,
            mean=tuple(float(v) for v in norm["mean"]), std=tuple(float(v) for v in norm["std"]),
            val_plates=tuple(entry.get("val_plates", ())), weights_sha256=recorded_sha,
        ))
    ids = [m.id for m in members]
    if len(set(ids)) != len(ids):
        raise NeuroRGError(f"members share an id ({ids}); expected one id per member", path=card_path)
    _check_other_files(files, folder, {m.weights_path.name for m in members})
    if _bundle_id(card) != card["id"]:
        raise NeuroRGError(f"bundle id {card['id']} does not match the card's content hash "
                           f"{_bundle_id(card)}; the card was edited", path=card_path)
    bundle = Bundle(path=folder, id=str(card["id"]), card=card, members=tuple(members))
    return bundle if kind is None else check_bundle_kind(bundle, kind)


def _check_other_files(files: dict[str, str], folder: Path, weights: set[str]) -> None:
    """Every recorded file other than the weights (checked above) and the LiteRT conversions
    (checked, and converted again if they differ, by ``inference``) must exist and match."""
    for rel, digest in files.items():
        if rel in weights or rel.startswith(LITERT_PREFIX):
            continue
        path = folder / rel
        if not path.is_file():
            raise NeuroRGError(f"file {rel} recorded in card.json is missing from {folder}", path=path)
        if file_sha256(path) != digest:
            raise NeuroRGError(f"file {rel} does not match the SHA-256 recorded in card.json; it is "
                               "corrupt or was replaced", path=path)


def load_member_model(member: Member):
    """Build the Keras model of one bundle member and load its stored weights (as float32)."""
    model = build_model(member.arch, member.input_size, member.channels, member.mean, member.std)
    try:
        with np.load(member.weights_path) as data:
            arrays = [data[k].astype(np.float32) for k in sorted(data.files)]
    except (OSError, ValueError, KeyError) as exc:
        raise NeuroRGError(f"cannot read weights of member {member.name}: {exc}",
                           path=member.weights_path) from exc
    expected = [tuple(w.shape) for w in model.weights]
    got = [tuple(a.shape) for a in arrays]
    if expected != got:
        raise NeuroRGError(
            f"weights of member {member.name} have {len(got)} arrays that do not fit "
            f"{member.arch} at {member.input_size} px ({len(expected)} arrays expected)",
            path=member.weights_path)
    set_model_weights(model, arrays)
    return model
