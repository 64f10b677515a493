"""Shared display helpers: plate picker, SYNTHETIC banner, heatmap, thumbnails, tables, charts.

Size (~690 lines): many small display helpers shared by several pages (heatmap, charts, tables,
banners); each is short, and splitting them by page would repeat the shared ones.

Every helper here turns a finished table into something on screen; none of them computes a
statistic (that is the core's job, reached through ``dashboard.resources``).
"""

from __future__ import annotations

import html
import io
import re
import string
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from neurorg_core.errors import NeuroRGError
from neurorg_core.fitcheck import ModelFit
from neurorg_core import stats
from neurorg_core.stats import PlateQC
from neurorg_core.schema import (
    BUNDLE_ARCH,
    BUNDLE_GEOMETRY,
    BUNDLE_INPUT,
    BUNDLE_KIND,
    BUNDLE_MEMBERS,
    BUNDLE_ORIGIN,
    BUNDLE_PATH,
    BUNDLE_PROBLEM,
    BUNDLE_TRAINING,
    BUNDLE_VAL_ACC,
    BUNDLE_WELL_CALL,
    CALLED_CLASS,
    CHANNEL_P_CONTROL,
    CHANNELS,
    CLASS_NAMES,
    COL,
    COMPOUND,
    CONVERGED,
    DOSE,
    EC50,
    EC50_CI_HIGH,
    EC50_CI_LOW,
    FIT_MESSAGE,
    HILL,
    HIT,
    INFLAMMATION_SCORE,
    MODEL_ID,
    N_DOSES,
    N_WELLS,
    N_CROPS,
    P_CONTROL,
    P_CONTROL_SD,
    Q_WELCH,
    READOUT_LABELS,
    RESCUE_PCT,
    ROLE,
    ROW,
    VOTE_COLUMNS,
    WELL,
)
from neurorg_core.wells import format_well, plate_shape, row_letters

METRIC_LABELS = {
    P_CONTROL: "P(control)",
    CALLED_CLASS: "Called class",
    INFLAMMATION_SCORE: "Inflammation score (0 = control .. 5 = 20 uM)",
    RESCUE_PCT: "Rescue %",
    P_CONTROL_SD: "Ensemble disagreement (SD of P(control))",
    N_CROPS: "Crops scored",
}
"""Heatmap metrics, in menu order, with the words shown for them."""

COMPOUND_COLOURS = ("#1f77b4", "#e7298a", "#a6761d", "#17becf", "#666666", "#e6ab02")
"""Per-compound colours (name order), chosen apart from the role colours so that no compound's
boxes look like the control or disease wells."""

ROLE_COLOURS = {"control": "#1b9e77", "disease": "#d95f02", "treatment": "#7570b3", "empty": "#999999"}

CHANNEL_COLOURS = {"nucleus": (0.0, 0.35, 1.0), "neuron": (0.0, 1.0, 0.0), "microglia": (1.0, 0.0, 1.0)}
"""Display colour (R, G, B weights) of each channel role: nucleus blue, neuron green, microglia magenta."""

PLATE_KEY = "plate"
"""Session-state key of the user's selected plate (a choice, so it lives in session_state)."""


# --- names users supply, shown as plain text -------------------------------------------------

_MARKDOWN_ESCAPES = str.maketrans({c: "\\" + c for c in string.punctuation})
WORD_JOINER = "\u2060"
"""Invisible, zero-width, no line break: put where a bare web address or e-mail would begin."""
_AUTOLINK_STARTS = re.compile(r"(?<=:)(?=//)|(?<=www)(?=\.)|(?<=@)", re.IGNORECASE)


def plain(text: object) -> str:
    """``text`` for Streamlit's Markdown (``st.markdown``, ``st.error``, widget labels, ...) shown
    literally, so a plate, compound or file name such as ``[x](http://evil)``, ``<img ...>``,
    ``**bold**`` or ``:red[x]`` is neither a link, HTML nor formatting.

    Every ASCII punctuation character is backslash-escaped (CommonMark allows that for all of
    them). Streamlit also turns bare ``http://...``, ``www....`` and e-mail addresses into links
    after escapes are read, so an invisible word joiner (U+2060) goes after ``:`` in ``://``,
    after ``www`` before ``.`` and after ``@``: the name looks the same but is no link (copied
    from the page, it carries that invisible character)."""
    return _AUTOLINK_STARTS.sub(WORD_JOINER, str(text)).translate(_MARKDOWN_ESCAPES)


