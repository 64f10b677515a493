"""Score a plate end to end: stream fields -> cache lookup -> inference -> score -> store.

``run_plate`` is what the CLI ``score`` command and the dashboard's scoring page call. It works in
two passes over the plate's fields:

1. *hash pass*: read each field once (lazily, one at a time), hash its pixels and look the
   (field hash, member id, crop key) triples up in the store's prediction cache;
2. *inference pass*: re-read only the fields some member has no cached prediction for, crop them
   and run exactly the missing members through ``inference.predict_stream`` (reading and
   cropping happen in its background thread, overlapping inference).

So scoring the same images with the same bundle again runs no inference; a changed field is
recomputed alone; a retrained (changed) member is recomputed for every field, the other members
are read from the cache. New predictions are committed to the cache in batches as they arrive
(they are true whatever happens to the run); the run itself, with its plate, wells, fields and
well scores, is stored in one transaction at the end, so an interrupted or failed run leaves no
partial run behind.

``load_plate_results`` is the read side: everything a dashboard page needs about a scored plate
in one call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import logging
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from neurorg_core.config import REPO_ROOT
from neurorg_core import scoring, stats
from neurorg_core.errors import NeuroRGError, PlateMapError
from neurorg_core.fitcheck import FitStats, ModelFit, check_model_fit, fit_stats
from neurorg_core.schema import (
    CHANNEL_P_CONTROL,
    CHANNELS,
    CLASS,
    COL,
    COMPOUND,
    CROP,
    DOSE,
    DEFAULT_READOUT,
    DEFAULT_WELL_CALL,
    FIELD,
    FIELD_HASH,
    HIT,
    MEMBER,
    P_CONTROL,
    PLATE,
    PROB_COLUMNS,
    EXPORT_TABLES,
    MODEL_FIT,
    READOUT,
    READOUT_COLUMNS,
    READOUTS,
    ExportTable,
    ROLE,
    ROW,
    WELL,
    Readout,
)
from neurorg_core.inference import Backend, predict_stream, shared_predictor
from neurorg_core.platemap import check_plate_map
from neurorg_core.preprocess import (
    CropGeometry,
    CropPlan,
    Intensity,
    crops_from_field,
    field_channel_stats,
    plate_cropping,
)
from neurorg_core.scoring import score_channels, score_plate
from neurorg_core.store import (
    PLATE_MAP_COLUMNS,
    PlateRecord,
    PredictionRow,
    ResultStore,
    RunRecord,
    utc_now,
)
from neurorg_core.wells import format_well, parse_well

log = logging.getLogger(__name__)

CROP_KEY_VERSION = "v2"
"""Part of every prediction's cache key: bump when cropping or scaling changes what a crop holds.
(v2: crops of the model's crop edge, any field size; the intensity's significant bits in the key.)"""

CACHE_FLUSH_FIELDS = 64
"""Default ``flush_every``: new predictions are committed to the cache once at least this many
fields have them (each commit costs a DuckDB transaction, ~30 ms)."""

CROPS_PER_BATCH_FACTOR = 8
"""Crops are streamed to inference in batches of this many model batches (of 16 crops)."""

ProgressCallback = Callable[[int, int], None]
"""``progress(done_crops, total_crops)``: crops of the plate resolved so far (cached or inferred)."""


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


@dataclass
class _FieldJob:
    """One field's place in the plate, its hash and what it still needs."""

    ref: Any                  # plates.FieldRef
    index: int                # 0-based position within its well
    tiles: tuple[int, ...]    # chosen tile indices (the Metadata_Crop values)
    crop_key: str
    field_hash: str
    missing: dict[str, tuple[Any, ...]]  # bundle role -> members with no cached prediction
    todo: set[str] = dataclasses.field(default_factory=set)  # roles whose inference is pending
    channel_stats: np.ndarray | None = None  # (2, 3) per-channel mean and SD (model-fit check)


