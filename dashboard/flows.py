"""The dashboard's actions: make the demo, save uploads, score a plate, delete.

These write (files, the result store), so none of them is cached. Each is a plain function the
pages call and the tests drive directly; the core does the work.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd
import streamlit as st

from neurorg_core.errors import NeuroRGError
from neurorg_core.model import Bundle
from neurorg_core.pipeline import RunResult, ScoreOptions, run_plate
from neurorg_core.plates import Plate
from neurorg_core.platemap import load_plate_map
from neurorg_core.schema import MODEL_ID, PLATE_MAP_COLUMNS, SOURCE
from neurorg_core.synth import DEFAULT_PARAMS, write_synthetic_plates

from dashboard import resources

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy", ".csv")
"""Loose files accepted beside a zip (images, plus the npy layout's per-array CSVs)."""

DEMO_SEED = 2025
DEMO_WELLS = 96


def demo_recipe(ensemble: Bundle) -> dict:
    """How the demo plate is rendered: like the shipped model's training plates.

    The bundle card's ``demo_recipe`` (written by ``build-demo``) gives the field size, fields per
    well and the synthetic knobs the model was trained with; ``NEURORG_DEMO_FIELDS`` and
    ``NEURORG_DEMO_SIZE`` (pixels) override the first two (tests use tiny plates). Defaults: 4
    fields of 256 px, ``synth.DEFAULT_PARAMS``.
    """
    recipe = dict(ensemble.card.get("demo_recipe", {}))
    knobs = {k: recipe[k] for k in ("cell_severity_sd", "well_severity_sd") if k in recipe}
    return {
        "n_fields": int(os.environ.get("NEURORG_DEMO_FIELDS", recipe.get("n_fields", 4))),
        "size": int(os.environ.get("NEURORG_DEMO_SIZE", recipe.get("field_size", 256))),
        "params": replace(DEFAULT_PARAMS, **knobs),
    }


@st.cache_resource
def _scoring_lock() -> threading.Lock:
    """One scoring job at a time in this server (the machine has few cores)."""
    return threading.Lock()


# --- demo ---------------------------------------------------------------------------------

def ensure_demo(progress: Progress | None = None) -> str:
    """Render and score the demo plate if the store does not hold it yet; return its name.

    The plate (96 wells, fields as in ``demo_recipe``) is rendered by
    ``neurorg_core.synth`` into ``Config().demo_dir`` and scored with the shipped ensemble. The
    single-channel models run later, from the Channels page, so the first start stays short.

    Raises
    ------
    NeuroRGError
        If the shipped model bundle is missing or invalid.
    """
    if resources.DEMO_PLATE in resources.plate_names():
        return resources.DEMO_PLATE
    cfg = resources.config()
    with _scoring_lock():
        if resources.DEMO_PLATE in resources.plate_names():
            return resources.DEMO_PLATE
        ensemble = resources.bundle(resources.ENSEMBLE_DIR)
        folder = cfg.demo_dir / "plate_01"
        if not (folder / "platemap.csv").is_file():
            log.info("rendering the demo plate into %s", cfg.demo_dir)
            folder = write_synthetic_plates(
                cfg.demo_dir, seed=DEMO_SEED, n_plates=1, n_wells=DEMO_WELLS, layout="imagexpress",
                kind="screen", **demo_recipe(ensemble),
            )[0]
        plate = resources.plate(folder)
        plate_map = load_plate_map(folder / "platemap.csv")
        # the configured readout and backend, as Upload & score offers them (NEURORG_READOUT, NEURORG_BACKEND)
        _run(plate, plate_map, ensemble, resources.DEMO_PLATE, progress, None,
             ScoreOptions(readout=cfg.readout, backend=cfg.backend))
    return resources.DEMO_PLATE


# --- uploads ------------------------------------------------------------------------------

def _safe_name(name: str) -> str:
    base = Path(name.replace("\\", "/")).name.strip()
    if not base or base in (".", ".."):
        raise NeuroRGError(f"upload file name {name!r} is not a usable file name")
    return re.sub(r"[^A-Za-z0-9._+-]", "_", base)


def save_uploads(images: Sequence[tuple[str, bytes]], plate_map: tuple[str, bytes] | None) -> Path:
    """Save uploaded files under ``Config().upload_dir/<content hash>/``.

    The folder is named by a hash of every file's name and bytes (the plate map's too), so the
    same upload is saved once and reused, and a changed file gives a new folder that is read
    afresh (written whole or not at all, by ``_save_by_content``).

    Parameters
    ----------
    images
        ``(file name, content)``: one ``.zip``, or several image files of one plate.
    plate_map
        ``(file name, content)`` of the plate map, if given.

    Returns
    -------
    Path
        The upload folder: ``images/`` (the files, or the zip) and ``platemap/<name>``.

    Raises
    ------
    NeuroRGError
        If no image file is given, a zip comes with other files, or a file type is not accepted.
    """
    if not images:
        raise NeuroRGError("no image files uploaded; expected one .zip or the plate's image files")
    names = [_safe_name(n) for n, _ in images]
    zips = [n for n in names if n.lower().endswith(".zip")]
    if zips and len(names) > 1:
        raise NeuroRGError(
            f"upload either one .zip or loose image files, not both (got {', '.join(names[:5])})"
        )
    bad = [n for n in names if not n.lower().endswith((".zip", *IMAGE_SUFFIXES))]
    if bad:
        raise NeuroRGError(
            f"file(s) {', '.join(bad[:5])} are not accepted; expected .zip, "
            f"{', '.join(IMAGE_SUFFIXES)}"
        )
    files = [(f"images/{n}", d) for n, (_, d) in zip(names, images)]
    if plate_map is not None:
        files.append((f"platemap/{_safe_name(plate_map[0])}", plate_map[1]))
    return _save_by_content(resources.config().upload_dir, files)


def save_plate_map(plate_map: tuple[str, bytes]) -> Path:
    """Save an uploaded plate map on its own (one added or replaced after the images were
    taken) under ``Config().upload_dir/maps/<content hash>/``, and return its path."""
    folder = _save_by_content(resources.config().upload_dir / "maps",
                              [(f"platemap/{_safe_name(plate_map[0])}", plate_map[1])])
    return plate_map_path(folder)


def _save_by_content(root: Path, files: list[tuple[str, bytes]]) -> Path:
    """Write ``(relative path, content)`` files into ``root/<hash of every name and byte>/``.

    The same files are saved once and reused; changed files give a new folder. Files are written
    into a hidden temporary folder renamed into place when complete, so a folder under its final
    name always holds all of them.
    """
    digest = hashlib.blake2b(digest_size=8)
    for name, data in files:
        digest.update(f"{name.removeprefix('images/')}\0{len(data)}\0".encode())
        digest.update(data)
    folder = root / digest.hexdigest()
    if folder.is_dir():
        log.info("upload already saved in %s; reusing it", folder)
        return folder
    try:
        root.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=root))
    except OSError as exc:
        raise NeuroRGError(f"cannot save the upload in {root} ({exc.strerror})") from exc
    try:
        for name, data in files:
            (partial / name).parent.mkdir(parents=True, exist_ok=True)
            (partial / name).write_bytes(data)
        os.replace(partial, folder)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if folder.is_dir():   # the same upload, saved at the same moment by another session
            return folder
        raise NeuroRGError(f"cannot save the upload in {root} ({exc.strerror})") from exc
    log.info("saved %d uploaded file(s) into %s", len(files), folder)
    return folder


