"""Library: every plate and run in the result store with provenance; open, export, delete."""

from __future__ import annotations

import streamlit as st

from dashboard import components, flows, resources
from neurorg_core.errors import NeuroRGError
from neurorg_core.results import export_table
from neurorg_core.schema import EXPORT_TABLES

st.title("Library")
components.set_link("library", None)
components.stored_plates()  # stops with a message if the store cannot be opened
plates = resources.plates_table()
if plates.empty:
    st.info("The result store is empty. Score a plate under **Upload & score**.")
    st.stop()

st.subheader("Plates")
st.dataframe(plates, hide_index=True, key="plates_table")
st.subheader("Runs (provenance: model id, date, parameters)")
st.dataframe(resources.runs_table(), hide_index=True, key="runs_table")

names = components.stored_plates()
if not names:
    st.info("No plate has a stored run.")
    st.stop()
st.subheader("Open, export or delete a plate")
chosen = components.plate_choice(names, key="library_plate")
res = components.plate_results_or_stop(chosen)
open_col, table_col, csv_col, parquet_col = st.columns(4)
if open_col.button("Open", key="library_open", type="primary"):
    st.session_state[components.PLATE_KEY] = chosen
    st.switch_page("views/plate.py", query_params={"page": "plate", "plate": chosen})
which = table_col.selectbox("Table", EXPORT_TABLES, key="export_table")
table = export_table(res, which)
csv_col.download_button(
    "Export CSV", table.to_csv(index=False).encode(), file_name=f"{chosen}_{which}.csv",
    mime="text/csv", key="export_csv",
)
parquet_col.download_button(
    "Export Parquet", components.parquet_bytes(table), file_name=f"{chosen}_{which}.parquet",
    mime="application/octet-stream", key="export_parquet",
)

with st.expander("Delete this plate"):
    st.write(f"Deletes **{components.plain(chosen)}**, its runs and its cached predictions from the result store. "
             "The image files stay where they are.")
    sure = st.checkbox(f"Yes, delete {components.plain(chosen)}", key="confirm_delete")
    if st.button("Delete", key="delete_plate", disabled=not sure):
        try:
            flows.delete_plate(chosen)
        except NeuroRGError as exc:
            st.error(components.plain(exc))
            st.stop()
        st.session_state.pop(components.PLATE_KEY, None)
        st.session_state.pop("library_plate", None)
        st.session_state.pop("confirm_delete", None)
        st.rerun()
