"""Shared display helpers: plate picker, SYNTHETIC banner, heatmap, thumbnails, tables, charts.

Every helper here turns a finished table into something on screen; none of them computes a
statistic (that is the core's job, reached through ``dashboard.resources``).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from neurorg_core.schema import (
    CALLED_CLASS,
    CHANNELS,
    CLASS_NAMES,
    COL,
    COMPOUND,
    DOSE,
    N_CROPS,
    P_CONTROL,
    P_CONTROL_SD,
    RESCUE_PCT,
    ROLE,
    ROLES,
    ROW,
    WELL,
)
from neurorg_core.wells import format_well, plate_shape, row_letters

METRIC_LABELS = {
    P_CONTROL: "P(control)",
    CALLED_CLASS: "Called class",
    RESCUE_PCT: "Rescue %",
    P_CONTROL_SD: "Ensemble disagreement (SD of P(control))",
    N_CROPS: "Crops scored",
}
"""Heatmap metrics, in menu order, with the words shown for them."""

ROLE_COLOURS = {"control": "#1b9e77", "disease": "#d95f02", "treatment": "#7570b3", "empty": "#999999"}

CHANNEL_COLOURS = {"nucleus": (0.0, 0.35, 1.0), "neuron": (0.0, 1.0, 0.0), "microglia": (1.0, 0.0, 1.0)}
"""Display colour (R, G, B weights) of each channel role: nucleus blue, neuron green, microglia magenta."""

PLATE_KEY = "plate"
"""Session-state key of the user's selected plate (a choice, so it lives in session_state)."""


# --- navigation state: the selected plate, mirrored in the URL -----------------------------

def pick_plate(names: list[str], *, page: str, default: str | None = None) -> str:
    """Sidebar plate selector whose choice is mirrored in ``?page=...&plate=...``.

    The URL wins on arrival (a shared link), then the user's last choice, then ``default``,
    then the first plate. Missing plates -> ``st.info`` and ``st.stop``.

    Parameters
    ----------
    names : list of str
        Plates in the store.
    page : str
        This page's key in ``app.PAGES`` (written to the URL so a copied link reopens it).
    default : str, optional
        Plate to show when neither the URL nor the session names one.
    """
    if not names:
        st.info("No plate has been scored yet. Open **Upload & score** to add one.")
        st.stop()
    wanted = st.query_params.get("plate")
    if wanted is not None and wanted not in names:
        st.warning(f"The link names plate {wanted!r}, which is not in the result store.")
        wanted = None
    chosen = wanted or st.session_state.get(PLATE_KEY)
    if chosen not in names:
        chosen = default if default in names else names[0]
    st.session_state[PLATE_KEY] = chosen
    st.session_state["plate_select"] = chosen
    st.sidebar.selectbox("Plate", names, key="plate_select", on_change=_on_plate_change)
    set_link(page, chosen)
    return chosen


def _on_plate_change() -> None:
    st.session_state[PLATE_KEY] = st.session_state["plate_select"]
    st.query_params["plate"] = st.session_state["plate_select"]


def set_link(page: str, plate: str | None) -> None:
    """Write the page (and plate) into the URL so the address bar is a shareable link."""
    if st.query_params.get("page") != page:
        st.query_params["page"] = page
    if plate is not None and st.query_params.get("plate") != plate:
        st.query_params["plate"] = plate


def synthetic_banner(is_synthetic: bool) -> None:
    """Label a page that shows synthetic data, on every page that shows it."""
    if is_synthetic:
        st.warning(
            "**SYNTHETIC** plate: rendered by `neurorg_core.synth` with known ground truth, "
            "not real cells. Numbers describe the synthetic assay.",
            icon=":material/science:",
        )


# --- progress -----------------------------------------------------------------------------

def progress_callback(label: str) -> Callable[[int, int], None]:
    """A ``progress(done_crops, total_crops)`` callback drawing a bar with the time left."""
    bar = st.progress(0.0, text=f"{label}: starting")
    start = time.monotonic()

    def update(done: int, total: int) -> None:
        frac = done / total if total else 1.0
        elapsed = time.monotonic() - start
        left = elapsed / frac - elapsed if frac > 0 else float("nan")
        eta = f"about {left:.0f} s left" if np.isfinite(left) and done < total else ""
        bar.progress(min(frac, 1.0), text=f"{label}: {done} / {total} crops {eta}")

    return update


# --- plate heatmap ------------------------------------------------------------------------

