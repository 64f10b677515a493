"""Channels: per-well P(control) of each single-channel model against the 3-channel ensemble."""

from __future__ import annotations

import streamlit as st

from dashboard import components, flows, resources
from neurorg_core.errors import NeuroRGError

st.title("Channels")
st.caption("Which channel carries the signal? Each panel plots a single-channel model's P(control) "
           "(y) against the 3-channel ensemble's (x), one point per well, with the least-squares "
           "line and Pearson r.")
res = components.plate_page_results("channels")

if res.channels.empty:
    if not resources.has_bundle(resources.SINGLE_CHANNEL_DIR):
        st.info(f"No single-channel models are installed at "
                f"`{resources.config().model_dir / resources.SINGLE_CHANNEL_DIR}`.")
        st.stop()
    st.info("This plate has not been scored with the single-channel models yet. The 3-channel "
            "scores come from the cache, so only the single-channel models run.")
    if st.button("Score the single-channel models", key="score_channels", type="primary"):
        try:
            flows.score_channels(res.plate, components.progress_callback("Single-channel models"))
        except NeuroRGError as exc:
            st.error(f"Scoring stopped: {components.plain(exc)}")
            st.stop()
        st.rerun()
    st.stop()

for problem in (v for k, v in res.problems.items() if k.startswith("channel")):
    st.warning(components.plain(problem))
st.plotly_chart(components.channel_scatter(res.channels, res.channel_fits), key="channel_scatter")
