"""Campaign: many plates scored together (``score-campaign``) side by side: plate QC in acquisition
order, hits across plates, each compound's EC50 across plates, rescue % on each plate's own
controls; filters by batch, date and model; the campaign's tables as CSV or Parquet."""

from __future__ import annotations

import streamlit as st

from dashboard import campaign_charts, components, resources
from neurorg_core.campaign_results import CAMPAIGN_TABLES, CampaignFilter, summarise_campaign
from neurorg_core.errors import NeuroRGError
from neurorg_core.schema import CAMPAIGN_ID, READOUT_COLUMNS, READOUT_LABELS

st.title("Campaign")
components.set_link("campaign", None)
try:
    campaigns = resources.campaigns_table()
except NeuroRGError as exc:
    st.error(f"The result store cannot be opened: {components.plain(exc)}")
    st.stop()
if campaigns.empty:
    st.info("No campaign is stored yet. Score many plates at once with "
            "`python -m neurorg_core score-campaign --manifest campaign.csv` (columns plate, plate_map, "
            "name, batch, date); see the README's *Screening campaigns*.")
    st.stop()

chosen = st.selectbox("Campaign", campaigns[CAMPAIGN_ID].tolist(), key="campaign_id")
try:
    results = resources.campaign_results(chosen)
except NeuroRGError as exc:
    st.error(components.plain(exc))
    st.stop()

with st.expander("Filter plates", expanded=False):
    batches = st.multiselect("Batch", results.batches, default=results.batches, key="campaign_batches")
    models = st.multiselect("Model", results.models, default=results.models, key="campaign_models")
    span = results.dates
    dates = st.date_input("Acquired between", value=span, key="campaign_dates") if span else None
# the full span (the default) keeps undated plates too; a narrower range keeps dated plates in it
date_from, date_to = (dates[0], dates[-1]) if dates and len(dates) and tuple(dates) != span else (None, None)
summary = summarise_campaign(results, CampaignFilter(
    batches=tuple(batches) if batches != results.batches else None, date_from=date_from, date_to=date_to,
    models=tuple(models) if models != results.models else None))

components.synthetic_banner(summary.synthetic_plates, summary.synthetic_model)
if not summary.not_stored.empty:
    st.warning(f"{len(summary.not_stored)} plate(s) of this campaign have no stored run (pending or failed); "
               "they are listed under *Plates without a run*.")
if summary.plates.empty:
    st.info("No stored plate matches these filters.")
    st.stop()
readout = summary.readouts[0]
label = READOUT_LABELS[readout]
if len(summary.readouts) > 1:
    st.warning("The plates were scored with different readouts (" + ", ".join(summary.readouts) + "); "
               "rescue % is on each plate's own readout.")
st.caption(f"{len(summary.plates)} plate(s). Readout for rescue %, hits, QC and EC50: **{label}**.")

st.subheader("Plate QC over the campaign")
st.plotly_chart(campaign_charts.plate_qc_figure(summary.plates), key="campaign_qc_chart")
st.dataframe(summary.plates, hide_index=True, width="stretch", key="campaign_qc_table")
st.caption("Z' >= 0 passes (green); POOR marks a plate whose images do not look like the model's reference "
           "plates. Mean control / disease are each plate's own reference for its rescue %.")

st.subheader("Hits across plates")
st.dataframe(summary.hits, hide_index=True, width="stretch", key="campaign_hits_table")
if not summary.hit_matrix.empty:
    st.plotly_chart(campaign_charts.hit_matrix_figure(summary.hit_matrix), key="campaign_hit_matrix")

st.subheader("EC50 across plates")
st.dataframe(summary.ec50, hide_index=True, width="stretch", key="campaign_ec50_table")
if not summary.fits.empty:
    st.plotly_chart(campaign_charts.ec50_figure(summary.fits), key="campaign_ec50_chart")
st.caption("Spread: SD of log10 EC50 across plates (0.3 = a factor 2) and max / min; only converged fits count.")

st.subheader("Normalised on each plate's own controls")
st.plotly_chart(campaign_charts.normalisation_figure(summary.wells, READOUT_COLUMNS[readout]),
                key="campaign_normalisation")
st.caption("Rescue % = 100 x (well - disease mean) / (control mean - disease mean), with the means of the "
           "well's own plate: a plate-wide shift of the readout (a batch effect) cancels out.")

if not summary.not_stored.empty:
    st.subheader("Plates without a run")
    st.dataframe(summary.not_stored, hide_index=True, width="stretch", key="campaign_not_stored")

st.subheader("Export")
table_col, csv_col, parquet_col = st.columns(3)
which = table_col.selectbox("Table", CAMPAIGN_TABLES, key="campaign_export_table")
table = summary.table(which)
csv_col.download_button("Export CSV", table.to_csv(index=False).encode(), file_name=f"{chosen}_{which}.csv",
                        mime="text/csv", key="campaign_export_csv")
parquet_col.download_button("Export Parquet", components.parquet_bytes(table), file_name=f"{chosen}_{which}.parquet",
                            mime="application/octet-stream", key="campaign_export_parquet")
