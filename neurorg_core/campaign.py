"""Score a screening campaign: many plates read, cropped and inferred on Ray, stored by one writer.

Size (~640 lines): the manifest checks (every row's problems named by file and row) and the Ray
actors' fault handling are most of it; both serve the one campaign run, so they stay together.

``run_campaign`` is a list of named steps:

1. ``register`` the plates in the store's ``campaigns`` table (campaign id, plate, batch, date,
   model id, status, run id);
2. ``_plan`` each plate: **skip** it when the campaign already stored it with this model (and its
   run is still there), **reuse** its Parquet files when a crashed campaign wrote them for the
   same images, model and options, else **infer** it;
3. ``_merge`` reused plates (the one writer: ``pipeline.save_plate`` into DuckDB, the campaign row
   marked stored in the same transaction, then the well table written as ``wells.parquet``);
4. infer the rest on Ray (``_RayPlates``): one actor per worker (CPU, or one GPU each where the
   cluster reports GPUs) runs ``plate_inference.infer_plate`` on whole plates against a snapshot of
   the prediction cache, so a field already cached for a member is not computed again, and returns
   the plate's Parquet files; the writer writes them into ``<db folder>/campaigns/<campaign id>/``
   and merges each plate as it arrives. A worker killed mid-plate is restarted and its plate
   retried (actor restarts + task retries); nothing of a plate is stored until it is merged whole.

Progress reports plates and crops done and the time left. A plate that fails (unreadable images,
a plate map that does not match them) is marked ``failed`` with its message; the others go on.
Ray is imported only here, when a campaign needs it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from neurorg_core import campaign_parquet as files
from neurorg_core.cache import file_version
from neurorg_core.errors import NeuroRGError, PlateMapError
from neurorg_core.inference import PredictorCache
from neurorg_core.model import Bundle, load_bundle
from neurorg_core.pipeline import RunResult, save_plate
from neurorg_core.plate_inference import ScoreOptions, infer_plate
from neurorg_core.platemap import load_plate_map
from neurorg_core.plates import load_plate
from neurorg_core.prediction_keys import CachedKeys
from neurorg_core.schema import RUN_ID, RUN_STATUS, PLATE, MODEL_ID
from neurorg_core.store import CampaignEntry, ResultStore

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("plate", "plate_map", "name", "batch", "date")
"""A manifest's columns (header names, any case): the images' folder or zip and its plate map are
required; name (default the folder / zip name), batch and acquisition date (YYYY-MM-DD) optional.
Relative paths are read from the manifest's folder."""

CAMPAIGN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

WORKER_RESTARTS = 3
"""A killed worker is restarted (and its plate retried) this many times before the plate fails."""


# --- the manifest --------------------------------------------------------------------------------

@dataclass(frozen=True)
class CampaignPlate:
    """One plate of a campaign, as its manifest row gives it.

    Attributes
    ----------
    row
        1-based data row of the manifest (the position given on the command line otherwise).
    source, plate_map
        The images (folder or zip) and the plate map file.
    name
        What the plate's runs are stored under.
    batch, date
        The lab's batch label ("" when none) and the acquisition date (None when none).
    """

    row: int
    source: Path
    plate_map: Path
    name: str
    batch: str = ""
    date: date | None = None


