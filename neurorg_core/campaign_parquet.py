"""A plate's inference as Parquet files: what a campaign's workers hand to its one writer.

``plate_inference.infer_plate`` returns a ``PlateInference`` (plain data, nothing stored). A
campaign writes each one into its own folder as three Parquet files, then merges it into the
result store with ``pipeline.save_plate``; a crashed campaign finds the files again and merges them
without reading a pixel:

- ``predictions.parquet``: one row per crop and member of every prediction the inference computed
  (``Metadata_Well``, ``Metadata_Field``, ``Metadata_Crop`` (the tile), ``Field_Hash``, ``Model_Id``
  (the member id), ``crop_key``, ``P_class0..5`` as float32, the cache's precision);
- ``plate_map.parquet``: the plate map as the run stores it (imaged wells, ``PLATE_MAP_COLUMNS``);
- ``fields.parquet``: one row per field (place, tiles, crop key, hash, channel statistics, cached),
  with the rest of the ``PlateInference`` (plate record, options, crop geometry, intensity,
  members, counters) and the images' stamp as JSON in the file's metadata. Written last: a folder
  without it is an unfinished write and is ignored.

``wells.parquet`` (the stored well table) is added by the writer once the run is stored.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from neurorg_core.errors import NeuroRGError
from neurorg_core.plate_inference import FieldRecord, PlateInference, ScoreOptions
from neurorg_core.plates import FieldRef
from neurorg_core.preprocess import Intensity
from neurorg_core.schema import CLASS, COL, CROP, FIELD, FIELD_HASH, MODEL_ID, PLATE_MAP_COLUMNS, PROB_COLUMNS, ROW, WELL
from neurorg_core.store import PlateRecord, PredictionRow

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Bump when the files change shape; files of another version are not reused (inferred again).
2: the engines that ran (``PlateInference.ran_on``)."""

PREDICTIONS_FILE = "predictions.parquet"
PLATE_MAP_FILE = "plate_map.parquet"
FIELDS_FILE = "fields.parquet"
WELLS_FILE = "wells.parquet"
_META_KEY = b"neurorg.plate_inference"
_CROP_KEY = "crop_key"


def encode_inference(inference: PlateInference, stamp: str) -> dict[str, bytes]:
    """The three Parquet files of an inference, as bytes (file name -> content).

    ``stamp`` identifies the version of the images read (``campaign.source_stamp``): files are
    reused only for the same images.
    """
    return {PREDICTIONS_FILE: _to_bytes(_predictions_table(inference)),
            PLATE_MAP_FILE: _to_bytes(pa.Table.from_pandas(inference.plate_map[list(PLATE_MAP_COLUMNS)],
                                                           preserve_index=False)),
            FIELDS_FILE: _to_bytes(_fields_table(inference, stamp))}


