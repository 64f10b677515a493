"""Fixtures shared by the core tests, made once per session.

- ``tiny_model`` / ``tiny_members`` live in ``tests/conftest.py`` (the dashboard tests use them too).
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

import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from neurorg_core.schema import WELL  # noqa: E402
from tests.tiny_models import TINY_INPUT  # noqa: E402

TINY_GEOMETRY = {"crop_geometry": {"mode": "tiles", "crop_edge_px": TINY_INPUT, "pixel_size_um": None}}
"""Card fields of the tiny bundles: crops of 32 px tiles, pixel size unknown."""


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
