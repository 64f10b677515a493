"""Every page runs without an exception (empty store, and a store with a scored plate), and shows
what it promises: SYNTHETIC labels, heatmap, QC, fits, channel panels, library, links."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard_fixtures import APP, TRUTH_PLATE, open_page, shown, store_truth_run
from dashboard import auth, resources

PAGES = ("overview", "upload", "plate", "treatments", "channels", "library")


def _charts(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def _array(value: object) -> np.ndarray:
    """A plotly JSON array (plain list, or plotly's typed-array ``{"dtype", "bdata", "shape"}``)."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        return flat.reshape([int(n) for n in str(value.get("shape", flat.size)).split(",")])
    return np.asarray(value, dtype=object)


def _titles(spec: dict) -> list[str]:
    return [a.get("text", "") for a in spec["layout"].get("annotations", [])]


def _frame_with(at: AppTest, column: str) -> pd.DataFrame:
    """The first table on the page that has ``column``."""
    return next(df.value for df in at.dataframe if column in df.value.columns)


def _synthetic_labelled(at: AppTest) -> bool:
    return any("SYNTHETIC" in w.value for w in at.warning)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs_on_an_empty_store(app_env: Path, page: str) -> None:
    at = open_page(page)
    assert not at.error
    # Each page says what is missing instead of failing.
    assert at.info, f"{page}: no hint shown on an empty store"


def test_overview_without_a_model_says_where_the_model_belongs(app_env: Path) -> None:
    at = open_page("overview")
    assert "no model is installed" in at.info[0].value
    assert str(app_env / "no_models") in at.info[0].value


@pytest.mark.parametrize("page", ["overview", "plate", "treatments", "channels", "library"])
def test_pages_with_a_scored_synthetic_plate_are_labelled_synthetic(truth_store: Path, page: str) -> None:
    at = open_page(page)
    assert not at.error, [e.value for e in at.error]
    assert _synthetic_labelled(at)


def test_plate_page_heatmap_geometry_hover_and_qc(truth_store: Path) -> None:
    at = open_page("plate")
    heat = _charts(at)[0]["data"][0]
    assert heat["type"] == "heatmap"
    z, text = _array(heat["z"]).astype(float), _array(heat["text"])
    # True 96-well geometry: 8 rows x 12 columns, positions without images left empty (NaN).
    assert z.shape == (8, 12) and text.shape == (8, 12)
    assert np.isnan(z[0, 11])  # A12 is not imaged on the synthetic screening plate
    assert z[0, 1] > 0.9  # A02 is a control well
    assert np.isfinite(z).sum() == 88
    assert "not imaged" in text[0, 11]
    a03 = text[0, 2]
    assert "A03" in a03 and "CPD-001" in a03 and "treatment" in a03 and "uM" in a03
    z_prime = next(m for m in at.metric if m.label == "Z'")
    assert float(z_prime.value) > 0.5  # truth-derived scores separate control from disease
    # The selected well's fields are shown as RGB thumbnails.
    assert at.selectbox(key="well").value == "A01"  # the first imaged well
    captions = [c for img in at.get("image") for c in img.captions]
    assert captions == ["A01 field 1"]


def test_plate_page_metric_switch_and_well_selection(truth_store: Path) -> None:
    at = open_page("plate")
    at.selectbox(key="metric").set_value("Called_class").run()
    heat = _charts(at)[0]["data"][0]
    assert heat["zmax"] == pytest.approx(5.5)
    assert heat["colorbar"]["ticktext"][0] == "0 uM"
    at.selectbox(key="well").set_value("D05").run()
    assert not at.exception
    row = _frame_with(at, "Vote_class0")
    assert list(row["Metadata_Well"]) == ["D05"]
    # Hiding two channels still renders the field.
    at.checkbox(key="show_nucleus").uncheck()
    at.checkbox(key="show_neuron").uncheck().run()
    assert not at.exception and len(at.get("image")) >= 1


def test_treatments_page_fits_bands_and_table(truth_store: Path) -> None:
    at = open_page("treatments")
    dose, strip = _charts(at)
    titles = " ".join(_titles(dose))
    for active in ("CPD-001", "CPD-002", "CPD-003"):
        assert active in titles
    assert "EC50" in titles and "no EC50" in titles  # the inactive compound is not given an EC50
    assert dose["layout"]["yaxis"]["title"]["text"].startswith("Inflammation score")  # the fitted readout
    assert any("control mean" in t for t in _titles(strip))
    compound_boxes = [t for t in strip["data"] if t["name"].startswith("CPD-")]
    role_colours = {t["marker"]["color"] for t in strip["data"] if t["name"] in ("control", "disease")}
    assert len(compound_boxes) == 4 and not {t["marker"]["color"] for t in compound_boxes} & role_colours
    table = _frame_with(at, "Q_welch")
    for col in ("Rescue_pct", "P_welch", "Q_welch", "Hit"):
        assert col in table.columns
    assert list(table.columns[:3]) == ["Hit", "Metadata_Compound", "Metadata_Dose_uM"]  # hits first
    assert table["Hit"].any() and not table.loc[table["Metadata_Compound"] == "CPD-004", "Hit"].any()
    hits = next(m for m in at.metric if m.label.startswith("Hits"))
    assert hits.value == f"{int(table['Hit'].sum())} of {len(table)}"
    assert not any("provisional" in w.value for w in at.warning)
    assert at.download_button(key="treatments_csv") is not None
    fits = _frame_with(at, "EC50_uM")
    assert fits["Converged"].sum() == 3


def test_channels_page_orders_the_channels(truth_store: Path) -> None:
    at = open_page("channels")
    titles = _titles(_charts(at)[0])
    r = {t.split(":")[0]: float(t.split("r = ")[1].split(",")[0]) for t in titles}
    assert r["microglia"] > r["neuron"] > abs(r["nucleus"])
    assert all("n = 88" in t for t in titles)


def test_shared_link_opens_the_named_page_and_plate(truth_store: Path, tiny_plate: Path) -> None:
    store_truth_run(truth_store / "store.duckdb", tiny_plate, name="second plate")
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update({"page": "treatments", "plate": "second plate"})
    at.run()
    assert not at.exception
    assert at.title[0].value == "Treatments"
    assert at.selectbox(key="plate_select").value == "second plate"
    assert at.query_params["plate"] == ["second plate"] or at.query_params["plate"] == "second plate"


def test_choosing_a_plate_updates_the_link(truth_store: Path, tiny_plate: Path) -> None:
    store_truth_run(truth_store / "store.duckdb", tiny_plate, name="second plate")
    at = open_page("plate")
    assert at.selectbox(key="plate_select").value == "second plate"  # plates sorted by name
    at.selectbox(key="plate_select").set_value(TRUTH_PLATE).run()
    assert _query(at, "plate") == TRUTH_PLATE and _query(at, "page") == "plate"
    # The choice is kept when moving to another page.
    at.switch_page("views/treatments.py").run()
    assert at.selectbox(key="plate_select").value == TRUTH_PLATE


def _query(at: AppTest, key: str) -> str:
    value = at.query_params[key]
    return value[0] if isinstance(value, list) else value


def test_library_lists_exports_and_deletes_after_confirmation(truth_store: Path) -> None:
    at = open_page("library")
    assert TRUTH_PLATE in list(_frame_with(at, "Layout")["Metadata_Plate"])
    runs = _frame_with(at, "Run_Id")
    assert list(runs["Model_Id"]) == ["ground-truth"] and "crops_per_well" in runs["Parameters"][0]
    assert at.button(key="delete_plate").disabled  # nothing is deleted without the confirmation
    at.checkbox(key="confirm_delete").check().run()
    at.button(key="delete_plate").click().run()
    assert not at.exception
    assert resources.store().list_plates().empty  # the app's own store (same process)


def test_library_open_navigates_to_the_plate(truth_store: Path) -> None:
    at = open_page("library")
    at.button(key="library_open").click().run()
    assert not at.exception
    assert at.title[0].value == "Plate heatmap"
    assert _query(at, "plate") == TRUTH_PLATE


def test_with_a_password_pages_stop_without_a_login_cookie(truth_store: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The pages' own check behind the server's gate: a session whose websocket carried no valid
    login cookie sees nothing (AppTest sends no cookies; the browser test logs in for real)."""
    monkeypatch.setenv("NEURORG_PASSWORD", "open sesame")
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update({"page": "plate", "plate": TRUTH_PLATE})
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["NeuroRG Screen"] and not at.get("plotly_chart")
    assert not at.selectbox  # no plate picker, no page content
    assert [i.value for i in at.info] == [auth.SESSION_MESSAGES["missing"]]


def test_password_from_streamlit_secrets(truth_store: Path) -> None:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.secrets["password"] = "from secrets"
    at.run()
    assert not at.get("plotly_chart") and [i.value for i in at.info] == [auth.SESSION_MESSAGES["missing"]]


CRAFTED = "[x](http://evil.example) <img src=x onerror=alert(1)> **bold** :red[x]"
"""A plate or compound name that would be a link, an image, bold and red text if read as Markdown."""


def _markdown_texts(at: AppTest) -> list[str]:
    """The Markdown source of every element that renders Markdown (text and widget labels)."""
    texts = [e.value for kind in ("title", "subheader", "markdown", "caption", "info", "warning",
                                  "error", "success") for e in getattr(at, kind)]
    return texts + [w.label for kind in ("checkbox", "button", "selectbox", "text_input")
                    for w in getattr(at, kind)]


def _assert_literal(texts: list[str]) -> None:
    assert any(CRAFTED in shown(t) for t in texts), "the crafted name is not shown"
    for text in texts:
        unescaped = re.sub(r"\\.", "", text)  # what Markdown would still read as syntax
        for syntax in ("](", "<img", "**bold", ":red["):
            assert syntax not in unescaped, text


def test_a_crafted_plate_name_is_shown_as_plain_text(truth_store: Path, tiny_plate: Path) -> None:
    store_truth_run(truth_store / "store.duckdb", tiny_plate, name=CRAFTED)
    at = open_page("overview")  # opens the first plate by name: the crafted one
    _assert_literal(_markdown_texts(at))
    assert shown(at.subheader[0].value) == f"Plate {CRAFTED}"
    at = open_page("library")
    at.selectbox(key="library_plate").set_value(CRAFTED).run()
    _assert_literal(_markdown_texts(at))
    assert shown(at.checkbox(key="confirm_delete").label) == f"Yes, delete {CRAFTED}"
    # A link naming a plate that is not stored (the name comes from whoever wrote the link).
    at = open_page("plate", plate=CRAFTED + " (gone)")
    assert at.warning and "not in the result store" in at.warning[0].value
    _assert_literal(_markdown_texts(at))


def test_crafted_compound_names_are_plain_text_in_charts(app_env: Path, tiny_plate: Path) -> None:
    import shutil

    plate = shutil.copytree(tiny_plate, app_env / "plates" / "plate_01")
    link = '<a href="http://evil.example">CPD-001</a>'
    plate_map = pd.read_csv(plate / "platemap.csv")
    plate_map["Metadata_Compound"] = plate_map["Metadata_Compound"].replace("CPD-001", link)
    plate_map.to_csv(plate / "platemap.csv", index=False)
    store_truth_run(app_env / "store.duckdb", plate)
    for page in ("treatments", "plate"):
        specs = json.dumps([json.loads(el.proto.spec) for el in open_page(page).get("plotly_chart")])
        assert "<a href" not in specs and "&lt;a href=\\\"http://evil.example\\\"&gt;CPD-001&lt;/a&gt;" in specs


def test_path_on_the_server_only_under_the_roots(app_env: Path, tiny_plate: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    monkeypatch.delenv("NEURORG_SERVER_ROOTS")  # the default: the data folder only
    data = app_env / "data"
    data.mkdir()
    (data / "link").symlink_to(tiny_plate, target_is_directory=True)
    at = open_page("upload")
    assert str(data) in at.caption[1].value
    climb = os.path.relpath(tiny_plate, data)  # ../../plates0/plate_01
    assert climb.startswith("..")
    for outside in (str(tiny_plate), str(data / "link"), str(data / climb), climb, "/etc",
                    "/no/such/folder"):
        at.text_input(key="server_images").set_value(outside)
        at.button(key="use_server_path").click().run()
        assert not at.exception
        assert "outside the folders this app may read" in at.error[0].value, outside
        assert not at.subheader  # nothing of the folder was read
    shutil.copytree(tiny_plate, data / "plates" / "plate_01")
    at.text_input(key="server_images").set_value("plates/plate_01")
    at.text_input(key="server_platemap").set_value(str(data / "plates" / "plate_01" / "platemap.csv"))
    at.button(key="use_server_path").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.subheader[0].value == "Detected plate"


def test_a_store_held_by_another_process_is_reported_in_plain_words(app_env: Path) -> None:
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
         "print('ready', flush=True); sys.stdin.read()", str(app_env / "store.duckdb")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        at = open_page("plate")
        assert not at.exception
        assert "result store cannot be opened" in at.error[0].value
        assert "in use by another process" in at.error[0].value
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_hits_are_provisional_when_the_model_fit_is_poor(app_env: Path, tiny_plate: Path) -> None:
    """A run whose model-fit check said POOR shows the verdict with its reasons on every plate page,
    and the Treatments page calls its hits provisional."""
    fit = {"verdict": "POOR", "note": "", "checks": [
        {"name": "window", "value": 0.1, "expected": ">= 60%", "passed": False,
         "reason": "disease and control wells are 0.40 apart in inflammation score"}]}
    store_truth_run(app_env / "store.duckdb", tiny_plate, params={"model_fit": fit, "readout": "p_control"})
    at = open_page("treatments")
    assert any("Model fit: POOR" in e.value and "0.40 apart" in e.value for e in at.error)
    assert any("Hits are provisional" in w.value and "model-fit check says POOR" in w.value for w in at.warning)
    assert any("Readout for rescue %, hits, QC and EC50: **P(control)**" in c.value for c in at.caption)
    dose = _charts(at)[0]
    assert dose["layout"]["yaxis"]["title"]["text"] == "P(control)"
    at.switch_page("views/plate.py").run()
    assert any("Model fit: POOR" in e.value for e in at.error)


def test_treatments_page_calls_hits_with_the_configured_rule(truth_store: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The hit thresholds are settings (``NEURORG_HIT_RESCUE_PCT``, ``NEURORG_HIT_FDR``): the hits, the
    metric and its help follow them, also for a run already read with other thresholds (#12)."""
    at = open_page("treatments")
    hits = next(m for m in at.metric if m.label.startswith("Hits"))
    assert "rescue >= 50 %" in hits.help and not hits.value.startswith("0 of")
    monkeypatch.setenv("NEURORG_HIT_RESCUE_PCT", "1000")   # no rescue reaches 1000 %: no hits
    monkeypatch.setenv("NEURORG_HIT_FDR", "0.2")
    at = open_page("treatments")
    hits = next(m for m in at.metric if m.label.startswith("Hits"))
    table = _frame_with(at, "Q_welch")
    assert hits.value == f"0 of {len(table)}" and not table["Hit"].any()
    assert "rescue >= 1000 %" in hits.help and "<= 0.2" in hits.help