@dataclass
class _RunState:
    """Bookkeeping of one run on the calling thread: jobs, new predictions, progress, flushing."""

    jobs: list[_FieldJob]
    total: int
    progress: ProgressCallback | None
    store: ResultStore
    done: int = 0
    inferred_crops: int = 0
    new_probs: dict[tuple[str, str, str], np.ndarray] = dataclasses.field(default_factory=dict)
    unflushed: list[PredictionRow] = dataclasses.field(default_factory=list)
    unflushed_fields: int = 0
    flush_every: int = CACHE_FLUSH_FIELDS

    def report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)

    def resolve_hit(self, j: int) -> None:
        self.done += len(self.jobs[j].tiles)

    def resolve(self, j: int, role: str, members: Sequence[Any], probs: np.ndarray) -> None:
        """Record one field's new predictions ((n_members, n_crops, 6)) for one bundle role."""
        job = self.jobs[j]
        for m, p in zip(members, probs):
            self.new_probs[(job.field_hash, m.id, job.crop_key)] = p
            self.unflushed.append(PredictionRow(job.field_hash, m.id, job.crop_key, p))
        self.inferred_crops += probs.shape[0] * probs.shape[1]
        self.unflushed_fields += 1
        job.todo.discard(role)
        if not job.todo:
            self.done += len(job.tiles)

    def flush(self, at_least: int = 1) -> None:
        """Commit new predictions to the cache once ``at_least`` fields are waiting."""
        if self.unflushed and self.unflushed_fields >= at_least:
            self.store.put_predictions(self.unflushed)
            self.unflushed, self.unflushed_fields = [], 0


