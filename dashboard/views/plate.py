"""Plate heatmap: one metric in the plate's true geometry, plate QC, and a well's fields."""

from __future__ import annotations

import json

import streamlit as st

from dashboard import components, resources
from neurorg_core.errors import NeuroRGError
from neurorg_core.schema import WELL

st.title("Plate heatmap")
res = components.plate_page_results("plate")

metrics = [m for m in components.METRIC_LABELS if m in res.wells.columns]
metric = st.selectbox("Metric", metrics, format_func=components.METRIC_LABELS.get, key="metric")
if metric not in res.wells.columns or res.wells[metric].isna().all():
    st.info(components.plain(res.problems.get("rescue", "This metric is not available for this plate.")))

left, right = st.columns([3, 1])
with left:
    event = st.plotly_chart(
        components.plate_heatmap(res.wells, res.plate_format, metric),
        key="heatmap", on_select="rerun", selection_mode="points",
    )
with right:
    st.markdown(f"**{res.plate_format}-well plate**, {len(res.wells)} wells scored")
    components.qc_metrics(res.qc, res.problems.get("qc"), res.readout)

wells = res.wells[WELL].tolist()
clicked = components.well_from_selection(event)
if clicked in wells and clicked != st.session_state.get("last_clicked_well"):
    st.session_state["last_clicked_well"] = clicked
    st.session_state["well"] = clicked
well = st.selectbox("Well", wells, key="well")
st.dataframe(components.well_summary(res.wells, well), hide_index=True, key="well_row")

show = components.channel_toggles("show")
channel_map_json = json.dumps(res.channel_map, sort_keys=True)
try:
    fields = resources.fields_of(res.source, res.channel_map, well)
    images = [resources.field_image(res.source, channel_map_json, well, f) for f in fields]
except NeuroRGError as exc:
    st.error(f"The images of well {well} cannot be shown: {components.plain(exc)}")
    st.stop()
cols = st.columns(4)
for k, (f, img) in enumerate(zip(fields, images)):
    cols[k % 4].image(components.composite_rgb(img, show), caption=f"{well} field {f}", width=240)
