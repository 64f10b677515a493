"""Helpers shared by the dashboard tests: the app's path and a ground-truth run writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from neurorg_core.pipeline import hash_field
from neurorg_core.plates import load_plate
from neurorg_core.platemap import load_plate_map
from neurorg_core.schema import CROP, FIELD, FIELD_HASH, MEMBER, PROB_COLUMNS, TRUE_SEVERITY, WELL
from neurorg_core.scoring import score_channels, score_plate
from neurorg_core.store import PLATE_MAP_COLUMNS, PlateRecord, ResultStore, RunRecord

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "dashboard" / "app.py"
TRUTH_PLATE = "truth plate"
"""Name of the stored plate whose scores are derived from the ground truth (no model involved)."""


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


def store_truth_run(db_path: Path, plate_dir: Path, name: str = TRUTH_PLATE, params: dict | None = None) -> str:
    """Store a run of ``plate_dir`` whose scores follow its ground truth, with single-channel
    scores (microglia close to truth, neuron noisier, nucleus noise only). ``params`` are added to
    the run's parameters (e.g. a readout or a model-fit verdict). Returns the run id."""
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
                          bundle_card={"kind": "ground truth"}, params={"crops_per_well": 3, **(params or {})},
                          code_version="test"),
            channel_scores=score_channels(by_channel),
        )
    finally:
        store.close()
