"""A real browser against a real server: ``streamlit run dashboard/app.py`` in a subprocess, driven
by Debian's Chromium through Playwright.

Covers the login page (wrong password, the cookie it sets), uploading a plate zip and its plate
map through the file inputs, scoring under a crafted plate name (shown as plain text), the heatmap
and field images, a reload and a link from another site that keep the login, an export download,
a shared link opening the same plate in a second browser context; and then that a stranger's
plain HTTP client gets nothing back from any URL those logged-in pages loaded.
"""

from __future__ import annotations

import http.client
import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from dashboard import auth, components
from dashboard_fixtures import running_server, server_env, websocket_status

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PASSWORD = "correct horse"
TIMEOUT_MS = 240_000
CRAFTED = "[x](http://evil.example) <img src=x onerror=alert(1)> **bold**"
"""The plate's name: a link, an image with a script and bold text, if it were read as Markdown."""

OPEN_WITHOUT_LOGIN = {"/login": "the login form", "/_stcore/health": 'the text "ok"'}
"""The only paths a client without the cookie may get 200 from; neither carries plate data (the
form is this module's fixed HTML). Streamlit's own JS/CSS/fonts are *not* exempt: the gate asks
for the cookie on them too, so the rule can be this strict."""


@pytest.fixture()
def server(tmp_path: Path, tiny_models: Path) -> Iterator[str]:
    """A Streamlit server on a free localhost port with its own store, data and password."""
    env = server_env(tmp_path, NEURORG_MODEL_DIR=str(tiny_models), NEURORG_PASSWORD=PASSWORD,
                     NEURORG_DEMO_FIELDS="1", NEURORG_DEMO_SIZE="64")
    with running_server(env, tmp_path / "server.log") as base:
        yield base


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


def _seen(locator) -> str:
    """An element's text as a reader sees it (invisible word joiners dropped)."""
    return locator.inner_text().replace(components.WORD_JOINER, "").strip()


def _record(page, requests: set[str], ok: set[str], sockets: set[str]) -> None:
    """Note every URL the page requests, the ones answered 200, and its websockets."""
    page.on("request", lambda r: requests.add(r.url))
    page.on("response", lambda r: ok.add(r.url) if r.status == 200 else None)
    page.on("websocket", lambda ws: sockets.add(ws.url))


