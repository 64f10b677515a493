"""Fixtures for the dashboard tests: a tiny synthetic screening plate, tiny model bundles, and a
result store holding a run whose scores follow the plate's ground truth.

Everything is written under pytest's tmp folders; the app is pointed at them through the
``NEURORG_*`` environment variables it reads on every run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from neurorg_core.model import build_model, save_bundle  # noqa: E402
from neurorg_core.pipeline import hash_field  # noqa: E402
from neurorg_core.plates import load_plate  # noqa: E402
from neurorg_core.platemap import load_plate_map  # noqa: E402
from neurorg_core.schema import (  # noqa: E402
    CHANNELS,
    CROP,
    FIELD,
    FIELD_HASH,
    MEMBER,
    PROB_COLUMNS,
    TRUE_SEVERITY,
    WELL,
)
from neurorg_core.scoring import score_channels, score_plate  # noqa: E402
from neurorg_core.store import PLATE_MAP_COLUMNS, PlateRecord, ResultStore, RunRecord  # noqa: E402
from neurorg_core.synth import write_synthetic_plates  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "dashboard" / "app.py"
TRUTH_PLATE = "truth plate"
"""Name of the stored plate whose scores are derived from the ground truth (no model involved)."""


@pytest.fixture(scope="session")
def tiny_plate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic 96-well screening plate: 1 field of 64 x 64 px per well (ImageXpress files,
    ``platemap.csv`` and ``ground_truth.csv`` in the folder)."""
    out = tmp_path_factory.mktemp("plates")
    return write_synthetic_plates(out, seed=7, n_wells=96, n_fields=1, size=64, kind="screen")[0]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder like ``data/models/demo``: ``ensemble/`` (one untrained efficientnet_tiny
    member, 32 px) and ``single_channel/`` (nucleus, neuron, microglia)."""
    out = tmp_path_factory.mktemp("models")
    save_bundle(out / "ensemble", [build_model("efficientnet_tiny", 32)], [{"name": "fold1", "fold": 1}],
                kind="ensemble", arch="efficientnet_tiny", input_size=32)
    singles = [build_model("efficientnet_tiny", 32, channels=(c,)) for c in CHANNELS]
    save_bundle(out / "single_channel", singles, [{"name": c} for c in CHANNELS],
                kind="single_channel", arch="efficientnet_tiny", input_size=32)
    return out


def _truth_probs(wells: list[str], severity: dict[str, float], noise: float, seed: int) -> pd.DataFrame:
    """Crop probabilities whose class-0 mass is 1 - severity (+ noise): a model that sees truth."""
    rng = np.random.default_rng(seed)
    rows = []
    for well in wells:
        s = severity[well]
        for crop in range(3):
            p0 = float(np.clip(1.0 - s + rng.normal(0.0, noise), 0.02, 0.97))
            probs = np.full(len(PROB_COLUMNS), 0.0)
            probs[0] = p0
            probs[max(1, int(round(s * 5)))] = 1.0 - p0
            rows.append({WELL: well, FIELD: 1, CROP: crop, MEMBER: 0, **dict(zip(PROB_COLUMNS, probs))})
    return pd.DataFrame(rows)


def store_truth_run(db_path: Path, plate_dir: Path, name: str = TRUTH_PLATE) -> str:
    """Store a run of ``plate_dir`` whose scores follow its ground truth, with single-channel
    scores (microglia close to truth, neuron noisier, nucleus noise only). Returns the run id."""
    plate = load_plate(plate_dir)
    plate_map = load_plate_map(plate_dir / "platemap.csv")
    truth = pd.read_csv(plate_dir / "ground_truth.csv")
    severity = dict(zip(truth[WELL], truth[TRUE_SEVERITY].fillna(0.0)))
    wells = plate.wells()
    crop_probs = _truth_probs(wells, severity, 0.03, seed=1)
    scores = score_plate(crop_probs, plate_map)
    rng = np.random.default_rng(2)
    by_channel = {
        "nucleus": _truth_probs(wells, {w: float(rng.uniform()) for w in wells}, 0.05, seed=3),
        "neuron": _truth_probs(wells, severity, 0.25, seed=4),
        "microglia": _truth_probs(wells, severity, 0.05, seed=5),
    }
    fields = pd.DataFrame(
        [{WELL: ref.well, FIELD: ref.field, FIELD_HASH: hash_field(px)} for ref, px in plate.iter_fields()]
    )
    imaged = plate_map[plate_map[WELL].isin(wells)]
    store = ResultStore(db_path)
    try:
        return store.save_run(
            plate=PlateRecord(name=name, source=str(plate.source), layout=plate.layout,
                              plate_format=plate.plate_format, field_shape=plate.field_shape,
                              dtype=str(plate.dtype), channel_map=plate.channel_map),
            wells=imaged[list(PLATE_MAP_COLUMNS)], fields=fields, well_scores=scores,
            run=RunRecord(run_id=f"truth-{name}", plate=name, model_id="ground-truth",
                          bundle_card={"kind": "ground truth"}, params={"crops_per_well": 3},
                          code_version="test"),
            channel_scores=score_channels(by_channel),
        )
    finally:
        store.close()


@pytest.fixture()
def app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the app at an empty store, data folder and model folder under ``tmp_path``."""
    monkeypatch.setenv("NEURORG_DB", str(tmp_path / "store.duckdb"))
    monkeypatch.setenv("NEURORG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NEURORG_MODEL_DIR", str(tmp_path / "no_models"))
    monkeypatch.delenv("NEURORG_PASSWORD", raising=False)
    return tmp_path


@pytest.fixture()
def truth_store(app_env: Path, tiny_plate: Path) -> Path:
    """``app_env`` with a stored ground-truth run of ``tiny_plate`` (plate name ``TRUTH_PLATE``)."""
    store_truth_run(app_env / "store.duckdb", tiny_plate)
    return app_env
