"""The read side of a scored plate: everything the pages, the CLI and exports show about a run.

``load_plate_results`` reads one stored run and computes its statistics on the run's readout:
rescue % (``stats.add_rescue``), plate QC (``stats.plate_qc``), treatments and hits
(``stats.compare_treatments``), 4PL fits (``doseresponse.fit_compounds``) and the single-channel
correlations (``stats.channel_correlation``). ``export_table`` writes one of its tables as exported.
Nothing here writes to the store; ``pipeline.run_plate`` is the write side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from neurorg_core import doseresponse, scoring, stats
from neurorg_core.errors import NeuroRGError
from neurorg_core.fitcheck import ModelFit
from neurorg_core.schema import (
    CHANNEL_P_CONTROL,
    CHANNELS,
    COMPOUND,
    CONVERGED,
    DEFAULT_READOUT,
    DOSE,
    EXPORT_TABLES,
    FIT_COLUMNS,
    HIT,
    MODEL_FIT,
    P_CONTROL,
    PLATE,
    PLATE_FORMAT,
    READOUT,
    READOUT_COLUMNS,
    READOUTS,
    ROLE,
    SOURCE,
    TREATMENT_COLUMNS,
    WELL,
    ExportTable,
    Readout,
)
from neurorg_core.store import ResultStore

log = logging.getLogger(__name__)


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
    hit_rule
        The rule the treatments' ``Hit`` column was called by.
    wells
        Per-well scores with ``Inflammation_score``, plus ``Rescue_pct`` (on the readout) when the
        plate has control and disease wells.
    channels
        ``wells`` joined with the single-channel ``P_control_<channel>`` columns; empty when the
        run had no single-channel models.
    qc
        ``stats.plate_qc`` (Z', SSMD, CV, edge effects); None when not computable (see ``problems``).
    treatments
        ``stats.compare_treatments`` (per compound and dose, with hit calls).
    fits
        ``doseresponse.fit_compounds`` on the readout (4PL, EC50 with 95 % CI, per compound).
    curves
        Each converged fit evaluated over its compound's doses (``fit_curves``), for plotting.
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
    hit_rule: stats.HitRule
    wells: pd.DataFrame
    channels: pd.DataFrame
    qc: stats.PlateQC | None
    treatments: pd.DataFrame
    fits: pd.DataFrame
    curves: pd.DataFrame
    channel_fits: dict[str, dict[str, Any]]
    problems: dict[str, str]

    @property
    def plate_format(self) -> int:
        return int(self.plate_record[PLATE_FORMAT])

    @property
    def source(self) -> str:
        """Where the plate's images are (a folder or a zip)."""
        return str(self.plate_record[SOURCE])

    @property
    def channel_map(self) -> dict[str, str]:
        return dict(self.plate_record["channel_map"])

    @property
    def synthetic_plate(self) -> bool:
        """The plate's images were rendered by the synthetic assay (``synth.is_synthetic_plate``)."""
        from neurorg_core.synth import is_synthetic_plate

        return is_synthetic_plate(self.source)

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
        if self.qc is not None and not (self.qc.z_prime >= 0):
            why.append(f"plate QC failed (Z' {self.qc.z_prime:.2f} < 0)")
        if self.model_fit.verdict == "POOR":
            why.append("the model-fit check says POOR: " + "; ".join(self.model_fit.reasons))
        return "; ".join(why)


def load_plate_results(store: ResultStore, plate: str, run_id: str | None = None,
                       readout: Readout | None = None, hits: stats.HitRule = stats.HitRule()) -> PlateResults:
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
    hits
        When a treatment is a hit (``Config.hit_rule`` in the CLI and the app).

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
    qc: stats.PlateQC | None = None
    treatments = pd.DataFrame({c: pd.Series(dtype=float) for c in TREATMENT_COLUMNS})
    fits = pd.DataFrame({c: pd.Series(dtype=float) for c in FIT_COLUMNS})
    try:
        wells = stats.add_rescue(wells, metric=metric)
    except NeuroRGError as exc:
        problems["rescue"] = str(exc)
    try:
        qc = stats.plate_qc(wells, metric=metric)
    except NeuroRGError as exc:
        problems["qc"] = str(exc)
    try:
        treatments = stats.compare_treatments(wells, metric=metric, hits=hits)
    except NeuroRGError as exc:
        problems["treatments"] = str(exc)
    try:
        fits = doseresponse.fit_compounds(wells, metric=metric)
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
        plate=plate, run_id=run, plate_record=store.plate_record(plate), run=run_info,
        readout=chosen, model_fit=ModelFit.from_params(params.get("model_fit")), hit_rule=hits, wells=wells,
        channels=channels, qc=qc, treatments=treatments, fits=fits, curves=fit_curves(wells, fits, metric),
        channel_fits=channel_fits, problems=problems,
    )


def fit_curves(wells: pd.DataFrame, fits: pd.DataFrame, column: str, n_points: int = 60) -> pd.DataFrame:
    """Each converged 4PL evaluated over its compound's dose range (log-spaced), for plotting; the
    fitted values go in ``column`` (the readout the fits were made on)."""
    parts = []
    for row in fits.to_dict("records") if not fits.empty else []:
        if not row[CONVERGED]:
            continue
        doses = wells.loc[(wells[ROLE] == "treatment") & (wells[COMPOUND] == row[COMPOUND]), DOSE]
        grid = np.logspace(np.log10(doses.min()), np.log10(doses.max()), n_points)
        fit = doseresponse.DoseResponseFit.from_row(row)
        parts.append(pd.DataFrame({COMPOUND: row[COMPOUND], DOSE: grid, column: fit.predict(grid)}))
    if not parts:
        return pd.DataFrame({COMPOUND: pd.Series(dtype=str), DOSE: pd.Series(dtype=float),
                             column: pd.Series(dtype=float)})
    return pd.concat(parts, ignore_index=True)


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
