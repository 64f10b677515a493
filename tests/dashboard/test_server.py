"""The real server (``streamlit run dashboard/app.py`` in a subprocess) over plain HTTP: where it
listens, what it answers without a login, the login cookie, and the attempt limit.

The HTTP client is the standard library's (no cookies kept, no redirects followed), so each
request is exactly what a stranger's client would send.
"""

from __future__ import annotations

import http.client
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from dashboard import auth
from dashboard_fixtures import REPO, free_port, running_server, server_command, server_env, websocket_status

PASSWORD = "open sesame"


class Reply:
    def __init__(self, resp: http.client.HTTPResponse) -> None:
        self.status = resp.status
        self.headers = resp.headers
        self.body = resp.read()

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def request(base: str, path: str, *, method: str = "GET", cookie: str | None = None,
            accept: str = "*/*", body: bytes | None = None, source: str | None = None) -> Reply:
    """One request on a fresh connection (``source``: the client's own address)."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60,
                                      source_address=(source, 0) if source else None)
    headers = {"Accept": accept}
    if cookie:
        headers["Cookie"] = cookie
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, path, body=body, headers=headers)
        return Reply(conn.getresponse())
    finally:
        conn.close()


def log_in(base: str, password: str = PASSWORD, next_path: str = "/", source: str | None = None) -> Reply:
    from urllib.parse import urlencode

    return request(base, "/login", method="POST", source=source,
                   body=urlencode({"password": password, "next": next_path}).encode())


def session_cookie(reply: Reply) -> str:
    """``name=value`` of the login cookie a reply sets."""
    for header in reply.headers.get_all("set-cookie") or []:
        if header.startswith(f"{auth.SESSION_COOKIE}="):
            return header.split(";")[0]
    raise AssertionError(f"no {auth.SESSION_COOKIE} cookie in {reply.headers.get_all('set-cookie')}")


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port``, from the kernel (/proc/net/tcp*)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port and len(address) == width:
                found.add(address)
    return found


IPV4_LOOPBACK = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it
IPV4_ANY = "00000000"


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A server with a password, listening on every interface (the shared-URL set-up)."""
    tmp = tmp_path_factory.mktemp("gated")
    with running_server(server_env(tmp, NEURORG_PASSWORD=PASSWORD), tmp / "server.log",
                        address="0.0.0.0") as base:
        yield base, tmp


