"""Score a plate end to end: what ``python -m neurorg_core score`` and the app's scoring page run.

``run_plate`` is five named steps. Steps 1-3 (plan the fields, hash them against the cache, infer
what is missing) are ``plate_inference.infer_plate``; steps 4-5 are here:

4. ``_all_crop_probs`` (build the crop tables): every crop's probabilities per member, from this
   run or the cache, as arrays (``scoring.CropProbs``);
5. ``save_plate`` (save the run): well scores (``scoring.score_crop_probs``), the model-fit check
   (``fitcheck``), provenance, all in one store transaction.

``infer_plate`` returns plain data with nothing stored, so a plate can be inferred in one process
(a campaign's worker) and saved by another; ``run_plate`` does both in one process, committing new
predictions to the cache as they arrive.

So scoring the same images with the same bundle again runs no inference; a changed field is
recomputed alone; a retrained member is recomputed for every field, the other members come from
the cache. New predictions are committed to the cache in batches as they arrive (they are true
whatever happens to the run); the run itself is stored in one transaction at the end, so an
interrupted or failed run leaves no partial run behind. ``results.load_plate_results`` is the read
side.
"""

from __future__ import annotations

import importlib.metadata
import logging
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from neurorg_core.config import REPO_ROOT
from neurorg_core.errors import NeuroRGError
from neurorg_core.fitcheck import FitStats, ModelFit, check_model_fit, fit_stats
from neurorg_core.inference import PredictorCache
from neurorg_core.model import Bundle, Member
from neurorg_core.plate_inference import (  # noqa: F401  (re-exported: the run's public names live here too)
    CROP_KEY_VERSION,
    FieldRecord,
    PlateInference,
    ProgressCallback,
    Role,
    ScoreOptions,
    check_bundles,
    hash_field,
    infer_plate,
)
from neurorg_core.plates import Plate
from neurorg_core.preprocess import Intensity
from neurorg_core.schema import (
    CHANNEL_P_CONTROL,
    DEFAULT_WELL_CALL,
    FIELD,
    FIELD_HASH,
    MEMBER,
    PLATE,
    PLATE_MAP_COLUMNS,
    WELL,
)
from neurorg_core.scoring import CropProbs, score_channels, score_crop_probs
from neurorg_core.store import ResultStore, RunRecord, utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """What ``run_plate`` did.

    Attributes
    ----------
    run_id
        The stored run.
    plate
        The plate name the run is stored under.
    n_wells, n_fields, n_crops
        Wells scored, fields read, crops per model member scored.
    cache_hits
        Fields whose predictions all came from the store (no inference).
    cache_misses
        Fields that went through inference for at least one member.
    inferred_crops
        Crop x member predictions computed by inference in this run (0 when fully cached).
    model_fit
        The model-fit verdict (``fitcheck``): does the plate look like the model's reference plates?
    fit_stats
        The statistics behind it (``calibrate-fit`` pools them over reference plates).
    crop_edge_px
        Crop edge in the plate's pixels (the model's edge at the plate's pixel size).
    intensity
        The plate's intensity scaling (significant bits).
    """

    run_id: str
    plate: str
    n_wells: int
    n_fields: int
    n_crops: int
    cache_hits: int
    cache_misses: int
    inferred_crops: int
    model_fit: ModelFit
    fit_stats: FitStats
    crop_edge_px: int
    intensity: Intensity


# --- step 4: the crop tables (as arrays) -------------------------------------------------------

def _member_label(member: Member, position: int) -> int:
    """The ``Model_Member`` value: the fold for ensemble members, else 1-based position."""
    return int(member.fold) if member.fold is not None else position + 1


def _crop_probs(jobs: Sequence[FieldRecord], members: Sequence[Member],
                new_probs: Mapping[tuple[str, str, str], np.ndarray], store: ResultStore) -> CropProbs:
    """Every crop's class probabilities from each of one bundle's members (``scoring.CropProbs``):
    this run's predictions, the rest from the store's cache."""
    scored = [j for j in jobs if j.tiles]
    # the well, field and crop of each crop are the same for every member: built once
    counts = [len(j.tiles) for j in scored]
    wells = np.repeat(np.array([j.ref.well for j in scored], dtype=object), counts)
    fields = np.repeat(np.array([int(j.ref.field) for j in scored], dtype=np.int64), counts)
    crops = np.fromiter((t for j in scored for t in j.tiles), dtype=np.int64, count=sum(counts))
    parts: list[np.ndarray] = []
    for m in members:
        # predictions not computed in this run come from the cache, one query per crop layout
        wanted: dict[str, list[str]] = {}
        for j in scored:
            if (j.field_hash, m.id, j.crop_key) not in new_probs:
                wanted.setdefault(j.crop_key, []).append(j.field_hash)
        from_cache: dict[tuple[str, str], np.ndarray] = {}
        for key, hashes in wanted.items():
            for h, p in store.cached_predictions(hashes, m.id, crop_key=key).items():
                from_cache[(h, key)] = p
        probs = []
        for j in scored:
            p = new_probs.get((j.field_hash, m.id, j.crop_key))
            if p is None:
                p = from_cache.get((j.field_hash, j.crop_key))
            if p is None:
                raise NeuroRGError(
                    f"no prediction of member {m.name} for field {j.ref.field}; the cache lost it "
                    "during the run (was the store changed by another process?)", well=j.ref.well,
                )
            if p.shape[0] != len(j.tiles):
                raise NeuroRGError(
                    f"cached prediction of member {m.name} for field {j.ref.field} has {p.shape[0]} "
                    f"crops; expected {len(j.tiles)}", well=j.ref.well,
                )
            probs.append(p)
        parts.append(np.concatenate(probs, axis=0))
    labels = [_member_label(m, pos) for pos, m in enumerate(members)]
    return CropProbs.from_arrays(wells, fields, crops, labels, np.stack(parts))


