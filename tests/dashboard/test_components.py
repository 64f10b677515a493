"""Display helpers and small flows, on hand-made inputs (no app run)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from dashboard import components, flows
from neurorg_core.schema import COL, COMPOUND, DOSE, P_CONTROL, ROLE, ROW, WELL
from neurorg_core.wells import parse_well


def _wells(names: list[str]) -> pd.DataFrame:
    rc = [parse_well(w) for w in names]
    return pd.DataFrame({WELL: names, ROW: [r for r, _ in rc], COL: [c for _, c in rc],
                         COMPOUND: "", DOSE: np.nan, ROLE: "control", P_CONTROL: 0.5})


@pytest.mark.parametrize(("n_wells", "shape", "well", "pos"),
                         [(96, (8, 12), "H12", (7, 11)), (384, (16, 24), "P24", (15, 23)),
                          (1536, (32, 48), "AF48", (31, 47))])
def test_heatmap_has_the_true_plate_geometry(n_wells: int, shape: tuple[int, int], well: str,
                                             pos: tuple[int, int]) -> None:
    fig = components.plate_heatmap(_wells(["B02", well]), n_wells, P_CONTROL)
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == shape
    assert np.isfinite(z).sum() == 2 and z[pos] == 0.5 and z[1, 1] == 0.5
    assert list(fig.data[0].y)[-1] == well.rstrip("0123456789")  # last row letter(s)
    # The clickable layer holds exactly the imaged wells.
    assert list(zip(fig.data[1].y, fig.data[1].x)) == [("B", "02"), (well.rstrip("0123456789"), well[-2:])]


def test_well_from_selection_reads_the_clicked_point() -> None:
    event = SimpleNamespace(selection=SimpleNamespace(points=[{"x": "05", "y": "D", "curve_number": 1}]))
    assert components.well_from_selection(event) == "D05"
    assert components.well_from_selection(SimpleNamespace(selection=SimpleNamespace(points=[]))) is None
    assert components.well_from_selection(None) is None


def test_composite_colours_and_channel_toggles() -> None:
    field = np.zeros((4, 4, 3), np.uint16)
    field[0, 0, 0] = 1000   # nucleus
    field[1, 1, 1] = 1000   # neuron
    field[2, 2, 2] = 1000   # microglia
    rgb = components.composite_rgb(field, {"nucleus": True, "neuron": True, "microglia": True})
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 4, 3)
    assert rgb[0, 0, 2] == 255 and rgb[0, 0, 0] == 0 and rgb[0, 0, 1] < 128  # nucleus: blue
    assert tuple(rgb[1, 1]) == (0, 255, 0)                    # neuron: green
    assert rgb[2, 2, 0] == 255 and rgb[2, 2, 2] == 255 and rgb[2, 2, 1] == 0  # microglia: magenta
    off = components.composite_rgb(field, {"nucleus": False, "neuron": True, "microglia": False})
    assert off[0, 0].sum() == 0 and off[2, 2].sum() == 0 and tuple(off[1, 1]) == (0, 255, 0)


def test_plate_summary_table_is_readable() -> None:
    summary = {"layout": "operetta", "plate_format": 384, "n_wells": 2, "wells": ["B02", "C03"],
               "fields_per_well": {"B02": 4, "C03": 3}, "n_fields": 7, "channel_ids": ["ch1", "ch2", "ch3"],
               "channel_map": {"nucleus": "ch1", "neuron": "ch2", "microglia": "ch3"},
               "dtype": "uint16", "field_shape": [1080, 1080]}
    table = dict(components.plate_summary_table(summary).to_numpy().tolist())
    assert table["Plate format"] == "384 wells" and table["Wells imaged"] == "2 (B02 .. C03)"
    assert table["Fields per well"] == "3, 4" and table["Field size (px)"] == "1080 x 1080"


def test_demo_recipe_follows_the_model_card_and_env(tiny_models, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from neurorg_core.model import load_bundle

    bundle = load_bundle(tiny_models / "ensemble")
    monkeypatch.delenv("NEURORG_DEMO_FIELDS", raising=False)
    monkeypatch.delenv("NEURORG_DEMO_SIZE", raising=False)
    plain = flows.demo_recipe(bundle)
    assert (plain["n_fields"], plain["size"]) == (4, 256)
    carded = replace(bundle, card={**bundle.card, "demo_recipe": {
        "n_fields": 2, "field_size": 128, "cell_severity_sd": 0.05, "well_severity_sd": 0.01}})
    recipe = flows.demo_recipe(carded)
    assert (recipe["n_fields"], recipe["size"]) == (2, 128)
    assert recipe["params"].cell_severity_sd == 0.05 and recipe["params"].well_severity_sd == 0.01
    monkeypatch.setenv("NEURORG_DEMO_SIZE", "64")
    assert flows.demo_recipe(carded)["size"] == 64


def test_campaign_qc_chart_draws_ssmd_from_zero() -> None:
    """Two good plates with SSMD 16.7 and 18.9: an axis fitted to the data alone drew the first
    point at the bottom of the chart, as if that plate's SSMD were near 0."""
    from dashboard.campaign_charts import plate_qc_figure
    from neurorg_core.schema import MODEL_FIT, PLATE, QC_PASS, SSMD, Z_PRIME

    plates = pd.DataFrame({PLATE: ["p1", "p2"], Z_PRIME: [0.76, 0.80], SSMD: [16.7, 18.9],
                           QC_PASS: [True, True], MODEL_FIT: ["ok", "ok"]})
    fig = plate_qc_figure(plates)
    assert fig.layout.yaxis2.rangemode == "tozero"
    assert fig.layout.yaxis2.title.text == "SSMD"


def test_a_long_no_ec50_reason_is_cut_at_a_word_and_marked() -> None:
    """The panel title of a compound without an EC50 ended mid-word ("... better than a f")."""
    from neurorg_core.schema import CONVERGED, FIT_MESSAGE

    why = "flat response: no 4PL is better than a flat line (F-test p = 0.31); inactive"
    fits = pd.DataFrame({COMPOUND: ["CPD-004"], CONVERGED: [False], FIT_MESSAGE: [why]})
    title = components._fit_title(fits, "CPD-004")
    shown = title.split("<sub>")[1].removesuffix("</sub>")
    assert shown.startswith("no EC50: flat response: no 4PL is better than a")
    assert shown.endswith("...") and not shown.endswith(" ...")
    reason = shown.removeprefix("no EC50: ").removesuffix("...")
    assert why.startswith(reason) and why[len(reason)] == " "  # cut between words
    short = pd.DataFrame({COMPOUND: ["C"], CONVERGED: [False], FIT_MESSAGE: ["too few doses: 3 distinct"]})
    assert components._fit_title(short, "C").endswith("no EC50: too few doses: 3 distinct</sub>")
