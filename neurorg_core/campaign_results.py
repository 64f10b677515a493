"""The read side of a screening campaign: its plates side by side (what the Campaign page shows).

``load_campaign_results`` reads every stored plate of a campaign with
``results.load_plate_results`` (so each plate's rescue %, QC, hits and fits are exactly what its
own pages show), in acquisition order. ``summarise_campaign`` filters the plates (batch, date,
model) and puts them side by side:

- plate QC over the campaign: each plate's control and disease means, Z', SSMD, the model-fit
  verdict and its hits, in acquisition order;
- hits across plates per compound (``hits_across_plates``): on how many plates it was tested and
  was a hit, at which doses;
- each compound's EC50 across plates with its spread (``ec50_across_plates``);
- every well with ``Rescue_pct``: the cross-plate normalisation, each plate on its own control and
  disease wells (``stats.add_rescue``), so plates of different batches share one scale.

Nothing here writes; nothing here is drawn (the dashboard renders these tables).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from neurorg_core import stats
from neurorg_core.errors import NeuroRGError
from neurorg_core.results import PlateResults, load_plate_results
from neurorg_core.schema import (
    ACQUIRED,
    BATCH,
    CAMPAIGN_EC50_COLUMNS,
    CAMPAIGN_HIT_COLUMNS,
    CAMPAIGN_PLATE_QC_COLUMNS,
    COMPOUND,
    CONVERGED,
    DOSE,
    EC50,
    EC50_FOLD_RANGE,
    EC50_GEOMEAN,
    EC50_LOG10_SD,
    EC50_MAX,
    EC50_MIN,
    HIT,
    HIT_DOSES,
    HIT_PLATES,
    HITS_PROVISIONAL,
    MEAN_CONTROL,
    MEAN_DISEASE,
    MODEL_FIT,
    MODEL_ID,
    N_HITS,
    N_PLATES_FIT,
    N_PLATES_HIT,
    N_PLATES_TESTED,
    PLATE,
    POSITION,
    QC_PASS,
    READOUT,
    RUN_ID,
    RUN_STATUS,
    SSMD,
    Z_PRIME,
)
from neurorg_core.store import ResultStore

log = logging.getLogger(__name__)

CAMPAIGN_TABLES = ("plates", "wells", "treatments", "hits", "ec50", "fits")
"""The campaign's exportable tables (``CampaignSummary.table``)."""


@dataclass(frozen=True)
class CampaignResults:
    """A campaign as stored: its rows (``ResultStore.load_campaign``, acquisition order) and the
    results of each stored plate (``results.PlateResults``), in the same order."""

    campaign_id: str
    plates: pd.DataFrame
    results: tuple[PlateResults, ...]

    @property
    def batches(self) -> list[str]:
        return sorted(set(self.plates[BATCH]))

    @property
    def models(self) -> list[str]:
        return sorted(set(self.plates[MODEL_ID].dropna()))

    @property
    def dates(self) -> tuple[date, date] | None:
        """The first and last acquisition date (None when no plate has one)."""
        d = self.plates[ACQUIRED].dropna()
        return (d.min().date(), d.max().date()) if len(d) else None


def load_campaign_results(store: ResultStore, campaign_id: str,
                          hits: stats.HitRule = stats.HitRule()) -> CampaignResults:
    """Read a campaign and each of its stored plates' results (``load_plate_results`` on the run
    the campaign stored).

    Raises
    ------
    NeuroRGError
        If there is no such campaign.
    """
    with store.session():
        rows = store.load_campaign(campaign_id)
        stored = rows[rows[RUN_STATUS] == "stored"]
        results = tuple(load_plate_results(store, r[PLATE], r[RUN_ID], hits=hits) for r in stored.to_dict("records"))
    return CampaignResults(campaign_id, rows, results)


@dataclass(frozen=True)
class CampaignFilter:
    """Which plates of a campaign to show: batches, an acquisition date range (inclusive) and
    models; None keeps all. Plates without a date are left out once a date range is given."""

    batches: tuple[str, ...] | None = None
    date_from: date | None = None
    date_to: date | None = None
    models: tuple[str, ...] | None = None

    def keeps(self, row: pd.Series) -> bool:
        if self.batches is not None and row[BATCH] not in self.batches:
            return False
        if self.models is not None and row[MODEL_ID] not in self.models:
            return False
        if self.date_from is None and self.date_to is None:
            return True
        if pd.isna(row[ACQUIRED]):
            return False
        d = row[ACQUIRED].date()
        return (self.date_from is None or d >= self.date_from) and (self.date_to is None or d <= self.date_to)