def hash_field(pixels: np.ndarray) -> str:
    """Content hash of a field's pixels (SHA-256 of shape, dtype and bytes, first 128 bits), hex.

    Two fields hash equal exactly when they have the same shape, dtype and pixel values, whatever
    file or layout they were read from. SHA-256, not blake2b: with the CPU's SHA instructions it
    hashes a 256 px field 2.4x faster here (0.14 vs 0.33 ms), and it runs on the reader thread
    that competes with inference for the two cores.
    """
    arr = np.ascontiguousarray(pixels)
    h = hashlib.sha256()
    h.update(f"{arr.shape}|{arr.dtype.str}|".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()[:32]


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


def _crop_key(plan: CropPlan, field_index: int, intensity: Intensity) -> str:
    """What a field's crops hold: the crop plan's edge, grid and tiles, and the intensity scaling."""
    return f"{CROP_KEY_VERSION}/b{intensity.bits}/{plan.key(field_index)}"


def _plate_map_for(plate_map: pd.DataFrame, wells: Sequence[str], name: str) -> pd.DataFrame:
    """The plate-map rows of the imaged wells, wells spelled ``A01``, every stored column present."""
    if WELL not in plate_map.columns:
        raise NeuroRGError(f"plate map lacks column {WELL}; it has {', '.join(map(str, plate_map.columns))}")
    pm = plate_map.copy()
    pm[WELL] = [format_well(*parse_well(w)) for w in pm[WELL]]
    missing = sorted(set(wells) - set(pm[WELL]), key=parse_well)
    if missing:
        raise NeuroRGError(
            f"{len(missing)} imaged well(s) are not in the plate map (e.g. {', '.join(missing[:5])}); "
            "expected a plate-map row for every imaged well"
        )
    pm = pm[pm[WELL].isin(set(wells))].copy()
    rc = [parse_well(w) for w in pm[WELL]]
    pm[ROW] = [r for r, _ in rc]
    pm[COL] = [c for _, c in rc]
    pm[PLATE] = name
    defaults: dict[str, Any] = {COMPOUND: "", DOSE: np.nan, ROLE: "treatment", CLASS: pd.NA}
    for col, value in defaults.items():
        if col not in pm.columns:
            pm[col] = value
    pm[COMPOUND] = pm[COMPOUND].fillna("").astype(str)
    pm[DOSE] = pd.to_numeric(pm[DOSE], errors="raise").astype(float)
    pm[CLASS] = pd.array(pm[CLASS], dtype="Int64")
    return pm.sort_values([ROW, COL]).reset_index(drop=True)


def _check_bundles(bundle: Any, single_channel_bundle: Any | None) -> dict[str, Any]:
    bundles = {"ensemble": bundle}
    geometry = CropGeometry.from_card(bundle.card)
    if single_channel_bundle is not None:
        chans = [m.channels for m in single_channel_bundle.members]
        if any(len(c) != 1 or c[0] not in CHANNELS for c in chans):
            raise NeuroRGError(
                f"single-channel bundle {single_channel_bundle.path} has members with channels {chans}; "
                f"expected one of {', '.join(CHANNELS)} per member"
            )
        if CropGeometry.from_card(single_channel_bundle.card) != geometry:
            raise NeuroRGError(
                f"single-channel bundle {single_channel_bundle.path} crops "
                f"{CropGeometry.from_card(single_channel_bundle.card)}, the ensemble {geometry}; the channel "
                "comparison needs both to see the same crops"
            )
        bundles["single_channel"] = single_channel_bundle
    ids = [m.id for b in bundles.values() for m in b.members]
    if len(set(ids)) != len(ids):
        raise NeuroRGError(f"model members are not distinct (ids {ids}); expected one id per member")
    return bundles


def _member_label(member: Any, position: int) -> int:
    """The ``Model_Member`` value: the fold for ensemble members, else 1-based position."""
    return int(member.fold) if member.fold is not None else position + 1


def run_plate(
    plate: Any,
    plate_map: pd.DataFrame,
    bundle: Any,
    store: ResultStore,
    *,
    name: str | None = None,
    crops_per_well: int = 15,
    progress: ProgressCallback | None = None,
    single_channel_bundle: Any | None = None,
    backend: Backend = "litert",
    flush_every: int = CACHE_FLUSH_FIELDS,
    pixel_size_um: float | None = None,
    bits: int | None = None,
    readout: Readout = DEFAULT_READOUT,
) -> RunResult:
    """Score every imaged well of a plate and store the run.

    Parameters
    ----------
    plate
        A ``plates.Plate`` (read lazily, one field at a time).
    plate_map
        Plate map (``platemap.load_plate_map``); must hold every imaged well.
    bundle
        The 3-channel ensemble (``model.load_bundle``).
    store
        Where cached predictions are looked up and the run is written.
    name
        Plate name to store the run under; default ``plate.name``.
    crops_per_well
        Crops taken per well, spread over its fields.
    progress
        Called as ``progress(done_crops, total_crops)`` after the cache lookup and as fields finish.
        An exception raised here aborts the run; nothing of the run is stored.
    single_channel_bundle
        Optional single-channel models (one member per channel); their per-well P(control) is
        stored with the run for the channel comparison.
    backend
        ``"litert"`` (the fast path; each member is converted once, then cached) or ``"keras"``
        (plain ``model.predict``: slower per crop but no conversion; same probabilities within
        1e-6, so both share the cache).
    flush_every
        Fields per commit of new predictions to the cache while inference runs: an interrupted
        run keeps what was committed.
    pixel_size_um
        The plate's pixel size (µm) when the user knows it; wins over the files' metadata
        (``Plate.pixel_size_um``). With the model's pixel size on its card, crops are cut at the
        model's physical scale.
    bits
        The images' significant bit depth (8, 12, 14, 16) when the user knows it; default
        detected from the plate (``preprocess.detect_intensity``).
    readout
        The well score rescue %, hits, QC and EC50 use (``schema.READOUTS``), recorded with the run.

    Returns
    -------
    RunResult

    Raises
    ------
    NeuroRGError
        Bad plate map, bundles, or a field that changed on disk during the run.
    """

    name = name or plate.name
    if readout not in READOUTS:
        raise NeuroRGError(f"readout {readout!r} is not one of {', '.join(READOUTS)}")
    bundles = _check_bundles(bundle, single_channel_bundle)
    wells = plate.wells()
    if not wells:
        raise NeuroRGError("plate has no imaged wells", path=plate.source)
    which = None
    if PLATE in plate_map.columns:
        in_map = sorted(set(plate_map[PLATE].dropna().astype(str)) - {""})
        if len(in_map) > 1:
            which = name if name in in_map else plate.name
    problems = check_plate_map(plate_map, wells, plate=which)
    if problems:
        raise PlateMapError(problems)
    if which is not None:
        plate_map = plate_map[plate_map[PLATE].astype(str) == which]
    pm = _plate_map_for(plate_map, wells, name)
    cropping = plate_cropping(plate, CropGeometry.from_card(bundle.card), pixel_size_um=pixel_size_um, bits=bits)
    intensity = cropping.intensity
    plans = {w: cropping.plan(len(plate.fields_of(w)), plate.field_shape, crops_per_well) for w in wells}
    log.info("crops of %d px on %s fields (%s), %s", cropping.edge, "x".join(map(str, plate.field_shape)),
             cropping, intensity)
    members_all = [m for b in bundles.values() for m in b.members]
    cached = store.cached_keys([m.id for m in members_all])

    position = {ref: i for w in wells for i, ref in enumerate(plate.fields_of(w))}
    total = sum(len(plans[ref.well].tiles_of(position[ref])) for ref in plate.fields)
    state = _RunState(jobs=[], total=total, progress=progress, store=store, flush_every=flush_every)

    def make_job(ref: Any, pixels: np.ndarray) -> int:
        """Hash a field and note which members lack a cached prediction for it."""
        idx = position[ref]
        plan = plans[ref.well]
        key = _crop_key(plan, idx, intensity)
        h = hash_field(pixels)
        tiles = plan.tiles_of(idx)
        missing: dict[str, tuple[Any, ...]] = {}
        for role, b in bundles.items():
            lacking = tuple(m for m in b.members if (h, m.id, key) not in cached)
            if tiles and lacking:
                missing[role] = lacking
        state.jobs.append(_FieldJob(ref, idx, tiles, key, h, missing, todo=set(missing),
                                    channel_stats=field_channel_stats(pixels, intensity)))
        return len(state.jobs) - 1

    # --- one streaming pass: read + hash each field once; fields cached for every member are
    # hits; fields lacking the same members as the first miss are cropped and inferred on the
    # way (reading in predict_stream's background thread); any other miss is deferred ----------
    fields_iter = plate.iter_fields()
    first: tuple[int, np.ndarray] | None = None
    for ref, pixels in fields_iter:
        j = make_job(ref, pixels)
        if state.jobs[j].missing:
            first = (j, pixels)
            break
        state.resolve_hit(j)
    state.report()
    if first is not None:
        j0, pixels0 = first
        role, subset = next(iter(state.jobs[j0].missing.items()))
        ids = tuple(m.id for m in subset)
        input_size = subset[0].input_size

        def stream_items() -> Iterator[tuple[int, np.ndarray]]:
            job0 = state.jobs[j0]
            yield j0, crops_from_field(pixels0, plans[job0.ref.well], job0.index, input_size, intensity)
            for ref, pixels in fields_iter:
                j = make_job(ref, pixels)
                job = state.jobs[j]
                if tuple(m.id for m in job.missing.get(role, ())) == ids:
                    yield j, crops_from_field(pixels, plans[ref.well], job.index, input_size, intensity)
                else:  # a cache hit, or lacking other members: nothing to infer in this stream
                    yield j, np.empty((0, input_size, input_size, 3), np.float32)

        _infer(state, bundles[role], subset, role, stream_items(), backend)

    # --- deferred misses (rare: e.g. part of a plate scored before by a changed member) -------
    groups: dict[tuple[str, tuple[str, ...]], list[int]] = {}
    for j, job in enumerate(state.jobs):
        for role in sorted(job.todo):
            groups.setdefault((role, tuple(m.id for m in job.missing[role])), []).append(j)
    for (role, ids), job_ids in groups.items():
        subset = tuple(m for m in bundles[role].members if m.id in ids)
        items = _reread_items(plate, plans, state.jobs, job_ids, subset[0].input_size, intensity)
        _infer(state, bundles[role], subset, role, items, backend)
    state.flush()
    jobs = state.jobs
    if state.done != total:
        raise NeuroRGError(f"{state.done} of {total} crops were scored; expected all (a field was skipped)",
                           path=plate.source)

    # --- crop-level tables and scores ---------------------------------------------------------
    crop_tables = {role: _crop_table(jobs, b.members, state.new_probs, store) for role, b in bundles.items()}
    well_scores = score_plate(crop_tables["ensemble"], pm,
                              well_call=bundle.card.get("well_call", DEFAULT_WELL_CALL))
    well_scores[PLATE] = name
    channel_scores = None
    if "single_channel" in bundles:
        sc = bundles["single_channel"]
        by_channel = {
            m.channels[0]: crop_tables["single_channel"][
                crop_tables["single_channel"][MEMBER] == _member_label(m, i)]
            for i, m in enumerate(sc.members)
        }
        channel_scores = score_channels(by_channel)
        for col in CHANNEL_P_CONTROL:
            if col not in channel_scores.columns:
                channel_scores[col] = np.nan

    stats_now = fit_stats(scoring.with_inflammation_score(well_scores), crop_tables["ensemble"],
                          np.stack([j.channel_stats for j in jobs]))
    fit = _check_fit(bundle, stats_now)

    hits = sum(1 for j in jobs if not j.missing)
    run_id = f"{utc_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    params: dict[str, Any] = {
        "crops_per_well": int(crops_per_well),
        "input_size": int(bundle.members[0].input_size),
        "channel_map": dict(plate.channel_map),
        "members": [m.id for m in bundle.members],
        "crop_key_version": CROP_KEY_VERSION,
        "readout": readout,
        "well_call": bundle.card.get("well_call", DEFAULT_WELL_CALL),
        "crop_geometry": {**cropping.as_params(),
                          "overlapping_tiles": any(p.overlapping for p in plans.values())},
        "intensity": intensity.as_params(),
        "model_fit": fit.as_params(),
    }
    if single_channel_bundle is not None:
        params["single_channel_bundle"] = {"id": single_channel_bundle.id,
                                           "members": [m.id for m in single_channel_bundle.members]}
    run = RunRecord(
        run_id=run_id, plate=name, model_id=bundle.id, bundle_card=bundle.card, params=params,
        code_version=code_version(), n_wells=len(well_scores), cache_hits=hits,
        cache_misses=len(jobs) - hits,
    )
    record = PlateRecord(
        name=name, source=str(plate.source), layout=str(plate.layout), plate_format=int(plate.plate_format),
        field_shape=(int(plate.field_shape[0]), int(plate.field_shape[1])), dtype=str(np.dtype(plate.dtype)),
        channel_map=dict(plate.channel_map),
    )
    field_table = pd.DataFrame({
        WELL: [j.ref.well for j in jobs], FIELD: [int(j.ref.field) for j in jobs],
        FIELD_HASH: [j.field_hash for j in jobs],
    })
    store.save_run(plate=record, wells=pm[list(PLATE_MAP_COLUMNS)], fields=field_table,
                   well_scores=well_scores, run=run, channel_scores=channel_scores)
    result = RunResult(
        run_id=run_id, plate=name, n_wells=len(well_scores), n_fields=len(jobs), n_crops=total,
        cache_hits=hits, cache_misses=len(jobs) - hits, inferred_crops=state.inferred_crops,
        model_fit=fit, fit_stats=stats_now, crop_edge_px=cropping.edge, intensity=intensity,
    )
    log.info("run %s: %d wells, %d fields (%d cached, %d inferred), %d crop predictions computed",
             run_id, result.n_wells, result.n_fields, hits, result.cache_misses, state.inferred_crops)
    return result