def plate_heatmap(wells: pd.DataFrame, plate_format: int, metric: str) -> go.Figure:
    """Heatmap of one well metric in the plate's true geometry (empty positions stay blank).

    Parameters
    ----------
    wells : DataFrame
        Per-well table with ``Metadata_Row``/``Metadata_Col`` (1-based) and ``metric``.
    plate_format : int
        96, 384 or 1536 wells.
    metric : str
        One of ``METRIC_LABELS``.
    """
    n_rows, n_cols = plate_shape(plate_format)
    z = np.full((n_rows, n_cols), np.nan)
    hover = np.full((n_rows, n_cols), "", dtype=object)
    for rec in wells.to_dict("records"):
        r, c = int(rec[ROW]) - 1, int(rec[COL]) - 1
        value = rec.get(metric)
        z[r, c] = np.nan if value is None or pd.isna(value) else float(value)
        dose = rec.get(DOSE)
        dose_txt = "" if dose is None or pd.isna(dose) else f"{dose:g} uM"
        hover[r, c] = (
            f"<b>{rec[WELL]}</b><br>compound: {rec.get(COMPOUND) or '-'}<br>dose: {dose_txt or '-'}"
            f"<br>role: {rec.get(ROLE) or '-'}<br>{METRIC_LABELS[metric]}: {_fmt(metric, value)}"
        )
    for r in range(n_rows):
        for c in range(n_cols):
            if not hover[r, c]:
                hover[r, c] = f"<b>{format_well(r + 1, c + 1)}</b><br>not imaged"
    heat = dict(colorscale="Viridis", zmin=0.0, zmax=1.0, colorbar=dict(title=METRIC_LABELS[metric]))
    if metric == CALLED_CLASS:
        heat = dict(
            colorscale="RdYlGn_r", zmin=-0.5, zmax=len(CLASS_NAMES) - 0.5,
            colorbar=dict(title="Called class", tickvals=list(range(len(CLASS_NAMES))),
                          ticktext=list(CLASS_NAMES)),
        )
    elif metric == RESCUE_PCT:
        heat = dict(colorscale="RdBu", zmid=50.0, colorbar=dict(title="Rescue %"))
    elif metric in (P_CONTROL_SD, N_CROPS):
        heat = dict(colorscale="Viridis", colorbar=dict(title=METRIC_LABELS[metric]))
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"{c:02d}" for c in range(1, n_cols + 1)],
        y=[row_letters(r) for r in range(1, n_rows + 1)],
        text=hover, hovertemplate="%{text}<extra></extra>", xgap=2, ygap=2, **heat,
    ))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain", type="category")
    fig.update_xaxes(side="top", type="category")
    fig.update_layout(
        plot_bgcolor="#e8e8e8", margin=dict(l=10, r=10, t=30, b=10),
        height=max(320, 28 * n_rows + 80) if plate_format < 1536 else 720,
    )
    return fig


def _fmt(metric: str, value: object) -> str:
    if value is None or pd.isna(value):
        return "-"
    if metric == CALLED_CLASS:
        return CLASS_NAMES[int(value)]
    if metric in (N_CROPS,):
        return f"{int(value)}"
    if metric == RESCUE_PCT:
        return f"{float(value):.1f} %"
    return f"{float(value):.3f}"


def well_from_selection(event: object) -> str | None:
    """The well a user clicked on the heatmap (``st.plotly_chart(on_select=...)``), if any."""
    points = getattr(getattr(event, "selection", None), "points", None) or []
    for point in points:
        x, y = point.get("x"), point.get("y")
        if x is not None and y is not None:
            return f"{y}{int(x):02d}"
    return None


# --- thumbnails ---------------------------------------------------------------------------

def composite_rgb(field: np.ndarray, show: dict[str, bool]) -> np.ndarray:
    """Channel-composited RGB thumbnail of one field.

    Parameters
    ----------
    field : ndarray
        (H, W, 3) uint8 or uint16, last axis in ``CHANNELS`` order.
    show : dict
        Channel role -> whether to draw it.

    Returns
    -------
    ndarray
        (H, W, 3) uint8: each shown channel stretched to its 99.5th percentile and painted in
        ``CHANNEL_COLOURS``.
    """
    data = field.astype(np.float32)
    rgb = np.zeros(field.shape[:2] + (3,), dtype=np.float32)
    for k, role in enumerate(CHANNELS):
        if not show.get(role, True):
            continue
        channel = data[..., k]
        top = float(np.percentile(channel, 99.5))
        if top <= 0:
            continue
        rgb += np.clip(channel / top, 0.0, 1.0)[..., None] * np.asarray(CHANNEL_COLOURS[role])
    return (np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def channel_toggles(key_prefix: str) -> dict[str, bool]:
    """One checkbox per channel role, side by side; returns role -> shown."""
    cols = st.columns(len(CHANNELS))
    names = {"nucleus": "Nucleus (blue)", "neuron": "Neuron (green)", "microglia": "Microglia (magenta)"}
    return {
        role: col.checkbox(names[role], value=True, key=f"{key_prefix}_{role}")
        for role, col in zip(CHANNELS, cols)
    }


# --- tables and downloads -----------------------------------------------------------------

def table_with_download(df: pd.DataFrame, *, file_name: str, key: str) -> None:
    """A sortable table plus a CSV download of exactly what it shows."""
    st.dataframe(df, hide_index=True, width="stretch", key=f"{key}_table")
    st.download_button(
        "Download CSV", df.to_csv(index=False).encode(), file_name=file_name, mime="text/csv",
        key=f"{key}_csv",
    )


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def role_colour_map() -> dict[str, str]:
    return {role: ROLE_COLOURS[role] for role in ROLES}
