"""Who may see the dashboard: the password, signed login cookies, the attempt limit, the HTTP gate
in front of everything Streamlit serves, and the folders "Path on the server" may read.

Size (~570 lines): everything that decides who sees the app is kept in one file on purpose, so that a
security review reads one module (password, cookies, attempt limit, the ASGI gate, the login pages,
the server-path rule).

How the pieces fit (``dashboard/app.py`` wires them into ``st.App``):

- ``SessionGate`` is ASGI middleware in front of *every* request Streamlit answers: pages, its
  JS/CSS, ``/media/`` (field images, CSV/Parquet downloads), uploads, components, the websocket
  the app runs over. With a password set, a request without a valid login cookie gets a redirect
  to the login page (a browser opening a page) or 401 / a refused websocket (anything else). Only
  ``/login`` and ``/_stcore/health`` (it answers "ok") are open. ``/_stcore/metrics`` is closed
  for everyone (Streamlit has no option to turn it off).
- The login page is plain HTML served here, not by Streamlit, so the cookie it sets can be
  ``HttpOnly`` (page scripts cannot read it) and ``SameSite=Strict``.
- The cookie is ``v1.<expiry>.<nonce>.<HMAC-SHA256>``, signed with a key made from a random secret
  kept in ``Config.session_secret_path`` and the password, so changing the password ends every
  login. It lasts ``Config.session_hours``; the server never stores it.
- Failed passwords are counted per client address in this process's memory (``LoginLimiter``).
- Without a password the app must listen on loopback only (``check_exposure``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import ipaddress
import json
import logging
import math
import os
import posixpath
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import streamlit as st

from neurorg_core.config import Config
from neurorg_core.errors import NeuroRGError

log = logging.getLogger(__name__)

SESSION_COOKIE = "neurorg_session"
MAX_FAILURES = 5
"""Wrong passwords a client may give within ``FAILURE_WINDOW_S`` before it is locked out."""
FAILURE_WINDOW_S = 15 * 60
MAX_CLIENTS_TRACKED = 10_000
"""Bound on the attempt counter's memory: the clients with the oldest failures are forgotten first."""

LOGIN_PATH = "/login"
LOGIN_STATUS_PATH = "/login/status"
LOGOUT_PATH = "/logout"
HEALTH_PATH = "/_stcore/health"
OPEN_PATHS = (LOGIN_PATH, LOGIN_STATUS_PATH, LOGOUT_PATH, HEALTH_PATH)
"""Answered without a login. Health only says "ok"; the login paths serve the form and set or
clear the cookie."""
CLOSED_SUFFIX = "/_stcore/metrics"
"""Streamlit's metrics endpoint (session counts, cache sizes): answered 404 to everyone."""

SessionState = Literal["valid", "missing", "malformed", "bad signature", "expired"]

SESSION_MESSAGES: dict[SessionState, str] = {
    "missing": "Log in first.",
    "malformed": "The login cookie is not one this app made. Log in again.",
    "bad signature": "The login cookie's signature does not match (the password may have changed). "
                     "Log in again.",
    "expired": "Your login has expired. Reload the page to log in again.",
}


# --- the password ------------------------------------------------------------------------

def password(cfg: Config) -> str:
    """The dashboard password: ``NEURORG_PASSWORD`` wins, else ``password`` in Streamlit's
    ``secrets.toml``; "" when neither is set."""
    if cfg.password:
        return cfg.password
    try:
        return str(st.secrets.get("password", "") or "")
    except FileNotFoundError:  # no secrets.toml at all
        return ""


def _same_password(given: str, expected: str) -> bool:
    """Constant-time comparison (of digests, so the length does not leak either)."""
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(),
                               hashlib.sha256(expected.encode()).digest())


def check_exposure(address: str | None, has_password: bool) -> None:
    """Refuse to serve plate data to the network without a password.

    Parameters
    ----------
    address : str or None
        Streamlit's ``server.address`` (None or "" means every interface).
    has_password : bool
        Whether a password is configured.

    Raises
    ------
    NeuroRGError
        If the address is not loopback (127.0.0.0/8, ::1, ``localhost``) and there is no password.
    """
    if has_password or is_loopback(address):
        return
    shown = address or "every network interface (server.address is not set)"
    raise NeuroRGError(
        f"refusing to listen on {shown} without a password: anyone on the network could open the "
        "plates. Set NEURORG_PASSWORD (or password in .streamlit/secrets.toml) to share the app, "
        "or listen on this computer only with --server.address 127.0.0.1"
    )


def is_loopback(address: str | None) -> bool:
    """Whether a listen address reaches this computer only."""
    if not address:
        return False
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to a network interface
        return False


# --- signed login cookies -----------------------------------------------------------------

