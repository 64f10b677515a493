"""The study-import reference data (``tests/data/study_b0``), for the core and dashboard tests.

``study_b0.tar.xz`` holds what ``make_study_reference.py`` wrote with the real torch and
efficientnet_pytorch: four randomly initialised EfficientNet-B0 fold state_dicts (batch-norm
statistics from real fields, heads trained a few steps), ``normalize_parameters.pkl``, a 12-well
``{class}_Plate_1.npy`` release plate (5 fields of 72 px per well) and small files in torch's other
formats. ``reference.json`` holds efficientnet_pytorch's probabilities on every field of the plate.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from functools import cache
from pathlib import Path

import numpy as np

STUDY_DIR = Path(__file__).resolve().parent / "data" / "study_b0"
ARCHIVE = STUDY_DIR / "study_b0.tar.xz"
INPUT_SIZE = 72
"""The reference B0's input (and field) size: 72 px sends an odd 9 px map into stage 4's stride-2
convolution, where efficientnet_pytorch's static padding (built for 224 px) and TensorFlow's "same"
padding differ even in output size."""


@cache
def reference() -> dict:
    """``reference.json``: arch, input size, normalisation, fold files and their SHA-256, the fields
    (well, 1-based field, class) and ``probabilities[member][field][class]``."""
    return json.loads((STUDY_DIR / "reference.json").read_text())


def reference_probs() -> np.ndarray:
    """efficientnet_pytorch's probabilities, (members, fields, 6), fields in ``reference()`` order."""
    return np.asarray(reference()["probabilities"], np.float64)


def extract(dest: Path) -> Path:
    """Unpack the archive into ``dest`` (checking its SHA-256 against the reference) and return it."""
    data = ARCHIVE.read_bytes()
    expected = reference()["archive"]["sha256"]
    assert hashlib.sha256(data).hexdigest() == expected, f"{ARCHIVE} does not match reference.json"
    with tarfile.open(ARCHIVE, "r:xz") as tar:
        tar.extractall(dest, filter="data")
    return dest


def fold_files(folder: Path) -> list[Path]:
    """The fold state_dicts in fold order."""
    return [folder / s["file"] for s in reference()["state_dicts"]]
