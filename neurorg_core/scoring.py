"""Crop-level class probabilities -> one row per well.

The crop-level table (one row per crop and ensemble member) comes from inference:
``Metadata_Well``, ``Metadata_Field``, ``Metadata_Crop``, ``Model_Member``, ``P_class0..5``.
``score_wells`` turns it into the per-well table every page and statistic reads:

- ``P_class0..5``: mean softmax over the well's crops and the ensemble members;
- ``P_control``: the headline, ensemble mean of class 0 (mean over members of each member's mean
  over crops; equal to ``P_class0``);
- ``Vote_class0..5``: the study's ratio method, the fraction of the well's crops whose
  ensemble-mean probabilities peak at each class;
- ``Called_class``: the well call the model's card asks for (``schema.WELL_CALLS``): the arg-max
  of the mean probabilities (``mean_probability``, our trained bundles), or the plurality of the
  crop calls, ties to the lower class (``plurality``, the study's rule);
- ``P_control_member_sd``: how much the members disagree about the well's P(control);
- ``N_crops``: distinct (field, crop) pairs scored.

The per-well numbers come from ``aggregate_wells`` (crop probabilities -> mean probabilities,
called class, crop votes), which the model card's well accuracy (``evaluate.score_crops``) uses too.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from neurorg_core.errors import NeuroRGError
from neurorg_core.schema import (
    CALLED_CLASS,
    CHANNEL_P_CONTROL,
    CHANNELS,
    COL,
    CROP,
    CROP_PROB_COLUMNS,
    DEFAULT_WELL_CALL,
    FIELD,
    INFLAMMATION_SCORE,
    MEMBER,
    N_CLASSES,
    N_CROPS,
    P_CONTROL,
    P_CONTROL_SD,
    PLATE,
    PROB_COLUMNS,
    ROW,
    VOTE_COLUMNS,
    WELL,
    WELL_CALLS,
    WellCall,
)
from neurorg_core.wells import format_well, parse_well

log = logging.getLogger(__name__)


PROB_SUM_TOLERANCE = 1e-3
"""How far a crop's class probabilities may sum from 1 (softmax in float32 rounds a little)."""


def check_crop_probs(crop_probs: pd.DataFrame) -> pd.DataFrame:
    """Validate a crop-level probability table; return a copy with wells spelled ``A01``.

    Parameters
    ----------
    crop_probs : DataFrame
        One row per (well, field, crop, member) with ``P_class0..5`` in [0, 1] summing to 1.

    Returns
    -------
    DataFrame
        The required columns only, wells normalised, probabilities as float64.

    Raises
    ------
    NeuroRGError
        Missing columns, no rows, probabilities that are missing, outside [0, 1] or do not sum
        to 1, duplicated (well, field, crop, member) rows, or a crop that lacks some ensemble
        members. The message names the well and the value.
    """
    missing = [c for c in CROP_PROB_COLUMNS if c not in crop_probs.columns]
    if missing:
        raise NeuroRGError(
            f"crop probability table lacks column(s) {', '.join(missing)}; "
            f"expected {', '.join(CROP_PROB_COLUMNS)}"
        )
    if crop_probs.empty:
        raise NeuroRGError("crop probability table has no rows; expected at least one scored crop")
    df = crop_probs.loc[:, list(CROP_PROB_COLUMNS)].copy()
    spelled = {w: format_well(*parse_well(w)) for w in pd.unique(df[WELL])}  # each well once
    if df[WELL].dtype != "str" or any(w != s for w, s in spelled.items()):
        df[WELL] = df[WELL].map(spelled)   # skipped when it changes nothing (a run's table): ~4 ms
    probs = df[list(PROB_COLUMNS)].to_numpy(dtype=np.float64)
    _check_prob_values(probs, df[WELL].to_numpy(), df[FIELD].to_numpy(), df[CROP].to_numpy())
    if any(df[c].dtype != np.float64 for c in PROB_COLUMNS):
        df[list(PROB_COLUMNS)] = probs   # as float64 (a run's table is already: ~2 ms saved there)

    key = [WELL, FIELD, CROP, MEMBER]
    dup = df.duplicated(key)
    if dup.any():
        row = df.loc[dup].iloc[0]
        raise NeuroRGError(
            f"{int(dup.sum())} duplicated crop row(s), e.g. field {row[FIELD]}, crop {row[CROP]}, "
            f"member {row[MEMBER]}; expected one row per (well, field, crop, member)",
            well=row[WELL],
        )
    members = sorted(df[MEMBER].unique().tolist())
    per_crop = df.groupby([WELL, FIELD, CROP], sort=False)[MEMBER].nunique()
    short = per_crop[per_crop < len(members)]
    if not short.empty:
        well, field, crop = short.index[0]
        raise NeuroRGError(
            f"{len(short)} crop(s) lack some ensemble members, e.g. field {field}, crop {crop} has "
            f"{int(short.iloc[0])} of members {members}; expected every crop scored by every member",
            well=well,
        )
    return df


