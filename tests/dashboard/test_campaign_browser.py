"""The Campaign page in a real browser: ``streamlit run dashboard/app.py`` behind its login, driven by
Debian's Chromium through Playwright (as ``test_browser.py``), on a store holding a campaign of two
ground-truth plates of the synthetic screen and one failed plate."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from dashboard_fixtures import running_server, server_env, store_campaign

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PASSWORD = "campaign pass"
TIMEOUT_MS = 240_000


@pytest.mark.browser
@pytest.mark.slow
def test_campaign_page_renders_in_a_browser(tmp_path: Path, tiny_plate: Path, tiny_models: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: the browser test needs Debian's Chromium "
                    "(apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import expect, sync_playwright

    store_campaign(tmp_path / "store.duckdb", tiny_plate)
    env = server_env(tmp_path, NEURORG_MODEL_DIR=str(tiny_models), NEURORG_PASSWORD=PASSWORD)
    expect.set_options(timeout=TIMEOUT_MS)
    with running_server(env, tmp_path / "server.log") as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{base}/campaign")
            page.get_by_label("Password", exact=True).fill(PASSWORD)
            page.get_by_role("button", name="Enter").click()

            expect(page.get_by_role("heading", name="Campaign", exact=True)).to_be_visible()
            expect(page.get_by_text("SYNTHETIC", exact=False).first).to_be_visible()
            expect(page.get_by_role("heading", name="Plate QC over the campaign")).to_be_visible()
            expect(page.locator(".js-plotly-plot")).to_have_count(4)       # QC, hit matrix, EC50, normalisation
            expect(page.locator(".js-plotly-plot .heatmaplayer")).to_have_count(1)
            expect(page.get_by_text("1 plate(s) of this campaign have no stored run")).to_be_visible()
            page.get_by_role("heading", name="Export").scroll_into_view_if_needed()
            with page.expect_download() as got:
                page.get_by_role("button", name="Export CSV").click()
            exported = got.value.path().read_text()
            header = exported.splitlines()[0]
            assert "Metadata_Plate" in header and "Z_prime" in header
            plates = [line.split(",")[header.split(",").index("Metadata_Plate")] for line in exported.splitlines()[1:]]
            assert plates == ["first", "second"]                                # acquisition order
            with page.expect_download() as got:
                page.get_by_role("button", name="Export Parquet").click()
            table = pd.read_parquet(got.value.path())
            as_csv = pd.read_csv(io.StringIO(exported))
            assert table.columns.tolist() == as_csv.columns.tolist()           # the same table as the CSV
            assert table["Metadata_Plate"].tolist() == ["first", "second"]
            page.screenshot(path=str(tmp_path / "campaign.png"), full_page=True)
            assert (tmp_path / "campaign.png").stat().st_size > 10_000
        finally:
            browser.close()
