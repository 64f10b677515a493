"""Fixtures for the dashboard tests: a tiny synthetic screening plate, tiny model bundles, and a
result store holding a run whose scores follow the plate's ground truth.

Everything is written under pytest's tmp folders; the app is pointed at them through the
``NEURORG_*`` environment variables it reads on every run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from dashboard_fixtures import store_truth_run  # noqa: E402
from neurorg_core.model import build_model, save_bundle  # noqa: E402
from neurorg_core.schema import CHANNELS  # noqa: E402
from neurorg_core.synth import write_synthetic_plates  # noqa: E402


@pytest.fixture(scope="session")
def tiny_plate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic 96-well screening plate: 1 field of 64 x 64 px per well (ImageXpress files,
    ``platemap.csv`` and ``ground_truth.csv`` in the folder)."""
    out = tmp_path_factory.mktemp("plates")
    return write_synthetic_plates(out, seed=7, n_wells=96, n_fields=1, size=64, kind="screen")[0]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, tiny_model: Callable) -> Path:
    """A model folder like ``data/models/demo``: ``ensemble/`` (one efficientnet_tiny member, 32 px:
    the session's tiny ``fold1`` from ``tests/conftest.py``, random weights with a scaled head, so
    its LiteRT conversion, made once by the core tests, is a cache hit for the browser test's
    server) and ``single_channel/`` (nucleus, neuron, microglia: untrained, constant outputs)."""
    out = tmp_path_factory.mktemp("models")
    geometry = {"crop_geometry": {"mode": "tiles", "crop_edge_px": 32, "pixel_size_um": None}}
    save_bundle(out / "ensemble", [tiny_model(1)], [{"name": "fold1", "fold": 1}],
                kind="ensemble", arch="efficientnet_tiny", input_size=32, extra=geometry)
    singles = [build_model("efficientnet_tiny", 32, channels=(c,)) for c in CHANNELS]
    save_bundle(out / "single_channel", singles, [{"name": c} for c in CHANNELS],
                kind="single_channel", arch="efficientnet_tiny", input_size=32, extra=geometry)
    return out


@pytest.fixture()
def app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point the app at an empty store, data folder and model folder under ``tmp_path``, with no
    password. "Path on the server" may read this test session's temporary folders (where the
    fixture plates are written)."""
    monkeypatch.setenv("NEURORG_DB", str(tmp_path / "store.duckdb"))
    monkeypatch.setenv("NEURORG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NEURORG_MODEL_DIR", str(tmp_path / "no_models"))
    monkeypatch.setenv("NEURORG_SERVER_ROOTS", str(tmp_path_factory.getbasetemp()))
    monkeypatch.delenv("NEURORG_PASSWORD", raising=False)
    monkeypatch.delenv("NEURORG_SESSION_HOURS", raising=False)
    return tmp_path


@pytest.fixture()
def truth_store(app_env: Path, tiny_plate: Path) -> Path:
    """``app_env`` with a stored ground-truth run of ``tiny_plate`` (plate name ``TRUTH_PLATE``)."""
    store_truth_run(app_env / "store.duckdb", tiny_plate)
    return app_env
