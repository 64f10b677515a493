"""A real browser against a real server: ``streamlit run dashboard/app.py`` in a subprocess, driven
by Debian's Chromium through Playwright.

Covers the password gate, uploading a plate zip and its plate map through the file inputs,
scoring, the heatmap, and a shared link opening the same plate in a second browser context.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboard_fixtures import APP, REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PASSWORD = "correct horse"
TIMEOUT_MS = 240_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def server(tmp_path: Path, tiny_models: Path) -> Iterator[str]:
    """A Streamlit server on a free localhost port with its own store, data and password."""
    port = _free_port()
    env = {
        **os.environ,
        "NEURORG_DB": str(tmp_path / "store.duckdb"),
        "NEURORG_DATA_DIR": str(tmp_path / "data"),
        "NEURORG_MODEL_DIR": str(tiny_models),
        "NEURORG_PASSWORD": PASSWORD,
        "NEURORG_DEMO_FIELDS": "1",
        "NEURORG_DEMO_SIZE": "64",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    drain = threading.Thread(target=_copy_lines, args=(proc.stdout, log), daemon=True)
    try:
        # Streamlit prints its URL once it listens; read until then (no polling, no sleeps).
        for line in proc.stdout:
            log.write(line)
            if f":{port}" in line:
                break
        else:
            log.flush()
            pytest.fail(f"streamlit exited before serving: {(tmp_path / 'server.log').read_text()}")
        drain.start()  # keep the pipe drained so the server never blocks on its own logging
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if drain.is_alive():
            drain.join(timeout=5)
        log.close()


def _copy_lines(src, dst) -> None:
    for line in src:
        dst.write(line)


def _zip(folder: Path, out: Path) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.iterdir()):
            if path.name != "platemap.csv":
                zf.write(path, f"{folder.name}/{path.name}")
    out.write_bytes(buf.getvalue())
    return out


def _log_in(page, password: str) -> None:
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Enter").click()


@pytest.mark.browser
@pytest.mark.slow
def test_browser_password_upload_heatmap_and_shared_link(server: str, tmp_path: Path, tiny_plate: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: the browser test needs Debian's Chromium "
                    "(apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)

    zip_path = _zip(tiny_plate, tmp_path / "browser_plate.zip")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(TIMEOUT_MS)

            # The gate shows nothing but the password form, and refuses a wrong password.
            page.goto(f"{server}/upload")
            expect(page.get_by_label("Password", exact=True)).to_be_visible()
            expect(page.get_by_text("Upload & score")).to_have_count(0)
            _log_in(page, "wrong")
            expect(page.get_by_text("Wrong password.")).to_be_visible()
            expect(page.get_by_text("Upload limit")).to_have_count(0)
            _log_in(page, PASSWORD)
            expect(page.get_by_text("Upload limit")).to_be_visible()

            # Upload the zip and the plate map through the real file inputs.
            inputs = page.locator("input[type=file]")
            inputs.nth(0).set_input_files(str(zip_path))
            inputs.nth(1).set_input_files(str(tiny_plate / "platemap.csv"))
            expect(page.get_by_text("browser_plate.zip")).to_be_visible()
            expect(page.get_by_text("platemap.csv")).to_be_visible()
            use = page.get_by_role("button", name="Use these files")
            use.click()
            try:
                expect(page.get_by_text("Detected plate")).to_be_visible(timeout=30_000)
            except AssertionError:
                # Seen once in CI: the press was lost and the page stayed at "Give the plate's
                # images" (likely Streamlit dropping a press whose rerun is superseded by the rerun
                # of an upload finishing at that moment). A user would press again; so does the test
                expect(page.get_by_text("Give the plate's images")).to_be_visible()
                use.click()
            expect(page.get_by_text("Detected plate")).to_be_visible()
            expect(page.get_by_text("Plate map matches the images")).to_be_visible()
            name = page.get_by_label("Plate name")
            name.fill("browser plate")
            name.press("Enter")
            page.get_by_role("button", name="Score plate").click()

            # Scoring ends on the heatmap of the new plate.
            expect(page.locator(".js-plotly-plot .heatmaplayer")).to_have_count(1)
            expect(page.get_by_role("heading", name="Plate heatmap")).to_be_visible()
            expect(page.get_by_text("SYNTHETIC", exact=False).first).to_be_visible()
            page.screenshot(path=str(tmp_path / "heatmap.png"), full_page=True)
            assert (tmp_path / "heatmap.png").stat().st_size > 10_000
            link = page.url
            assert "plate=browser+plate" in link or "plate=browser%20plate" in link
            assert "page=plate" in link

            # The copied link opens the same page and plate in a fresh browser context
            # (after the password).
            other = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
            other.set_default_timeout(TIMEOUT_MS)
            other.goto(link)
            expect(other.get_by_label("Password", exact=True)).to_be_visible()
            _log_in(other, PASSWORD)
            expect(other.get_by_role("heading", name="Plate heatmap")).to_be_visible()
            expect(other.locator(".js-plotly-plot .heatmaplayer")).to_have_count(1)
            expect(other.get_by_role("combobox", name="Plate")).to_have_value("browser plate")
            other.screenshot(path=str(tmp_path / "shared_link.png"), full_page=True)
        finally:
            browser.close()
