"""Everything the pages read, behind Streamlit's caches.

- ``st.cache_resource``: the result store (one DuckDB connection per database file; every store
  method opens its own cursor, so sessions on other threads share it safely), model bundles and
  lazily-read plates.
- ``st.cache_data``: pure reads only, keyed by something immutable (a run id, a field of a plate),
  so a page re-renders from memory without recomputing. Nothing cached here writes.

Writes (demo generation, scoring, deleting) live in ``dashboard.flows``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from neurorg_core.config import Config, load_config
from neurorg_core.errors import NeuroRGError
from neurorg_core.fitcheck import ModelFit
from neurorg_core.model import Bundle, load_bundle
from neurorg_core.plates import Plate, load_plate
from neurorg_core.schema import (
    BUNDLE_PATH,
    COMPOUND,
    CONVERGED,
    DOSE,
    MODEL_ID,
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
    """The result store of ``Config().db_path`` (one per file and process)."""
    return _store(str(config().db_path))


@st.cache_resource(show_spinner="Loading the model ...")
def _bundle(path: str, card_mtime: float) -> Bundle:
    return load_bundle(path)


def bundle(kind: str = ENSEMBLE_DIR) -> Bundle:
    """The model bundle ``Config().model_dir / kind`` (``ensemble`` or ``single_channel``).

    Raises
    ------
    NeuroRGError
        If the bundle is missing or invalid (the message names the folder).
    """
    path = config().model_dir / kind
    card = path / "card.json"
    stamp = card.stat().st_mtime if card.is_file() else 0.0
    return _bundle(str(path), stamp)


def has_bundle(kind: str) -> bool:
    """Whether ``Config().model_dir / kind`` holds a model card (validity is checked on load)."""
    return (config().model_dir / kind / "card.json").is_file()


# --- installed model bundles (Upload & score's model list) ------------------------------------

def model_roots() -> list[Path]:
    """Where installed bundles are looked for: ``<data dir>/models`` and ``NEURORG_MODEL_DIR``."""
    cfg = config()
    return [cfg.data_dir / "models", cfg.model_dir]


def default_model_path() -> str:
    """The configured ensemble (``NEURORG_MODEL_DIR/ensemble``), as the model list spells it."""
    return str((config().model_dir / ENSEMBLE_DIR).resolve())


def _card_stamp(path: str) -> float:
    card = Path(path) / "card.json"
    return card.stat().st_mtime if card.is_file() else 0.0


@st.cache_data(show_spinner=False, max_entries=8)
def _bundle_table(paths: tuple[str, ...], stamps: tuple[float, ...]) -> pd.DataFrame:
    from neurorg_core.bundles import describe_bundles

    return describe_bundles(paths)


def installed_bundles(added: Sequence[str] = ()) -> pd.DataFrame:
    """Every bundle under ``model_roots()`` plus the ``added`` folders, with its card summary
    (``schema.BUNDLE_COLUMNS``); re-read when a card changes."""
    from neurorg_core.bundles import find_bundles

    paths = [str(p) for p in find_bundles(model_roots())]
    paths += [str(Path(a).resolve()) for a in added if str(Path(a).resolve()) not in paths]
    return _bundle_table(tuple(paths), tuple(_card_stamp(p) for p in paths))


def model_path_for(model_id: str) -> str | None:
    """The folder of the installed bundle with this id (the configured ensemble first), or None."""
    if has_bundle(ENSEMBLE_DIR) and bundle().id == model_id:
        return default_model_path()
    table = installed_bundles()
    hits = table.loc[table[MODEL_ID] == model_id, BUNDLE_PATH].tolist()
    return hits[0] if hits else None


def bundle_at(path: str | Path) -> Bundle:
    """The bundle in a folder, loaded and validated once per card version.

    Raises
    ------
    NeuroRGError
        If the folder holds no valid bundle (the message names the file).
    """
    folder = str(Path(path).resolve())
    return _bundle(folder, _card_stamp(folder))


def single_channel_fits(model_path: str | Path) -> bool:
    """Whether the shipped single-channel models cut the same crops as the chosen model (the
    Channels comparison needs both to see the same crops)."""
    from neurorg_core.preprocess import CropGeometry

    if not has_bundle(SINGLE_CHANNEL_DIR):
        return False
    try:
        cards = [json.loads((Path(p) / "card.json").read_text())
                 for p in (model_path, config().model_dir / SINGLE_CHANNEL_DIR)]
        return CropGeometry.from_card(cards[0]) == CropGeometry.from_card(cards[1])
    except (OSError, ValueError):
        return False


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
    """A plate is synthetic when it lies in the demo folder or its image folder holds the
    generator's ``ground_truth.csv`` (``synth.is_synthetic_plate``)."""
    from neurorg_core.synth import is_synthetic_plate

    src = Path(source).resolve()
    demo = config().demo_dir.resolve()
    return src == demo or demo in src.parents or is_synthetic_plate(src)