def _check_fit(bundle: Any, stats_now: FitStats) -> ModelFit:
    """The model-fit verdict of a plate's statistics against the bundle's card."""
    ref = bundle.card.get("fit_reference")
    reference = FitStats.from_dict(ref, where=f"{bundle.path}/card.json fit_reference") if ref else None
    norms = [m.mean for m in bundle.members], [m.std for m in bundle.members]
    return check_model_fit(stats_now, reference, train_mean=np.mean(norms[0], axis=0),
                           train_sd=np.mean(norms[1], axis=0))


def _reread_items(
    plate: Any, plans: dict[str, Any], jobs: Sequence[_FieldJob], job_ids: Sequence[int], input_size: int,
    intensity: Intensity,
) -> Iterator[tuple[int, np.ndarray]]:
    """Read the given fields again, check they did not change, and crop them."""
    for j in job_ids:
        job = jobs[j]
        pixels = plate.read_field(job.ref)
        if hash_field(pixels) != job.field_hash:
            raise NeuroRGError(
                f"field {job.ref.field} changed on disk while the plate was being scored; score it again",
                path=plate.source, well=job.ref.well,
            )
        yield j, crops_from_field(pixels, plans[job.ref.well], job.index, input_size, intensity)


def _batched(
    items: Iterator[tuple[int, np.ndarray]], size: int,
) -> Iterator[tuple[list[tuple[int, int, bool]], np.ndarray]]:
    """Regroup ``(job, crops)`` items into batches of exactly ``size`` crops (the last may be
    smaller), so every fixed-size model batch is full: a field's crops may be split over two
    batches. Keys are ``(job, n_crops in this batch, last part of the job)``."""
    keys: list[tuple[int, int, bool]] = []
    parts: list[np.ndarray] = []
    n = 0
    for j, crops in items:
        k = len(crops)
        if k == 0:  # a field passing by without inference
            keys.append((j, 0, True))
            parts.append(crops)
            continue
        start = 0
        while start < k:
            take = min(k - start, size - n)
            keys.append((j, take, start + take == k))
            parts.append(crops[start:start + take])
            n += take
            start += take
            if n == size:
                yield keys, np.concatenate(parts)
                keys, parts, n = [], [], 0
    if keys:
        yield keys, np.concatenate(parts)


