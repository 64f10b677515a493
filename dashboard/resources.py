"""Everything the pages read, behind Streamlit's caches.

- ``st.cache_resource``: the result store (one ``ResultStore`` per database file; each of its
  methods attaches the file only for that operation and uses its own cursor, so sessions on other
  threads share it safely and a CLI ``score`` or ``export`` can use the same file while the app
  runs), model bundles and lazily-read plates.
- ``st.cache_data``: pure reads only, keyed by something immutable (a run id, a field of a plate),
  so a page re-renders from memory without recomputing. Nothing cached here writes.

Writes (demo generation, scoring, deleting) live in ``dashboard.flows``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from neurorg_core.config import Config, load_config
from neurorg_core.errors import NeuroRGError
from neurorg_core.model import Bundle, load_bundle
from neurorg_core.plates import Plate, load_plate
from neurorg_core.schema import (
    COMPOUND,
    CONVERGED,
    DOSE,
    EXPECTED_CLASS,
    N_RUNS,
    PLATE,
    PLATE_FORMAT,
    ROLE,
    RUN_ID,
    SOURCE,
)
from neurorg_core.store import ResultStore

log = logging.getLogger(__name__)

DEMO_PLATE = "DEMO synthetic screen"
"""Name of the demo plate in the result store."""

ENSEMBLE_DIR = "ensemble"
SINGLE_CHANNEL_DIR = "single_channel"


def config() -> Config:
    """The configuration (environment read on every call: cheap, and tests change it)."""
    return load_config()


# --- shared resources -----------------------------------------------------------------------

@st.cache_resource(show_spinner=False)
def _store(db_path: str) -> ResultStore:
    return ResultStore(db_path)


def store() -> ResultStore:
    """The result store of ``Config().db_path`` (one per file and process; it holds the file only
    while one of its methods runs, so other processes can score into it meanwhile)."""
    return _store(str(config().db_path))


@st.cache_resource(show_spinner="Loading the model ...")
def _bundle(path: str, card_mtime: float, kind: str) -> Bundle:
    return load_bundle(path, kind=kind)   # type: ignore[arg-type]  (ENSEMBLE_DIR / SINGLE_CHANNEL_DIR)


def bundle(kind: str = ENSEMBLE_DIR) -> Bundle:
    """The model bundle ``Config().model_dir / kind`` (``ensemble`` or ``single_channel``).

    Raises
    ------
    NeuroRGError
        If the bundle is missing or invalid, or is of the other kind (a single-channel bundle in
        the ensemble folder, or the reverse); the message names the folder.
    """
    path = config().model_dir / kind
    card = path / "card.json"
    stamp = card.stat().st_mtime if card.is_file() else 0.0
    return _bundle(str(path), stamp, kind)


def has_bundle(kind: str) -> bool:
    """Whether ``Config().model_dir / kind`` holds a model card (validity is checked on load)."""
    return (config().model_dir / kind / "card.json").is_file()


@st.cache_resource(show_spinner="Reading the plate layout ...")
def _plate(path: str, channel_map_json: str, max_pixels: int) -> Plate:
    channel_map = json.loads(channel_map_json) or None
    return load_plate(path, channel_map, max_pixels=max_pixels)


def plate(path: str | Path, channel_map: dict[str, str] | None = None) -> Plate:
    """A lazily-read plate (files listed once; pixels read one field at a time).

    ``path`` is a folder; zips are extracted once by ``flows.open_images``.
    """
    return _plate(str(path), json.dumps(channel_map or {}, sort_keys=True), config().max_pixels)


@st.cache_data(show_spinner="Checking every image file ...", max_entries=8)
def file_problems(path: str, channel_map_json: str) -> list[str]:
    """Every unreadable or mismatched image file of a plate (headers only; a pure read)."""
    return _plate(path, channel_map_json, config().max_pixels).check_files()


# --- reads for the pages ------------------------------------------------------------------

def plate_names() -> list[str]:
    """Plates with at least one stored run, demo first."""
    plates = store().list_plates()
    names = [str(n) for n in plates.loc[plates[N_RUNS] > 0, PLATE]]
    return sorted(names, key=lambda n: (n != DEMO_PLATE, n))


def is_synthetic(source: str | Path) -> bool:
    """A plate is synthetic when its image folder holds the generator's ``ground_truth.csv``
    (anywhere inside it) or lies in the demo folder."""
    src = Path(source).resolve()
    demo = config().demo_dir.resolve()
    if src == demo or demo in src.parents:
        return True
    return src.is_dir() and next(src.rglob("ground_truth.csv"), None) is not None


@dataclass(frozen=True)
class PlateResults:
    """Everything the pages show for one plate's latest run (read from the store)."""

    plate: str
    run_id: str
    plate_format: int
    source: str
    channel_map: dict[str, str]
    synthetic: bool
    wells: pd.DataFrame               # per-well scores (+ Rescue_pct when computable)
    channels: pd.DataFrame            # wells + P_control_<channel> columns (empty if not scored)
    run: dict                         # provenance
    qc: dict = field(default_factory=dict)
    treatments: pd.DataFrame = field(default_factory=pd.DataFrame)
    fits: pd.DataFrame = field(default_factory=pd.DataFrame)
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)  # compound, dose, fitted Expected_class
    channel_fits: dict = field(default_factory=dict)  # channel -> Pearson r, p, n, slope, intercept
    problems: dict = field(default_factory=dict)   # statistic -> why it could not be computed