@dataclass(frozen=True)
class CampaignSummary:
    """The chosen plates side by side.

    Attributes
    ----------
    plates
        ``schema.CAMPAIGN_PLATE_QC_COLUMNS``, one row per stored plate, acquisition order.
    not_stored
        The chosen plates without a stored run (pending or failed) with their ``Message``.
    wells
        Every well of the plates with its plate's batch, date and ``Rescue_pct`` on that plate's
        own controls.
    treatments, fits
        Each plate's ``stats.compare_treatments`` and ``doseresponse.fit_compounds``, with ``Metadata_Plate``.
    hits, ec50
        ``hits_across_plates`` and ``ec50_across_plates`` of those.
    hit_matrix
        Compound x plate (acquisition order): doses called hits on that plate (NaN: not tested there).
    readouts
        The readouts the plates were scored with (one unless the campaign mixed them).
    synthetic_plates, synthetic_model
        Whether any plate was rendered by the synthetic assay; any run's model trained on it.
    """

    plates: pd.DataFrame
    not_stored: pd.DataFrame
    wells: pd.DataFrame
    treatments: pd.DataFrame
    fits: pd.DataFrame
    hits: pd.DataFrame
    ec50: pd.DataFrame
    hit_matrix: pd.DataFrame
    readouts: tuple[str, ...]
    synthetic_plates: bool
    synthetic_model: bool

    def table(self, name: str) -> pd.DataFrame:
        """One of ``CAMPAIGN_TABLES`` as exported."""
        if name not in CAMPAIGN_TABLES:
            raise NeuroRGError(f"campaign table {name!r} is not one of {', '.join(CAMPAIGN_TABLES)}")
        return getattr(self, name).copy()


def summarise_campaign(results: CampaignResults, chosen: CampaignFilter = CampaignFilter()) -> CampaignSummary:
    """The campaign's chosen plates side by side (see ``CampaignSummary``)."""
    rows = results.plates
    keep = rows.apply(chosen.keeps, axis=1) if len(rows) else pd.Series(dtype=bool)
    names = set(rows.loc[keep, PLATE]) if len(rows) else set()
    by_name = {r.plate: r for r in results.results if r.plate in names}
    stored_rows = rows[keep & rows[PLATE].isin(by_name)] if len(rows) else rows
    order = stored_rows[PLATE].tolist()
    meta = stored_rows.set_index(PLATE)[[BATCH, ACQUIRED]]
    plate_qc = pd.DataFrame([_plate_row(r, by_name[r[PLATE]]) for r in stored_rows.to_dict("records")],
                            columns=list(CAMPAIGN_PLATE_QC_COLUMNS))
    treatments = _stack([by_name[n].treatments for n in order], order, meta)
    fits = _stack([by_name[n].fits for n in order], order, meta)
    wells = _stack([by_name[n].wells for n in order], order, meta, has_plate=True)
    not_stored = rows[keep & ~rows[PLATE].isin(by_name)] if len(rows) else rows
    return CampaignSummary(
        plates=plate_qc, not_stored=not_stored.reset_index(drop=True), wells=wells, treatments=treatments, fits=fits,
        hits=hits_across_plates(treatments, order), ec50=ec50_across_plates(fits),
        hit_matrix=hit_matrix(treatments, order), readouts=tuple(sorted({by_name[n].readout for n in order})),
        synthetic_plates=any(by_name[n].synthetic_plate for n in order),
        synthetic_model=any(by_name[n].synthetic_model for n in order),
    )


def _plate_row(row: dict, res: PlateResults) -> dict:
    qc = res.qc
    return {POSITION: row[POSITION], PLATE: row[PLATE], BATCH: row[BATCH], ACQUIRED: row[ACQUIRED],
            MODEL_ID: row[MODEL_ID], RUN_ID: row[RUN_ID], READOUT: res.readout,
            MEAN_CONTROL: qc.mean_control if qc else np.nan, MEAN_DISEASE: qc.mean_disease if qc else np.nan,
            Z_PRIME: qc.z_prime if qc else np.nan, SSMD: qc.ssmd if qc else np.nan,
            QC_PASS: bool(qc is not None and qc.z_prime >= 0), MODEL_FIT: res.model_fit.verdict,
            N_HITS: res.n_hits, HITS_PROVISIONAL: res.hits_provisional}