def _all_crop_probs(inference: PlateInference, bundles: Mapping[Role, Bundle],
                    store: ResultStore) -> dict[Role, CropProbs]:
    return {role: _crop_probs(inference.fields, b.members, inference.new_probs, store)
            for role, b in bundles.items()}


# --- step 5: scores and the stored run -----------------------------------------------------------

def _channel_scores(bundles: Mapping[Role, Bundle], crops: Mapping[Role, CropProbs]) -> pd.DataFrame | None:
    if "single_channel" not in bundles:
        return None
    table = crops["single_channel"].table()
    by_channel = {m.channels[0]: table[table[MEMBER] == _member_label(m, i)]
                  for i, m in enumerate(bundles["single_channel"].members)}
    scores = score_channels(by_channel)
    for col in CHANNEL_P_CONTROL:
        if col not in scores.columns:
            scores[col] = np.nan
    return scores


def _check_fit(bundle: Bundle, stats_now: FitStats) -> ModelFit:
    """The model-fit verdict of a plate's statistics against the bundle's card."""
    ref = bundle.card.get("fit_reference")
    reference = FitStats.from_dict(ref, where=f"{bundle.path}/card.json fit_reference") if ref else None
    norms = [m.mean for m in bundle.members], [m.std for m in bundle.members]
    return check_model_fit(stats_now, reference, train_mean=np.mean(norms[0], axis=0),
                           train_sd=np.mean(norms[1], axis=0))


def save_plate(store: ResultStore, inference: PlateInference, bundle: Bundle,
               single_channel_bundle: Bundle | None = None, *, campaign_id: str | None = None,
               version: str | None = None) -> RunResult:
    """Steps 4-5 of a run: crop tables (this inference's predictions, the rest from the store's
    cache), well scores, the model-fit check and provenance, stored in one transaction with the
    inference's uncommitted predictions (and, for a campaign's plate, its campaign row marked
    stored: ``campaign_id``). ``version`` is the code version recorded (default ``code_version()``).

    Raises
    ------
    NeuroRGError
        The bundles are not the ones the plate was inferred with, or a cached prediction is gone.
    """
    bundles = check_bundles(bundle, single_channel_bundle)
    given = {role: tuple(m.id for m in b.members) for role, b in bundles.items()}
    if given != dict(inference.members):
        raise NeuroRGError(f"plate {inference.name} was inferred with members {dict(inference.members)}; "
                           f"the models given have {given}")
    crops = _all_crop_probs(inference, bundles, store)
    well_call = bundle.card.get("well_call", DEFAULT_WELL_CALL)
    well_scores = score_crop_probs(crops["ensemble"], inference.plate_map, well_call=well_call)
    well_scores[PLATE] = inference.name
    fields = inference.fields
    stats_now = fit_stats(well_scores, crops["ensemble"], np.stack([f.channel_stats for f in fields]))
    fit = _check_fit(bundle, stats_now)
    hits = sum(1 for f in fields if f.cached)
    run_id = f"{utc_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    params: dict[str, Any] = {
        "crops_per_well": int(inference.options.crops_per_well),
        "input_size": int(bundle.members[0].input_size),
        "channel_map": dict(inference.record.channel_map),
        "members": [m.id for m in bundle.members],
        "crop_key_version": CROP_KEY_VERSION,
        "readout": inference.options.readout,
        "precision": inference.options.precision,
        "backend": inference.options.backend,       # as asked (a re-score asks alike)
        "backend_ran": list(inference.ran_on),      # what computed this run's new predictions ([]: all cached)
        "well_call": well_call,
        "crop_geometry": dict(inference.cropping),
        "intensity": inference.intensity.as_params(),
        "model_fit": fit.as_params(),
    }
    if single_channel_bundle is not None:
        params["single_channel_bundle"] = {"id": single_channel_bundle.id,
                                           "members": [m.id for m in single_channel_bundle.members]}
    run = RunRecord(run_id=run_id, plate=inference.name, model_id=bundle.id, bundle_card=bundle.card,
                    params=params, code_version=version or code_version(), n_wells=len(well_scores),
                    cache_hits=hits, cache_misses=len(fields) - hits)
    field_table = pd.DataFrame({WELL: [f.ref.well for f in fields], FIELD: [int(f.ref.field) for f in fields],
                                FIELD_HASH: [f.field_hash for f in fields]})
    store.save_run(plate=inference.record, wells=inference.plate_map[list(PLATE_MAP_COLUMNS)], fields=field_table,
                   well_scores=well_scores, run=run, predictions=inference.uncommitted,
                   channel_scores=_channel_scores(bundles, crops), campaign_id=campaign_id)
    result = RunResult(
        run_id=run_id, plate=inference.name, n_wells=len(well_scores), n_fields=len(fields),
        n_crops=inference.total_crops, cache_hits=hits, cache_misses=len(fields) - hits,
        inferred_crops=inference.inferred_crops, model_fit=fit, fit_stats=stats_now,
        crop_edge_px=inference.crop_edge_px, intensity=inference.intensity,
    )
    log.info("run %s: %d wells, %d fields (%d cached, %d inferred), %d crop predictions computed; model fit %s",
             run_id, result.n_wells, result.n_fields, hits, result.cache_misses, inference.inferred_crops,
             fit.verdict)
    return result


