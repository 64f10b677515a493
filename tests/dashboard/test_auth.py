"""The login gate's parts on their own: signed cookies, the attempt limit, the loopback rule,
"Path on the server" roots, Markdown escaping (no server; ``test_server.py`` runs the real one)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from dashboard import auth, components
from neurorg_core.config import load_config
from neurorg_core.errors import NeuroRGError

HOUR = 3600.0
NOW = 1_800_000_000.0


def test_a_signed_session_is_valid_until_it_expires() -> None:
    key = auth.session_key(b"s" * 32, "pw")
    token = auth.make_session(key, 12 * HOUR, NOW)
    assert auth.check_session(token, key, 12 * HOUR, NOW) == "valid"
    assert auth.check_session(token, key, 12 * HOUR, NOW + 12 * HOUR - 5) == "valid"
    assert auth.check_session(token, key, 12 * HOUR, NOW + 12 * HOUR) == "expired"
    # A lifetime shortened after the login was made caps it.
    assert auth.check_session(token, key, 1 * HOUR, NOW) == "expired"


def test_a_tampered_or_foreign_session_is_refused() -> None:
    key = auth.session_key(b"s" * 32, "pw")
    token = auth.make_session(key, 12 * HOUR, NOW)
    version, expires, nonce, sig = token.split(".")
    later = f"{version}.{int(expires) + 10 * 24 * 3600}.{nonce}.{sig}"  # a longer life, same signature
    assert auth.check_session(later, key, 400 * 24 * HOUR, NOW) == "bad signature"
    # The same secret with another password (the password was changed) does not verify.
    assert auth.check_session(token, auth.session_key(b"s" * 32, "new pw"), 12 * HOUR, NOW) == "bad signature"
    assert auth.check_session(token, auth.session_key(b"t" * 32, "pw"), 12 * HOUR, NOW) == "bad signature"
    for bad in ("", None):
        assert auth.check_session(bad, key, 12 * HOUR, NOW) == "missing"
    for bad in ("v1.abc.def", "v2.1900000000.00.sig", "v1.notanumber.00.sig", "x" * 40):
        assert auth.check_session(bad, key, 12 * HOUR, NOW) == "malformed"


def test_the_secret_is_made_once_private_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "data" / "session_secret"
    first = auth.load_secret(path)
    assert len(first) == 32 and auth.load_secret(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("not hex")
    with pytest.raises(NeuroRGError, match="session_secret: the login secret file does not hold"):
        auth.load_secret(path)


def test_five_wrong_passwords_lock_that_client_for_fifteen_minutes() -> None:
    limiter = auth.LoginLimiter()
    for k in range(4):
        limiter.failed("10.0.0.1", NOW + k)
        assert limiter.locked_for("10.0.0.1", NOW + k) == 0
    limiter.failed("10.0.0.1", NOW + 10)
    assert limiter.locked_for("10.0.0.1", NOW + 10) == pytest.approx(15 * 60 - 10)  # the 1st is 10 s old
    assert limiter.locked_for("10.0.0.2", NOW + 10) == 0  # another computer may still try
    assert limiter.locked_for("10.0.0.1", NOW + 15 * 60 - 1) > 0
    # When the oldest failure is 15 minutes old, four remain in the window: one more try allowed.
    assert limiter.locked_for("10.0.0.1", NOW + 15 * 60) == 0
    limiter.failed("10.0.0.1", NOW + 15 * 60)
    assert limiter.locked_for("10.0.0.1", NOW + 15 * 60) > 0
    assert "Try again in 15 minutes" in auth.lock_message(14 * 60 + 1)
    assert "Try again in 1 minute." in auth.lock_message(5)


def test_a_right_password_clears_the_count_and_memory_is_bounded() -> None:
    limiter = auth.LoginLimiter(max_clients=3)
    for k in range(4):
        limiter.failed("a", NOW + k)
    limiter.succeeded("a")
    limiter.failed("a", NOW + 5)
    assert limiter.locked_for("a", NOW + 5) == 0  # the count started again
    for client in ("b", "c", "d"):
        limiter.failed(client, NOW + 6)
    assert len(limiter._failures) == 3 and "a" not in limiter._failures  # oldest dropped


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.1.1", "localhost", "::1", "[::1]"])
def test_loopback_addresses_need_no_password(address: str) -> None:
    auth.check_exposure(address, has_password=False)


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "", None, "192.0.2.7", "lab-server"])
def test_network_addresses_need_a_password(address: str | None) -> None:
    with pytest.raises(NeuroRGError, match="without a password") as info:
        auth.check_exposure(address, has_password=False)
    assert "NEURORG_PASSWORD" in str(info.value)
    auth.check_exposure(address, has_password=True)


@pytest.mark.parametrize(("given", "expected"), [
    ("/plate?page=plate&plate=A+B", "/plate?page=plate&plate=A+B"),
    ("//evil.example/x", "/"), ("https://evil.example/", "/"), ("/\\evil.example", "/"),
    ("evil", "/"), ("", "/"), ("/login", "/"), ("/logout", "/"),
])
def test_after_login_only_this_server_is_a_destination(given: str, expected: str) -> None:
    assert auth._safe_next(given, "") == expected


def test_server_paths_only_under_the_roots(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "plates" / "p1").mkdir(parents=True)
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.csv").write_text("x")
    (root / "plates" / "link").symlink_to(outside, target_is_directory=True)

    assert auth.allowed_server_path(str(root / "plates" / "p1"), [root]) == (root / "plates" / "p1").resolve()
    assert auth.allowed_server_path("plates/p1", [root]) == (root / "plates" / "p1").resolve()
    for escape in (str(outside), str(root / "plates" / ".." / ".." / "private"), "../private",
                   str(root / "plates" / "link"), str(root / "plates" / "link" / "secret.csv"), "/"):
        with pytest.raises(NeuroRGError, match="outside the folders this app may read") as info:
            auth.allowed_server_path(escape, [root])
        assert str(root.resolve()) in str(info.value)
    with pytest.raises(NeuroRGError, match="no such file or folder"):
        auth.allowed_server_path(str(root / "nothing"), [root])
    # Outside the roots, a missing path gets the same answer as an existing one (no probing).
    with pytest.raises(NeuroRGError, match="outside the folders"):
        auth.allowed_server_path(str(outside / "nothing"), [root])
    with pytest.raises(NeuroRGError, match="give a folder"):
        auth.allowed_server_path("  ", [root])
    # A second root allows its folder (a root given through a symlink counts as its target).
    (tmp_path / "alias").symlink_to(outside, target_is_directory=True)
    assert auth.allowed_server_path(str(outside / "secret.csv"), [root, tmp_path / "alias"]) == \
        (outside / "secret.csv").resolve()


def test_server_roots_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURORG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("NEURORG_SERVER_ROOTS", raising=False)
    assert load_config().server_roots == (tmp_path / "data",)
    monkeypatch.setenv("NEURORG_SERVER_ROOTS", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    assert load_config().server_roots == (tmp_path / "a", tmp_path / "b")


def test_session_hours_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEURORG_SESSION_HOURS", raising=False)
    assert load_config().session_hours == 12.0
    monkeypatch.setenv("NEURORG_SESSION_HOURS", "0.5")
    assert load_config().session_hours == 0.5
    for bad in ("twelve", "0", "-3", "nan"):
        monkeypatch.setenv("NEURORG_SESSION_HOURS", bad)
        with pytest.raises(NeuroRGError, match="NEURORG_SESSION_HOURS"):
            load_config()


CRAFTED = ("[x](http://evil.example) <img src=x onerror=alert(1)> **bold** `code` # h :red[x] "
           "$x$ &amp; WWW.evil.example https://e.example/a?b=c me@evil.example a\\b")


def test_plain_text_renders_literally_in_commonmark() -> None:
    """An independent Markdown parser (markdown-it, CommonMark) shows the escaped text as the
    original characters, with no link, image, HTML, emphasis or code."""
    from markdown_it import MarkdownIt

    import html

    escaped = components.plain(CRAFTED)
    rendered = MarkdownIt("commonmark").render(escaped)
    assert rendered.startswith("<p>") and rendered.count("<") == 2  # just <p> and </p>
    assert html.unescape(rendered[3:-5]).replace(components.WORD_JOINER, "") == CRAFTED
    # What Streamlit's GFM autolinking looks for (after escapes are read) is broken up.
    seen = html.unescape(rendered[3:-5])
    assert "://" not in seen and "www." not in seen.lower() and not re.search(r"@\w", seen)


def test_plot_text_escapes_plotly_html() -> None:
    assert components.plot_text('<a href="http://evil">x</a> & <b>') == \
        '&lt;a href="http://evil"&gt;x&lt;/a&gt; &amp; &lt;b&gt;'


def test_the_pages_own_check_ends_an_expired_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``dashboard/main.py`` runs on every rerun: a session whose page stayed open past the
    cookie's expiry is stopped (the websocket's cookie is the one it was opened with)."""
    monkeypatch.setenv("NEURORG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NEURORG_PASSWORD", "pw")
    cfg = load_config()
    key = auth.session_key(auth.load_secret(cfg.session_secret_path), "pw")
    token = auth.make_session(key, HOUR, NOW)
    cookies = {auth.SESSION_COOKIE: token}
    assert auth.script_session_state(cfg, cookies, NOW + 10) == "valid"
    assert auth.script_session_state(cfg, cookies, NOW + HOUR + 1) == "expired"
    assert auth.script_session_state(cfg, {}, NOW) == "missing"
    monkeypatch.setenv("NEURORG_PASSWORD", "changed")
    assert auth.script_session_state(load_config(), cookies, NOW + 10) == "bad signature"
    monkeypatch.delenv("NEURORG_PASSWORD")
    assert auth.script_session_state(load_config(), {}, NOW) == "valid"  # no password: no login