def _stack(tables: list[pd.DataFrame], order: list[str], meta: pd.DataFrame, has_plate: bool = False) -> pd.DataFrame:
    """Each plate's table with its plate, batch and date in front, in acquisition order."""
    parts = []
    for name, t in zip(order, tables):
        if t.empty:
            continue
        t = t.copy()
        if not has_plate:
            t.insert(0, PLATE, name)
        for col in (BATCH, ACQUIRED):
            t[col] = meta.loc[name, col]
        parts.append(t)
    if not parts:
        return pd.DataFrame(columns=[PLATE, BATCH, ACQUIRED])
    out = pd.concat(parts, ignore_index=True)
    lead = [PLATE, BATCH, ACQUIRED]
    return out[lead + [c for c in out.columns if c not in lead]]


def hits_across_plates(treatments: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per compound: plates it was tested on, plates where any of its doses is a hit, the doses (uM)
    called hits on any plate, and those plates in acquisition order (``CAMPAIGN_HIT_COLUMNS``).

    ``treatments`` is the plates' ``compare_treatments`` tables stacked with ``Metadata_Plate``.
    """
    if treatments.empty or HIT not in treatments.columns:
        return pd.DataFrame(columns=list(CAMPAIGN_HIT_COLUMNS))
    rank = {n: i for i, n in enumerate(order)}
    rows = []
    for compound, t in treatments.groupby(COMPOUND, sort=True):
        hit = t[t[HIT].astype(bool)]
        plates_hit = sorted(set(hit[PLATE]), key=rank.get)
        rows.append({COMPOUND: compound, N_PLATES_TESTED: t[PLATE].nunique(), N_PLATES_HIT: len(plates_hit),
                     HIT_DOSES: "; ".join(f"{d:g}" for d in sorted(set(hit[DOSE]))),
                     HIT_PLATES: "; ".join(plates_hit)})
    out = pd.DataFrame(rows, columns=list(CAMPAIGN_HIT_COLUMNS))
    return out.sort_values([N_PLATES_HIT, COMPOUND], ascending=[False, True]).reset_index(drop=True)


def hit_matrix(treatments: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Compound (rows) x plate (columns, acquisition order): how many of its doses were called hits
    on that plate; NaN where the compound was not tested on it."""
    if treatments.empty or HIT not in treatments.columns:
        return pd.DataFrame(index=pd.Index([], name=COMPOUND), columns=order, dtype=float)
    counts = treatments.assign(_hit=treatments[HIT].astype(bool).astype(float)).pivot_table(
        index=COMPOUND, columns=PLATE, values="_hit", aggfunc="sum")
    return counts.reindex(columns=[n for n in order if n in counts.columns]).astype(float)


def ec50_across_plates(fits: pd.DataFrame) -> pd.DataFrame:
    """Per compound: plates fitted, plates with a converged finite EC50, their geometric mean,
    min, max, SD of log10 EC50 (ddof 1; NaN with fewer than two) and max / min
    (``CAMPAIGN_EC50_COLUMNS``). ``fits`` is the plates' ``fit_compounds`` tables stacked."""
    if fits.empty or EC50 not in fits.columns:
        return pd.DataFrame(columns=list(CAMPAIGN_EC50_COLUMNS))
    rows = []
    for compound, f in fits.groupby(COMPOUND, sort=True):
        ok = f[f[CONVERGED].astype(bool) & np.isfinite(f[EC50].astype(float)) & (f[EC50].astype(float) > 0)]
        logs = np.log10(ok[EC50].to_numpy(float))
        n = len(logs)
        rows.append({COMPOUND: compound, N_PLATES_TESTED: f[PLATE].nunique(), N_PLATES_FIT: n,
                     EC50_GEOMEAN: 10 ** logs.mean() if n else np.nan,
                     EC50_MIN: 10 ** logs.min() if n else np.nan, EC50_MAX: 10 ** logs.max() if n else np.nan,
                     EC50_LOG10_SD: logs.std(ddof=1) if n > 1 else np.nan,
                     EC50_FOLD_RANGE: 10 ** (logs.max() - logs.min()) if n else np.nan})
    return pd.DataFrame(rows, columns=list(CAMPAIGN_EC50_COLUMNS))
