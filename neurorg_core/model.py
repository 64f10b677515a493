"""Build EfficientNet classifiers and save / load them as model bundles with a model card.

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
    for key in ("id", "members", "format", "architecture", "input_size", "class_names"):
        if key in fields:
            raise NeuroRGError(f"card field {key!r} cannot be updated; rebuild the bundle instead")
    card.update(fields)
    card["id"] = _bundle_id(card)
    path = bundle.path / CARD_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return load_bundle(bundle.path)


def load_bundle(path: str | Path) -> Bundle:
    """Read and validate a bundle folder.

    Raises
    ------
    NeuroRGError
        If the folder or ``card.json`` is missing, the card is not valid JSON or lacks fields, the
        classes differ from ``schema.CLASS_NAMES``, a weights file is missing, or a hash does not
        match (an edited or corrupt file). The message names the file.
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
    if not isinstance(card, dict):
        raise NeuroRGError(f"model card is a {type(card).__name__}; expected a JSON object", path=card_path)
    missing = [k for k in ("format", "kind", "id", "architecture", "input_size", "class_names",
                           "members") if k not in card]
    if missing:
        raise NeuroRGError(f"model card lacks {', '.join(missing)}", path=card_path)
    if card["format"] != BUNDLE_FORMAT:
        raise NeuroRGError(f"model card format {card['format']!r}; expected {BUNDLE_FORMAT!r}", path=card_path)
    if card["kind"] not in ("ensemble", "single_channel"):
        raise NeuroRGError(f"bundle kind {card['kind']!r}; expected ensemble or single_channel", path=card_path)
    if list(card["class_names"]) != list(CLASS_NAMES):
        raise NeuroRGError(
            f"model has {len(card['class_names'])} classes {card['class_names']}; expected "
            f"{N_CLASSES} classes {list(CLASS_NAMES)}", path=card_path)
    if "concentrations_um" in card and [float(c) for c in card["concentrations_um"]] != list(CONCENTRATIONS_UM):
        raise NeuroRGError(f"model concentrations {card['concentrations_um']} uM; expected "
                           f"{list(CONCENTRATIONS_UM)}", path=card_path)
    try:
        arch = check_architecture(str(card["architecture"]))
    except NeuroRGError as exc:
        raise NeuroRGError(str(exc), path=card_path) from exc
    input_size = card["input_size"]
    if not isinstance(input_size, int) or input_size < 32:
        raise NeuroRGError(f"input size {input_size!r}; expected an integer >= 32 px", path=card_path)
    if not isinstance(card["members"], list) or not card["members"]:
        raise NeuroRGError("model card lists no members; expected at least one", path=card_path)
    members = []
    for i, entry in enumerate(card["members"]):
        try:
            fname = entry["weights"]
            chans = check_channels(entry["channels"])
            mean, std = entry["normalization"]["mean"], entry["normalization"]["std"]
            name, recorded_sha, recorded_id = entry["name"], entry["weights_sha256"], entry["id"]
        except (KeyError, TypeError) as exc:
            raise NeuroRGError(f"member {i} entry lacks {exc}", path=card_path) from exc
        except NeuroRGError as exc:
            raise NeuroRGError(f"member {i}: {exc}", path=card_path) from exc
        if card["kind"] == "ensemble" and len(chans) != 3:
            raise NeuroRGError(f"ensemble member {name} uses channels {list(chans)}; expected all 3",
                               path=card_path)
        wpath = folder / fname
        if not wpath.is_file() or Path(fname).name != fname:
            raise NeuroRGError(f"weights file of member {name} is missing from {folder}", path=wpath)
        actual = _sha256(wpath.read_bytes())
        if actual != recorded_sha:
            raise NeuroRGError(
                f"weights hash {actual[:16]} does not match the card's {str(recorded_sha)[:16]} for "
                f"member {name}; the file is corrupt or was replaced", path=wpath)
        if _member_id(entry, arch, input_size) != recorded_id:
            raise NeuroRGError(f"member {name} id {recorded_id} does not match its content; "
                               "the card was edited", path=card_path)
        fold = entry.get("fold")
        members.append(Member(
            id=recorded_id, name=str(name), fold=None if fold is None else int(fold), channels=chans,
            input_size=input_size, arch=arch, weights_path=wpath,
            mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
            val_plates=tuple(entry.get("val_plates", ())),
        ))
    if _bundle_id(card) != card["id"]:
        raise NeuroRGError(f"bundle id {card['id']} does not match the card's content hash "
                           f"{_bundle_id(card)}; the card was edited", path=card_path)
    return Bundle(path=folder, id=str(card["id"]), card=card, members=tuple(members))


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
