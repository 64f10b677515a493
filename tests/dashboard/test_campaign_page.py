"""The Campaign page (AppTest): empty store, and a campaign of two ground-truth plates of the
synthetic screen (one with a failed third plate): banners, QC in acquisition order, hits, EC50,
normalisation, filters, exports."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard_fixtures import open_page, store_campaign
from neurorg_core.schema import COMPOUND, EC50_GEOMEAN, MESSAGE, N_PLATES_HIT, N_PLATES_TESTED, PLATE, Z_PRIME


def _frame_with(at: AppTest, column: str):
    """The first table on the page that has ``column``."""
    return next(df.value for df in at.dataframe if column in df.value.columns)


@pytest.fixture()
def campaign_store(app_env: Path, tiny_plate: Path) -> Path:
    store_campaign(app_env / "store.duckdb", tiny_plate)
    return app_env


def test_campaign_page_on_an_empty_store_says_how_to_make_one(app_env: Path) -> None:
    at = open_page("campaign")
    assert not at.error and "score-campaign" in at.info[0].value


def test_campaign_page_shows_plates_side_by_side(campaign_store: Path) -> None:
    at = open_page("campaign")
    assert not at.error, [e.value for e in at.error]
    assert any("SYNTHETIC" in w.value for w in at.warning)                 # the plates are synthetic
    assert any("1 plate(s) of this campaign have no stored run" in w.value for w in at.warning)
    qc = _frame_with(at, Z_PRIME)
    assert qc[PLATE].tolist() == ["first", "second"]                          # acquisition order
    hits = _frame_with(at, N_PLATES_HIT)
    assert len(hits) > 0 and set(hits[N_PLATES_TESTED]) == {2}
    ec50 = _frame_with(at, EC50_GEOMEAN)
    assert set(ec50[COMPOUND]) == set(hits[COMPOUND])
    charts = {el.proto.id for el in at.get("plotly_chart")}
    assert len(charts) == 4                                                   # QC, hit matrix, EC50, normalisation
    assert _frame_with(at, MESSAGE)[PLATE].tolist() == ["broken"]


def test_campaign_filters_and_exports(campaign_store: Path) -> None:
    at = open_page("campaign")
    at.multiselect(key="campaign_batches").set_value(["b2"]).run()
    assert not at.exception
    assert _frame_with(at, Z_PRIME)[PLATE].tolist() == ["second"]
    assert not any("no stored run" in w.value for w in at.warning)          # "broken" is batch b1
    at.selectbox(key="campaign_export_table").set_value("ec50").run()
    assert not at.exception
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Export CSV", "Export Parquet"]


def test_campaign_filters_by_date_and_model(campaign_store: Path) -> None:
    at = open_page("campaign")
    at.date_input(key="campaign_dates").set_value((date(2026, 3, 5), date(2026, 3, 9))).run()
    assert not at.exception
    assert _frame_with(at, Z_PRIME)[PLATE].tolist() == ["second"]           # "first" was acquired on 03-01
    assert not any("no stored run" in w.value for w in at.warning)          # "broken" has no date
    at.multiselect(key="campaign_models").set_value([]).run()
    assert not at.exception
    assert any("No stored plate matches these filters" in i.value for i in at.info)
    assert not any(Z_PRIME in df.value.columns for df in at.dataframe)