def load_secret(path: Path) -> bytes:
    """The random secret behind login cookies, made on first use (32 bytes, file mode 0600).

    Raises
    ------
    NeuroRGError
        If the file cannot be made or read, or is not one this module wrote.
    """
    if not path.exists():
        # Written whole under a private name, then linked into place: a second process starting
        # at the same moment reads either nothing yet or the finished file, never half of it.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            os.link(tmp, path)
        except FileExistsError:
            pass  # the other process won; use its secret
        except OSError as exc:
            raise NeuroRGError(f"cannot make the login secret file: {exc.strerror}; set "
                               "NEURORG_DATA_DIR to a writable folder", path=path) from exc
        finally:
            tmp.unlink(missing_ok=True)
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise NeuroRGError(f"cannot read the login secret file: {exc.strerror}", path=path) from exc
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < 16:
        raise NeuroRGError("the login secret file does not hold a hex secret of 32 bytes; delete it "
                           "and a new one is made (everyone logs in again)", path=path)
    return secret


def session_key(secret: bytes, password_text: str) -> bytes:
    """The cookie-signing key: the secret and the password together, so a new password ends
    every login made with the old one."""
    return hmac.new(secret, b"neurorg-session\0" + password_text.encode(), hashlib.sha256).digest()


def _signature(key: bytes, payload: str) -> str:
    digest = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def make_session(key: bytes, lifetime_s: float, now: float) -> str:
    """A login cookie value valid from ``now`` for ``lifetime_s`` seconds."""
    payload = f"v1.{int(now + lifetime_s)}.{secrets.token_hex(8)}"
    return f"{payload}.{_signature(key, payload)}"


def check_session(token: str | None, key: bytes, lifetime_s: float, now: float) -> SessionState:
    """Whether a login cookie value is one this server signed and still in date.

    A cookie whose expiry lies further ahead than ``lifetime_s`` (made under a longer
    ``NEURORG_SESSION_HOURS``) is taken as expired: the current setting is the most a login lasts.
    """
    if not token or not isinstance(token, str):
        return "missing"
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != "v1" or not parts[1].isdigit():
        return "malformed"
    if not hmac.compare_digest(_signature(key, ".".join(parts[:3])), parts[3]):
        return "bad signature"
    expires = int(parts[1])
    if not now < expires <= now + lifetime_s + 60:  # 60 s of slack for clocks and rounding
        return "expired"
    return "valid"