def plot_text(text: object) -> str:
    """``text`` for Plotly's titles, hover labels, legends and ticks shown literally (Plotly reads
    a few HTML tags there, links included; entities are shown as the character)."""
    return html.escape(str(text), quote=False)


# --- navigation state: the selected plate, mirrored in the URL -----------------------------

def stored_plates() -> list[str]:
    """Plates in the result store; if the store cannot be opened (e.g. the DuckDB file is held by
    another process), say so in plain words and stop the page."""
    from dashboard import resources

    try:
        return resources.plate_names()
    except NeuroRGError as exc:
        st.error(f"The result store cannot be opened: {plain(exc)}")
        st.stop()


def plate_page_results(page: str):
    """The header every per-plate page shares: pick the plate (mirrored in the URL), read its
    results from the store, say whether it is synthetic. Stops the page with ``st.error`` if the
    plate cannot be read. Returns ``results.PlateResults`` (through resources)."""
    from dashboard import resources

    return plate_results_or_stop(pick_plate(stored_plates(), page=page, default=resources.DEMO_PLATE))


def plate_results_or_stop(plate: str):
    """A stored plate's results with its banners (synthetic data or model, the model-fit verdict,
    the readout); ``st.error`` and stop if unreadable."""
    from dashboard import resources

    try:
        res = resources.plate_results(plate)
    except NeuroRGError as exc:
        st.error(plain(exc))
        st.stop()
    synthetic_banner(res.synthetic_plate, res.synthetic_model)
    model_fit_banner(res.model_fit)
    st.caption(f"Readout for rescue %, hits, QC and EC50: **{READOUT_LABELS[res.readout]}** "
               "(chosen when the plate was scored)")
    return res


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
        st.warning(f"The link names plate “{plain(wanted)}”, which is not in the result store.")
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


def plate_choice(names: list[str], key: str) -> str:
    """A plate selectbox in a page's body (key ``key``) that starts on the plate chosen on the
    other pages and, when changed, becomes that choice (``PLATE_KEY``)."""
    if st.session_state.get(PLATE_KEY) in names:
        st.session_state[key] = st.session_state[PLATE_KEY]
    return st.selectbox("Plate", names, key=key, on_change=_remember_plate, args=(key,))


def _remember_plate(key: str) -> None:
    st.session_state[PLATE_KEY] = st.session_state[key]


KEPT_CHOICES = (
    # Upload & score: the plate being set up and how it is to be scored
    "server_images", "server_platemap", *(f"role_{role}" for role in CHANNELS), "map_plate", "plate_name",
    "model_path", "with_channels", "pixel_size", "bit_depth", "readout", "backend",
    # Plate heatmap
    "metric", "well", *(f"show_{role}" for role in CHANNELS),
    # Library, Campaign
    "export_table", "campaign_id", "campaign_export_table",
)
"""Widget keys whose values are the user's choices, kept while other pages are shown."""


def keep_choices() -> None:
    """Keep the user's choices (``KEPT_CHOICES``) while another page is shown.

    Streamlit drops the value of every widget a run does not draw, i.e. each page's widgets as
    soon as another page runs: channel roles corrected on Upload & score would silently be the
    detected ones again after a look at the Overview. Writing a value back through the Session
    State API makes it the user's, which Streamlit keeps (its documented way to keep widget
    values across pages). Run at the top of every page."""
    for key in KEPT_CHOICES:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def forget(*keys: str) -> None:
    """Drop earlier choices (e.g. channel roles of a previous upload) so widgets start afresh."""
    for key in keys:
        st.session_state.pop(key, None)


def set_link(page: str, plate: str | None) -> None:
    """Write the page (and plate) into the URL so the address bar is a shareable link."""
    if st.query_params.get("page") != page:
        st.query_params["page"] = page
    if plate is not None and st.query_params.get("plate") != plate:
        st.query_params["plate"] = plate


