"""Import the NeuroRG study's own trained models as a bundle.

The study publishes one ``efficientnet_pytorch`` EfficientNet-B5 ``state_dict`` per leave-plate-out
fold (``state_dict_efficientnet_b5_Neuroinflammation_230331_0`` .. ``_3``) and the per-channel
normalisation of its 1200 x 1200 px fields (``normalize_parameters.pkl``). ``import_study`` reads
them without torch (``torchfile``), rebuilds each fold as a Keras model with the weights mapped
layer by layer (``torch_efficientnet``: efficientnet_pytorch's static padding included) and writes
an ordinary bundle: one member per fold, weights in float32, and a card saying

- where each member came from (file name and SHA-256), the architecture and the normalisation;
- ``crop_geometry``: whole fields (one crop per field, its largest centred square, resized to the
  input size: 1200 px fields pass unchanged), as the study fed them;
- ``well_call: "plurality"``: the study called a well by the plurality of its field predictions;
- ``synthetic: false``; no ``fit_reference`` (the model-fit check says "unchecked").

The bundle then scores, evaluates and appears in the app like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from neurorg_core.errors import NeuroRGError
from neurorg_core.model import CARD_NAME, Bundle, build_model, file_sha256, save_bundle
from neurorg_core.preprocess import INTENSITY_METHOD
from neurorg_core.schema import CHANNELS
from neurorg_core.torch_efficientnet import (
    ARCH_PREFIX,
    TORCH_PARAMS,
    check_state_dict,
    constructed_image_size,
    load_state_dict,
)
from neurorg_core.torchfile import read_normalization, read_state_dict

log = logging.getLogger(__name__)

STUDY_ARCHITECTURES: tuple[str, ...] = tuple(f"efficientnet_b{v[1:]}" for v in TORCH_PARAMS)
"""The ``--arch`` names (the study's own ``model_name`` spelling): efficientnet_b0 .. b5."""

STUDY_INPUT_SIZE = 1200
"""The study's field edge and network input, pixels."""

STUDY_ARCH = "efficientnet_b5"


def bundle_architecture(arch: str) -> str:
    """``efficientnet_b5`` -> the bundle architecture ``efficientnet_pytorch_b5``."""
    if arch not in STUDY_ARCHITECTURES:
        raise NeuroRGError(f"architecture {arch!r} cannot be imported; expected one of "
                           f"{', '.join(STUDY_ARCHITECTURES)} (efficientnet_pytorch EfficientNet-B0 .. B5)")
    return ARCH_PREFIX + arch.removeprefix("efficientnet_")


def import_study(
    state_dicts: Sequence[str | Path],
    normalization: str | Path,
    out: str | Path,
    *,
    arch: str = STUDY_ARCH,
    input_size: int = STUDY_INPUT_SIZE,
) -> Bundle:
    """Write a bundle from the study's fold ``state_dict`` files and normalisation pickle.

    Parameters
    ----------
    state_dicts
        One file per fold, written by ``torch.save(model.state_dict(), path)`` from
        ``efficientnet_pytorch`` ``EfficientNet.from_pretrained(name, num_classes=6)``; member
        ``fold{i}`` comes from the i-th file.
    normalization
        ``normalize_parameters.pkl``: ``{"mean": [3 values], "std": [3 values]}`` in [0, 1] units.
    out
        Bundle folder to create. A folder already holding a bundle is refused (nothing is replaced).
    arch
        ``efficientnet_b0`` .. ``efficientnet_b5`` (the study: ``efficientnet_b5``).
    input_size
        Network input edge, pixels (the study: 1200, its whole field).

    Returns
    -------
    model.Bundle
        The written bundle, loaded and validated.

    Raises
    ------
    NeuroRGError
        No files, a file given twice, a folder that already holds a bundle, an unreadable,
        corrupt or mismatched checkpoint (wrong architecture or class count), a bad
        normalisation file, or an input size the network cannot take. Messages name the file.
    """
    target = bundle_architecture(arch)
    paths = [Path(p) for p in state_dicts]
    if not paths:
        raise NeuroRGError("no state_dict files given; expected one per fold (the study has 4)")
    folder = Path(out)
    if (folder / CARD_NAME).exists():
        raise NeuroRGError(f"{folder} already holds a model bundle; choose another --out or remove it first",
                           path=folder / CARD_NAME)
    if not isinstance(input_size, int) or input_size < 32:
        raise NeuroRGError(f"input size {input_size!r} px; expected a whole number of pixels >= 32")
    mean, std = read_normalization(normalization)
    norm_sha = file_sha256(normalization)
    sources, seen = [], {}
    for p in paths:
        if not p.is_file():
            raise NeuroRGError("state_dict file not found", path=p)
        sha = file_sha256(p)
        if sha in seen:
            raise NeuroRGError(f"is the same file as {seen[sha].name} (SHA-256 {sha[:16]}); expected one "
                               "checkpoint per fold", path=p)
        seen[sha] = p
        sources.append({"file": p.name, "sha256": sha, "bytes": p.stat().st_size})

    models, members = [], []
    for i, (p, source) in enumerate(zip(paths, sources), start=1):
        weights = check_state_dict(read_state_dict(p), target, p)
        try:
            model = build_model(target, input_size, CHANNELS, mean, std)
        except ValueError as exc:   # Keras: the network shrinks the input below one pixel
            raise NeuroRGError(f"{arch} cannot take {input_size} px inputs ({exc}); expected a larger input size"
                               ) from exc
        load_state_dict(model, target, weights)
        models.append(model)
        members.append({"name": f"fold{i}", "fold": i, "source": source})
        log.info("fold%d <- %s (%s, sha256 %s)", i, p.name, arch, source["sha256"][:16])

    card = {
        "imported_from": {
            "format": "efficientnet_pytorch state_dict (torch.save zip), read without torch",
            "architecture": arch.replace("efficientnet_", "efficientnet-"),
            "constructed_image_size": constructed_image_size(target),
            "padding": "efficientnet_pytorch static same padding for the constructed image size",
            "files": sources,
            "normalization": {"file": Path(normalization).name, "sha256": norm_sha,
                              "mean": list(mean), "std": list(std),
                              "formula": "(x / 255 - mean) / std on the 8-bit field"},
            "command": "python -m neurorg_core import-study",
        },
        "crop_geometry": {"mode": "whole_field", "field_edge_px": int(input_size), "pixel_size_um": None},
        "intensity": {"method": INTENSITY_METHOD},
        "well_call": "plurality",
        "synthetic": False,
    }
    bundle = save_bundle(folder, models, members, kind="ensemble", arch=target, input_size=int(input_size),
                         extra=card, weights_dtype="float32")
    log.info("imported %d fold(s) of %s as bundle %s in %s", len(models), arch, bundle.id, folder)
    return bundle