def _check_prob_values(probs: np.ndarray, wells: np.ndarray, fields: np.ndarray, crops: np.ndarray) -> None:
    """Raise unless every row of ``probs`` (rows, 6) is a softmax: finite, in [0, 1], summing to 1.
    The message names the first bad row's well (and field and crop): row i is crop ``i % len(wells)``
    (members' rows one after another, as ``CropProbs.probs`` reshaped)."""
    bad = ~np.isfinite(probs).all(axis=1) | (probs < -PROB_SUM_TOLERANCE).any(axis=1) | (
        probs > 1 + PROB_SUM_TOLERANCE
    ).any(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise NeuroRGError(
            f"{int(bad.sum())} crop row(s) have class probabilities missing or outside [0, 1], "
            f"e.g. {np.round(probs[i], 4).tolist()}; expected softmax outputs",
            well=wells[i % len(wells)],
        )
    sums = probs.sum(axis=1)
    off = np.abs(sums - 1.0) > PROB_SUM_TOLERANCE
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise NeuroRGError(
            f"{int(off.sum())} crop row(s) have class probabilities summing to {sums[i]:.4f} "
            f"(field {fields[i % len(wells)]}, crop {crops[i % len(wells)]}); expected 1 +/- {PROB_SUM_TOLERANCE}",
            well=wells[i % len(wells)],
        )


@dataclass(frozen=True)
class CropProbs:
    """One model's crop-level class probabilities as arrays: the crop table (``CROP_PROB_COLUMNS``)
    with its members side by side, crops in (well, field, crop) order, members ascending.

    ``score_crop_probs`` and ``fitcheck.fit_stats`` read it. A run builds it straight from inference
    (``from_arrays``; no per-row pandas: building, validating and sorting the crop table cost a
    96-well plate's save ~20 ms); ``score_wells`` builds it from a crop table (``from_table``).
    """

    wells: np.ndarray          # (n,) well names, spelled A01
    fields: np.ndarray         # (n,) int field of each crop
    crops: np.ndarray          # (n,) int crop (tile) index within its field
    members: tuple[Hashable, ...]   # the ``Model_Member`` labels (fold numbers in a run), ascending
    probs: np.ndarray          # (m, n, 6) float64: member k's softmax of crop i

    @classmethod
    def from_arrays(cls, wells: np.ndarray, fields: np.ndarray, crops: np.ndarray, members: Sequence[Hashable],
                    probs: np.ndarray) -> CropProbs:
        """Crops in any order, members in any order (``probs`` (m, n, 6)), one row per distinct
        (well, field, crop) and wells spelled ``A01`` (as a run's fields are): sorted into
        ``CropProbs`` order and the probabilities checked (``check_crop_probs``'s rule)."""
        p = np.asarray(probs, dtype=np.float64)
        labels = list(members)
        if p.ndim != 3 or p.shape[0] != len(labels) or p.shape[2] != N_CLASSES or p.shape[1] == 0 or \
                not len(wells) == len(fields) == len(crops) == p.shape[1]:
            raise NeuroRGError(f"crop probabilities of shape {p.shape} for {len(labels)} member(s) and "
                               f"{len(wells)} crops; expected (members, crops >= 1, {N_CLASSES})")
        names, codes = np.unique(np.asarray(wells), return_inverse=True)
        order = np.lexsort((np.asarray(crops), np.asarray(fields), codes.reshape(-1)))
        by_member = sorted(range(len(labels)), key=labels.__getitem__)
        p = p[by_member][:, order]
        w, f, c = names[codes.reshape(-1)[order]], np.asarray(fields)[order], np.asarray(crops)[order]
        _check_prob_values(p.reshape(-1, N_CLASSES), w, f, c)
        return cls(w, f, c, tuple(labels[k] for k in by_member), p)

    @classmethod
    def from_table(cls, crop_probs: pd.DataFrame) -> CropProbs:
        """A crop table, checked (``check_crop_probs``)."""
        df = check_crop_probs(crop_probs).sort_values([WELL, FIELD, CROP, MEMBER], kind="stable")
        n_members = int(df[MEMBER].nunique())
        probs = df[list(PROB_COLUMNS)].to_numpy(np.float64).reshape(-1, n_members, N_CLASSES).transpose(1, 0, 2)
        first = df.iloc[::n_members]
        return cls(first[WELL].to_numpy(), first[FIELD].to_numpy(), first[CROP].to_numpy(),
                   tuple(df[MEMBER].iloc[:n_members]), probs)

    def table(self) -> pd.DataFrame:
        """The crop table (``CROP_PROB_COLUMNS``): one row per member and crop, member by member."""
        m, n = len(self.members), len(self.wells)
        table = pd.DataFrame({WELL: np.tile(self.wells, m), FIELD: np.tile(self.fields, m),
                              CROP: np.tile(self.crops, m), MEMBER: np.repeat(self.members, n)})
        flat = self.probs.reshape(-1, N_CLASSES)
        for k, col in enumerate(PROB_COLUMNS):
            table[col] = flat[:, k]
        return table


def _prepare_plate_map(plate_map: pd.DataFrame) -> pd.DataFrame:
    """Plate map -> one row per well (``A01``), without the row/col columns we recompute."""
    if WELL not in plate_map.columns:
        raise NeuroRGError(
            f"plate map lacks column {WELL}; it has {', '.join(map(str, plate_map.columns))}"
        )
    pm = plate_map.drop(columns=[c for c in (ROW, COL) if c in plate_map.columns]).copy()
    pm[WELL] = [format_well(*parse_well(w)) for w in pm[WELL]]
    if PLATE in pm.columns and pm[PLATE].nunique(dropna=True) > 1:
        raise NeuroRGError(
            f"plate map holds {pm[PLATE].nunique()} plates ({', '.join(map(str, pm[PLATE].unique()[:5]))}); "
            "expected the rows of the one plate being scored"
        )
    dup = pm[WELL].duplicated()
    if dup.any():
        raise NeuroRGError(
            f"plate map lists {int(dup.sum())} well(s) more than once; expected one row per well",
            well=pm.loc[dup, WELL].iloc[0],
        )
    return pm


@dataclass(frozen=True)
class WellAggregate:
    """Crop probabilities aggregated per well.

    The one rule behind both the screen's well table (``score_wells``: ``P_class*``,
    ``Called_class``, ``Vote_class*``) and the model card's well accuracy
    (``evaluate.score_crops``: ``well_acc`` from ``called``, ``well_acc_vote`` from ``vote_call``).
    """

    wells: np.ndarray          # (w,) well names, sorted (``np.unique`` order)
    member_probs: np.ndarray   # (m, w, 6) each member's mean class probabilities over the well's crops
    probs: np.ndarray          # (w, 6) the mean of ``member_probs`` over members
    votes: np.ndarray          # (w, 6) int: crops whose ensemble-mean probabilities peak at each class

    @property
    def called(self) -> np.ndarray:
        """(w,) arg-max of the mean probabilities: the well's called class."""
        return self.probs.argmax(axis=1)

    @property
    def vote_call(self) -> np.ndarray:
        """(w,) the plurality of the crop calls (the study's ratio method); ties go to the lower class."""
        return self.votes.argmax(axis=1)

    @property
    def n_crops(self) -> np.ndarray:
        """(w,) crops per well."""
        return self.votes.sum(axis=1)


def aggregate_wells(probs: np.ndarray, wells: np.ndarray) -> WellAggregate:
    """Aggregate crop class probabilities per well.

    Parameters
    ----------
    probs : array (n, 6) or (m, n, 6)
        Softmax class probabilities of n crops from one model, or from each of m ensemble
        members (member k's row i and member j's row i are the same crop).
    wells : array (n,)
        The well (any hashable label, e.g. ``A01``) of each crop.

    Returns
    -------
    WellAggregate
        Per well: each member's mean over the well's crops, their mean over members (the well's
        class probabilities, float64), and the crop votes (arg-max of each crop's
        ensemble-mean probabilities).

    Raises
    ------
    NeuroRGError
        If the shapes do not match or there are no crops.
    """
    p = np.asarray(probs, dtype=np.float64)
    p = p[None] if p.ndim == 2 else p
    w = np.asarray(wells)
    if p.ndim != 3 or p.shape[2] != N_CLASSES or w.shape != (p.shape[1],) or p.shape[1] == 0:
        raise NeuroRGError(f"crop probabilities of shape {np.shape(probs)} with {w.size} well labels; "
                           f"expected (n, {N_CLASSES}) or (members, n, {N_CLASSES}) and n >= 1 labels")
    names, inverse = np.unique(w, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse, minlength=len(names)).astype(np.float64)
    sums = np.stack([np.stack([np.bincount(inverse, weights=member[:, k], minlength=len(names))
                               for k in range(N_CLASSES)], axis=1) for member in p])   # (m, w, 6)
    member_probs = sums / counts[None, :, None]
    votes = np.zeros((len(names), N_CLASSES), np.int64)
    np.add.at(votes, (inverse, p.mean(axis=0).argmax(axis=1)), 1)
    return WellAggregate(names, member_probs, member_probs.mean(axis=0), votes)


def check_well_call(well_call: str) -> str:
    """Return ``well_call`` if it is a known well-call rule, else raise listing them."""
    if well_call not in WELL_CALLS:
        raise NeuroRGError(f"well call {well_call!r} is not one of {', '.join(WELL_CALLS)}")
    return well_call


def call_wells(well_probs: np.ndarray, vote_counts: np.ndarray, well_call: WellCall) -> np.ndarray:
    """Each well's called class (0-5).

    Parameters
    ----------
    well_probs
        (n_wells, 6) mean class probabilities.
    vote_counts
        (n_wells, 6) how many of the well's crops are called each class.
    well_call
        ``mean_probability``: arg-max of ``well_probs``; ``plurality``: arg-max of ``vote_counts``.
        Ties go to the lower class (``numpy.argmax`` takes the first maximum).
    """
    check_well_call(well_call)
    chosen = well_probs if well_call == "mean_probability" else vote_counts
    return np.argmax(np.asarray(chosen), axis=1).astype(int)


def score_wells(crop_probs: pd.DataFrame, plate_map: pd.DataFrame | None,
                well_call: WellCall = DEFAULT_WELL_CALL) -> pd.DataFrame:
    """Score every well of a plate from its crop-level class probabilities.

    Parameters
    ----------
    crop_probs : DataFrame
        Crop-level table: ``Metadata_Well``, ``Metadata_Field``, ``Metadata_Crop``,
        ``Model_Member``, ``P_class0..5`` (softmax, unitless). Other columns are ignored.
    plate_map : DataFrame or None
        Plate map with ``Metadata_Well`` (any accepted spelling) and any other ``Metadata_*``
        columns; left-joined on the well. Wells not in the map get missing values (and a log
        warning). ``None``: no plate-map columns.
    well_call : {"mean_probability", "plurality"}
        How ``Called_class`` is decided: the arg-max of the mean probabilities, or the plurality
        of the crop calls (each crop called by the arg-max of its ensemble-mean probabilities;
        ties to the lower class). The model card's ``well_call`` says which (the pipeline passes it).

    Returns
    -------
    DataFrame
        One row per scored well, sorted by row then column: ``Metadata_Well``, ``Metadata_Row``,
        ``Metadata_Col``, the plate-map columns, ``P_control``, ``P_control_member_sd``,
        ``Called_class``, ``Inflammation_score``, ``N_crops``, ``P_class0..5``, ``Vote_class0..5``.
        ``P_control_member_sd`` is the sample SD (ddof 1) over members of each member's mean
        class-0 probability; 0 for a single member.

    Raises
    ------
    NeuroRGError
        If the crop table is malformed (see ``check_crop_probs``) or the plate map has no well
        column, repeats a well or holds several plates.
    """
    check_well_call(well_call)
    return score_crop_probs(CropProbs.from_table(crop_probs), plate_map, well_call)


def score_crop_probs(crops: CropProbs, plate_map: pd.DataFrame | None,
                     well_call: WellCall = DEFAULT_WELL_CALL) -> pd.DataFrame:
    """``score_wells`` of crop probabilities already as arrays (a run's): the same table.

    The crops' members side by side go through the shared per-well aggregation (``aggregate_wells``).
    """
    check_well_call(well_call)
    agg = aggregate_wells(crops.probs, crops.wells)
    out = _well_table(agg, len(crops.members), well_call)
    if plate_map is not None:
        out = _with_plate_map(out, _prepare_plate_map(plate_map))
    out = out.sort_values([ROW, COL], kind="stable").reset_index(drop=True)
    log.info("scored %d wells from %d crops (%d members)", len(out), len(crops.wells), len(crops.members))
    return out


def _well_table(agg: WellAggregate, n_members: int, well_call: WellCall) -> pd.DataFrame:
    """``score_wells``'s columns before the plate map, one row per well in ``agg.wells`` order.

    Built as one dict of arrays (column-by-column assignment into a frame cost ~10 ms a plate)."""
    well_probs = pd.DataFrame(agg.probs, index=pd.Index(agg.wells, name=WELL), columns=list(PROB_COLUMNS))
    rc = [parse_well(w) for w in agg.wells]
    n_crops = agg.n_crops
    columns = {
        WELL: agg.wells, ROW: [r for r, _ in rc], COL: [c for _, c in rc], P_CONTROL: agg.probs[:, 0],
        P_CONTROL_SD: (agg.member_probs[:, :, 0].std(axis=0, ddof=1) if n_members > 1
                       else np.zeros(len(agg.wells))),
        CALLED_CLASS: call_wells(agg.probs, agg.votes, well_call),
        INFLAMMATION_SCORE: inflammation_score(well_probs).to_numpy(),
        N_CROPS: n_crops.astype(int),
        **{col: agg.probs[:, k] for k, col in enumerate(PROB_COLUMNS)},
        **{col: agg.votes[:, k] / n_crops for k, col in enumerate(VOTE_COLUMNS)},   # crops' share
    }
    return pd.DataFrame(columns)


def _with_plate_map(out: pd.DataFrame, pm: pd.DataFrame) -> pd.DataFrame:
    """``out`` with the plate map's columns after the well, row and column (a left join on the well).

    When the map holds every scored well (always, in a run: ``platemap.plate_map_for`` checks it)
    its rows are taken by position, which is what the join gives at a fraction of pandas' merge
    (~10 ms a plate); wells missing from the map (filled with NaN) and a map column named like a
    score column go through the merge, as before.
    """
    meta = [c for c in pm.columns if c != WELL]
    scores = [c for c in out.columns if c not in (WELL, ROW, COL, *meta)]
    rows = pd.Index(pm[WELL]).get_indexer(out[WELL])   # the map's wells are unique (_prepare_plate_map)
    if (rows >= 0).all() and not set(meta) & set(out.columns):
        mapped = pm[meta].iloc[rows].reset_index(drop=True)
        return pd.concat([out[[WELL, ROW, COL]], mapped, out[scores]], axis=1)
    unmapped = sorted(set(out[WELL]) - set(pm[WELL]))
    if unmapped:
        log.warning("%d scored well(s) are not in the plate map (e.g. %s); their metadata is missing",
                    len(unmapped), ", ".join(unmapped[:5]))
    out = out.merge(pm, on=WELL, how="left", validate="one_to_one")
    return out[[WELL, ROW, COL, *meta, *scores]]


def inflammation_score(probs: pd.DataFrame) -> pd.Series:
    """The expected class, ``sum_k k * P_class_k``: 0 = looks like control .. 5 = looks like 20 uM.

    This is the screen's default readout (rescue %, hits, Z'/SSMD and EC50; ``schema.READOUTS``).
    P(control) answers "does this well look like control?" and saturates: a sharp 6-class model
    puts it near 0 for any well past mild stimulation, so a well halfway back from disease still
    has P(control) near 0. Rescue % on P(control) then reads far below the truth and misses hits,
    and a 4PL on it puts the EC50 where wells are almost fully rescued (2.5-4.5x too high on the
    synthetic screen). The expected class moves with the phenotype over its whole range.
    """
    missing = [c for c in PROB_COLUMNS if c not in probs.columns]
    if missing:
        raise NeuroRGError(f"well table lacks column(s) {', '.join(missing)}; expected the mean class "
                           "probabilities of score_wells")
    values = probs[list(PROB_COLUMNS)].to_numpy(np.float64) @ np.arange(N_CLASSES, dtype=np.float64)
    return pd.Series(values, index=probs.index, name=INFLAMMATION_SCORE)


def with_inflammation_score(wells: pd.DataFrame) -> pd.DataFrame:
    """``wells`` with the ``Inflammation_score`` column (derived: the store keeps the probabilities)."""
    return wells.assign(**{INFLAMMATION_SCORE: inflammation_score(wells)})


def score_channels(crop_probs_by_channel: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per-well P(control) of each single-channel model, side by side.

    Parameters
    ----------
    crop_probs_by_channel : mapping of channel role -> DataFrame
        Keys from ``schema.CHANNELS`` (nucleus, neuron, microglia); each value is a crop-level
        probability table of that channel's model (one or more members).

    Returns
    -------
    DataFrame
        ``Metadata_Well`` plus one ``P_control_<channel>`` column per given channel (in CHANNELS
        order), one row per well scored by any channel model (missing where a model did not
        score that well), sorted by row then column. Merge it onto ``score_wells``'s table and
        pass the result to ``stats.channel_comparison``.

    Raises
    ------
    NeuroRGError
        If no channel is given, a key is not a channel role, or a table is malformed.
    """
    if not crop_probs_by_channel:
        raise NeuroRGError(f"no channel models given; expected tables for some of {', '.join(CHANNELS)}")
    unknown = [k for k in crop_probs_by_channel if k not in CHANNELS]
    if unknown:
        raise NeuroRGError(
            f"channel(s) {', '.join(map(repr, unknown))} unknown; expected some of {', '.join(CHANNELS)}"
        )
    out: pd.DataFrame | None = None
    for channel, column in zip(CHANNELS, CHANNEL_P_CONTROL):
        if channel not in crop_probs_by_channel:
            continue
        scored = score_wells(crop_probs_by_channel[channel], None)
        part = scored[[WELL, ROW, COL, P_CONTROL]].rename(columns={P_CONTROL: column})
        out = part if out is None else out.merge(part, on=[WELL, ROW, COL], how="outer")
    assert out is not None  # at least one known channel was given (checked above)
    out = out.sort_values([ROW, COL], kind="stable").drop(columns=[ROW, COL]).reset_index(drop=True)
    return out
