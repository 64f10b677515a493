"""NeuroRG Screen's pages: page config, the login check, navigation. Nothing else lives here.

Served by ``dashboard/app.py`` (run ``streamlit run dashboard/app.py`` from the repository root),
whose gate lets only logged-in browsers reach this script. The check below is the second line:
it also ends a session whose login expires while its page stays open.
"""

from __future__ import annotations

import time

import streamlit as st

from dashboard import auth, components
from neurorg_core.config import load_config

st.set_page_config(page_title="NeuroRG Screen", page_icon=":microscope:", layout="wide")

state = auth.script_session_state(load_config(), st.context.cookies.to_dict(), time.time())
if state != "valid":
    st.title("NeuroRG Screen")
    st.info(auth.SESSION_MESSAGES[state])
    st.stop()

PAGES = {
    "overview": st.Page("views/overview.py", title="Overview", icon=":material/home:", default=True),
    "upload": st.Page("views/upload.py", title="Upload & score", icon=":material/upload:",
                      url_path="upload"),
    "plate": st.Page("views/plate.py", title="Plate heatmap", icon=":material/grid_on:",
                     url_path="plate"),
    "treatments": st.Page("views/treatments.py", title="Treatments", icon=":material/show_chart:",
                          url_path="treatments"),
    "channels": st.Page("views/channels.py", title="Channels", icon=":material/scatter_plot:",
                        url_path="channels"),
    "campaign": st.Page("views/campaign.py", title="Campaign", icon=":material/stacks:",
                        url_path="campaign"),
    "library": st.Page("views/library.py", title="Library", icon=":material/folder:",
                       url_path="library"),
}
current = st.navigation(list(PAGES.values()))
components.keep_choices()  # a widget's value would be forgotten while another page shows
# A shared link carries ?page=<name>&plate=<plate>: on a session's first run, open that page.
# (Later runs follow the sidebar; each page rewrites ?page= to itself.)
if not st.session_state.get("link_followed"):
    st.session_state["link_followed"] = True
    wanted = PAGES.get(str(st.query_params.get("page", "")))
    if wanted is not None and wanted.url_path != current.url_path:
        st.switch_page(wanted, query_params=st.query_params.to_dict())
current.run()