def test_without_a_password_the_app_listens_on_this_computer_only(tmp_path: Path) -> None:
    port = free_port()
    env = server_env(tmp_path)
    # The repository's config file (no --server.address): loopback.
    with running_server(env, tmp_path / "server.log", address=None, port=port) as base:
        assert listening_addresses(port) == {IPV4_LOOPBACK}
        assert request(base, "/_stcore/health").text == "ok"
        assert request(base, "/", accept="text/html").status == 200  # the app itself, no login
        assert request(base, "/_stcore/metrics").status == 404
    assert "answers on this computer only" in (tmp_path / "server.log").read_text()
    # A network address without a password: the server refuses to start.
    done = subprocess.run(server_command(free_port(), "0.0.0.0"), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "refusing to listen on 0.0.0.0 without a password" in done.stdout + done.stderr


def test_with_a_password_nothing_but_the_login_page_answers_without_a_cookie(
        gated: tuple[str, Path]) -> None:
    base, _ = gated
    port = urlsplit(base).port
    assert listening_addresses(port) == {IPV4_ANY}  # the network case
    cookie = session_cookie(log_in(base))
    index = request(base, "/", cookie=cookie, accept="text/html")
    assert index.status == 200 and "<html" in index.text.lower()
    assets = re.findall(r'(?:src|href)="\.?(/?static/[^"]+)"', index.text)
    assert assets, "the app's page names no static assets"
    for asset in assets[:3]:
        path = "/" + asset.lstrip("/")
        assert request(base, path, cookie=cookie).status == 200
        assert request(base, path).status == 401
    for path in ("/", "/plate?page=plate&plate=DEMO", "/upload", "/favicon.png", "/manifest.json"):
        page = request(base, path, accept="text/html")
        assert page.status == 303 and page.headers["location"].startswith("/login?next=%2F")
        assert request(base, path).status == 401  # not a browser page: no redirect, just refused
    for path in ("/_stcore/host-config", "/media/0123abcd.png", "/component/x/index.html",
                 "/_stcore/script-health-check", "/_stcore/agent/openapi.json"):
        assert request(base, path).status == 401, path
    assert request(base, "/_stcore/upload_file/s/f", method="PUT", body=b"x").status == 401
    assert websocket_status(base) == 403
    assert websocket_status(base, cookie) == 101
    assert request(base, "/_stcore/health").text == "ok"
    login = request(base, "/login", accept="text/html")
    assert login.status == 200 and 'type="password"' in login.text
    # Metrics are off for everyone, logged in or not, however the path is written.
    for path in ("/_stcore/metrics", "/_stcore/metrics/", "//_stcore/metrics", "/x/../_stcore/metrics"):
        assert request(base, path).status == 404
        assert request(base, path, cookie=cookie).status == 404


def test_logging_in_sets_a_private_cookie_that_lasts(gated: tuple[str, Path]) -> None:
    base, _ = gated
    wrong = log_in(base, "open sesame?", source="127.0.0.3")
    assert wrong.status == 401 and "Wrong password." in wrong.text and not wrong.headers.get_all("set-cookie")
    reply = log_in(base, next_path="/plate?page=plate&plate=A+B")
    assert reply.status == 303 and reply.headers["location"] == "/plate?page=plate&plate=A+B"
    header = next(h for h in reply.headers.get_all("set-cookie") if h.startswith(auth.SESSION_COOKIE))
    attributes = {a.strip().split("=")[0].lower(): a.strip() for a in header.split(";")[1:]}
    assert set(attributes) >= {"httponly", "samesite", "max-age", "path"}
    assert attributes["samesite"].lower() == "samesite=strict"
    assert attributes["max-age"] == f"Max-Age={12 * 3600}" and attributes["path"] == "Path=/"
    cookie = session_cookie(reply)
    # Later requests (a reload, a pasted link in the same browser) are let in with it.
    assert request(base, "/plate?page=plate", cookie=cookie, accept="text/html").status == 200
    assert request(base, "/_stcore/host-config", cookie=cookie).status == 200
    assert request(base, "/login/status", cookie=cookie).status == 204
    assert request(base, "/login/status").status == 401
    again = request(base, "/login?next=%2Fupload", cookie=cookie, accept="text/html")
    assert again.status == 303 and again.headers["location"] == "/upload"
    # No open redirect after logging in.
    assert log_in(base, next_path="//evil.example/x").headers["location"] == "/"
    out = request(base, "/logout")
    assert f"{auth.SESSION_COOKIE}=" in out.headers["set-cookie"] and "Max-Age=0" in out.headers["set-cookie"]


def test_a_forged_or_expired_cookie_is_refused(gated: tuple[str, Path]) -> None:
    base, tmp = gated
    good = session_cookie(log_in(base)).split("=", 1)[1]
    key = auth.session_key(auth.load_secret(tmp / "data" / "session_secret"), PASSWORD)
    version, expires, nonce, sig = good.split(".")
    forged = {
        "bad signature": f"{version}.{expires}.{nonce}.{sig[:-2]}AA",
        "longer life, old signature": f"{version}.{int(expires) + 3600}.{nonce}.{sig}",
        "another password": auth.make_session(auth.session_key(auth.load_secret(
            tmp / "data" / "session_secret"), "another"), 3600, time.time()),
        "expired": auth.make_session(key, 3600, time.time() - 2 * 3600),
        "beyond the lifetime": auth.make_session(key, 30 * 24 * 3600, time.time()),
        "malformed": "v1.x",
    }
    for why, token in forged.items():
        cookie = f"{auth.SESSION_COOKIE}={token}"
        assert request(base, "/", cookie=cookie, accept="text/html").status == 303, why
        assert request(base, "/_stcore/host-config", cookie=cookie).status == 401, why
        assert websocket_status(base, cookie) == 403, why
    # The same key, in date: accepted (so the refusals above are about the flaws named).
    fresh = f"{auth.SESSION_COOKIE}={auth.make_session(key, 3600, time.time())}"
    assert request(base, "/_stcore/host-config", cookie=fresh).status == 200


def test_five_wrong_passwords_lock_that_computer_out(tmp_path: Path) -> None:
    env = server_env(tmp_path, NEURORG_PASSWORD=PASSWORD, NEURORG_SESSION_HOURS="2")
    with running_server(env, tmp_path / "server.log", address="0.0.0.0") as base:
        for _ in range(auth.MAX_FAILURES - 1):
            assert log_in(base, "guess").status == 401
        locked = log_in(base, "guess")
        assert locked.status == 429 and "Too many wrong passwords" in locked.text
        assert "Try again in 15 minutes" in locked.text and int(locked.headers["retry-after"]) > 800
        right = log_in(base)  # even the right password is refused while locked
        assert right.status == 429 and not right.headers.get_all("set-cookie")
        # Another computer (another client address) is not locked, and its login lasts 2 h.
        other = log_in(base, source="127.0.0.2")
        assert other.status == 303
        assert f"Max-Age={2 * 3600}" in other.headers["set-cookie"]


def test_a_password_in_secrets_toml_shares_the_app_too(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('password = "from secrets"\n')
    env = server_env(tmp_path, STREAMLIT_SECRETS_FILES=str(secrets))
    with running_server(env, tmp_path / "server.log", address="0.0.0.0") as base:
        assert request(base, "/", accept="text/html").status == 303
        assert log_in(base, PASSWORD).status == 401
        cookie = session_cookie(log_in(base, "from secrets"))
        assert request(base, "/_stcore/host-config", cookie=cookie).status == 200