def _stranger_status(url: str) -> tuple[int, bytes]:
    """GET ``url`` as a fresh client: no cookies, redirects not followed."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.browser
@pytest.mark.slow
def test_browser_login_upload_heatmap_shared_link_and_nothing_without_login(
        server: str, tmp_path: Path, tiny_plate: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: the browser test needs Debian's Chromium "
                    "(apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    requests: set[str] = set()
    ok: set[str] = set()
    sockets: set[str] = set()

    zip_path = _zip(tiny_plate, tmp_path / "browser_plate.zip")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            _record(page, requests, ok, sockets)

            # The gate shows nothing but the password form, and refuses a wrong password.
            page.goto(f"{server}/upload")
            expect(page.get_by_label("Password", exact=True)).to_be_visible()
            assert urlsplit(page.url).path == "/login"
            expect(page.get_by_text("Upload & score")).to_have_count(0)
            _log_in(page, "wrong")
            expect(page.get_by_text("Wrong password.")).to_be_visible()
            expect(page.get_by_text("Upload limit")).to_have_count(0)
            _log_in(page, PASSWORD)
            expect(page.get_by_text("Upload limit")).to_be_visible()
            assert urlsplit(page.url).path == "/upload"  # back where the address pointed
            # The login cookie: HttpOnly (page scripts cannot read it), SameSite=Strict.
            cookie = next(c for c in context.cookies() if c["name"] == auth.SESSION_COOKIE)
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert auth.SESSION_COOKIE not in page.evaluate("document.cookie")

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
            name.fill(CRAFTED)
            name.press("Enter")
            page.get_by_role("button", name="Score plate").click()

            # Scoring ends on the heatmap of the new plate, with the first well's field image.
            expect(page.locator(".js-plotly-plot .heatmaplayer")).to_have_count(1)
            expect(page.get_by_role("heading", name="Plate heatmap")).to_be_visible()
            expect(page.get_by_text("SYNTHETIC", exact=False).first).to_be_visible()
            expect(page.locator("[data-testid=stImage] img").first).to_be_visible()
            expect(page.get_by_text("A01 field 1")).to_be_visible()
            page.screenshot(path=str(tmp_path / "heatmap.png"), full_page=True)
            assert (tmp_path / "heatmap.png").stat().st_size > 10_000
            link = page.url
            query = parse_qs(urlsplit(link).query)
            assert query["page"] == ["plate"] and query["plate"] == [CRAFTED]

            # A reload keeps the login: the page comes back, not the password form.
            page.reload()
            expect(page.get_by_role("heading", name="Plate heatmap")).to_be_visible()
            expect(page.get_by_label("Password", exact=True)).to_have_count(0)

            # The crafted name is shown as the characters typed: no link, no image, no bold.
            page.get_by_role("link", name="Overview").click()
            heading = page.get_by_role("heading", name="Plate [x]")
            expect(heading).to_be_visible()
            assert _seen(heading) == f"Plate {CRAFTED}"
            assert _seen(page.locator("strong").filter(has_text="[x]").first) == CRAFTED
            assert page.locator("a[href*='//evil.example']").count() == 0
            assert page.locator("img[src='x']").count() == 0
            assert page.locator("strong").filter(has_text=re.compile(r"^bold$")).count() == 0

            # An export download (served under /media/ to the logged-in browser).
            page.get_by_role("link", name="Library").click()
            expect(page.get_by_role("button", name="Export CSV")).to_be_visible()
            with page.expect_download() as got:
                page.get_by_role("button", name="Export CSV").click()
            exported = got.value.path().read_text()
            assert "Metadata_Well" in exported and "A01" in exported
            # (The selectbox and the delete label show the name literally too.)
            page.get_by_text("Delete this plate").click()
            label = page.get_by_text("Yes, delete [x]")
            expect(label).to_be_visible()
            assert _seen(label) == f"Yes, delete {CRAFTED}"
            assert page.locator("a[href*='//evil.example']").count() == 0

            # A link followed from another site arrives without the SameSite=Strict cookie; the
            # login page sees (same-site) that this browser is logged in and goes on at once.
            context.route("http://elsewhere.example/", lambda route: route.fulfill(
                content_type="text/html", body=f'<a id="go" href="{link}">the plate</a>'))
            page.goto("http://elsewhere.example/")
            page.click("#go")
            expect(page.get_by_role("heading", name="Plate heatmap")).to_be_visible()
            expect(page.get_by_role("combobox", name="Plate")).to_have_value(CRAFTED)

            # The copied link opens the same page and plate in a fresh browser context
            # (after the password).
            other = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
            other.set_default_timeout(TIMEOUT_MS)
            _record(other, requests, ok, sockets)
            other.goto(link)
            expect(other.get_by_label("Password", exact=True)).to_be_visible()
            _log_in(other, PASSWORD)
            expect(other.get_by_role("heading", name="Plate heatmap")).to_be_visible()
            expect(other.locator(".js-plotly-plot .heatmaplayer")).to_have_count(1)
            expect(other.get_by_role("combobox", name="Plate")).to_have_value(CRAFTED)
            expect(other.locator("[data-testid=stImage] img").first).to_be_visible()
            other.screenshot(path=str(tmp_path / "shared_link.png"), full_page=True)
        finally:
            browser.close()

    # Every URL of this server that the logged-in pages loaded, fetched again by a stranger.
    mine = sorted(u for u in requests if u.startswith(server))
    media = [u for u in mine if urlsplit(u).path.startswith("/media/")]
    assert any(u.endswith((".jpg", ".png")) for u in media) and any(u.endswith(".csv") for u in media), media
    assert any(u in ok for u in media)  # the browser itself got them
    assert any("/static/" in u for u in mine) and any("/_stcore/host-config" in u for u in mine)
    served = {}
    for url in mine:
        status, body = _stranger_status(url)
        served[url] = status
        path = urlsplit(url).path
        if status == 200:
            assert path in OPEN_WITHOUT_LOGIN, f"{url} answered 200 without a login ({len(body)} bytes)"
            assert auth.SESSION_COOKIE not in body.decode("utf-8", "replace")
    assert all(served[u] in (303, 401) for u in media), {u: served[u] for u in media}
    assert sockets and all(websocket_status(server) == 403 for _ in sockets)
    (tmp_path / "stranger.txt").write_text("\n".join(f"{s} {u}" for u, s in sorted(served.items())))
