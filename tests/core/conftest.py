"""Fixtures shared by the core tests, made once per session.

- ``tiny_model`` / ``tiny_members``: random-weight ``efficientnet_tiny`` models at 32 px (two
  3-channel ensemble members and one member per channel) whose outputs vary from crop to crop,
  weights rounded to storage precision.
- ``tiny_ensemble_files`` / ``tiny_ensemble``: a 2-member ensemble of them with a 32 px crop
  geometry, as training writes it (weights and card) and after ``convert_bundle`` (LiteRT files
  inside, hashes on the card). A member's LiteRT conversion is cached under its member id and
  weights hash for the whole session (``tests/conftest.py``), so every bundle holding the same
  member, in any module, reuses one conversion.
- ``screen_plate``: a rendered 96-well synthetic screening plate (one 64 px RGB TIFF field per
  well); ``copy_screen_wells`` copies some of its wells into a smaller plate.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from neurorg_core.schema import CHANNELS, WELL  # noqa: E402

TINY_INPUT = 32
"""Model input edge of the tiny members, pixels (the 64 px test fields give 2 x 2 tiles)."""

TINY_GEOMETRY = {"crop_geometry": {"mode": "tiles", "crop_edge_px": TINY_INPUT, "pixel_size_um": None}}
"""Card fields of the tiny bundles: crops of 32 px tiles, pixel size unknown."""


def _scaled_model(channels: tuple[str, ...]):
    """Random weights with the input normalisation (mean 0.05, sd 0.001) and
    the head scaled up, so that dim fluorescence crops get distinct probabilities (a freshly
    initialised EfficientNet says ~1/6 for everything)."""
    from neurorg_core.model import build_model

    n = len(channels)
    model = build_model("efficientnet_tiny", TINY_INPUT, channels, mean=[0.05] * n, std=[0.001] * n)
    head = model.get_layer("predictions")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 100, bias])
    return model


def _spread_model(channels: tuple[str, ...], head_seed: int):
    """Random weights with a random-normal head (sd 300, numpy seed
    ``head_seed``), so that members give clearly different answers on random crops."""
    from neurorg_core.model import build_model

    n = len(channels)
    model = build_model("efficientnet_tiny", TINY_INPUT, channels, [0.3] * n, [0.2] * n)
    head = model.get_layer("predictions")
    kernel, bias = head.get_weights()
    head.set_weights([np.random.default_rng(head_seed).normal(0, 300.0, kernel.shape).astype("float32"), bias])
    return model


@pytest.fixture(scope="session")
def tiny_model() -> Callable:
    """``tiny_model(seed, channels=CHANNELS, head_seed=None)``: a random-weight efficientnet_tiny
    at 32 px, weights rounded to storage precision (float16 kernels) so that the saved member is
    the model in memory; made once per session for each set of arguments. Without ``head_seed``:
    scaled normalisation and head (distinct outputs on plate crops); with it: a random head."""
    made: dict[tuple, object] = {}

    def make(seed: int, channels: tuple[str, ...] = CHANNELS, head_seed: int | None = None):
        key = (seed, tuple(channels), head_seed)
        if key not in made:
            import keras

            from neurorg_core.model import round_weights_to_float16

            keras.utils.set_random_seed(seed)
            model = (_scaled_model(tuple(channels)) if head_seed is None
                     else _spread_model(tuple(channels), head_seed))
            round_weights_to_float16(model)
            made[key] = model
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_members(tiny_model: Callable) -> dict:
    """``fold1``, ``fold2``: 3-channel members (scaled); ``microglia``, ``neuron``, ``nucleus``:
    one single-channel member each (random head). Seeds whose outputs vary from crop to crop."""
    return {"fold1": tiny_model(1), "fold2": tiny_model(2),
            "microglia": tiny_model(10, ("microglia",), head_seed=0),
            "neuron": tiny_model(11, ("neuron",), head_seed=1),
            "nucleus": tiny_model(12, ("nucleus",), head_seed=2)}


@pytest.fixture(scope="session")
def save_tiny(tiny_members: dict) -> Callable:
    """``save_tiny(folder, names, kind="ensemble")``: a bundle of the named tiny members."""
    from neurorg_core.model import save_bundle

    def save(folder: Path, names: list[str], kind: str = "ensemble"):
        entries = [{"name": n, "fold": int(n[4:])} if n.startswith("fold") else {"name": n} for n in names]
        return save_bundle(folder, [tiny_members[n] for n in names], entries, kind=kind,
                           arch="efficientnet_tiny", input_size=TINY_INPUT, extra=TINY_GEOMETRY)

    return save


@pytest.fixture(scope="session")
def tiny_ensemble_files(tmp_path_factory: pytest.TempPathFactory, save_tiny: Callable) -> Path:
    """A 2-member ensemble folder as training writes it: weights and card, no LiteRT files."""
    folder = tmp_path_factory.mktemp("tiny") / "plain"
    save_tiny(folder, ["fold1", "fold2"])
    return folder


@pytest.fixture(scope="session")
def tiny_ensemble(tiny_ensemble_files: Path):
    """The same bundle after ``convert_bundle``: LiteRT files inside, every hash on the card."""
    from neurorg_core.inference import convert_bundle
    from neurorg_core.model import load_bundle

    sealed = tiny_ensemble_files.parent / "sealed"
    shutil.copytree(tiny_ensemble_files, sealed)
    return convert_bundle(load_bundle(sealed))


@pytest.fixture(scope="session")
def screen_plate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 96-well synthetic screening plate (seed 0): one 64 px RGB TIFF field per imaged well,
    ``platemap.csv`` beside them."""
    from neurorg_core.synth import write_synthetic_plates

    return write_synthetic_plates(tmp_path_factory.mktemp("screen"), seed=0, n_wells=96, n_fields=1,
                                  size=64, layout="tiff", kind="screen")[0]


@pytest.fixture(scope="session")
def copy_screen_wells(screen_plate: Path) -> Callable:
    """``copy_screen_wells(dest, select)``: the screen's wells chosen by ``select(plate_map) ->
    plate_map rows`` copied into the new folder ``dest``; returns their plate-map rows."""
    from neurorg_core.platemap import load_plate_map

    def copy(dest: Path, select: Callable[[pd.DataFrame], pd.DataFrame]) -> pd.DataFrame:
        keep = select(load_plate_map(screen_plate / "platemap.csv"))
        dest.mkdir(parents=True)
        for well in keep[WELL]:
            shutil.copy(screen_plate / f"{well}_s1.tif", dest / f"{well}_s1.tif")
        return keep

    return copy
