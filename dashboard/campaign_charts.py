"""Charts of the Campaign page. Each turns a finished campaign table (``neurorg_core.campaign_results``)
into a figure; none computes a statistic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.components import ROLE_COLOURS, plot_text
from neurorg_core.schema import (COMPOUND, CONVERGED, EC50, MODEL_FIT, PLATE, QC_PASS, RESCUE_PCT, ROLE, SSMD, Z_PRIME)


def plate_qc_figure(plates: pd.DataFrame) -> go.Figure:
    """Z' (bars, green when >= 0) and SSMD (points, right axis) per plate in acquisition order;
    plates whose model fit is POOR are marked."""
    names = [plot_text(n) for n in plates[PLATE]]
    colours = ["#1b9e77" if ok else "#d95f02" for ok in plates[QC_PASS]]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=plates[Z_PRIME], name="Z'", marker_color=colours,
                         text=[f"fit {plot_text(v)}" if v == "POOR" else "" for v in plates[MODEL_FIT]],
                         textposition="outside"))
    fig.add_trace(go.Scatter(x=names, y=plates[SSMD], name="SSMD", mode="markers+lines", yaxis="y2",
                             marker=dict(color="#333333", size=9)))
    fig.add_hline(y=0.5, line_dash="dot", line_color="#1b9e77", annotation_text="Z' 0.5")
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="plate (acquisition order)",
                      yaxis=dict(title="Z'"), yaxis2=dict(title="SSMD", overlaying="y", side="right", rangemode="tozero"),
                      legend=dict(orientation="h"))
    return fig


def hit_matrix_figure(matrix: pd.DataFrame) -> go.Figure:
    """Compound x plate: doses called hits on each plate (blank: not tested there)."""
    z = matrix.to_numpy(dtype=float)
    text = [["" if np.isnan(v) else f"{v:.0f}" for v in row] for row in z]
    fig = go.Figure(go.Heatmap(z=z, x=[plot_text(c) for c in matrix.columns],
                               y=[plot_text(i) for i in matrix.index], text=text, texttemplate="%{text}",
                               colorscale="YlOrRd", zmin=0, colorbar=dict(title="hit doses"),
                               hovertemplate="%{y} on %{x}: %{z} hit dose(s)<extra></extra>"))
    fig.update_layout(height=max(260, 40 * len(matrix) + 120), margin=dict(l=10, r=10, t=30, b=10),
                      xaxis_title="plate (acquisition order)", yaxis=dict(autorange="reversed"))
    return fig


def ec50_figure(fits: pd.DataFrame) -> go.Figure:
    """Each plate's EC50 per compound (log scale), one colour per plate."""
    ok = fits[fits[CONVERGED].astype(bool) & np.isfinite(fits[EC50].astype(float))] if len(fits) else fits
    fig = go.Figure()
    for plate, grp in ok.groupby(PLATE, sort=False):
        fig.add_trace(go.Scatter(x=[plot_text(c) for c in grp[COMPOUND]], y=grp[EC50], mode="markers",
                                 name=plot_text(plate), marker=dict(size=10)))
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=30, b=10), yaxis=dict(type="log", title="EC50 (uM)"),
                      xaxis_title="compound", legend=dict(title="plate"))
    return fig


def normalisation_figure(wells: pd.DataFrame, readout_column: str) -> go.Figure:
    """Control and disease wells per plate: the raw readout (left) and rescue % on the plate's own
    controls (right), so a batch effect and its removal are both visible."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("readout as scored", "rescue % on the plate's own controls"))
    for role in ("control", "disease"):
        grp = wells[wells[ROLE] == role]
        for col, column in ((1, readout_column), (2, RESCUE_PCT)):
            if column not in grp.columns:
                continue
            fig.add_trace(go.Box(x=[plot_text(p) for p in grp[PLATE]], y=grp[column], name=role,
                                 marker_color=ROLE_COLOURS[role], showlegend=col == 1, legendgroup=role),
                          row=1, col=col)
    fig.update_layout(height=380, boxmode="group", margin=dict(l=10, r=10, t=40, b=10))
    return fig