def synthetic_banner(is_synthetic: bool, synthetic_model: bool = False) -> None:
    """Label a page that shows synthetic data or a synthetic model's scores, on every such page."""
    if is_synthetic:
        st.warning(
            "**SYNTHETIC** plate: rendered by `neurorg_core.synth` with known ground truth, "
            "not real cells. Numbers describe the synthetic assay.",
            icon=":material/science:",
        )
    elif synthetic_model:
        st.warning(
            "Scored with the **SYNTHETIC demo model**: it was trained on the synthetic assay, not on "
            "real cells, so its calls on real images are a demonstration, not a result. Train your own "
            "ensemble on your plates (`python -m neurorg_core train`).",
            icon=":material/science:",
        )


def model_fit_banner(fit: ModelFit) -> None:
    """The run's model-fit verdict: does the plate look like the model's reference plates?"""
    if fit.verdict == "POOR":
        st.error("**Model fit: POOR.** The model sees this plate unlike the plates it was validated on, "
                 "so its calls and every number below may be wrong:\n"
                 + "\n".join(f"- {r}" for r in fit.reasons), icon=":material/warning:")
    elif fit.verdict == "unchecked":
        st.info(f"Model fit not checked: {fit.note}")
    else:
        st.caption(f"Model fit: **ok** ({sum(c.passed is True for c in fit.checks)} checks passed)")


# --- progress -----------------------------------------------------------------------------