def _infer(
    state: _RunState, src: Any, subset: Sequence[Any], role: str,
    items: Iterator[tuple[int, np.ndarray]], backend: Backend,
) -> None:
    """Run ``subset`` (members of bundle ``src``) over the items' crops through ``predict_stream``;
    items are produced in its background thread. Items with no crops are cache hits (or deferred
    misses) passing by."""
    sub_bundle = dataclasses.replace(src, members=tuple(subset))
    predictor = shared_predictor(sub_bundle, backend=backend)
    log.info("inference with %d %s member(s) of model %s", len(subset), role, src.id)
    batches = _batched(items, CROPS_PER_BATCH_FACTOR * predictor.batch_size)
    partial: dict[int, list[np.ndarray]] = {}
    with closing(predict_stream(batches, sub_bundle, predictor=predictor)) as stream:
        for keys, probs in stream:
            n_in = sum(k for _, k, _ in keys)
            if probs.shape != (len(subset), n_in, len(PROB_COLUMNS)):
                raise NeuroRGError(
                    f"inference returned shape {probs.shape}; expected "
                    f"({len(subset)}, {n_in}, {len(PROB_COLUMNS)})", path=sub_bundle.path,
                )
            start = 0
            for j, k, last in keys:
                if k:
                    partial.setdefault(j, []).append(probs[:, start:start + k])
                    start += k
                    if last:
                        state.resolve(j, role, subset, np.concatenate(partial.pop(j), axis=1))
                elif not state.jobs[j].missing:
                    state.resolve_hit(j)
            state.report()
            state.flush(at_least=state.flush_every)