def images_path(upload: Path) -> Path:
    """What to read the plate from: the uploaded zip itself (``resources.plate`` extracts it
    once per zip version, into the app's ``resources.extraction_dir()``), or the images folder."""
    files = sorted((upload / "images").iterdir())
    zips = [p for p in files if p.suffix.lower() == ".zip"]
    return zips[0] if zips else upload / "images"


def suggested_name(plate: Plate) -> str:
    """The plate name Upload & score offers: the plate's own (its folder or zip name), except for
    loose uploaded files, which all live in an upload's ``images/`` folder: then what every file
    name starts with, cut at a separator (ImageXpress ``plate_01_A01_s1_w1.tif`` ... ->
    ``plate_01``), else ``uploaded plate <the upload's id>``, so two such plates never share a name
    by default."""
    source = Path(plate.source)
    if source.name != "images" or source.parent.parent != resources.config().upload_dir:
        return plate.name
    stems = [p.stem for p in source.iterdir() if p.is_file()]
    common = os.path.commonprefix(stems) if len(stems) > 1 else ""
    name = re.sub(r"[^_\-. ]*$", "", common).rstrip("_-. ")
    return name if len(name) >= 3 else f"uploaded plate {source.parent.name[:8]}"


def plate_map_path(upload: Path) -> Path:
    """The uploaded plate map's path.

    Raises
    ------
    NeuroRGError
        If no plate map was uploaded.
    """
    folder = upload / "platemap"
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    if not files:
        raise NeuroRGError("no plate map uploaded; expected a CSV/TSV with a Metadata_Well column")
    return files[0]


