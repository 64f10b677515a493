"""Overview: what the app does, and the demo plate (rendered and scored on first start)."""

from __future__ import annotations

import streamlit as st

from dashboard import components, flows, resources
from neurorg_core.errors import NeuroRGError
from neurorg_core.schema import MODEL_ID, P_CONTROL

st.title("NeuroRG Screen")
st.markdown(
    "Neuron + microglia co-cultures imaged in three channels (nucleus, neuron, microglia). "
    "An EfficientNet ensemble classifies 15 crops per well into six inflammatory-stimulus classes "
    "(0, 0.005, 0.05, 0.5, 5, 20 uM); each well's headline is **P(control)**, the probability that "
    "its cells look unstimulated. Rescue %, hits, plate QC and EC50 use the **inflammation score** "
    "(the expected class, 0 = control ... 5 = 20 uM), which follows the phenotype over its whole range "
    "where P(control) saturates. A compound that rescues inflamed cells moves its wells toward control."
)
components.set_link("overview", None)

names = components.stored_plates()
if not names:
    if not resources.has_bundle(resources.ENSEMBLE_DIR):
        st.info(
            f"No plate is scored yet and no model is installed at "
            f"`{resources.config().model_dir / resources.ENSEMBLE_DIR}`. Build the demo model with "
            "`python -m neurorg_core build-demo --out data/models/demo`, or set NEURORG_MODEL_DIR."
        )
        st.stop()
    st.info("First start: rendering a **SYNTHETIC** demo screening plate and scoring it with the "
            "shipped model. This happens once; afterwards it opens from the result store.")
    try:
        flows.ensure_demo(components.progress_callback("Scoring the demo plate"))
    except NeuroRGError as exc:
        st.error(f"The demo plate could not be made: {components.plain(exc)}")
        st.stop()
    names = components.stored_plates()

default = resources.DEMO_PLATE if resources.DEMO_PLATE in names else names[0]
st.subheader("The demo plate" if default == resources.DEMO_PLATE else f"Plate {components.plain(default)}")
res = components.plate_results_or_stop(default)
left, right = st.columns([3, 2])
with left:
    st.plotly_chart(components.plate_heatmap(res.wells, res.plate_format, P_CONTROL),
                    key="overview_heatmap")
with right:
    st.markdown(f"**{components.plain(res.plate)}**: {len(res.wells)} wells, model `{res.run[MODEL_ID][:12]}`")
    components.qc_metrics(res.qc, res.problems.get("qc"), res.readout)
    if st.button("Open this plate", key="overview_open"):
        st.switch_page("views/plate.py", query_params={"page": "plate", "plate": res.plate})
    st.caption(f"{len(names)} plate(s) stored. Upload your own under **Upload & score**; "
               "every plate is listed in **Library**.")
