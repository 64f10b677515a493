"""The result store: a DuckDB file holding plates, cached crop predictions and scored runs.

Size (~1000 lines): the only module that speaks SQL, by design (STYLE.md): one class, its table
definitions (plates, runs, the prediction cache, campaigns), the per-operation attach rule and the
checks on bad files.

This is the only module that speaks SQL.

**Who may use the file, and when.** DuckDB lets one process at a time open a file for writing
(or several for reading only). So that the CLI and the app can use one store at once, a
``ResultStore`` keeps the file open only while one of its methods runs: the method opens it
(waiting up to ``lock_timeout_s`` while another process finishes its own operation), does its
reads or its single transaction, and closes it (after a write, a background thread closes it
a few milliseconds after the write returned; see ``ResultStore``). Every operation is short (the
longest is one run's ``save_run``), so a waiting process waits milliseconds, and a long scoring
run never holds the file between its commits. Within a process, overlapping operations share one
connection and each takes its own ``cursor()`` (safe across threads, e.g. Streamlit sessions);
``session()`` keeps the file open across a group of quick reads to pay for one open instead of
several.

**Bad files.** A file that is not DuckDB, is truncated (shorter than its own header says), is
another program's DuckDB database, cannot be created or written, or sits on a full disk gives
one ``NeuroRGError`` naming the file. The store never deletes, rewrites or "repairs" such a file,
and a write that fails (a full disk at commit) is rolled back whole, so what was stored before
is intact.

Tables (schema version ``SCHEMA_VERSION``)::

    meta         key, value                            ('schema_version', ...)
    plates       Metadata_Plate, Source, layout, Plate_format, field_height, field_width,
                 dtype, channel_map (JSON), Created
    wells        Metadata_Plate, Metadata_Well, Metadata_Row, Metadata_Col, plate-map columns
    fields       Metadata_Plate, Metadata_Well, Metadata_Field, Field_Hash
    predictions  Field_Hash, Model_Id, crop_key, n_crops, probs (float32 (n_crops, 6) bytes), Created
    runs         Run_Id, Metadata_Plate, Model_Id, bundle_card (JSON), params (JSON),
                 Code_Version, Created, Status, N_wells, Cache_hits, Cache_misses
    well_scores  Run_Id + the per-well score table of ``scoring.score_wells``
    channel_scores  Run_Id, Metadata_Well, P_control_nucleus, P_control_neuron, P_control_microglia
    campaigns    Campaign_Id, Position, Metadata_Plate, Source, Plate_map, Metadata_Batch,
                 Metadata_Date, Model_Id, Status, Run_Id, Message, Updated (one row per plate of a
                 screening campaign; ``save_run(campaign_id=)`` marks it stored with its run)

Predictions are a content-addressed cache: the key is (field hash, member id, crop key), where
the field hash is a hash of the field's pixels, the member id a hash of one ensemble member's
weights and the crop key names which tiles of the field were cropped. Such a row is true whatever
run produced it, so ``put_predictions`` commits batches as inference produces them (an
interrupted run keeps its finished inference). A *run* only becomes visible through
``save_run``, which writes the plate, its wells and fields, the well scores and the run row in a
single transaction: either all of it is stored or none of it is, and a failure leaves every
earlier run exactly as it was.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
import datetime as dt
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from neurorg_core.errors import NeuroRGError
from neurorg_core.prediction_keys import CachedKeys
from neurorg_core.schema import (
    ACQUIRED,
    BATCH,
    CACHE_HITS,
    CAMPAIGN_COLUMNS,
    CAMPAIGN_ID,
    CAMPAIGN_LIST_COLUMNS,
    CAMPAIGN_STATUSES,
    CACHE_MISSES,
    CALLED_CLASS,
    CHANNEL_MAP,
    CHANNEL_P_CONTROL,
    CLASS,
    CODE_VERSION,
    COL,
    COMPOUND,
    DOSE,
    FIELD,
    FIELD_HASH,
    FIELD_HEIGHT,
    FIELD_WIDTH,
    LAST_RUN,
    MESSAGE,
    MODEL_ID,
    N_CLASSES,
    N_CROPS,
    N_FAILED,
    N_PLATES,
    N_RUNS,
    N_STORED,
    N_WELLS,
    P_CONTROL,
    P_CONTROL_SD,
    PIXEL_TYPE,
    PLATE,
    PLATE_FORMAT,
    PLATE_LAYOUT,
    PLATE_MAP_COLUMNS,
    PLATE_MAP_FILE,
    POSITION,
    PROB_COLUMNS,
    ROLE,
    ROW,
    RUN_CREATED,
    RUN_ID,
    RUN_STATUS,
    SCORE_COLUMNS,
    SOURCE,
    UPDATED,
    VOTE_COLUMNS,
    WELL,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Bump when a table changes shape; an older file is then refused with a clear message."""


RUN_COLUMNS: tuple[str, ...] = (
    RUN_ID, PLATE, MODEL_ID, RUN_CREATED, RUN_STATUS, N_WELLS, CACHE_HITS, CACHE_MISSES, CODE_VERSION,
)
"""Columns of ``ResultStore.list_runs``."""

_SQL_TYPES_WELL = {
    PLATE: "VARCHAR NOT NULL", WELL: "VARCHAR NOT NULL", ROW: "INTEGER NOT NULL",
    COL: "INTEGER NOT NULL", COMPOUND: "VARCHAR", DOSE: "DOUBLE", ROLE: "VARCHAR", CLASS: "INTEGER",
}


def _q(name: str) -> str:
    """Quote an identifier (our column names are mixed case)."""
    return '"' + name.replace('"', '""') + '"'


def _score_column_sql() -> str:
    cols = [f"{_q(c)} {_SQL_TYPES_WELL[c]}" for c in PLATE_MAP_COLUMNS]
    cols += [f"{_q(c)} DOUBLE" for c in (*PROB_COLUMNS, P_CONTROL, *VOTE_COLUMNS)]
    cols += [f"{_q(CALLED_CLASS)} INTEGER", f"{_q(P_CONTROL_SD)} DOUBLE", f"{_q(N_CROPS)} INTEGER"]
    return ", ".join(cols)


