"""NeuroRG Screen: page config, password gate, navigation. Nothing else lives here."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="NeuroRG Screen", layout="wide")
st.title("NeuroRG Screen")
st.info("The dashboard is being built. The demo data it will show is synthetic.")
