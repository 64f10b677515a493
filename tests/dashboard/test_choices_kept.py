"""A user's choices survive a visit to another page.

Streamlit forgets a widget's value when a run does not draw it, i.e. on every other page: without
care, the channel roles someone corrected on Upload & score (and the plate name they typed) are
silently back to the detected ones after a look at the Overview, and the heatmap's metric and well
start over after a look at the Treatments.
"""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from dashboard_fixtures import TRUTH_PLATE, open_page, open_server_plate, store_truth_run


def _visit(at: AppTest, view: str) -> None:
    at.switch_page(view).run()
    assert not at.exception, [e.value for e in at.exception]


def test_upload_channel_roles_and_plate_name_survive_another_page(app_env: Path, tiny_plate: Path) -> None:
    at = open_server_plate(tiny_plate, tiny_plate / "platemap.csv")
    assert at.selectbox(key="role_nucleus").value == "w1"
    at.selectbox(key="role_nucleus").set_value("w3")
    at.selectbox(key="role_microglia").set_value("w1").run()
    at.text_input(key="plate_name").set_value("my plate 12").run()
    assert not at.error, [e.value for e in at.error]

    _visit(at, "views/overview.py")
    _visit(at, "views/upload.py")

    assert at.selectbox(key="role_nucleus").value == "w3"
    assert at.selectbox(key="role_microglia").value == "w1"
    assert at.text_input(key="plate_name").value == "my plate 12"


def test_heatmap_metric_well_and_channels_survive_another_page(truth_store: Path) -> None:
    at = open_page("plate")
    at.selectbox(key="metric").set_value("Called_class")
    at.selectbox(key="well").set_value("D05")
    at.checkbox(key="show_neuron").uncheck().run()

    _visit(at, "views/treatments.py")
    _visit(at, "views/plate.py")

    assert at.selectbox(key="metric").value == "Called_class"
    assert at.selectbox(key="well").value == "D05"
    assert at.checkbox(key="show_neuron").value is False


def test_library_starts_on_the_plate_the_user_is_looking_at(truth_store: Path, tiny_plate: Path) -> None:
    store_truth_run(truth_store / "store.duckdb", tiny_plate, name="second plate")
    at = open_page("plate")
    assert at.selectbox(key="plate_select").options[0] == "second plate"  # not the first listed
    at.selectbox(key="plate_select").set_value(TRUTH_PLATE).run()

    _visit(at, "views/library.py")

    assert at.selectbox(key="library_plate").value == TRUTH_PLATE