def _crop_table(
    jobs: Sequence[_FieldJob], members: Sequence[Any], new_probs: dict[tuple[str, str, str], np.ndarray],
    store: ResultStore,
) -> pd.DataFrame:
    """The crop-level probability table (``scoring.CROP_PROB_COLUMNS``) of one bundle's members."""
    parts: list[pd.DataFrame] = []
    scored = [j for j in jobs if j.tiles]
    for pos, m in enumerate(members):
        # predictions not computed in this run come from the cache, one query per crop layout
        wanted: dict[str, list[str]] = {}
        for j in scored:
            if (j.field_hash, m.id, j.crop_key) not in new_probs:
                wanted.setdefault(j.crop_key, []).append(j.field_hash)
        from_cache: dict[tuple[str, str], np.ndarray] = {}
        for key, hashes in wanted.items():
            for h, p in store.cached_predictions(hashes, m.id, crop_key=key).items():
                from_cache[(h, key)] = p
        label = _member_label(m, pos)
        wells, fields, crops, probs = [], [], [], []
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
            wells += [j.ref.well] * len(j.tiles)
            fields += [int(j.ref.field)] * len(j.tiles)
            crops += list(j.tiles)
            probs.append(p)
        part = pd.DataFrame(np.concatenate(probs, axis=0).astype(np.float64), columns=list(PROB_COLUMNS))
        part.insert(0, MEMBER, label)
        part.insert(0, CROP, crops)
        part.insert(0, FIELD, fields)
        part.insert(0, WELL, wells)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