def write_files(folder: Path, files: Mapping[str, bytes]) -> None:
    """Write encoded files into ``folder`` atomically, ``fields.parquet`` last (the completion mark)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(files, key=lambda n: n == FIELDS_FILE):
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(files[name])
        os.replace(tmp, folder / name)


def read_metadata(folder: Path) -> dict[str, Any] | None:
    """The JSON metadata of a finished write in ``folder``; None when there is none (or it is of
    another format version)."""
    path = folder / FIELDS_FILE
    if not path.is_file():
        return None
    try:
        meta = pq.read_schema(path).metadata or {}
        info = json.loads(meta[_META_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowException) as exc:
        log.warning("%s: not a readable campaign file (%s); the plate is inferred again", path, exc)
        return None
    return info if info.get("format_version") == FORMAT_VERSION else None


def read_inference(folder: Path) -> PlateInference:
    """The ``PlateInference`` written into ``folder`` by ``write_files``.

    Raises
    ------
    NeuroRGError
        If the files are missing or unreadable (the message names the folder).
    """
    info = read_metadata(folder)
    if info is None:
        raise NeuroRGError("no finished campaign files here (fields.parquet missing or of another version)",
                           path=folder)
    try:
        fields = pq.read_table(folder / FIELDS_FILE).to_pandas()
        preds = pq.read_table(folder / PREDICTIONS_FILE).to_pandas()
        plate_map = pq.read_table(folder / PLATE_MAP_FILE).to_pandas()
    except (OSError, pa.ArrowException) as exc:
        raise NeuroRGError(f"campaign files cannot be read ({exc})", path=folder) from exc
    plate_map[CLASS] = pd.array(plate_map[CLASS], dtype="Int64")
    new_probs = _probs_from_table(preds)
    uncommitted = tuple(PredictionRow(h, m, k, p) for (h, m, k), p in new_probs.items())
    return PlateInference(
        name=info["name"], record=PlateRecord(**{**info["record"], "field_shape": tuple(info["record"]["field_shape"])}),
        plate_map=plate_map, fields=tuple(_field_records(fields)), new_probs=new_probs, uncommitted=uncommitted,
        inferred_crops=int(info["inferred_crops"]), total_crops=int(info["total_crops"]),
        options=ScoreOptions(**info["options"]), cropping=info["cropping"], intensity=Intensity(**info["intensity"]),
        crop_edge_px=int(info["crop_edge_px"]), members={r: tuple(ids) for r, ids in info["members"].items()},
        ran_on=tuple(info["ran_on"]),
    )


def _to_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _predictions_table(inference: PlateInference) -> pa.Table:
    """One row per crop and member, grouped by (field hash, member, crop key) in that order."""
    place = {(f.field_hash, f.crop_key): f for f in inference.fields}
    keys = list(inference.new_probs)
    counts = np.array([inference.new_probs[k].shape[0] for k in keys], dtype=np.int64)
    probs = (np.concatenate([inference.new_probs[k] for k in keys]).astype(np.float32) if keys
             else np.empty((0, len(PROB_COLUMNS)), np.float32))
    owner = [place[(h, key)] for h, _, key in keys]
    columns: dict[str, Any] = {
        WELL: np.repeat([f.ref.well for f in owner], counts).astype(str),
        FIELD: np.repeat([int(f.ref.field) for f in owner], counts).astype(np.int32),
        CROP: np.concatenate([np.asarray(f.tiles, np.int32) for f in owner]) if owner else np.empty(0, np.int32),
        FIELD_HASH: np.repeat([h for h, _, _ in keys], counts).astype(str),
        MODEL_ID: np.repeat([m for _, m, _ in keys], counts).astype(str),
        _CROP_KEY: np.repeat([k for _, _, k in keys], counts).astype(str),
    }
    for i, c in enumerate(PROB_COLUMNS):
        columns[c] = probs[:, i]
    return pa.table(columns)


def _probs_from_table(preds: pd.DataFrame) -> dict[tuple[str, str, str], np.ndarray]:
    """Regroup the rows written by ``_predictions_table`` into (n_crops, 6) float32 arrays."""
    if preds.empty:
        return {}
    keys = preds[[FIELD_HASH, MODEL_ID, _CROP_KEY]].to_numpy()
    change = np.ones(len(keys), bool)
    change[1:] = (keys[1:] != keys[:-1]).any(axis=1)
    starts = np.flatnonzero(change)
    probs = preds[list(PROB_COLUMNS)].to_numpy(np.float32)
    out: dict[tuple[str, str, str], np.ndarray] = {}
    for start, stop in zip(starts, [*starts[1:], len(keys)]):
        out[tuple(keys[start])] = np.ascontiguousarray(probs[start:stop])
    return out


def _fields_table(inference: PlateInference, stamp: str) -> pa.Table:
    f = inference.fields
    table = pa.table({
        WELL: pa.array([r.ref.well for r in f], pa.string()),
        ROW: pa.array([int(r.ref.row) for r in f], pa.int32()),
        COL: pa.array([int(r.ref.col) for r in f], pa.int32()),
        FIELD: pa.array([int(r.ref.field) for r in f], pa.int32()),
        "tiles": pa.array([list(map(int, r.tiles)) for r in f], pa.list_(pa.int32())),
        _CROP_KEY: pa.array([r.crop_key for r in f], pa.string()),
        FIELD_HASH: pa.array([r.field_hash for r in f], pa.string()),
        "channel_stats": pa.array([np.asarray(r.channel_stats, np.float64).ravel().tolist() for r in f],
                                  pa.list_(pa.float64())),
        "cached": pa.array([bool(r.cached) for r in f], pa.bool_()),
    })
    info = {
        "format_version": FORMAT_VERSION, "stamp": stamp, "name": inference.name,
        "record": dataclasses.asdict(inference.record), "inferred_crops": int(inference.inferred_crops),
        "total_crops": int(inference.total_crops), "options": dataclasses.asdict(inference.options),
        "cropping": dict(inference.cropping), "intensity": dataclasses.asdict(inference.intensity),
        "crop_edge_px": int(inference.crop_edge_px),
        "members": {role: list(ids) for role, ids in inference.members.items()},
        "ran_on": list(inference.ran_on),
    }
    return table.replace_schema_metadata({_META_KEY: json.dumps(info, default=_jsonable).encode()})


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-able")


def _field_records(fields: pd.DataFrame) -> list[FieldRecord]:
    return [FieldRecord(ref=FieldRef(r[WELL], int(r[ROW]), int(r[COL]), int(r[FIELD])),
                        tiles=tuple(int(t) for t in r["tiles"]), crop_key=r[_CROP_KEY], field_hash=r[FIELD_HASH],
                        channel_stats=np.asarray(r["channel_stats"], np.float64).reshape(2, -1),
                        cached=bool(r["cached"]))
            for r in fields.to_dict("records")]