_DDL = (
    "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
    f"""CREATE TABLE IF NOT EXISTS plates (
        {_q(PLATE)} VARCHAR PRIMARY KEY, {_q(SOURCE)} VARCHAR, layout VARCHAR,
        {_q(PLATE_FORMAT)} INTEGER, field_height INTEGER, field_width INTEGER, dtype VARCHAR,
        channel_map VARCHAR, {_q(RUN_CREATED)} TIMESTAMP)""",
    f"""CREATE TABLE IF NOT EXISTS wells (
        {", ".join(f"{_q(c)} {_SQL_TYPES_WELL[c]}" for c in PLATE_MAP_COLUMNS)},
        PRIMARY KEY ({_q(PLATE)}, {_q(WELL)}))""",
    f"""CREATE TABLE IF NOT EXISTS fields (
        {_q(PLATE)} VARCHAR NOT NULL, {_q(WELL)} VARCHAR NOT NULL, {_q(FIELD)} INTEGER NOT NULL,
        {_q(FIELD_HASH)} VARCHAR NOT NULL, PRIMARY KEY ({_q(PLATE)}, {_q(WELL)}, {_q(FIELD)}))""",
    f"""CREATE TABLE IF NOT EXISTS predictions (
        {_q(FIELD_HASH)} VARCHAR NOT NULL, {_q(MODEL_ID)} VARCHAR NOT NULL, crop_key VARCHAR NOT NULL,
        n_crops INTEGER NOT NULL, probs BLOB NOT NULL, {_q(RUN_CREATED)} TIMESTAMP,
        PRIMARY KEY ({_q(FIELD_HASH)}, {_q(MODEL_ID)}, crop_key))""",
    f"""CREATE TABLE IF NOT EXISTS runs (
        {_q(RUN_ID)} VARCHAR PRIMARY KEY, {_q(PLATE)} VARCHAR NOT NULL, {_q(MODEL_ID)} VARCHAR,
        bundle_card VARCHAR, params VARCHAR, {_q(CODE_VERSION)} VARCHAR, {_q(RUN_CREATED)} TIMESTAMP,
        {_q(RUN_STATUS)} VARCHAR, {_q(N_WELLS)} INTEGER, {_q(CACHE_HITS)} INTEGER,
        {_q(CACHE_MISSES)} INTEGER)""",
    f"""CREATE TABLE IF NOT EXISTS well_scores (
        {_q(RUN_ID)} VARCHAR NOT NULL, {_score_column_sql()}, PRIMARY KEY ({_q(RUN_ID)}, {_q(WELL)}))""",
    f"""CREATE TABLE IF NOT EXISTS channel_scores (
        {_q(RUN_ID)} VARCHAR NOT NULL, {_q(WELL)} VARCHAR NOT NULL,
        {", ".join(f"{_q(c)} DOUBLE" for c in CHANNEL_P_CONTROL)},
        PRIMARY KEY ({_q(RUN_ID)}, {_q(WELL)}))""",
    f"""CREATE TABLE IF NOT EXISTS campaigns (
        {_q(CAMPAIGN_ID)} VARCHAR NOT NULL, {_q(POSITION)} INTEGER NOT NULL, {_q(PLATE)} VARCHAR NOT NULL,
        {_q(SOURCE)} VARCHAR, {_q(PLATE_MAP_FILE)} VARCHAR, {_q(BATCH)} VARCHAR, {_q(ACQUIRED)} DATE,
        {_q(MODEL_ID)} VARCHAR, {_q(RUN_STATUS)} VARCHAR NOT NULL, {_q(RUN_ID)} VARCHAR, {_q(MESSAGE)} VARCHAR,
        {_q(UPDATED)} TIMESTAMP, PRIMARY KEY ({_q(CAMPAIGN_ID)}, {_q(PLATE)}))""",
)
"""Every table; ``CREATE ... IF NOT EXISTS``, so a store written before a table existed (``campaigns``)
gains it the next time it is opened for writing."""