# --- the read side ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PlateResults:
    """Everything the pages and the CLI show about one stored run of a plate.

    Attributes
    ----------
    plate, run_id
        The plate name and the run read (the plate's latest unless asked otherwise).
    plate_record
        ``ResultStore.load_plate``: source folder, layout, format, field shape, dtype, channel map.
    run
        ``ResultStore.load_run``: provenance (model id, bundle card, parameters, code version).
    readout
        The run's readout (``schema.READOUTS``): the well score behind rescue %, hits, QC and fits.
    model_fit
        The run's model-fit verdict (``fitcheck.ModelFit``).
    wells
        Per-well scores with ``Inflammation_score``, plus ``Rescue_pct`` (on the readout) when the
        plate has control and disease wells.
    channels
        ``wells`` joined with the single-channel ``P_control_<channel>`` columns; empty when the
        run had no single-channel models.
    qc
        ``stats.plate_qc`` (Z', SSMD, CV, edge effects); empty when not computable.
    treatments
        ``stats.compare_treatments`` (per compound and dose, with hit calls).
    fits
        ``stats.fit_compounds`` on the readout (4PL, EC50 with 95 % CI, per compound).
    channel_fits
        Channel role -> ``stats.channel_correlation`` against the 3-channel P(control).
    problems
        Statistic -> why it could not be computed (e.g. a plate without disease wells).
    """

    plate: str
    run_id: str
    plate_record: dict[str, Any]
    run: dict[str, Any]
    readout: Readout
    model_fit: ModelFit
    wells: pd.DataFrame
    channels: pd.DataFrame
    qc: dict[str, Any]
    treatments: pd.DataFrame
    fits: pd.DataFrame
    channel_fits: dict[str, dict[str, Any]]
    problems: dict[str, str]

    @property
    def n_hits(self) -> int:
        """Treatments (compound, dose) called hits."""
        return int(self.treatments[HIT].sum()) if HIT in self.treatments.columns else 0

    @property
    def readout_column(self) -> str:
        """The well-table column of the readout (``Inflammation_score`` or ``P_control``)."""
        return READOUT_COLUMNS[self.readout]

    @property
    def synthetic_model(self) -> bool:
        """The run's model was trained on the synthetic assay (its card says so)."""
        return bool(self.run.get("bundle_card", {}).get("synthetic", False))

    @property
    def hits_provisional(self) -> str:
        """Why the hit calls are provisional ("" when they are not): plate QC failed (Z' < 0) or
        the model-fit check says POOR."""
        why = []
        z = self.qc.get("z_prime")
        if z is not None and not (z >= 0):
            why.append(f"plate QC failed (Z' {z:.2f} < 0)")
        if self.model_fit.verdict == "POOR":
            why.append("the model-fit check says POOR: " + "; ".join(self.model_fit.reasons))
        return "; ".join(why)


