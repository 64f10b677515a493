"""Treatments: the hits at a glance, dose-response on the run's readout with fitted 4PL and EC50 per
compound, the readout per dose against the control and disease bands, and the treatment-vs-disease
table (hit, rescue %, p, q)."""

from __future__ import annotations

import streamlit as st

from dashboard import components
from neurorg_core.schema import READOUT_LABELS

st.title("Treatments")
res = components.plate_page_results("treatments")
if res.treatments.empty:
    st.info("No treatment statistics for this plate: "
            + components.plain(res.problems.get("treatments", "it has no treatment wells (role 'treatment').")))
    st.stop()

label = READOUT_LABELS[res.readout]
st.metric("Hits (compound x dose)", f"{res.n_hits} of {len(res.treatments)}",
          help=f"{res.hit_rule.describe()}, on the {label} (NEURORG_HIT_RESCUE_PCT, NEURORG_HIT_FDR)")
if res.hits_provisional:
    st.warning(f"**Hits are provisional**: {res.hits_provisional}.")
components.hits_table_with_download(res.treatments, file_name=f"{res.plate}_treatments.csv", key="treatments")
st.caption(f"Rescue % = 100 x (mean - disease mean) / (control mean - disease mean) of the {label}. "
           "p: Welch's t-test and Mann-Whitney U against the disease wells; q: Benjamini-Hochberg across "
           "treatments. Hit rows are highlighted.")

st.subheader("Dose-response (4-parameter logistic)")
st.caption(f"Fitted on each well's {label}. The inflammation score (expected class, sum of class x "
           "probability) moves with the phenotype over the whole range; P(control) only rises once wells "
           "are almost fully rescued, so rescue %, hits and EC50 read from it fall short.")
if "fits" in res.problems:
    st.warning(f"Dose-response fits could not be made: {components.plain(res.problems['fits'])}")
else:
    st.plotly_chart(components.dose_response_figure(res.wells, res.curves, res.fits, res.readout_column),
                    key="dose_response")
    components.table_with_download(components.fit_table(res.fits), file_name=f"{res.plate}_ec50.csv",
                                   key="fits")

st.subheader(f"{label[0].upper() + label[1:]} per dose, with the control and disease bands")
st.plotly_chart(components.dose_strip(res.wells, res.readout_column), key="dose_strip")