def progress_callback(label: str) -> Callable[[int, int], None]:
    """A ``progress(done_crops, total_crops)`` callback drawing a bar with the time left."""
    bar = st.progress(0.0, text=f"{label}: starting")
    start = time.monotonic()

    def update(done: int, total: int) -> None:
        frac = done / total if total else 1.0
        elapsed = time.monotonic() - start
        left = elapsed / frac - elapsed if frac > 0 else float("nan")
        if done == 0:
            text = (f"{label}: 0 / {total} crops (loading the model; its first use converts it for "
                    "fast inference, about a minute)")
        else:
            eta = f", about {left:.0f} s left" if np.isfinite(left) and done < total else ""
            text = f"{label}: {done} / {total} crops{eta}"
        bar.progress(min(frac, 1.0), text=text)

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
            f"<b>{rec[WELL]}</b><br>compound: {plot_text(rec.get(COMPOUND) or '-')}<br>dose: {dose_txt or '-'}"
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
    elif metric == INFLAMMATION_SCORE:
        heat = dict(colorscale="RdYlGn_r", zmin=0.0, zmax=len(CLASS_NAMES) - 1.0,
                    colorbar=dict(title="Inflammation score"))
    elif metric == RESCUE_PCT:
        heat = dict(colorscale="RdBu", zmid=50.0, colorbar=dict(title="Rescue %"))
    elif metric in (P_CONTROL_SD, N_CROPS):
        heat = dict(colorscale="Viridis", colorbar=dict(title=METRIC_LABELS[metric]))
    x_labels = [f"{c:02d}" for c in range(1, n_cols + 1)]
    y_labels = [row_letters(r) for r in range(1, n_rows + 1)]
    imaged = wells[[ROW, COL]].astype(int).to_numpy() - 1
    fig = go.Figure([
        go.Heatmap(z=z, x=x_labels, y=y_labels, text=hover, hoverinfo="skip", xgap=2, ygap=2, **heat),
        # Invisible markers on the imaged wells carry the hover text and make wells clickable
        # (Streamlit's chart selection works on points, not on heatmap cells).
        go.Scatter(
            x=[x_labels[c] for c in imaged[:, 1]], y=[y_labels[r] for r in imaged[:, 0]],
            text=[hover[r, c] for r, c in imaged], hovertemplate="%{text}<extra></extra>",
            mode="markers", marker=dict(symbol="square", size=max(6, 300 // n_cols), opacity=0),
            showlegend=False, name="wells",
        ),
    ])
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


def hits_table(treatments: pd.DataFrame) -> pd.DataFrame:
    """The treatment table with the hit call first, then compound, dose and rescue %."""
    first = [c for c in (HIT, COMPOUND, DOSE, RESCUE_PCT, Q_WELCH) if c in treatments.columns]
    return treatments[first + [c for c in treatments.columns if c not in first]]


def hits_table_with_download(treatments: pd.DataFrame, *, file_name: str, key: str) -> None:
    """The treatment table, hit rows highlighted, plus a CSV download of the same table."""
    table = hits_table(treatments)
    styled = table.style.apply(
        lambda row: ["background-color: #fde68a; font-weight: 600" if row.get(HIT) else ""] * len(row),
        axis=1)
    st.dataframe(styled, hide_index=True, width="stretch", key=f"{key}_table")
    st.download_button("Download CSV", table.to_csv(index=False).encode(), file_name=file_name,
                       mime="text/csv", key=f"{key}_csv")


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


# --- summaries ----------------------------------------------------------------------------

QC_ITEMS = (
    ("z_prime", "Z'", "{:.2f}", "1 - 3(sd_c + sd_d)/|mean_c - mean_d|; > 0.5 excellent"),
    ("ssmd", "SSMD", "{:.1f}", "(mean_c - mean_d)/sqrt(sd_c^2 + sd_d^2), signed so that controls on "
                               "the control side are positive"),
    ("cv_control_pct", "CV control", "{:.1f} %", "100 sd/mean of the control wells"),
    ("cv_disease_pct", "CV disease", "{:.1f} %", "100 sd/mean of the disease wells"),
)


def qc_metrics(qc: PlateQC | None, problem: str | None, readout: str) -> None:
    """Plate QC (Z', SSMD, CV) on the run's readout as metrics, or why it could not be computed."""
    st.markdown(f"**Plate QC** (control vs disease wells, on the {READOUT_LABELS[readout]})")
    if qc is None:
        st.info(f"Plate QC not available: {plain(problem or 'no control and disease wells')}")
        return
    cols = st.columns(2)
    for k, (key, label, fmt, help_text) in enumerate(QC_ITEMS):
        value = getattr(qc, key)
        text = "-" if value is None or not np.isfinite(value) else fmt.format(value)
        cols[k % 2].metric(label, text, help=help_text)
    st.caption(f"n = {qc.n_control} control, {qc.n_disease} disease wells")
    if qc.edge_flag:
        st.warning(f"Possible edge effect: {plain(qc.edge_note)}")


def well_summary(wells: pd.DataFrame, well: str) -> pd.DataFrame:
    """The chosen well's row with its metadata and scores, for display."""
    cols = [c for c in (WELL, COMPOUND, DOSE, ROLE, P_CONTROL, INFLAMMATION_SCORE, CALLED_CLASS, RESCUE_PCT,
                        P_CONTROL_SD,
                        N_CROPS, *VOTE_COLUMNS) if c in wells.columns]
    return wells.loc[wells[WELL] == well, cols]


def plate_summary_table(summary: dict) -> pd.DataFrame:
    """``Plate.summary()`` as a two-column table a person can read."""
    per_well = summary["fields_per_well"]
    counts = sorted(set(per_well.values()))
    wells = summary["wells"]
    rows = [
        ("Layout", summary["layout"]),
        ("Plate format", f"{summary['plate_format']} wells"),
        ("Wells imaged", f"{summary['n_wells']} ({wells[0]} .. {wells[-1]})" if wells else "0"),
        ("Fields per well", ", ".join(str(c) for c in counts)),
        ("Fields in all", str(summary["n_fields"])),
        ("Channels found", ", ".join(summary["channel_ids"])),
        ("Channel roles", ", ".join(f"{k}={v}" for k, v in summary["channel_map"].items())),
        ("Bit depth", summary["dtype"]),
        ("Field size (px)", " x ".join(str(v) for v in summary["field_shape"])),
        ("Pixel size", f"{summary['pixel_size_um']:g} um ({summary['pixel_size_source']})"
         if summary.get("pixel_size_um") else "not in the files"),
    ]
    return pd.DataFrame(rows, columns=["Item", "Value"])


# --- model bundles (Upload & score) --------------------------------------------------------

ADDED_BUNDLES_KEY = "added_bundles"
"""Session-state key of the bundle folders the user added by path (their choice, this session)."""

BUNDLE_LABELS = {BUNDLE_KIND: "Kind", BUNDLE_ARCH: "Architecture", BUNDLE_INPUT: "Input (px)",
                 BUNDLE_MEMBERS: "Members", BUNDLE_GEOMETRY: "Crop geometry", BUNDLE_WELL_CALL: "Well call",
                 BUNDLE_TRAINING: "Training plates", BUNDLE_VAL_ACC: "Validation accuracy",
                 BUNDLE_ORIGIN: "Where it came from", BUNDLE_PATH: "Folder", MODEL_ID: "Model id",
                 BUNDLE_PROBLEM: "Problem"}


def added_bundles() -> list[str]:
    """Bundle folders added by path in this session."""
    return list(st.session_state.get(ADDED_BUNDLES_KEY, []))


def add_bundle(text: str) -> str:
    """Add a bundle folder typed by the user (the server-path rules of ``flows.resolve_server_path``
    apply; the bundle is loaded and validated), select it, and return its folder.

    Raises
    ------
    NeuroRGError
        No such folder, or no valid bundle in it (the message names the file).
    """
    from dashboard import flows, resources

    bundle = resources.bundle_at(flows.resolve_server_path(text))
    folder = str(bundle.path.resolve())
    if folder not in added_bundles():
        st.session_state[ADDED_BUNDLES_KEY] = [*added_bundles(), folder]
    st.session_state["model_path"] = folder   # the selectbox below starts on it
    return folder


def bundle_label(bundles: pd.DataFrame) -> Callable[[str], str]:
    """A selectbox label for a bundle folder: kind, architecture, input and members."""
    rows = bundles.set_index(BUNDLE_PATH)

    def label(path: str) -> str:
        if path not in rows.index:
            return path
        r = rows.loc[path]
        return (f"{Path(path).name}: {r[BUNDLE_ARCH]}, {r[BUNDLE_INPUT]} px, {r[BUNDLE_MEMBERS]} member(s), "
                f"{r[BUNDLE_GEOMETRY]} ({path})")
    return label


def scoring_models(bundles: pd.DataFrame) -> list[str]:
    """The folders of the listed bundles a plate can be scored with: ensembles whose card reads."""
    ok = (bundles[BUNDLE_KIND] == "ensemble") & (bundles[BUNDLE_PROBLEM] == "")
    return bundles.loc[ok, BUNDLE_PATH].tolist()


def model_select(bundles: pd.DataFrame, default: str) -> str:
    """The model selectbox (key ``model_path``) over ``scoring_models``; starts on ``default``
    (or the first) and keeps the user's choice while it stays listed."""
    usable = scoring_models(bundles)
    if st.session_state.get("model_path") not in usable:
        st.session_state["model_path"] = default if default in usable else usable[0]
    return st.selectbox("Model", usable, format_func=bundle_label(bundles), key="model_path")


def bundle_table(bundles: pd.DataFrame) -> pd.DataFrame:
    """The installed bundles' card summaries with words for column names."""
    return bundles.rename(columns=BUNDLE_LABELS)


# --- charts -------------------------------------------------------------------------------

def _band_shapes(bands: dict[str, tuple[float, float]], n_panels: int = 1) -> tuple[list[dict], list[dict]]:
    """Control and disease bands (mean +/- SD) across each panel: (shapes, labels)."""
    shapes, notes = [], []
    for role, (mean, sd) in bands.items():
        if not (np.isfinite(mean) and np.isfinite(sd)):
            continue
        for k in range(1, n_panels + 1):
            axis = "" if k == 1 else str(k)
            common = dict(xref=f"x{axis} domain", yref=f"y{axis}", x0=0, x1=1, layer="below")
            shapes.append(dict(type="rect", y0=mean - sd, y1=mean + sd, fillcolor=ROLE_COLOURS[role],
                               opacity=0.15, line_width=0, **common))
            shapes.append(dict(type="line", y0=mean, y1=mean,
                               line=dict(color=ROLE_COLOURS[role], dash="dot"), **common))
        notes.append(dict(xref="x domain", yref="y", x=1, y=mean, xanchor="right", yanchor="bottom",
                          text=f"{role} mean +/- SD", showarrow=False,
                          font=dict(size=10, color=ROLE_COLOURS[role])))
    return shapes, notes


def _panels(titles: list[str], x_axis: dict, y_axis: dict, gap: float = 0.04) -> dict:
    """Layout of side-by-side panels sharing the y axis (one dict: plotly's ``make_subplots`` and
    per-panel updates are slow, and page switches should stay well under a second)."""
    n = max(1, len(titles))
    width = (1.0 - gap * (n - 1)) / n
    layout: dict = {"annotations": []}
    for k in range(n):
        axis = "" if k == 0 else str(k + 1)
        x0 = k * (width + gap)
        layout[f"xaxis{axis}"] = dict(domain=[x0, x0 + width], anchor=f"y{axis}", **x_axis)
        layout[f"yaxis{axis}"] = dict(anchor=f"x{axis}", **({} if k == 0 else {"matches": "y",
                                                                                  "showticklabels": False}),
                                      **(y_axis if k == 0 else {}))
        if k < len(titles):
            layout["annotations"].append(dict(text=titles[k], x=x0 + width / 2, y=1.0, xref="paper",
                                              yref="paper", xanchor="center", yanchor="bottom",
                                              showarrow=False))
    return layout


def dose_response_figure(wells: pd.DataFrame, curves: pd.DataFrame, fits: pd.DataFrame,
                         column: str) -> go.Figure:
    """The readout ``column`` of each treatment well against dose (log axis), the fitted 4PL per
    compound and its EC50, over the control/disease bands of the same readout."""
    label = METRIC_LABELS.get(column, column)
    treat = wells[wells[ROLE] == "treatment"]
    compounds = sorted(treat[COMPOUND].unique())
    data = []
    for k, cpd in enumerate(compounds, start=1):
        axes = dict(xaxis=f"x{'' if k == 1 else k}", yaxis=f"y{'' if k == 1 else k}")
        pts = treat[treat[COMPOUND] == cpd]
        data.append(dict(
            type="scatter", x=pts[DOSE].tolist(), y=pts[column].tolist(), mode="markers",
            name=plot_text(cpd),
            showlegend=False, text=pts[WELL].tolist(), marker=dict(color=ROLE_COLOURS["treatment"]),
            hovertemplate="%{text}: %{x:g} uM, " + label + " %{y:.2f}<extra></extra>", **axes,
        ))
        line = curves[curves[COMPOUND] == cpd]
        if not line.empty:
            data.append(dict(type="scatter", x=line[DOSE].tolist(), y=line[column].tolist(),
                             mode="lines", showlegend=False, name=f"{plot_text(cpd)} 4PL",
                             line=dict(color="black"), **axes))
    layout = _panels([_fit_title(fits, c) for c in compounds],
                     dict(type="log", title=dict(text="dose (uM)")),
                     dict(title=dict(text=label)))
    shapes, notes = _band_shapes(stats.role_bands(wells, column), max(1, len(compounds)))
    layout["annotations"] += notes
    layout.update(shapes=shapes, height=380, margin=dict(l=10, r=10, t=60, b=10))
    return go.Figure(data=data, layout=layout)


def _fit_title(fits: pd.DataFrame, compound: str) -> str:
    row = fits[fits[COMPOUND] == compound]
    if row.empty or not bool(row[CONVERGED].iloc[0]):
        why = "" if row.empty else str(row[FIT_MESSAGE].iloc[0])
        return f"{plot_text(compound)}<br><sub>no EC50: {plot_text(_shorten(why, 40))}</sub>"
    r = row.iloc[0]
    return f"{plot_text(compound)}<br><sub>EC50 {r[EC50]:.3g} uM [{r[EC50_CI_LOW]:.3g}, {r[EC50_CI_HIGH]:.3g}]</sub>"


def _shorten(text: str, limit: int) -> str:
    """``text`` up to ``limit`` characters, cut between words and ended with "..." when longer
    (the whole text is in the table beside the chart)."""
    if len(text) <= limit:
        return text
    cut = text[:limit + 1].rsplit(" ", 1)[0] if " " in text[:limit + 1] else text[:limit]
    return cut.rstrip(" ,;:") + "..."


def fit_table(fits: pd.DataFrame) -> pd.DataFrame:
    """The 4PL fits with the columns a person reads first."""
    first = [c for c in (COMPOUND, EC50, EC50_CI_LOW, EC50_CI_HIGH, HILL, N_WELLS, N_DOSES, CONVERGED,
                         FIT_MESSAGE) if c in fits.columns]
    return fits[first + [c for c in fits.columns if c not in first]]


def dose_strip(wells: pd.DataFrame, column: str = P_CONTROL) -> go.Figure:
    """Box + points of a well score per dose for each compound, beside the control and disease wells."""
    fig = go.Figure()
    for role in ("control", "disease"):
        grp = wells[wells[ROLE] == role]
        fig.add_trace(go.Box(x=[role] * len(grp), y=grp[column], name=role, boxpoints="all",
                             marker_color=ROLE_COLOURS[role], text=grp[WELL]))
    treat = wells[wells[ROLE] == "treatment"].sort_values([COMPOUND, DOSE])
    for k, cpd in enumerate(sorted(treat[COMPOUND].unique())):
        grp = treat[treat[COMPOUND] == cpd]
        labels = [f"{plot_text(cpd)} {d:.3g}" for d in grp[DOSE]]
        fig.add_trace(go.Box(x=labels, y=grp[column], name=plot_text(cpd), boxpoints="all",
                             text=grp[WELL],
                             marker_color=COMPOUND_COLOURS[k % len(COMPOUND_COLOURS)]))
    shapes, notes = _band_shapes(stats.role_bands(wells, column))
    fig.update_layout(height=420, yaxis_title=METRIC_LABELS.get(column, column),
                      xaxis_title="compound and dose (uM)",
                      margin=dict(l=10, r=10, t=30, b=10), shapes=shapes, annotations=notes)
    return fig


def channel_scatter(channels: pd.DataFrame, fits: dict) -> go.Figure:
    """Three panels: each single-channel model's P(control) (y) vs the 3-channel model's (x),
    coloured by role, with the least-squares line and r, p, n in the title."""
    titles = []
    for role in CHANNELS:
        f = fits.get(role)
        titles.append(f"{role}: r = {f['r']:.3f}, p = {f['p']:.2g}, n = {f['n']}" if f
                      else f"{role}: r undefined")
    fig = make_subplots(rows=1, cols=len(CHANNELS), subplot_titles=titles, shared_yaxes=True)
    for k, (role, column) in enumerate(zip(CHANNELS, CHANNEL_P_CONTROL), start=1):
        for well_role in ("empty", "treatment", "control", "disease"):  # reference wells on top
            grp = channels[channels[ROLE] == well_role]
            if grp.empty:
                continue
            fig.add_trace(go.Scatter(
                x=grp[P_CONTROL], y=grp[column], mode="markers", name=well_role,
                legendgroup=well_role, showlegend=k == 1, text=grp[WELL],
                marker=dict(color=ROLE_COLOURS[well_role], size=7),
                hovertemplate="%{text}: x %{x:.3f}, y %{y:.3f}<extra></extra>",
            ), row=1, col=k)
        f = fits.get(role)
        if f:
            xs = np.array([0.0, 1.0])
            fig.add_trace(go.Scatter(x=xs, y=f["intercept"] + f["slope"] * xs, mode="lines",
                                     line=dict(color="black"), showlegend=False,
                                     name=f"{role} fit"), row=1, col=k)
        fig.update_xaxes(title_text="P(control), 3-channel ensemble", range=[0, 1], row=1, col=k)
    fig.update_yaxes(title_text="P(control), single-channel model", range=[0, 1], row=1, col=1)
    fig.update_layout(height=420, margin=dict(l=10, r=10, t=60, b=10))
    return fig