def load_manifest(path: str | Path) -> list[CampaignPlate]:
    """Read a campaign manifest (CSV: ``MANIFEST_COLUMNS``), checking every row.

    Raises
    ------
    NeuroRGError
        Listing every problem by file and row: a missing column, a plate folder or zip that does
        not exist, a plate map that is missing or cannot be read (its own problems quoted), a date
        that is not YYYY-MM-DD, a plate name used twice.
    """
    path = Path(path)
    if not path.is_file():
        raise NeuroRGError("no such campaign manifest", path=path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = {(h or "").strip().lower(): h for h in reader.fieldnames or []}
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise NeuroRGError(f"cannot read the manifest ({exc}); expected a UTF-8 CSV with columns "
                           f"{', '.join(MANIFEST_COLUMNS)}", path=path) from exc
    missing = [c for c in ("plate", "plate_map") if c not in header]
    if missing:
        raise NeuroRGError(f"the manifest has no {' or '.join(missing)} column (columns found: "
                           f"{', '.join(h for h in header if h) or 'none'}); expected {', '.join(MANIFEST_COLUMNS)}",
                           path=path)
    problems: list[str] = []
    plates: list[CampaignPlate] = []
    for i, raw in enumerate(rows, start=1):
        cell = {c: str(raw.get(header[c]) or "").strip() for c in MANIFEST_COLUMNS if c in header}
        if not any(cell.values()):
            continue   # a blank line
        where = f"{path.name} row {i} (line {i + 1})"
        plate = _row_plate(i, cell, path.parent, where, problems)
        if plate is not None:
            plates.append(plate)
    problems += _duplicate_names(plates, path.name)
    if problems:
        raise NeuroRGError(f"{len(problems)} problem(s) in the campaign manifest: " + "; ".join(problems))
    if not plates:
        raise NeuroRGError("the manifest lists no plate", path=path)
    return plates


def plates_from_paths(paths: Sequence[str | Path], plate_map: str | Path | None = None) -> list[CampaignPlate]:
    """A campaign of the plates given on the command line, each with ``plate_map`` (one map for
    all, e.g. a multi-plate map keyed by ``Metadata_Plate``), else its folder's ``platemap.csv``.

    Raises
    ------
    NeuroRGError
        Listing every plate that does not exist or has no readable plate map.
    """
    problems: list[str] = []
    plates: list[CampaignPlate] = []
    for i, p in enumerate(paths, start=1):
        source = Path(p)
        pm = Path(plate_map) if plate_map else source / "platemap.csv"
        plate = _row_plate(i, {"plate": str(source), "plate_map": str(pm)}, Path.cwd(), f"plate {i} ({source})",
                           problems)
        if plate is not None:
            plates.append(plate)
    problems += _duplicate_names(plates, "the command line")
    if problems:
        raise NeuroRGError(f"{len(problems)} problem(s) with the campaign's plates: " + "; ".join(problems))
    return plates


def _row_plate(row: int, cell: dict[str, str], base: Path, where: str, problems: list[str]) -> CampaignPlate | None:
    """One manifest row checked (problems appended, naming ``where``), or None when it has any."""
    found: list[str] = []
    source = base / cell["plate"] if cell.get("plate") else None
    if source is None:
        found.append("no plate folder or zip given")
    elif not source.exists():
        found.append(f"plate {source} does not exist")
    pm = base / cell["plate_map"] if cell.get("plate_map") else None
    if pm is None:
        found.append("no plate map given")
    else:
        try:
            load_plate_map(pm)
        except PlateMapError as exc:
            found.append(f"plate map {pm}: {'; '.join(exc.problems)}")
    when: date | None = None
    if cell.get("date"):
        try:
            when = date.fromisoformat(cell["date"])
        except ValueError:
            found.append(f"date {cell['date']!r} is not a date; expected YYYY-MM-DD (e.g. 2026-03-01)")
    problems += [f"{where}: {p}" for p in found]
    if found:
        return None
    assert source is not None and pm is not None
    name = cell.get("name") or (source.stem if source.is_file() else source.name)
    return CampaignPlate(row=row, source=source, plate_map=pm, name=name, batch=cell.get("batch", ""), date=when)


def _duplicate_names(plates: Sequence[CampaignPlate], where: str) -> list[str]:
    rows: dict[str, list[int]] = {}
    for p in plates:
        rows.setdefault(p.name, []).append(p.row)
    return [f"{where}: plate name {name!r} is used by rows {', '.join(map(str, r))}; expected one plate per "
            "name (give each a name)" for name, r in rows.items() if len(r) > 1]


def campaign_id_for(plates: Sequence[CampaignPlate], bundle: Bundle, options: ScoreOptions) -> str:
    """The default campaign id: a hash of its plates (name, images, plate map), the model and the
    options that change results, so the same command finds its own campaign again. When the
    cache commits (``flush_every``, ``flush_after_s``) is left out: tuning it must not orphan a
    campaign half done."""
    chosen = {k: v for k, v in dataclasses.asdict(options).items() if k not in ("flush_every", "flush_after_s")}
    key = json.dumps({"plates": [[p.name, str(p.source.resolve()), str(p.plate_map.resolve())] for p in plates],
                      "model": bundle.id, "options": chosen}, sort_keys=True, default=str)
    return "campaign-" + hashlib.blake2b(key.encode(), digest_size=5).hexdigest()


def check_campaign_id(campaign_id: str) -> str:
    if not CAMPAIGN_ID_PATTERN.match(campaign_id):
        raise NeuroRGError(f"campaign id {campaign_id!r}; expected 1-64 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit (it names a folder)")
    return campaign_id


def source_stamp(source: Path) -> str:
    """A key of the images' version: a zip's ``cache.file_version``, or every file's path and
    version under a folder (stat calls only, no pixels)."""
    h = hashlib.blake2b(digest_size=12)
    if source.is_file():
        h.update(f"{source.name}|{file_version(source.stat())}".encode())
        return h.hexdigest()
    for root, dirs, names in os.walk(source):
        dirs.sort()
        for n in sorted(names):
            path = os.path.join(root, n)
            h.update(f"{os.path.relpath(path, source)}|{file_version(os.stat(path))}\n".encode())
    return h.hexdigest()


def plate_folder(campaign_folder: Path, name: str) -> Path:
    """A plate's folder of Parquet files: its name made file-safe, plus a short hash of the name
    (two names that clean up alike stay apart)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60] or "plate"
    return campaign_folder / f"{safe}-{hashlib.blake2b(name.encode(), digest_size=4).hexdigest()}"


# --- progress and the result ------------------------------------------------------------------------

@dataclass(frozen=True)
class CampaignProgress:
    """Where a campaign stands.

    Attributes
    ----------
    plates_done, plates_total
        Plates stored, skipped or failed; plates in the campaign.
    crops_done, crops_total
        Crops resolved (cached or inferred) over the plates this run works on; the total counts
        plates not yet started at the mean of those that have (None before any has).
    seconds_left
        Estimated from the crop rate since the workers started (None until there is a rate).
    """

    plates_done: int
    plates_total: int
    crops_done: int
    crops_total: int | None
    elapsed_s: float
    seconds_left: float | None

    def line(self) -> str:
        crops = f"{self.crops_done:,}/{self.crops_total:,}" if self.crops_total else f"{self.crops_done:,}"
        left = f", ~{self.seconds_left:.0f} s left" if self.seconds_left is not None else ""
        return f"plates {self.plates_done}/{self.plates_total}, crops {crops}{left}"


CampaignProgressCallback = Callable[[CampaignProgress], None]
WorkerHook = Callable[[str, int, int], None]
"""Called in a worker as ``hook(plate name, crops done, crops total)`` whenever a plate's progress
moves (instrumentation; the fault tests kill a worker from it)."""


@dataclass(frozen=True)
class CampaignResult:
    """What ``run_campaign`` did.

    Attributes
    ----------
    campaign_id, folder
        The campaign and its folder of Parquet files.
    stored
        Plate -> run id of the plates stored by this run.
    skipped
        Plates the campaign had already stored with this model (nothing read).
    reused
        Plates merged from Parquet files an earlier, interrupted run wrote (nothing read).
    failed
        Plate -> why.
    inferred_crops
        Crop x member predictions computed by the workers in this run.
    ray_startup_s, elapsed_s
        Seconds to start Ray and its workers (0 when no plate needed them); the whole run.
    writer_s
        Seconds the writer spent merging plates into the store (reading their Parquet files,
        ``save_plate``, writing ``wells.parquet``).
    """

    campaign_id: str
    folder: Path
    stored: dict[str, str]
    skipped: list[str]
    reused: list[str]
    failed: dict[str, str]
    inferred_crops: int
    ray_startup_s: float
    elapsed_s: float
    writer_s: float


# --- the run ------------------------------------------------------------------------------------------

def run_campaign(
    plates: Sequence[CampaignPlate],
    bundle: Bundle,
    store: ResultStore,
    *,
    campaign_id: str | None = None,
    options: ScoreOptions = ScoreOptions(),
    channel_map: dict[str, str] | None = None,
    folder: Path | None = None,
    ray_address: str | None = None,
    workers: int | None = None,
    progress: CampaignProgressCallback | None = None,
    worker_hook: WorkerHook | None = None,
) -> CampaignResult:
    """Score every plate of a campaign into ``store``: workers on Ray, one writer (this process).

    Parameters
    ----------
    plates
        From ``load_manifest`` or ``plates_from_paths``.
    bundle
        The 3-channel ensemble (its folder must be readable by every worker).
    store
        The result store; the campaign's Parquet files go to ``<its folder>/campaigns/<id>/``.
    campaign_id
        Default ``campaign_id_for(plates, bundle, options)``.
    options
        As ``score``'s (crops per well, pixel size, bits, readout, backend), passed to the workers.
    channel_map
        Role -> channel id for every plate (``score --channels``); None: detected.
    folder
        Where the Parquet files go instead of ``<db folder>/campaigns/<campaign id>``.
    ray_address
        A Ray cluster's address; None starts an embedded local Ray (unless this process already
        runs one, which is then used as it is).
    workers
        Worker actors; default one per CPU of the local Ray, or per GPU of a cluster with GPUs,
        else per CPU of the cluster.
    progress, worker_hook
        ``progress(CampaignProgress)`` in this process; ``worker_hook`` in the workers.

    Returns
    -------
    CampaignResult

    Raises
    ------
    NeuroRGError
        A bad campaign id, or a store that cannot be written. A plate's own problems do not
        raise: the plate is marked failed and listed in ``CampaignResult.failed``.
    """
    started = time.monotonic()
    cid = check_campaign_id(campaign_id or campaign_id_for(plates, bundle, options))
    out = folder or store.path.parent / "campaigns" / cid
    register(store, cid, plates, bundle)
    skip, reuse, todo = _plan(store, cid, plates, bundle, options, out)
    tracker = _Progress(len(plates), started, progress)
    tracker.plates_done = len(skip)
    result = _Outcome()
    for p in reuse:
        _merge_or_fail(store, cid, p, out, bundle, result, tracker, inferred=False)
    startup = 0.0
    if todo:
        t0 = time.monotonic()
        with _RayPlates(bundle, ray_address, workers, len(todo)) as pool:
            startup = time.monotonic() - t0
            tracker.start_work()
            cached = store.cached_keys([m.id for m in bundle.members])
            for p, outcome in pool.infer(todo, cached, options, channel_map, worker_hook, tracker):
                if isinstance(outcome, str):
                    _fail(store, cid, p, outcome, result, tracker)
                    continue
                files.write_files(plate_folder(out, p.name), outcome)
                _merge_or_fail(store, cid, p, out, bundle, result, tracker, inferred=True)
    log.info("campaign %s: %d stored, %d skipped, %d reused, %d failed", cid, len(result.stored), len(skip),
             len(reuse), len(result.failed))
    return CampaignResult(campaign_id=cid, folder=out, stored=result.stored, skipped=[p.name for p in skip],
                          reused=[p.name for p in reuse], failed=result.failed, inferred_crops=result.inferred_crops,
                          ray_startup_s=startup, elapsed_s=time.monotonic() - started, writer_s=result.writer_s)


def register(store: ResultStore, campaign_id: str, plates: Sequence[CampaignPlate], bundle: Bundle) -> None:
    """Step 1: the campaign's plates in the store's ``campaigns`` table (pending until stored)."""
    store.register_campaign([
        CampaignEntry(campaign_id=campaign_id, position=p.row, plate=p.name, source=str(p.source),
                      plate_map=str(p.plate_map), model_id=bundle.id, batch=p.batch, date=p.date)
        for p in plates])


@dataclass(frozen=True)
class _Job:
    """What a worker needs for one plate (picklable)."""

    plate: CampaignPlate
    plate_map: pd.DataFrame
    stamp: str


def _plan(store: ResultStore, campaign_id: str, plates: Sequence[CampaignPlate], bundle: Bundle,
          options: ScoreOptions, out: Path) -> tuple[list[CampaignPlate], list[CampaignPlate], list[_Job]]:
    """Step 2: which plates are skipped (stored by this campaign with this model), which are merged
    from Parquet files already written for the same images, model and options, which are inferred."""
    rows = store.load_campaign(campaign_id).set_index(PLATE)
    members = {"ensemble": [m.id for m in bundle.members]}
    skip, reuse, todo = [], [], []
    for p in plates:
        row = rows.loc[p.name]
        if row[RUN_STATUS] == "stored" and row[MODEL_ID] == bundle.id and isinstance(row[RUN_ID], str):
            skip.append(p)
            continue
        stamp = source_stamp(p.source)
        info = files.read_metadata(plate_folder(out, p.name))
        if (info is not None and info["stamp"] == stamp and info["name"] == p.name and info["members"] == members
                and info["options"] == json.loads(json.dumps(dataclasses.asdict(options)))):
            reuse.append(p)
            continue
        todo.append(_Job(p, load_plate_map(p.plate_map), stamp))
    return skip, reuse, todo


@dataclass
class _Outcome:
    stored: dict[str, str] = dataclasses.field(default_factory=dict)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    inferred_crops: int = 0
    writer_s: float = 0.0


def _merge_or_fail(store: ResultStore, campaign_id: str, plate: CampaignPlate, out: Path, bundle: Bundle,
                   result: _Outcome, tracker: _Progress, *, inferred: bool) -> None:
    """Step 3, the one writer: a plate's Parquet files into the store (one transaction, the campaign
    row marked stored with it), then its well table as ``wells.parquet``."""
    folder = plate_folder(out, plate.name)
    t0 = time.monotonic()
    try:
        inference = files.read_inference(folder)
        run: RunResult = save_plate(store, inference, bundle, campaign_id=campaign_id)
    except NeuroRGError as exc:
        _fail(store, campaign_id, plate, str(exc), result, tracker)
        return
    store.load_well_scores(plate.name, run.run_id).to_parquet(folder / files.WELLS_FILE, index=False)
    result.writer_s += time.monotonic() - t0
    result.stored[plate.name] = run.run_id
    if inferred:
        result.inferred_crops += inference.inferred_crops
    tracker.plate_finished(plate.name, inference.total_crops)
    log.info("plate %s stored: run %s, %d wells, %d crop x member predictions computed", plate.name, run.run_id,
             run.n_wells, inference.inferred_crops)


def _fail(store: ResultStore, campaign_id: str, plate: CampaignPlate, message: str, result: _Outcome,
          tracker: _Progress) -> None:
    where = f"{plate.source} (row {plate.row})"
    log.error("plate %s failed: %s: %s", plate.name, where, message)
    result.failed[plate.name] = f"{where}: {message}"
    store.mark_campaign_plate(campaign_id, plate.name, "failed", message=f"{where}: {message}")
    tracker.plate_finished(plate.name, None)


class _Progress:
    """The campaign's progress, owned by the writer (this process's thread)."""

    def __init__(self, plates_total: int, started: float, callback: CampaignProgressCallback | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.plates_total = plates_total
        self.started = started
        self.callback = callback
        self.clock = clock                   # seconds; time.monotonic, or a test's own clock
        self.plates_done = 0
        self.finished_crops = 0              # crops of plates finished in this run
        self.known_totals: list[int] = []    # crops per plate, of plates whose plan is known
        self.running: dict[str, tuple[int, int]] = {}   # plate -> (done, total) in a worker
        self.work_started: float | None = None

    def start_work(self) -> None:
        self.work_started = self.clock()

    def plate_finished(self, name: str, total: int | None) -> None:
        self.running.pop(name, None)
        self.plates_done += 1
        if total is not None:
            self.finished_crops += total
            self.known_totals.append(total)
        self.report()

    def worker_state(self, states: dict[str, tuple[int, int]]) -> None:
        self.running = dict(states)
        self.report()

    def report(self) -> None:
        if self.callback is None:
            return
        done = self.finished_crops + sum(d for d, _ in self.running.values())
        totals = self.known_totals + [t for _, t in self.running.values() if t]
        unknown = self.plates_total - self.plates_done - len([1 for _, t in self.running.values() if t])
        total = sum(totals) + round(unknown * sum(totals) / len(totals)) if totals else None
        left = None
        now = self.clock()
        if self.work_started is not None and total and done:
            rate = done / max(now - self.work_started, 1e-6)
            left = max(total - done, 0) / rate
        self.callback(CampaignProgress(self.plates_done, self.plates_total, done, total, now - self.started, left))


# --- the workers on Ray ------------------------------------------------------------------------------

class PlateWorker:
    """A Ray actor: scores whole plates (``infer_plate``), keeping its predictor between plates.

    Its ``infer`` returns the plate's Parquet files (``campaign_parquet.encode_inference``) or, for a
    plate that cannot be scored, the error message. ``progress`` answers while ``infer`` runs (the
    actor has two threads)."""

    def __init__(self, bundle_path: str) -> None:
        self._bundle = load_bundle(bundle_path, kind="ensemble")
        self._predictors = PredictorCache()
        self._state: tuple[str, int, int] = ("", 0, 0)

    def ready(self) -> int:
        return os.getpid()

    def progress(self) -> tuple[str, int, int]:
        return self._state

    def infer(self, job: _Job, cached_keys: CachedKeys, options: ScoreOptions, channel_map: dict[str, str] | None,
              hook: WorkerHook | None) -> dict[str, bytes] | str:
        name = job.plate.name

        def moved(done: int, total: int) -> None:
            self._state = (name, done, total)
            if hook is not None:
                hook(name, done, total)

        try:
            with load_plate(job.plate.source, channel_map) as plate:
                inference = infer_plate(plate, job.plate_map, self._bundle, cached_keys=cached_keys, name=name,
                                        options=options, predictors=self._predictors, progress=moved)
            return files.encode_inference(inference, job.stamp)
        except NeuroRGError as exc:
            return str(exc)


class _RayPlates:
    """The worker actors on a local or remote Ray, for one campaign run (``with``: started and
    stopped; an embedded Ray started here is shut down after)."""

    def __init__(self, bundle: Bundle, address: str | None, workers: int | None, n_plates: int) -> None:
        self.bundle = bundle
        self.address = address
        self.workers = workers
        self.n_plates = n_plates
        self.owns_ray = False
        self.actors: list[Any] = []

    def __enter__(self) -> _RayPlates:
        import ray

        if ray.is_initialized():
            running = ray.get_runtime_context().gcs_address
            if self.address and self.address not in ("auto", running):
                raise NeuroRGError(f"this process is already connected to Ray at {running}; it cannot also "
                                   f"use the cluster at {self.address} (give that address, or none)")
        else:
            env = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith("NEURORG_")}}
            if self.address:
                import neurorg_core
                env["py_modules"] = [str(Path(neurorg_core.__file__).parent)]
            ray.init(address=self.address, num_cpus=None if self.address else (self.workers or os.cpu_count()),
                     include_dashboard=False, runtime_env=env, logging_level=logging.WARNING)
            self.owns_ray = True
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        n = self.workers or (gpus if gpus else max(1, int(resources.get("CPU", 1))))
        n = max(1, min(n, self.n_plates))
        actor = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_restarts=WORKER_RESTARTS,
                           max_task_retries=WORKER_RESTARTS, max_concurrency=2)(PlateWorker)
        self.actors = [actor.remote(str(self.bundle.path)) for _ in range(n)]
        ray.get([a.ready.remote() for a in self.actors])
        log.info("Ray: %d worker(s) (%s)", n, f"{gpus} GPU(s)" if gpus else f"{resources.get('CPU', 0):g} CPUs")
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
        if self.owns_ray:
            ray.shutdown()

    def infer(self, jobs: Sequence[_Job], cached_keys: CachedKeys, options: ScoreOptions,
              channel_map: dict[str, str] | None, hook: WorkerHook | None, tracker: _Progress):
        """Yield ``(plate, files or error message)`` as plates finish; every worker keeps a plate."""
        import ray
        from ray.exceptions import RayError, RayTaskError

        cached = ray.put(cached_keys)   # once for every worker: a few numpy arrays, ~16 bytes a key
        queue = list(jobs)
        idle = list(self.actors)
        running: dict[Any, tuple[_Job, Any]] = {}
        while queue or running:
            while queue and idle:
                job, worker = queue.pop(0), idle.pop(0)
                running[worker.infer.remote(job, cached, options, channel_map, hook)] = (job, worker)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                job, worker = running.pop(ref)
                idle.append(worker)
                try:
                    yield job.plate, ray.get(ref)
                except RayTaskError as exc:   # an error in our code on the worker (not a bad input)
                    yield job.plate, f"scoring failed on the worker: {type(exc.cause).__name__}: {exc.cause}"
                except RayError as exc:       # the worker died more often than it may be restarted
                    yield job.plate, (f"the worker died {WORKER_RESTARTS + 1} times on this plate "
                                      f"({type(exc).__name__}: {str(exc).splitlines()[0]})")
            if not ready:
                tracker.worker_state(self._states([w for _, w in running.values()]))

    @staticmethod
    def _states(busy: Sequence[Any]) -> dict[str, tuple[int, int]]:
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        try:
            states = ray.get([w.progress.remote() for w in busy], timeout=5)
        except (GetTimeoutError, RayError):   # a worker restarting: its plate starts again
            return {}
        return {name: (done, total) for name, done, total in states if name}