# --- the run ----------------------------------------------------------------------------------------

def run_plate(
    plate: Plate,
    plate_map: pd.DataFrame,
    bundle: Bundle,
    store: ResultStore,
    *,
    name: str | None = None,
    options: ScoreOptions = ScoreOptions(),
    progress: ProgressCallback | None = None,
    single_channel_bundle: Bundle | None = None,
    predictors: PredictorCache | None = None,
) -> RunResult:
    """Score every imaged well of a plate and store the run (``infer_plate``, then ``save_plate``).

    Parameters
    ----------
    plate
        The plate (``plates.load_plate``; read lazily, one field at a time).
    plate_map
        Plate map (``platemap.load_plate_map``); must hold every imaged well. A multi-plate map is
        reduced to the plate named ``name`` (else the images' folder name).
    bundle
        The 3-channel ensemble (``model.load_bundle``).
    store
        Where cached predictions are looked up, new ones committed as they arrive, and the run
        written.
    name
        Plate name to store the run under; default ``plate.name``.
    options
        Crops per well, pixel size, significant bits, readout, backend (``ScoreOptions``).
    progress
        Called as ``progress(done_crops, total_crops)`` after the cache lookup and as fields finish.
        An exception raised here aborts the run; nothing of the run is stored.
    single_channel_bundle
        Optional single-channel models (one member per channel); their per-well P(control) is
        stored with the run for the channel comparison.
    predictors
        The caller's cache of predictors to reuse between plates (a server's); None builds the
        run's predictors and closes them when it ends.

    Returns
    -------
    RunResult

    Raises
    ------
    NeuroRGError
        Bad plate map (``PlateMapError`` listing every problem), bundles, fields smaller than a
        crop, or a field that changed on disk during the run.
    """
    members = [m.id for b in (bundle, single_channel_bundle) if b is not None for m in b.members]
    with ThreadPoolExecutor(1, thread_name_prefix="neurorg-version") as pool:
        version = pool.submit(code_version)   # a git subprocess: runs while the plate is inferred
        inference = infer_plate(plate, plate_map, bundle, cached_keys=store.cached_keys(members), name=name,
                                options=options, single_channel_bundle=single_channel_bundle,
                                predictors=predictors, progress=progress, commit=store.put_predictions)
        try:
            # the predictions not committed while inference ran go in with the run, in one transaction
            return save_plate(store, inference, bundle, single_channel_bundle, version=version.result())
        except Exception:
            _keep_predictions(store, inference)
            raise


def _keep_predictions(store: ResultStore, inference: PlateInference) -> None:
    """After a failed save, commit the run's uncommitted predictions to the cache on their own
    (they are true whatever happened to the run), so scoring again does not recompute them."""
    if not inference.uncommitted:
        return
    try:
        store.put_predictions(inference.uncommitted)
    except NeuroRGError as exc:   # e.g. the disk that failed the save: the save's error is the one raised
        log.warning("could not keep %d new predictions of plate %s in the cache: %s", len(inference.uncommitted),
                    inference.name, exc)


def code_version() -> str:
    """``git describe`` of the repository when available, else the installed package version."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"], cwd=REPO_ROOT,
            capture_output=True, text=True, timeout=10, check=True,
        )
        return f"git {out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("no git version (%s); using the package version", exc)
    try:
        return f"neurorg-screen {importlib.metadata.version('neurorg-screen')}"
    except importlib.metadata.PackageNotFoundError:
        return "neurorg-screen (not installed, no git)"