class SessionSigner:
    """The cookie key for the current password (recomputed when the password changes)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._secret: bytes | None = None

    def key(self, password_text: str) -> bytes:
        if self._secret is None:
            self._secret = load_secret(self.cfg.session_secret_path)
        return session_key(self._secret, password_text)


def script_session_state(cfg: Config, cookies: Mapping[str, str], now: float) -> SessionState:
    """The login state of the browser running this script (the cookies its websocket was opened
    with, ``st.context.cookies.to_dict()``), for the page's own check. "valid" when no password
    is set."""
    expected = password(cfg)
    if not expected:
        return "valid"
    token = cookies.get(SESSION_COOKIE)
    if not token:
        return "missing"
    key = session_key(load_secret(cfg.session_secret_path), expected)
    return check_session(token, key, cfg.session_hours * 3600, now)


# --- attempt limit ------------------------------------------------------------------------

class LoginLimiter:
    """Wrong passwords per client address, kept in this process's memory.

    A client with ``max_failures`` failures within ``window_s`` seconds is locked until the
    oldest of them is ``window_s`` old; a right password while locked is refused too. At most
    ``max_clients`` addresses are remembered (those with the oldest failures are dropped first).
    A restart forgets everything. Behind a proxy every user shares the proxy's address.
    """

    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = FAILURE_WINDOW_S,
                 max_clients: int = MAX_CLIENTS_TRACKED) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.get(client, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            self._failures.pop(client, None)
        return times

    def locked_for(self, client: str, now: float) -> float:
        """Seconds until ``client`` may try again (0 when it may try now)."""
        times = self._recent(client, now)
        if len(times) < self.max_failures:
            return 0.0
        return times[-self.max_failures] + self.window_s - now

    def failed(self, client: str, now: float) -> None:
        times = self._recent(client, now)
        times.append(now)
        self._failures[client] = times
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


def lock_message(seconds_left: float) -> str:
    minutes = max(1, math.ceil(seconds_left / 60))
    return (f"Too many wrong passwords from this computer ({MAX_FAILURES} within "
            f"{FAILURE_WINDOW_S // 60} minutes). Try again in {minutes} minute"
            f"{'s' if minutes != 1 else ''}.")


# --- "Path on the server" -----------------------------------------------------------------

def allowed_server_path(text: str, roots: Sequence[Path]) -> Path:
    """A path typed into "Path on the server", resolved, if it lies under one of ``roots``.

    Symlinks and ``..`` are resolved before the check, so neither leads outside. A relative path
    is taken relative to the first root.

    Raises
    ------
    NeuroRGError
        If the text is empty, nothing exists there, or it lies outside every root.
    """
    if not text.strip():
        raise NeuroRGError("give a folder, .zip or plate-map path on the server")
    typed = Path(text.strip()).expanduser()
    real_roots = [root.expanduser().resolve() for root in roots]
    if not typed.is_absolute() and real_roots:
        typed = real_roots[0] / typed
    try:
        resolved = typed.resolve()  # symlinks that exist are followed, ".." is applied
    except (OSError, RuntimeError) as exc:  # permission, symlink loop
        raise NeuroRGError(f"this path cannot be opened ({exc})", path=typed) from None
    # Containment first, so nothing outside the roots can be probed for existence.
    if not any(resolved == root or root in resolved.parents for root in real_roots):
        allowed = ", ".join(str(r) for r in real_roots) or "(none)"
        raise NeuroRGError(
            f"{text.strip()} is outside the folders this app may read ({allowed}). Copy the plate "
            "there, or ask whoever runs the app to add its folder to NEURORG_SERVER_ROOTS"
        )
    if not resolved.exists():
        raise NeuroRGError("no such file or folder on the server", path=typed)
    return resolved


# --- the HTTP gate ------------------------------------------------------------------------

def _cookie(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            k, _, v = part.strip().partition("=")
            if k == name:
                return v
    return None


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


async def _send_response(send, status: int, body: str, *, content_type: str = "text/plain",
                         extra: Sequence[tuple[str, str]] = ()) -> None:
    data = body.encode()
    headers = [(b"content-type", f"{content_type}; charset=utf-8".encode()),
               (b"content-length", str(len(data)).encode()),
               (b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]
    headers += [(k.encode(), v.encode("latin-1")) for k, v in extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class SessionGate:
    """ASGI middleware: nothing but the login page without a valid login cookie (see module doc).

    Parameters
    ----------
    app
        The Streamlit ASGI app it guards.
    cfg
        Configuration (password, session lifetime, secret file).
    exposed
        Whether the server listens on a network interface. Then a missing password (e.g.
        ``secrets.toml`` emptied while running) closes the app instead of opening it.
    base_path
        Streamlit's ``server.baseUrlPath`` ("" or "/prefix").
    """

    def __init__(self, app, *, cfg: Config, exposed: bool, base_path: str = "") -> None:
        self.app = app
        self.cfg = cfg
        self.exposed = exposed
        self.base = base_path.rstrip("/")
        self.signer = SessionSigner(cfg)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        local = path[len(self.base):] if self.base and path.startswith(self.base) else path
        if posixpath.normpath("/" + local).rstrip("/").endswith(CLOSED_SUFFIX):
            await self._refuse(scope, send, 404, "Not found.")
            return
        expected = password(self.cfg)
        if not expected:
            if self.exposed:
                await self._refuse(scope, send, 503, "No password is set, so this app serves "
                                   "nothing to the network. Set NEURORG_PASSWORD and restart.")
                return
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http" and local in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        token = _cookie(scope.get("headers", []), SESSION_COOKIE)
        state = check_session(token, self.signer.key(expected), self.cfg.session_hours * 3600,
                              time.time())
        if state == "valid":
            await self.app(scope, receive, send)
            return
        await self._login_needed(scope, send, state)

    async def _refuse(self, scope, send, status: int, text: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # answered as HTTP 403
        else:
            await _send_response(send, status, text)

    async def _login_needed(self, scope, send, state: SessionState) -> None:
        headers = scope.get("headers", [])
        wants_page = (scope["type"] == "http" and scope.get("method") in ("GET", "HEAD")
                      and "text/html" in _header(headers, b"accept"))
        if not wants_page:
            await self._refuse(scope, send, 401, f"{SESSION_MESSAGES[state]} Open {self.base}{LOGIN_PATH}.")
            return
        here = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string")
                                else "")
        location = f"{self.base}{LOGIN_PATH}?next={quote(here, safe='')}"
        await _send_response(send, 303, "Log in first.", extra=[("location", location)])


# --- the login page -----------------------------------------------------------------------

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>NeuroRG Screen: log in</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 24rem; margin: 4rem auto; padding: 0 1rem;
       color: #262730; }}
label, input, button {{ display: block; width: 100%; box-sizing: border-box; font-size: 1rem; }}
input {{ padding: .5rem; margin: .25rem 0 1rem; border: 1px solid #ccc; border-radius: .4rem; }}
button {{ padding: .6rem; background: #ff4b4b; color: #fff; border: 0; border-radius: .4rem; }}
.error {{ background: #ffecec; color: #7d353b; padding: .75rem; border-radius: .4rem; }}
.note {{ background: #e8f0fe; color: #1c3d6e; padding: .75rem; border-radius: .4rem; }}
</style></head>
<body><h1>NeuroRG Screen</h1>
{message}
<form method="post" action="{action}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" autofocus required>
<input type="hidden" name="next" value="{next}">
<button type="submit">Enter</button>
</form>
<script>
/* A link followed from another site arrives without the SameSite=Strict cookie. Ask (same-site,
   so the cookie is sent) whether this browser is logged in already; if so, go on. */
fetch({status_url}, {{credentials: "same-origin"}}).then(function (r) {{
  if (r.status === 204) {{ location.replace({next_js}); }}
}});
</script>
</body></html>
"""