def resolve_server_path(text: str) -> Path:
    """A plate path typed by the user: a folder or .zip on the server.

    Raises
    ------
    NeuroRGError
        If nothing exists there.
    """
    path = Path(text.strip()).expanduser()
    if not text.strip() or not path.exists():
        raise NeuroRGError("no such file or folder on the server", path=path)
    return path


def open_images(path: Path) -> Path:
    """What to read a plate from for ``path`` on the server: the folder, or the zip itself
    (``resources.plate`` extracts it once per zip version, and again when the zip is replaced)."""
    return path


# --- scoring ------------------------------------------------------------------------------

def score(plate: Plate, plate_map: pd.DataFrame, name: str, progress: Progress | None = None,
          *, with_channels: bool = False, options: ScoreOptions = ScoreOptions(),
          model_path: str | Path | None = None) -> RunResult:
    """Score a plate into the result store (cached fields are free) with the bundle in
    ``model_path``, or the configured ensemble (``NEURORG_MODEL_DIR/ensemble``) when None.

    Returns
    -------
    pipeline.RunResult
        Run id, wells scored, cache hits and misses, the model-fit verdict.
    """
    if not name.strip():
        raise NeuroRGError("give the plate a name")
    ensemble = resources.bundle_at(model_path) if model_path else resources.bundle(resources.ENSEMBLE_DIR)
    single = resources.bundle(resources.SINGLE_CHANNEL_DIR) if with_channels else None
    with _scoring_lock():
        return _run(plate, plate_map, ensemble, name.strip(), progress, single, options)


def score_channels(plate_name: str, progress: Progress | None = None) -> RunResult:
    """Re-score a stored plate with the single-channel models too (the ensemble comes from cache),
    with the model and choices of its latest run.

    Raises
    ------
    NeuroRGError
        If the latest run's model is no longer installed (nor the configured ensemble).
    """
    record = resources.store().plate_record(plate_name)
    plate = resources.plate(record[SOURCE], record["channel_map"])
    run = resources.store().load_run(resources.store().latest_run_id(plate_name))
    model_path = resources.model_path_for(str(run[MODEL_ID]))
    if model_path is None:
        raise NeuroRGError(f"the latest run of {plate_name} used model {run[MODEL_ID]}, which is not installed "
                           f"under {', '.join(map(str, resources.model_roots()))}; install it there to re-score")
    return score(plate, stored_plate_map(plate_name), plate_name, progress, with_channels=True,
                 options=ScoreOptions.of_run(run.get("params") or {}), model_path=model_path)


def stored_plate_map(plate_name: str) -> pd.DataFrame:
    """The plate map stored with a plate's latest run (the plate-map columns of its wells)."""
    wells = resources.store().load_well_scores(plate_name)
    return wells[[c for c in PLATE_MAP_COLUMNS if c in wells.columns]].copy()


def _run(plate: Plate, plate_map: pd.DataFrame, ensemble: Bundle, name: str,
         progress: Progress | None, single: Bundle | None, options: ScoreOptions = ScoreOptions()) -> RunResult:
    result = run_plate(plate, plate_map, ensemble, resources.store(), name=name, options=options, progress=progress,
                       single_channel_bundle=single, predictors=resources.predictors())
    log.info("scored plate %s: %s", name, result)
    return result


def delete_plate(plate_name: str) -> None:
    """Delete a plate and its runs from the result store (the image files stay)."""
    resources.store().delete_plate(plate_name)