def load_plate_results(store: ResultStore, plate: str, run_id: str | None = None,
                       readout: Readout | None = None) -> PlateResults:
    """Read a scored plate from the store and compute its statistics, in one call.

    Parameters
    ----------
    store
        The result store.
    plate
        Plate name.
    run_id
        A run of that plate; default its latest.
    readout
        The well score for rescue %, hits, QC and fits; default the one the run recorded
        (``inflammation_score`` for runs stored before readouts were recorded).

    Returns
    -------
    PlateResults
        Statistics that cannot be computed for this plate (e.g. no disease wells for Z') are left
        empty and explained in ``problems``; nothing is silently dropped.

    Raises
    ------
    NeuroRGError
        If the plate has no stored run or ``run_id`` is not one of its runs.
    """
    run = run_id if run_id is not None else store.latest_run_id(plate)
    run_info = store.load_run(run)
    params = run_info.get("params") or {}
    chosen: Readout = readout if readout is not None else params.get("readout", DEFAULT_READOUT)
    if chosen not in READOUTS:
        raise NeuroRGError(f"readout {chosen!r} is not one of {', '.join(READOUTS)}")
    metric = READOUT_COLUMNS[chosen]
    wells = scoring.with_inflammation_score(store.load_well_scores(plate, run))
    problems: dict[str, str] = {}
    qc: dict[str, Any] = {}
    treatments = pd.DataFrame({c: pd.Series(dtype=float) for c in stats.TREATMENT_COLUMNS})
    fits = pd.DataFrame({c: pd.Series(dtype=float) for c in stats.FIT_COLUMNS})
    try:
        wells = stats.add_rescue(wells, metric=metric)
    except NeuroRGError as exc:
        problems["rescue"] = str(exc)
    try:
        qc = dict(stats.plate_qc(wells, metric=metric))
    except NeuroRGError as exc:
        problems["qc"] = str(exc)
    try:
        treatments = stats.compare_treatments(wells, metric=metric)
    except NeuroRGError as exc:
        problems["treatments"] = str(exc)
    try:
        fits = stats.fit_compounds(wells, metric=metric)
    except NeuroRGError as exc:
        problems["fits"] = str(exc)
    channel_scores = store.load_channel_scores(run)
    channels = wells.merge(channel_scores, on=WELL, how="inner") if not channel_scores.empty else \
        pd.DataFrame(columns=[*wells.columns, *CHANNEL_P_CONTROL])
    channel_fits: dict[str, dict[str, Any]] = {}
    if not channels.empty:
        for channel, column in zip(CHANNELS, CHANNEL_P_CONTROL):
            try:
                channel_fits[channel] = dict(stats.channel_correlation(channels[P_CONTROL], channels[column]))
            except NeuroRGError as exc:
                problems[f"channel {channel}"] = str(exc)
    return PlateResults(
        plate=plate, run_id=run, plate_record=store.load_plate(plate), run=run_info,
        readout=chosen, model_fit=ModelFit.from_params(params.get("model_fit")), wells=wells, channels=channels, qc=qc, treatments=treatments, fits=fits,
        channel_fits=channel_fits, problems=problems,
    )


def export_table(results: PlateResults | Any, table: ExportTable = "wells") -> pd.DataFrame:
    """One of a plate's tables as exported (CLI ``export --table``, the app's downloads).

    ``wells``: one row per well (pycytominer ``Metadata_*`` columns, scores, ``Rescue_pct``);
    ``treatments``: per compound and dose, with ``Hit`` first after the compound and dose; ``fits``:
    the 4PL per compound. Every row also carries ``Metadata_Plate``, the run's ``Readout`` and
    ``Model_fit`` verdict, so a table read on its own says how its numbers were made.
    ``results`` is a ``PlateResults`` or anything with its ``plate``, ``readout``, ``model_fit``,
    ``wells``, ``treatments`` and ``fits`` (the dashboard's cached copy).
    """
    if table not in EXPORT_TABLES:
        raise NeuroRGError(f"table {table!r} is not one of {', '.join(EXPORT_TABLES)}")
    if table == "wells":
        out = results.wells.copy()
    elif table == "treatments":
        t = results.treatments
        first = [c for c in (COMPOUND, DOSE, HIT) if c in t.columns]
        out = t[first + [c for c in t.columns if c not in first]].copy()
    else:
        out = results.fits.copy()
    out[PLATE] = results.plate
    out[READOUT] = results.readout
    out[MODEL_FIT] = results.model_fit.verdict
    lead = [PLATE] + [c for c in out.columns if c not in (PLATE, READOUT, MODEL_FIT)]
    return out[lead + [READOUT, MODEL_FIT]]