def _safe_next(value: str, base: str) -> str:
    """Where to go after logging in: a path on this server only (no open redirect)."""
    home = f"{base}/"
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return home
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith(base or "/"):
        return home
    if parts.path.rstrip("/") in (f"{base}{p}" for p in (LOGIN_PATH, LOGOUT_PATH)):
        return home
    return urlunsplit(("", "", parts.path, parts.query, ""))


def _js_string(text: str) -> str:
    return json.dumps(text).replace("<", "\\u003c").replace(">", "\\u003e")


class LoginPages:
    """The ``/login`` (GET form, POST password), ``/login/status`` and ``/logout`` endpoints."""

    def __init__(self, cfg: Config, limiter: LoginLimiter, base_path: str = "") -> None:
        self.cfg = cfg
        self.limiter = limiter
        self.base = base_path.rstrip("/")
        self.signer = SessionSigner(cfg)

    def routes(self) -> list:
        from starlette.routing import Route

        return [Route(f"{self.base}{LOGIN_PATH}", self.login, methods=["GET", "POST"]),
                Route(f"{self.base}{LOGIN_STATUS_PATH}", self.status, methods=["GET"]),
                Route(f"{self.base}{LOGOUT_PATH}", self.logout, methods=["GET", "POST"])]

    def _state(self, request) -> SessionState:
        expected = password(self.cfg)
        if not expected:
            return "valid"
        return check_session(request.cookies.get(SESSION_COOKIE), self.signer.key(expected),
                             self.cfg.session_hours * 3600, time.time())

    def _page(self, next_path: str, status: int, message: str = "", kind: str = "error"):
        from starlette.responses import HTMLResponse

        shown = f'<p class="{kind}" role="alert">{html.escape(message)}</p>' if message else ""
        body = LOGIN_PAGE.format(
            message=shown, action=html.escape(f"{self.base}{LOGIN_PATH}"),
            next=html.escape(next_path), status_url=_js_string(f"{self.base}{LOGIN_STATUS_PATH}"),
            next_js=_js_string(next_path),
        )
        return HTMLResponse(body, status_code=status, headers={"cache-control": "no-store"})

    def _locked(self, next_path: str, wait: float):
        response = self._page(next_path, 429, lock_message(wait))
        response.headers["retry-after"] = str(math.ceil(wait))
        return response

    def _redirect(self, location: str):
        from starlette.responses import RedirectResponse

        return RedirectResponse(location, status_code=303, headers={"cache-control": "no-store"})

    async def status(self, request):
        from starlette.responses import Response

        return Response(status_code=204 if self._state(request) == "valid" else 401,
                        headers={"cache-control": "no-store"})

    async def logout(self, request):
        response = self._page(f"{self.base}/", 200, "You are logged out.", kind="note")
        response.delete_cookie(SESSION_COOKIE, path=f"{self.base}/", httponly=True, samesite="strict")
        return response

    async def login(self, request):
        client = request.client.host if request.client else "unknown"
        if request.method == "GET":
            next_path = _safe_next(request.query_params.get("next", ""), self.base)
            if self._state(request) == "valid":
                return self._redirect(next_path)
            return self._page(next_path, 200)
        body = await request.body()
        if len(body) > 16_384:
            return self._page(f"{self.base}/", 413, "The form sent is too large.")
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        next_path = _safe_next(fields.get("next", [""])[0], self.base)
        expected = password(self.cfg)
        if not expected:
            return self._redirect(next_path)
        now = time.time()
        wait = self.limiter.locked_for(client, now)
        if wait > 0:
            log.warning("login refused for %s: locked for %.0f s", client, wait)
            return self._locked(next_path, wait)
        if not _same_password(fields.get("password", [""])[0], expected):
            self.limiter.failed(client, now)
            wait = self.limiter.locked_for(client, now)
            log.warning("wrong password from %s", client)
            if wait > 0:
                return self._locked(next_path, wait)
            return self._page(next_path, 401, "Wrong password.")
        self.limiter.succeeded(client)
        lifetime = self.cfg.session_hours * 3600
        response = self._redirect(next_path)
        response.set_cookie(
            SESSION_COOKIE, make_session(self.signer.key(expected), lifetime, now),
            max_age=int(lifetime), path=f"{self.base}/", httponly=True, samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response
