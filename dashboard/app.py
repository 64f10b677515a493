"""NeuroRG Screen: page config, password gate, navigation. Nothing else lives here.

Run from the repository root: ``python -m streamlit run dashboard/app.py``.
"""

from __future__ import annotations

import hmac
import os

import streamlit as st

st.set_page_config(page_title="NeuroRG Screen", page_icon=":microscope:", layout="wide")


def _expected_password() -> str:
    """``NEURORG_PASSWORD`` wins; else ``st.secrets["password"]``; "" means no gate."""
    env = os.environ.get("NEURORG_PASSWORD", "")
    if env:
        return env
    try:
        return str(st.secrets.get("password", ""))
    except FileNotFoundError:  # no secrets.toml at all
        return ""


def _password_gate() -> None:
    """Ask for the password (compared in constant time) and stop until it is given."""
    expected = _expected_password()
    if not expected or st.session_state.get("authenticated"):
        return
    st.title("NeuroRG Screen")
    with st.form("login"):
        given = st.text_input("Password", type="password", key="password")
        submitted = st.form_submit_button("Enter")
    if submitted and hmac.compare_digest(given.encode(), expected.encode()):
        st.session_state["authenticated"] = True
        st.rerun()
    if submitted:
        st.error("Wrong password.")
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
    "library": st.Page("views/library.py", title="Library", icon=":material/folder:",
                       url_path="library"),
}
# Navigation is resolved before the gate (so the address's page opens after logging in), but the
# menu stays hidden until the password is given.
unlocked = not _expected_password() or bool(st.session_state.get("authenticated"))
current = st.navigation(list(PAGES.values()), position="sidebar" if unlocked else "hidden")
_password_gate()
# A shared link carries ?page=<name>&plate=<plate>: on a session's first run, open that page.
# (Later runs follow the sidebar; each page rewrites ?page= to itself.)
if not st.session_state.get("link_followed"):
    st.session_state["link_followed"] = True
    wanted = PAGES.get(str(st.query_params.get("page", "")))
    if wanted is not None and wanted.url_path != current.url_path:
        st.switch_page(wanted, query_params=st.query_params.to_dict())
current.run()