def plate_results(plate_name: str) -> PlateResults:
    """The plate's latest run, read once per run id and then served from memory.

    Raises
    ------
    NeuroRGError
        If the plate has no stored run.
    """
    run_id = store().latest_run_id(plate_name)
    return _plate_results(str(config().db_path), plate_name, run_id)


@st.cache_data(show_spinner=False, max_entries=16)
def _plate_results(db_path: str, plate_name: str, run_id: str) -> PlateResults:
    from neurorg_core.pipeline import load_plate_results

    core = load_plate_results(_store(db_path), plate_name, run_id)
    record = core.plate_record
    return PlateResults(
        plate=plate_name, run_id=run_id, plate_format=int(record[PLATE_FORMAT]),
        source=str(record[SOURCE]), channel_map=dict(record["channel_map"]),
        synthetic=is_synthetic(record[SOURCE]), wells=core.wells, channels=core.channels,
        run=core.run, qc=core.qc, treatments=core.treatments, fits=core.fits,
        curves=_fit_curves(core.wells, core.fits), channel_fits=core.channel_fits,
        problems=core.problems,
    )


def _fit_curves(wells: pd.DataFrame, fits: pd.DataFrame, n_points: int = 60) -> pd.DataFrame:
    """Each converged 4PL evaluated over its compound's dose range (log-spaced), for plotting."""
    from neurorg_core.stats import DoseResponseFit

    parts = []
    for row in fits.to_dict("records") if not fits.empty else []:
        if not row[CONVERGED]:
            continue
        doses = wells.loc[(wells[ROLE] == "treatment") & (wells[COMPOUND] == row[COMPOUND]), DOSE]
        grid = np.logspace(np.log10(doses.min()), np.log10(doses.max()), n_points)
        fit = DoseResponseFit.from_row(row)
        parts.append(pd.DataFrame({COMPOUND: row[COMPOUND], DOSE: grid, EXPECTED_CLASS: fit.predict(grid)}))
    if not parts:
        return pd.DataFrame({COMPOUND: pd.Series(dtype=str), DOSE: pd.Series(dtype=float),
                             EXPECTED_CLASS: pd.Series(dtype=float)})
    return pd.concat(parts, ignore_index=True)


@st.cache_data(show_spinner=False, max_entries=256)
def field_image(source: str, channel_map_json: str, well: str, field_index: int) -> np.ndarray:
    """One field's pixels, (H, W, 3) native dtype in CHANNELS order (a pure read of the images)."""
    p = _plate(source, channel_map_json, config().max_pixels)
    refs = [ref for ref in p.fields_of(well) if ref.field == field_index]
    if not refs:
        raise NeuroRGError(f"field {field_index} is not imaged", path=source, well=well)
    return p.read_field(refs[0])


def fields_of(source: str, channel_map: dict[str, str], well: str) -> list[int]:
    """Field indices imaged in one well of a stored plate."""
    p = plate(source, channel_map)
    return [ref.field for ref in p.fields_of(well)]


def runs_table(plate_name: str | None = None) -> pd.DataFrame:
    """Runs with their provenance (model id, date, parameters), newest first."""
    with store().session() as db:   # one open for the list and every run's provenance
        runs = db.list_runs(plate_name)
        if runs.empty:
            return runs
        params = [json.dumps(db.load_run(r)["params"], sort_keys=True) for r in runs[RUN_ID]]
    return runs.assign(Parameters=params)


def plates_table() -> pd.DataFrame:
    """Every stored plate (source, layout, format, field shape, dtype, channels, runs)."""
    return store().list_plates()
