"""NeuroRG Screen's server: ``streamlit run dashboard/app.py`` (from the repository root).

Streamlit finds ``app`` below and serves ``dashboard/main.py`` (page config, navigation) through
it, behind the login gate of ``dashboard/auth.py``: without a password the app must listen on
this computer only; with one, nothing (pages, images, downloads, uploads, the websocket) is
served without a login cookie.
"""

from __future__ import annotations

import logging
import sys

import streamlit as st
from starlette.middleware import Middleware
from streamlit import config as st_config

from dashboard import auth
from neurorg_core.config import load_config
from neurorg_core.errors import NeuroRGError

log = logging.getLogger(__name__)

cfg = load_config()
address = st_config.get_option("server.address")
try:
    auth.check_exposure(address, bool(auth.password(cfg)))
except NeuroRGError as exc:
    sys.exit(f"NeuroRG Screen: {exc}")
if not auth.password(cfg):
    log.warning("No password is set (NEURORG_PASSWORD): NeuroRG Screen answers on this computer only.")

base_path = "/" + str(st_config.get_option("server.baseUrlPath") or "").strip("/")
login = auth.LoginPages(cfg, auth.LoginLimiter(), base_path=base_path.rstrip("/"))
app = st.App(
    "main.py",
    routes=login.routes(),
    middleware=[Middleware(auth.SessionGate, cfg=cfg, exposed=not auth.is_loopback(address),
                           base_path=base_path.rstrip("/"))],
)