def utc_now() -> datetime:
    """Current UTC time as a naive datetime (the store's TIMESTAMP convention)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass(frozen=True)
class PlateRecord:
    """What the store keeps about an imaged plate (one row of ``plates``)."""

    name: str
    source: str
    layout: str
    plate_format: int
    field_shape: tuple[int, int]  # (height, width), pixels
    dtype: str                    # "uint8" | "uint16"
    channel_map: dict[str, str]   # role -> channel id


@dataclass(frozen=True)
class RunRecord:
    """Provenance of one scoring run (one row of ``runs``)."""

    run_id: str
    plate: str                    # the plate name the user gave
    model_id: str                 # the bundle's content hash
    bundle_card: dict[str, Any]
    params: dict[str, Any]        # crops per well, input size, channel map, ...
    code_version: str
    created: datetime = field(default_factory=utc_now)
    status: str = "complete"
    n_wells: int = 0
    cache_hits: int = 0
    cache_misses: int = 0


@dataclass(frozen=True)
class PredictionRow:
    """Crop-level probabilities of one field from one ensemble member."""

    field_hash: str
    model_id: str                 # the member's id
    crop_key: str                 # which tiles of the field were cropped
    probs: np.ndarray             # float32 (n_crops, 6)


@dataclass(frozen=True)
class CampaignEntry:
    """One plate of a screening campaign (one row of ``campaigns``), as its manifest gives it."""

    campaign_id: str
    position: int                 # 1-based row in the manifest: the acquisition order's tie-break
    plate: str                    # the plate name its run is stored under
    source: str                   # the images' folder or zip
    plate_map: str                # the plate map file
    model_id: str                 # the ensemble it is scored with
    batch: str = ""
    date: dt.date | None = None   # acquisition date


DEFAULT_LOCK_TIMEOUT_S = 10.0
"""Seconds an operation waits for another process to finish its own operation on the file."""


def _is_busy_error(exc: duckdb.Error) -> bool:
    """Another process holds the file's lock, this process has it open in the other mode, or
    another store of this process has it attached (until that store's operation ends)."""
    text = str(exc).lower()
    return ("lock" in text and ("conflicting" in text or "could not set" in text)) or (
        "different configuration" in text) or "unique file handle conflict" in text


def _describe(exc: BaseException) -> str:
    """What went wrong with the file, in words a person can act on."""
    text = str(exc)
    low = text.lower()
    if "no space left" in low or "file too large" in low or "disk quota" in low:
        return ("the disk is full (" + text.split(":")[-1].strip() + "); nothing of this operation "
                "was stored and what was stored before is intact. Free some space, or choose "
                "another file with --db / NEURORG_DB")
    if "permission denied" in low or "read-only file system" in low:
        return ("the file or its folder cannot be written (" + text.split(":")[-1].strip() + "); "
                "choose a writable file with --db / NEURORG_DB")
    if "not a valid duckdb database" in low:
        return ("is not a DuckDB result store (another kind of file?); it was not changed. "
                "Choose another file with --db / NEURORG_DB")
    if "could not read enough bytes" in low or "corrupt" in low or "checksum" in low:
        return ("is damaged (truncated or corrupt: " + text.strip() + "); it was not changed. Restore "
                "it from a backup, or score into another file with --db / NEURORG_DB")
    return f"the result store failed: {text.strip()}"


class ResultStore:
    """A DuckDB result store that several threads and several processes can share.

    The file is attached only while an operation runs: each method attaches it to this store's
    in-memory DuckDB connection (waiting up to ``lock_timeout_s`` while another process is in
    the middle of its own operation), does its reads or its one transaction on a cursor of its
    own, and detaches it, which releases the file. So the CLI and the app take turns on one
    file, each for milliseconds at a time. Operations that overlap in one process share the
    attachment; ``session()`` keeps the file attached across a group of quick reads.

    After a write, detaching also checkpoints DuckDB's write-ahead log into the file (20-60 ms,
    growing with the store). The write is durable once committed, so that detach runs on a
    short-lived thread (``neurorg-store-release``) and the write returns at its commit; an
    operation that starts before it ran reuses the attachment. Python waits for that thread at
    exit, and ``release()`` detaches at once (before handing the file to another program).

    Parameters
    ----------
    path
        The DuckDB file (created with its parent folder unless ``read_only``).
    read_only
        Never write; the file must exist. Several read-only processes may read at once.
    lock_timeout_s
        Seconds an operation keeps retrying while another process holds the file.

    Raises
    ------
    NeuroRGError
        If the file is in use by another process for longer than ``lock_timeout_s``, does not
        exist (read only), cannot be created or written, is not a DuckDB file, is damaged
        (truncated), is another program's DuckDB file, or was written with another schema
        version. The message names the file; the file itself is never changed or removed.
    """

    _ALIAS = "nrg"   # the attached file's catalog name inside the in-memory connection

    def __init__(self, path: str | Path, *, read_only: bool = False,
                 lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S):
        self.path = Path(path).expanduser()
        self.read_only = read_only
        self.lock_timeout_s = max(0.0, float(lock_timeout_s))
        self._lock = threading.Lock()   # guards _engine, _attached and _users
        self._engine: duckdb.DuckDBPyConnection | None = None   # in-memory; the file is attached to it
        self._attached = False
        self._users = 0
        self._wrote = False   # a transaction committed since the file was attached: detach later
        if read_only and not self.path.is_file():
            raise NeuroRGError("no result store here; score a plate first", path=self.path)
        if read_only:
            self._check_version()
        else:
            self._prepare_folder()
            self._create_tables()

    # --- opening and closing the file ---------------------------------------------------------

    def _prepare_folder(self) -> None:
        folder = self.path.parent
        if self.path.is_dir():
            raise NeuroRGError("is a folder; expected a result store file (.duckdb)", path=self.path)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NeuroRGError(f"cannot create the folder {folder} for the result store "
                               f"({exc.strerror or exc}); choose another file with --db / NEURORG_DB",
                               path=self.path) from exc
        target = self.path if self.path.exists() else folder
        if not os.access(target, os.W_OK):   # also false on a read-only filesystem, even for root
            where = "the file" if target == self.path else f"the folder {folder}"
            raise NeuroRGError(f"cannot write {where}; choose a writable file with --db / NEURORG_DB",
                               path=self.path)

    def _attach(self) -> None:
        """Attach the file, waiting while another process (or another store of this process)
        holds it. Called with ``_lock`` held."""
        if self._engine is None:
            self._engine = duckdb.connect(":memory:")   # once per store (~30 ms), and after close()
        quoted = str(self.path).replace("'", "''")
        sql = f"ATTACH '{quoted}' AS {self._ALIAS}" + (" (READ_ONLY)" if self.read_only else "")
        deadline = time.monotonic() + self.lock_timeout_s
        pause = 0.01
        while True:
            try:
                self._engine.execute(sql)
                break
            except UnicodeEncodeError as exc:
                raise NeuroRGError("the path is not valid UTF-8; choose another file with --db / "
                                   "NEURORG_DB", path=self.path) from exc
            except duckdb.Error as exc:
                if not _is_busy_error(exc):
                    raise NeuroRGError(_describe(exc), path=self.path) from exc
                if time.monotonic() >= deadline:
                    raise NeuroRGError(
                        f"the database file {self.path} is in use by another process (waited "
                        f"{self.lock_timeout_s:g} s for it); NeuroRG processes hold it only for one "
                        "operation at a time, so another program (or an older NeuroRG) keeps it open. "
                        "Close it, or choose another file with --db / NEURORG_DB",
                        path=self.path,
                    ) from exc
                time.sleep(pause)
                pause = min(2 * pause, 0.1)
        self._attached = True
        try:
            self._check_intact()
        except BaseException:
            self._detach()
            raise

    def _check_intact(self) -> None:
        """Refuse a truncated file before anything reads or writes it: the file must be long
        enough to hold the blocks DuckDB's own header says are in use."""
        try:
            block_size, used_blocks = self._engine.execute(
                "SELECT block_size, used_blocks FROM pragma_database_size() WHERE database_name = ?",
                [self._ALIAS]).fetchone()
        except duckdb.Error as exc:
            raise NeuroRGError(_describe(exc), path=self.path) from exc
        need = int(block_size) * int(used_blocks)
        size = self.path.stat().st_size if self.path.is_file() else 0
        if size < need:
            raise NeuroRGError(
                f"is damaged: it is {size:,} bytes but its header counts {used_blocks} blocks of "
                f"{block_size:,} bytes in use ({need:,} bytes), so it was truncated; it was not "
                "changed. Restore it from a backup, or score into another file with --db / NEURORG_DB",
                path=self.path)

    def _detach(self) -> None:
        """Release the file (DuckDB checkpoints its write-ahead log first). Called with ``_lock``
        held. A connection broken by a failure (a full disk can invalidate it) is dropped, and the
        next operation makes a new one."""
        self._attached = False
        self._wrote = False
        engine = self._engine
        assert engine is not None
        try:
            engine.execute(f"DETACH {self._ALIAS}")
            engine.execute("SELECT 1").fetchone()
        except duckdb.Error as exc:
            log.warning("%s: releasing the file: %s", self.path, _describe(exc))
            self._engine = None
            try:
                engine.close()   # closes whatever is still attached
            except duckdb.Error:
                pass

    @contextmanager
    def session(self) -> Iterator[ResultStore]:
        """Keep the file attached for the operations inside the ``with`` block (one open, one wait).

        Other processes wait while it is held, so hold it for a group of quick reads, never for
        a long computation. Nested and concurrent sessions of one store share the attachment.
        """
        with self._lock:
            if not self._attached:
                self._attach()
            self._users += 1
        try:
            yield self
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._attached:
                    if self._wrote:   # its checkpoint runs after the write returns
                        threading.Thread(target=self.release, name="neurorg-store-release", daemon=False).start()
                    else:
                        self._detach()

    def release(self) -> None:
        """Detach the file now unless an operation is using it (after a write, this otherwise
        happens on a background thread a few milliseconds after the write returned)."""
        with self._lock:
            if self._users == 0 and self._attached:
                self._detach()

    @contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A fresh cursor for the calling thread; DuckDB errors become one clear NeuroRGError."""
        with self.session():
            with self._lock:
                cur = self._engine.cursor()
            try:
                cur.execute(f"USE {self._ALIAS}")
                yield cur
            except duckdb.Error as exc:
                raise NeuroRGError(_describe(exc), path=self.path) from exc
            finally:
                cur.close()

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor inside BEGIN ... COMMIT; any exception rolls everything back."""
        if self.read_only:
            raise NeuroRGError("the result store was opened read-only; cannot write", path=self.path)
        with self._cursor() as cur:
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
            except BaseException:
                try:
                    cur.execute("ROLLBACK")
                except duckdb.Error as exc:   # e.g. the failure already ended the transaction
                    log.debug("rollback on %s: %s", self.path, exc)
                raise
            cur.execute("COMMIT")   # a failed commit (full disk) is rolled back by DuckDB itself
            self._wrote = True

    def close(self) -> None:
        """Close the in-memory connection (a later operation opens a new one). The file itself is
        never held between operations."""
        with self._lock:
            if self._users or self._engine is None:
                return
            if self._attached:
                self._detach()
            self._engine.close()
            self._engine = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create_tables(self) -> None:
        with self._transaction() as cur:
            tables = {r[0] for r in cur.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [self._ALIAS]).fetchall()}
            if tables and "meta" not in tables:
                raise NeuroRGError(
                    f"is a DuckDB file but not a NeuroRG result store (it holds tables "
                    f"{', '.join(sorted(tables)[:5])}); it was not changed. Choose another file with "
                    "--db / NEURORG_DB", path=self.path)
            if tables:   # an existing store: its version decides before anything is added to it
                self._check_version(cur)
            for ddl in _DDL:
                cur.execute(ddl)
            if not tables:
                cur.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])

    def _check_version(self, cur: duckdb.DuckDBPyConnection | None = None) -> None:
        if cur is None:
            with self._cursor() as own:
                return self._check_version(own)
        try:
            row = cur.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except duckdb.CatalogException as exc:
            raise NeuroRGError("is not a NeuroRG result store (no meta table); it was not changed",
                               path=self.path) from exc
        if row is None or row[0] != str(SCHEMA_VERSION):
            found = row[0] if row else "none"
            raise NeuroRGError(
                f"result store schema version {found}; this version of NeuroRG reads version "
                f"{SCHEMA_VERSION}. Score into a new file (--db) or delete this one",
                path=self.path,
            )

    # --- predictions cache --------------------------------------------------------------------

    def cached_predictions(
        self, field_hashes: Iterable[str], model_id: str, *, crop_key: str | None = None
    ) -> dict[str, np.ndarray]:
        """Cached crop probabilities of the given fields for one ensemble member.

        Parameters
        ----------
        field_hashes
            Content hashes of the fields wanted.
        model_id
            The member's id.
        crop_key
            Which tiles of the field were cropped; ``None`` accepts any (the first found).

        Returns
        -------
        dict
            field hash -> float32 array (n_crops, 6), only for the fields found.
        """
        hashes = list(dict.fromkeys(field_hashes))
        if not hashes:
            return {}
        wanted = pa.table({"h": pa.array(hashes, pa.string())})
        sql = (
            f"SELECT p.{_q(FIELD_HASH)}, p.n_crops, p.probs FROM predictions p "
            f"JOIN wanted w ON p.{_q(FIELD_HASH)} = w.h WHERE p.{_q(MODEL_ID)} = ?"
        )
        params: list[Any] = [model_id]
        if crop_key is not None:
            sql += " AND p.crop_key = ?"
            params.append(crop_key)
        with self._cursor() as cur:
            cur.register("wanted", wanted)
            rows = cur.execute(sql, params).fetchall()
        out: dict[str, np.ndarray] = {}
        for h, n, blob in rows:
            out.setdefault(h, np.frombuffer(blob, dtype="<f4").reshape(n, N_CLASSES).copy())
        return out

    def cached_keys(self, model_ids: Sequence[str]) -> CachedKeys:
        """A snapshot of every cached (field hash, member id, crop key) of the given members.

        What a run tests each field against (``plate_inference.infer_plate``): ``key in keys``.
        The keys stay in numpy (``prediction_keys.CachedKeys``: two uint64 arrays of field-hash
        fingerprints per member and crop key), so a store of ~300,000 cached predictions gives a
        ~4.5 MB snapshot without a Python object per key. Fingerprint: DuckDB's ``md5_number`` of
        the field hash, split into its high and low 64 bits as ``field_fingerprint`` does.
        """
        members = list(dict.fromkeys(model_ids))
        if not members:
            return CachedKeys()
        with self._cursor() as cur:
            crop_keys = [k for (k,) in cur.execute(
                f"SELECT DISTINCT crop_key FROM predictions WHERE list_contains($members, {_q(MODEL_ID)}) "
                "ORDER BY crop_key", {"members": members}).fetchall()]
            if not crop_keys:
                return CachedKeys()
            # one row per key, numbers only; a crop key first stored after the query above is left out
            # (its keys read as missing: they are recomputed, never wrongly taken from the cache)
            cols = cur.execute(
                f"""SELECT m - 1 AS m, k - 1 AS k, (x >> 64)::UBIGINT AS high,
                           (x & 18446744073709551615)::UBIGINT AS low
                    FROM (SELECT list_position($members, {_q(MODEL_ID)}) AS m,
                                 list_position($keys, crop_key) AS k, md5_number({_q(FIELD_HASH)}) AS x
                          FROM predictions WHERE list_contains($members, {_q(MODEL_ID)}))
                    WHERE k IS NOT NULL""", {"members": members, "keys": crop_keys}).fetchnumpy()
        return CachedKeys.from_fingerprints(members, crop_keys, cols["m"], cols["k"], cols["high"], cols["low"])

    def put_predictions(self, rows: Sequence[PredictionRow]) -> int:
        """Commit a batch of crop probabilities to the cache (rows already cached are kept).

        Returns
        -------
        int
            Rows written.
        """
        if not rows:
            return 0
        for r in rows:
            if r.probs.ndim != 2 or r.probs.shape[1] != N_CLASSES:
                raise NeuroRGError(
                    f"predictions for field {r.field_hash[:12]} have shape {r.probs.shape}; "
                    f"expected (n_crops, {N_CLASSES})"
                )
        with self._transaction() as cur:
            self._insert_predictions(cur, rows)
        return len(rows)

    # --- runs ---------------------------------------------------------------------------------

    def save_run(
        self,
        *,
        plate: PlateRecord,
        wells: pd.DataFrame,
        fields: pd.DataFrame,
        well_scores: pd.DataFrame,
        run: RunRecord,
        predictions: Sequence[PredictionRow] = (),
        channel_scores: pd.DataFrame | None = None,
        campaign_id: str | None = None,
    ) -> str:
        """Store a scored run in one transaction: all of it, or (on any error) none of it.

        Parameters
        ----------
        plate
            The plate; replaces an earlier record of the same name.
        wells
            The plate map of the imaged wells (``PLATE_MAP_COLUMNS``); replaces the plate's wells.
        fields
            ``Metadata_Well``, ``Metadata_Field``, ``Field_Hash`` of every field; replaces the
            plate's fields.
        well_scores
            The per-well score table (``SCORE_COLUMNS``).
        run
            Provenance.
        predictions
            Crop probabilities not yet committed with ``put_predictions``.
        channel_scores
            Optional ``Metadata_Well`` + ``CHANNEL_P_CONTROL`` table of the single-channel models.
        campaign_id
            A campaign this run belongs to: its ``campaigns`` row of this plate (registered with
            ``register_campaign``) is marked stored with this run, in the same transaction.

        Returns
        -------
        str
            The run id.
        """
        scores = self._checked_frame(well_scores, SCORE_COLUMNS, "well scores")
        scores.insert(0, RUN_ID, run.run_id)
        scores[PLATE] = run.plate
        well_table = self._checked_frame(wells, PLATE_MAP_COLUMNS, "wells")
        well_table[PLATE] = plate.name
        field_table = self._checked_frame(fields, (WELL, FIELD, FIELD_HASH), "fields")
        field_table.insert(0, PLATE, plate.name)
        if channel_scores is not None:
            channel_table = self._checked_frame(channel_scores, (WELL, *CHANNEL_P_CONTROL), "channel scores")
            channel_table.insert(0, RUN_ID, run.run_id)

        with self._transaction() as cur:
            if predictions:
                self._insert_predictions(cur, predictions)
            cur.execute(f"DELETE FROM fields WHERE {_q(PLATE)} = ?", [plate.name])
            cur.execute(f"DELETE FROM wells WHERE {_q(PLATE)} = ?", [plate.name])
            cur.execute(f"DELETE FROM plates WHERE {_q(PLATE)} = ?", [plate.name])
            cur.execute(
                "INSERT INTO plates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [plate.name, plate.source, plate.layout, int(plate.plate_format),
                 int(plate.field_shape[0]), int(plate.field_shape[1]), plate.dtype,
                 json.dumps(plate.channel_map, sort_keys=True), utc_now()],
            )
            self._insert_frame(cur, "wells", well_table)
            self._insert_frame(cur, "fields", field_table)
            cur.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run.run_id, run.plate, run.model_id, json.dumps(run.bundle_card, sort_keys=True, default=str),
                 json.dumps(run.params, sort_keys=True, default=str), run.code_version, run.created,
                 run.status, int(run.n_wells), int(run.cache_hits), int(run.cache_misses)],
            )
            self._insert_frame(cur, "well_scores", scores)
            if channel_scores is not None:
                self._insert_frame(cur, "channel_scores", channel_table)
            if campaign_id is not None:
                self._mark_campaign(cur, campaign_id, run.plate, "stored", run.run_id, "")
        log.info("stored run %s of plate %s (%d wells)", run.run_id, run.plate, len(scores))
        return run.run_id

    @staticmethod
    def _insert_predictions(cur: duckdb.DuckDBPyConnection, rows: Sequence[PredictionRow]) -> None:
        table = pa.table({
            "h": pa.array([r.field_hash for r in rows], pa.string()),
            "m": pa.array([r.model_id for r in rows], pa.string()),
            "k": pa.array([r.crop_key for r in rows], pa.string()),
            "n": pa.array([int(r.probs.shape[0]) for r in rows], pa.int32()),
            "p": pa.array([np.ascontiguousarray(r.probs, dtype="<f4").tobytes() for r in rows], pa.binary()),
        })
        cur.register("pred_batch", table)
        cur.execute("INSERT OR IGNORE INTO predictions SELECT h, m, k, n, p, ? FROM pred_batch", [utc_now()])
        cur.unregister("pred_batch")

    def _checked_frame(self, df: pd.DataFrame, columns: Sequence[str], what: str) -> pd.DataFrame:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise NeuroRGError(
                f"{what} table lacks column(s) {', '.join(missing)}; expected {', '.join(columns)}",
                path=self.path,
            )
        out = df.loc[:, list(columns)].copy()
        if CLASS in out.columns:
            out[CLASS] = pd.array(out[CLASS], dtype="Int64")
        return out.reset_index(drop=True)

    @staticmethod
    def _insert_frame(cur: duckdb.DuckDBPyConnection, table: str, df: pd.DataFrame) -> None:
        arrow = pa.Table.from_pandas(df, preserve_index=False)
        cur.register("frame_in", arrow)
        cur.execute(f"INSERT INTO {table} BY NAME SELECT * FROM frame_in")
        cur.unregister("frame_in")

    # --- reads --------------------------------------------------------------------------------

    def list_plates(self) -> pd.DataFrame:
        """One row per stored plate (``schema.PLATE_LIST_COLUMNS``): name, source, layout, format,
        field shape, pixel type, channels, created, number of runs and the latest run's time."""
        with self._cursor() as cur:
            df = cur.execute(
                f"""SELECT p.{_q(PLATE)}, p.{_q(SOURCE)}, p.layout AS {_q(PLATE_LAYOUT)}, p.{_q(PLATE_FORMAT)},
                           p.field_height AS {_q(FIELD_HEIGHT)}, p.field_width AS {_q(FIELD_WIDTH)},
                           p.dtype AS {_q(PIXEL_TYPE)}, p.channel_map AS {_q(CHANNEL_MAP)}, p.{_q(RUN_CREATED)},
                           count(r.{_q(RUN_ID)}) AS {_q(N_RUNS)}, max(r.{_q(RUN_CREATED)}) AS {_q(LAST_RUN)}
                    FROM plates p LEFT JOIN runs r ON r.{_q(PLATE)} = p.{_q(PLATE)}
                    GROUP BY ALL ORDER BY p.{_q(PLATE)}"""
            ).df()
        return df

    def list_runs(self, plate: str | None = None) -> pd.DataFrame:
        """Runs, newest first (``RUN_COLUMNS``), optionally of one plate."""
        cols = ", ".join(_q(c) for c in RUN_COLUMNS)
        sql = f"SELECT {cols} FROM runs"
        params: list[Any] = []
        if plate is not None:
            sql += f" WHERE {_q(PLATE)} = ?"
            params.append(plate)
        sql += f" ORDER BY {_q(RUN_CREATED)} DESC, {_q(RUN_ID)} DESC"
        with self._cursor() as cur:
            return cur.execute(sql, params).df()

    def latest_run_id(self, plate: str) -> str:
        """The newest run of a plate.

        Raises
        ------
        NeuroRGError
            If the plate has no stored run (the message lists the plates that do).
        """
        with self._cursor() as cur:
            row = cur.execute(
                f"SELECT {_q(RUN_ID)} FROM runs WHERE {_q(PLATE)} = ? "
                f"ORDER BY {_q(RUN_CREATED)} DESC, {_q(RUN_ID)} DESC LIMIT 1",
                [plate],
            ).fetchone()
            if row is None:
                known = [r[0] for r in cur.execute(
                    f"SELECT DISTINCT {_q(PLATE)} FROM runs ORDER BY 1").fetchall()]
        if row is None:
            raise NeuroRGError(
                f"plate {plate!r} has no scored run; stored plates: {', '.join(known) or 'none'}",
                path=self.path,
            )
        return str(row[0])

    def load_well_scores(self, plate: str, run_id: str | None = None) -> pd.DataFrame:
        """The per-well score table of a run (default: the plate's latest), one row per well.

        Returns
        -------
        DataFrame
            ``SCORE_COLUMNS`` in well order, with ``Metadata_Class`` as nullable Int64.

        Raises
        ------
        NeuroRGError
            If the plate has no run, or ``run_id`` is not a run of ``plate``.
        """
        run = run_id if run_id is not None else self.latest_run_id(plate)
        cols = ", ".join(_q(c) for c in SCORE_COLUMNS)
        with self._cursor() as cur:
            df = cur.execute(
                f"SELECT {cols} FROM well_scores WHERE {_q(RUN_ID)} = ? AND {_q(PLATE)} = ? "
                f"ORDER BY {_q(ROW)}, {_q(COL)}",
                [run, plate],
            ).df()
        if df.empty:
            raise NeuroRGError(f"run {run!r} is not a stored run of plate {plate!r}", path=self.path)
        return self._typed_scores(df)

    @staticmethod
    def _typed_scores(df: pd.DataFrame) -> pd.DataFrame:
        df[CLASS] = pd.array(df[CLASS], dtype="Int64")
        for c in (ROW, COL, CALLED_CLASS, N_CROPS):
            df[c] = df[c].astype("int64")
        df[COMPOUND] = df[COMPOUND].fillna("").astype(str)
        df[DOSE] = df[DOSE].astype("float64")
        return df

    def load_channel_scores(self, run_id: str) -> pd.DataFrame:
        """``Metadata_Well`` + per-channel P(control) of a run's single-channel models (may be empty)."""
        cols = ", ".join(_q(c) for c in (WELL, *CHANNEL_P_CONTROL))
        with self._cursor() as cur:
            return cur.execute(
                f"SELECT {cols} FROM channel_scores WHERE {_q(RUN_ID)} = ? ORDER BY {_q(WELL)}", [run_id]
            ).df()

    def load_run(self, run_id: str) -> dict[str, Any]:
        """Provenance of one run: ids, plate, bundle card, parameters, code version, counters.

        Raises
        ------
        NeuroRGError
            If there is no such run.
        """
        with self._cursor() as cur:
            df = cur.execute(f"SELECT * FROM runs WHERE {_q(RUN_ID)} = ?", [run_id]).df()
        if df.empty:
            raise NeuroRGError(f"no run {run_id!r} in the result store", path=self.path)
        rec = df.iloc[0].to_dict()
        rec["bundle_card"] = json.loads(rec["bundle_card"]) if rec["bundle_card"] else {}
        rec["params"] = json.loads(rec["params"]) if rec["params"] else {}
        return rec

    def plate_record(self, plate: str) -> dict[str, Any]:
        """The stored plate record (source, layout, format, field shape, dtype, channel map)."""
        with self._cursor() as cur:
            df = cur.execute(f"SELECT * FROM plates WHERE {_q(PLATE)} = ?", [plate]).df()
        if df.empty:
            raise NeuroRGError(f"no plate {plate!r} in the result store", path=self.path)
        rec = df.iloc[0].to_dict()
        rec["channel_map"] = json.loads(rec["channel_map"])
        return rec

    def load_fields(self, plate: str) -> pd.DataFrame:
        """``Metadata_Well``, ``Metadata_Field``, ``Field_Hash`` of a plate's stored fields."""
        with self._cursor() as cur:
            return cur.execute(
                f"SELECT {_q(WELL)}, {_q(FIELD)}, {_q(FIELD_HASH)} FROM fields WHERE {_q(PLATE)} = ? "
                f"ORDER BY {_q(WELL)}, {_q(FIELD)}",
                [plate],
            ).df()

    def count_predictions(self) -> int:
        """Number of cached (field, member, crop key) rows."""
        with self._cursor() as cur:
            return int(cur.execute("SELECT count(*) FROM predictions").fetchone()[0])

    # --- campaigns ----------------------------------------------------------------------------

    def register_campaign(self, entries: Sequence[CampaignEntry]) -> None:
        """Add a campaign's plates (one transaction). A plate already registered keeps its status
        and run, with its manifest details (position, source, plate map, batch, date) updated;
        registered with another model, it goes back to ``pending`` (its run is another model's)."""
        if not entries:
            return
        now = utc_now()
        with self._transaction() as cur:
            for e in entries:
                row = cur.execute(
                    f"SELECT {_q(MODEL_ID)} FROM campaigns WHERE {_q(CAMPAIGN_ID)} = ? AND {_q(PLATE)} = ?",
                    [e.campaign_id, e.plate]).fetchone()
                details = [int(e.position), e.source, e.plate_map, e.batch, e.date, e.model_id]
                if row is None:
                    cur.execute("INSERT INTO campaigns VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', NULL, '', ?)",
                                [e.campaign_id, int(e.position), e.plate, e.source, e.plate_map, e.batch, e.date,
                                 e.model_id, now])
                    continue
                reset = f", {_q(RUN_STATUS)} = 'pending', {_q(RUN_ID)} = NULL" if row[0] != e.model_id else ""
                cur.execute(
                    f"""UPDATE campaigns SET {_q(POSITION)} = ?, {_q(SOURCE)} = ?, {_q(PLATE_MAP_FILE)} = ?,
                        {_q(BATCH)} = ?, {_q(ACQUIRED)} = ?, {_q(MODEL_ID)} = ?{reset}, {_q(UPDATED)} = ?
                        WHERE {_q(CAMPAIGN_ID)} = ? AND {_q(PLATE)} = ?""",
                    [*details, now, e.campaign_id, e.plate])

    def mark_campaign_plate(self, campaign_id: str, plate: str, status: str, *, run_id: str | None = None,
                            message: str = "") -> None:
        """Set a campaign plate's status (``schema.CAMPAIGN_STATUSES``), run and message."""
        with self._transaction() as cur:
            self._mark_campaign(cur, campaign_id, plate, status, run_id, message)

    def _mark_campaign(self, cur: duckdb.DuckDBPyConnection, campaign_id: str, plate: str, status: str,
                       run_id: str | None, message: str) -> None:
        if status not in CAMPAIGN_STATUSES:
            raise NeuroRGError(f"campaign status {status!r} is not one of {', '.join(CAMPAIGN_STATUSES)}")
        n = cur.execute(
            f"""UPDATE campaigns SET {_q(RUN_STATUS)} = ?, {_q(RUN_ID)} = ?, {_q(MESSAGE)} = ?, {_q(UPDATED)} = ?
                WHERE {_q(CAMPAIGN_ID)} = ? AND {_q(PLATE)} = ? RETURNING 1""",
            [status, run_id, message, utc_now(), campaign_id, plate]).fetchall()
        if not n:
            raise NeuroRGError(f"plate {plate!r} is not registered in campaign {campaign_id!r}", path=self.path)

    def _has_campaigns(self, cur: duckdb.DuckDBPyConnection) -> bool:
        """A store last written before campaigns existed, opened read-only, has no such table."""
        return bool(cur.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND table_name = 'campaigns'",
            [self._ALIAS]).fetchone()[0])

    def list_campaigns(self) -> pd.DataFrame:
        """One row per campaign (``schema.CAMPAIGN_LIST_COLUMNS``), the latest updated first."""
        with self._cursor() as cur:
            if not self._has_campaigns(cur):
                return pd.DataFrame({c: pd.Series(dtype=object) for c in CAMPAIGN_LIST_COLUMNS})
            return cur.execute(
                f"""SELECT {_q(CAMPAIGN_ID)}, count(*) AS {_q(N_PLATES)},
                           count(*) FILTER (WHERE {_q(RUN_STATUS)} = 'stored') AS {_q(N_STORED)},
                           count(*) FILTER (WHERE {_q(RUN_STATUS)} = 'failed') AS {_q(N_FAILED)},
                           string_agg(DISTINCT {_q(MODEL_ID)}, '; ' ORDER BY {_q(MODEL_ID)}) AS {_q(MODEL_ID)},
                           max({_q(UPDATED)}) AS {_q(UPDATED)}
                    FROM campaigns GROUP BY 1 ORDER BY {_q(UPDATED)} DESC, 1""").df()

    def load_campaign(self, campaign_id: str) -> pd.DataFrame:
        """A campaign's plates (``schema.CAMPAIGN_COLUMNS``) in acquisition order: by date (plates
        without one last), then manifest position. A stored plate whose run was deleted since is
        shown ``pending`` (it will be scored again).

        Raises
        ------
        NeuroRGError
            If there is no such campaign (the message lists those there are).
        """
        cols = ", ".join(f"c.{_q(c)}" for c in CAMPAIGN_COLUMNS if c not in (RUN_STATUS, RUN_ID))
        with self._cursor() as cur:
            known = self._has_campaigns(cur)
            df = cur.execute(
                f"""SELECT {cols},
                           CASE WHEN c.{_q(RUN_STATUS)} = 'stored' AND r.{_q(RUN_ID)} IS NULL THEN 'pending'
                                ELSE c.{_q(RUN_STATUS)} END AS {_q(RUN_STATUS)},
                           r.{_q(RUN_ID)} AS {_q(RUN_ID)}
                    FROM campaigns c LEFT JOIN runs r ON r.{_q(RUN_ID)} = c.{_q(RUN_ID)}
                    WHERE c.{_q(CAMPAIGN_ID)} = ?
                    ORDER BY c.{_q(ACQUIRED)} NULLS LAST, c.{_q(POSITION)}""", [campaign_id]).df() if known else None
        if df is None or df.empty:
            ids = self.list_campaigns()[CAMPAIGN_ID].tolist()
            raise NeuroRGError(f"no campaign {campaign_id!r} in the result store; campaigns: "
                               f"{', '.join(ids) or 'none'}", path=self.path)
        df[ACQUIRED] = pd.to_datetime(df[ACQUIRED])
        df[BATCH] = df[BATCH].fillna("").astype(str)
        df[MESSAGE] = df[MESSAGE].fillna("").astype(str)
        return df[list(CAMPAIGN_COLUMNS)].reset_index(drop=True)

    # --- deletes ------------------------------------------------------------------------------

    def delete_run(self, run_id: str) -> None:
        """Delete one run and its scores (one transaction). The plate and the cache stay."""
        with self._transaction() as cur:
            n = cur.execute(f"SELECT count(*) FROM runs WHERE {_q(RUN_ID)} = ?", [run_id]).fetchone()[0]
            if n == 0:
                raise NeuroRGError(f"no run {run_id!r} in the result store", path=self.path)
            for table in ("well_scores", "channel_scores", "runs"):
                cur.execute(f"DELETE FROM {table} WHERE {_q(RUN_ID)} = ?", [run_id])
        log.info("deleted run %s", run_id)

    def delete_plate(self, plate: str) -> None:
        """Delete a plate, its runs, scores, wells and fields, and cached predictions of fields no
        other plate uses (one transaction)."""
        with self._transaction() as cur:
            n = cur.execute(
                f"SELECT (SELECT count(*) FROM plates WHERE {_q(PLATE)} = $p) + "
                f"(SELECT count(*) FROM runs WHERE {_q(PLATE)} = $p)", {"p": plate}
            ).fetchone()[0]
            if n == 0:
                raise NeuroRGError(f"no plate {plate!r} in the result store", path=self.path)
            runs = f"SELECT {_q(RUN_ID)} FROM runs WHERE {_q(PLATE)} = ?"
            cur.execute(f"DELETE FROM well_scores WHERE {_q(RUN_ID)} IN ({runs})", [plate])
            cur.execute(f"DELETE FROM channel_scores WHERE {_q(RUN_ID)} IN ({runs})", [plate])
            cur.execute(f"DELETE FROM runs WHERE {_q(PLATE)} = ?", [plate])
            cur.execute(
                f"""DELETE FROM predictions WHERE {_q(FIELD_HASH)} IN (
                        SELECT {_q(FIELD_HASH)} FROM fields WHERE {_q(PLATE)} = $p
                        EXCEPT SELECT {_q(FIELD_HASH)} FROM fields WHERE {_q(PLATE)} <> $p)""",
                {"p": plate},
            )
            for table in ("fields", "wells", "plates"):
                cur.execute(f"DELETE FROM {table} WHERE {_q(PLATE)} = ?", [plate])
        log.info("deleted plate %s", plate)
