"""Everything the pages read, behind Streamlit's caches.

- ``st.cache_resource``: the result store (one ``ResultStore`` per database file; each of its
  methods attaches the file only for that operation and uses its own cursor, so sessions on other
  threads share it safely and a CLI ``score`` or ``export`` can use the same file while the app
  runs), model bundles and lazily-read plates (at most 16, each used only while
  ``Plate.is_current()``: a replaced zip or a changed folder listing is read again).
- ``st.cache_data``: pure reads only, keyed by something immutable (a run id; a field of one
  version of a plate, ``Plate.signature``), so a page re-renders from memory without
  recomputing. Nothing cached here writes (a zip's extraction is the app's own cache of files,
  kept in ``extraction_dir()``).

Writes (demo generation, scoring, deleting) live in ``dashboard.flows``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from neurorg_core.cache import BoundedCache, file_version
from neurorg_core.config import Config, load_config
from neurorg_core.errors import NeuroRGError
from neurorg_core.inference import PredictorCache
from neurorg_core.model import Bundle, load_bundle
from neurorg_core.plates import Plate, load_plate
from neurorg_core.results import PlateResults
from neurorg_core.schema import BUNDLE_PATH, MODEL_ID, N_RUNS, PLATE, RUN_ID, RUN_PARAMETERS
from neurorg_core.stats import HitRule
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


def extraction_dir() -> Path:
    """Where the app extracts zips (``Config().upload_dir / "extracted"``): owned by the app, one
    folder per zip version, an earlier version's folder removed when its zip is replaced
    (``neurorg_core.archive.extract_zip_keyed``)."""
    return config().upload_dir / "extracted"




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
    return _bundle(folder, _card_stamp(folder), ENSEMBLE_DIR)


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


@st.cache_resource(show_spinner="Reading the plate layout ...", max_entries=16, validate=Plate.is_current)
def _plate(path: str, channel_map_json: str, max_pixels: int) -> Plate:
    channel_map = json.loads(channel_map_json) or None
    return load_plate(path, channel_map, max_pixels=max_pixels, work_dir=extraction_dir())


def plate(path: str | Path, channel_map: dict[str, str] | None = None) -> Plate:
    """A lazily-read plate (files listed once; pixels read one field at a time).

    ``path`` is a folder or a zip (extracted once per zip version into ``extraction_dir()``). The
    cached plate (at most 16) is used only while ``Plate.is_current()``: a replaced zip, or a file
    added, removed or renamed in the folder, makes the next call list the plate again.
    """
    return _plate(str(path), json.dumps(channel_map or {}, sort_keys=True), config().max_pixels)


def file_problems(path: str, channel_map_json: str) -> list[str]:
    """Every unreadable or mismatched image file of a plate, with one field of each kind of file
    decoded (``Plate.check_files``); remembered per plate version."""
    current = _plate(path, channel_map_json, config().max_pixels)
    return _file_problems(path, channel_map_json, current.signature)


@st.cache_data(show_spinner="Checking every image file ...", max_entries=8)
def _file_problems(path: str, channel_map_json: str, signature: str) -> list[str]:
    return _plate(path, channel_map_json, config().max_pixels).check_files()


# --- reads for the pages ------------------------------------------------------------------

def plate_names() -> list[str]:
    """Plates with at least one stored run, demo first."""
    plates = store().list_plates()
    names = [str(n) for n in plates.loc[plates[N_RUNS] > 0, PLATE]]
    return sorted(names, key=lambda n: (n != DEMO_PLATE, n))


def plate_results(plate_name: str) -> PlateResults:
    """The plate's latest run (``results.PlateResults``), read once per run id and then served from
    memory.

    Raises
    ------
    NeuroRGError
        If the plate has no stored run.
    """
    run_id = store().latest_run_id(plate_name)
    cfg = config()
    return _plate_results(str(cfg.db_path), plate_name, run_id, cfg.hit_rule)


@st.cache_data(show_spinner=False, max_entries=16)
def _plate_results(db_path: str, plate_name: str, run_id: str, hits: HitRule) -> PlateResults:
    """Keyed by the hit rule too (``Config.hit_rule``, passed in): hits called with other
    thresholds are not served from memory."""
    from neurorg_core.results import load_plate_results

    return load_plate_results(_store(db_path), plate_name, run_id, hits=hits)


THUMBNAIL_EDGE = 512
"""Field images are kept for display at most this many pixels on their longer side."""


@st.cache_resource(show_spinner=False)
def _thumbnails(max_mb: float) -> BoundedCache[tuple, np.ndarray]:
    """The field images shown on the heatmap page, kept per server, bounded by ``Config.image_cache_mb``."""
    return BoundedCache("field thumbnails", int(max_mb * 2**20), lambda a: a.nbytes)


@st.cache_resource(show_spinner=False)
def _predictors(max_mb: float) -> PredictorCache:
    return PredictorCache(int(max_mb * 2**20))


@st.cache_resource(show_spinner=False)
def auto_backend() -> tuple[str, str]:
    """What ``auto`` runs on this server, and the device: ("keras" | "litert", description). The
    accelerators a process sees do not change while it runs, so they are asked once."""
    from neurorg_core.devices import describe_device, visible_accelerators

    found = visible_accelerators()
    return ("keras" if found else "litert"), describe_device(found)


def predictors() -> PredictorCache:
    """The predictors this server keeps between plates (bounded by ``Config.predictor_cache_mb``)."""
    return _predictors(config().predictor_cache_mb)


def field_image(source: str, channel_map_json: str, well: str, field_index: int) -> np.ndarray:
    """One field for display: (h, w, 3) native dtype in CHANNELS order, shrunk (by whole-pixel
    striding) to at most ``THUMBNAIL_EDGE`` px, remembered per plate version and the field's files'
    versions (``cache.file_version``) in the server's bounded thumbnail cache."""
    p = _plate(source, channel_map_json, config().max_pixels)
    refs = [ref for ref in p.fields_of(well) if ref.field == field_index]
    if not refs:
        raise NeuroRGError(f"field {field_index} is not imaged", path=source, well=well)
    try:
        stamp = tuple(file_version(f.stat()) for f in p.files_of(refs[0]))
    except OSError:
        stamp = ()
    key = (source, channel_map_json, well, field_index, p.signature, stamp)

    def read() -> np.ndarray:
        field = p.read_field(refs[0])
        step = max(1, -(-max(field.shape[:2]) // THUMBNAIL_EDGE))
        return np.ascontiguousarray(field[::step, ::step])

    return _thumbnails(config().image_cache_mb).get_or_make(key, read)


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
    return runs.assign(**{RUN_PARAMETERS: params})


def plates_table() -> pd.DataFrame:
    """Every stored plate (source, layout, format, field shape, dtype, channels, runs)."""
    return store().list_plates()


def crop_preview(plate: Plate, pixel_size_um: float | None, bits: int | None) -> tuple[str, list[str]]:
    """How the installed ensemble would cut ``plate``: a one-line summary and the notes a person
    should read first (a scale assumed, bits detected). Reads a sample of fields; not cached."""
    from neurorg_core.preprocess import CropGeometry, plate_cropping

    ensemble = bundle(ENSEMBLE_DIR)
    geometry = CropGeometry.from_card(ensemble.card)
    cropping = plate_cropping(plate, geometry, pixel_size_um=pixel_size_um, bits=bits)
    model_px = f" at {geometry.pixel_size_um:g} um per pixel" if geometry.pixel_size_um else ""
    line = (f"Crops of {cropping.edge} px from each field (the model was trained on {geometry.crop_edge_px} px"
            f"{model_px}), {cropping.intensity.bits}-bit intensity ({cropping.intensity.source}).")
    return line, cropping.notes()


# --- campaigns (many plates scored with `score-campaign`) ----------------------------------------

def campaigns_table() -> pd.DataFrame:
    """Every campaign in the store (plates, stored, failed, models, last change), latest first."""
    return store().list_campaigns()


def campaign_results(campaign_id: str):
    """A campaign's stored plates and their results (``campaign_results.CampaignResults``), read
    once per set of stored runs and then served from memory.

    Raises
    ------
    NeuroRGError
        If there is no such campaign.
    """
    from neurorg_core.schema import RUN_STATUS

    rows = store().load_campaign(campaign_id)
    runs = tuple(sorted(rows.loc[rows[RUN_STATUS] == "stored", RUN_ID]))
    return _campaign_results(str(config().db_path), campaign_id, runs, config().hit_rule)


@st.cache_data(show_spinner="Reading the campaign's plates ...", max_entries=8)
def _campaign_results(db_path: str, campaign_id: str, runs: tuple[str, ...], hits: HitRule):
    from neurorg_core.campaign_results import load_campaign_results

    return load_campaign_results(_store(db_path), campaign_id, hits=hits)