@dataclass(frozen=True)
class PlateResults:
    """Everything the pages show for one plate's latest run (read from the store)."""

    plate: str
    run_id: str
    plate_format: int
    source: str
    channel_map: dict[str, str]
    synthetic: bool                   # the plate's images are synthetic
    readout: str                      # the run's readout (schema.READOUTS)
    readout_column: str               # its well-table column
    model_fit: ModelFit               # the run's model-fit verdict
    synthetic_model: bool             # scored with a model trained on the synthetic assay
    hits_provisional: str             # why hit calls are provisional ("" when they are not)
    wells: pd.DataFrame               # per-well scores (+ Rescue_pct when computable)
    channels: pd.DataFrame            # wells + P_control_<channel> columns (empty if not scored)
    run: dict                         # provenance
    qc: dict = field(default_factory=dict)
    treatments: pd.DataFrame = field(default_factory=pd.DataFrame)
    fits: pd.DataFrame = field(default_factory=pd.DataFrame)
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)  # compound, dose, fitted readout
    channel_fits: dict = field(default_factory=dict)  # channel -> Pearson r, p, n, slope, intercept
    problems: dict = field(default_factory=dict)   # statistic -> why it could not be computed
    n_hits: int = 0


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
        synthetic=is_synthetic(record[SOURCE]), readout=core.readout, readout_column=core.readout_column,
        model_fit=core.model_fit, synthetic_model=core.synthetic_model, hits_provisional=core.hits_provisional,
        wells=core.wells, channels=core.channels, run=core.run, qc=core.qc, treatments=core.treatments,
        fits=core.fits, curves=_fit_curves(core.wells, core.fits, core.readout_column),
        channel_fits=core.channel_fits, problems=core.problems, n_hits=core.n_hits,
    )


def _fit_curves(wells: pd.DataFrame, fits: pd.DataFrame, column: str, n_points: int = 60) -> pd.DataFrame:
    """Each converged 4PL evaluated over its compound's dose range (log-spaced), for plotting; the
    fitted values go in ``column`` (the readout the fits were made on)."""
    from neurorg_core.stats import DoseResponseFit

    parts = []
    for row in fits.to_dict("records") if not fits.empty else []:
        if not row[CONVERGED]:
            continue
        doses = wells.loc[(wells[ROLE] == "treatment") & (wells[COMPOUND] == row[COMPOUND]), DOSE]
        grid = np.logspace(np.log10(doses.min()), np.log10(doses.max()), n_points)
        fit = DoseResponseFit.from_row(row)
        parts.append(pd.DataFrame({COMPOUND: row[COMPOUND], DOSE: grid, column: fit.predict(grid)}))
    if not parts:
        return pd.DataFrame({COMPOUND: pd.Series(dtype=str), DOSE: pd.Series(dtype=float),
                             column: pd.Series(dtype=float)})
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
    runs = store().list_runs(plate_name)
    if runs.empty:
        return runs
    params = [json.dumps(store().load_run(r)["params"], sort_keys=True) for r in runs[RUN_ID]]
    return runs.assign(Parameters=params)


def plates_table() -> pd.DataFrame:
    """Every stored plate (source, layout, format, field shape, dtype, channels, runs)."""
    return store().list_plates()
