"""Treatments: dose-response (expected class) with fitted 4PL and EC50 per compound, P(control) per dose against
the control and disease bands, and the treatment-vs-disease table (rescue %, p, q, hit)."""

from __future__ import annotations

import streamlit as st

from dashboard import components

st.title("Treatments")
res = components.plate_page_results("treatments")
if res.treatments.empty:
    st.info("No treatment statistics for this plate: "
            + components.plain(res.problems.get("treatments", "it has no treatment wells (role 'treatment').")))
    st.stop()

st.subheader("Dose-response (4-parameter logistic)")
st.caption("Fitted on each well's expected class (sum of class x probability: 0 = control, 5 = 20 uM "
           "disease), which moves with the phenotype over the whole range. P(control) only rises once "
           "wells are almost fully rescued, so an EC50 fitted to it would sit at too high a dose.")
if "fits" in res.problems:
    st.warning(f"Dose-response fits could not be made: {components.plain(res.problems['fits'])}")
else:
    st.plotly_chart(components.dose_response_figure(res.wells, res.curves, res.fits),
                    key="dose_response")
    components.table_with_download(components.fit_table(res.fits), file_name=f"{res.plate}_ec50.csv",
                                   key="fits")

st.subheader("P(control) per dose, with the control and disease bands")
st.plotly_chart(components.dose_strip(res.wells), key="dose_strip")

st.subheader("Each treatment against disease wells")
st.caption("Rescue % = 100 x (mean - disease mean) / (control mean - disease mean). p: Welch's t-test "
           "and Mann-Whitney U against the disease wells; q: Benjamini-Hochberg across treatments.")
components.table_with_download(res.treatments, file_name=f"{res.plate}_treatments.csv", key="treatments")
