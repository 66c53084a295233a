"""Access control for the page: the access token, the login form, CSRF and Host checks.

The page runs as root and drives the kernel, so:

- bound to loopback (the default), only requests whose Host is a loopback name are served
  (a DNS-rebinding page cannot reach us under its own name);
- bound to any other address, every request must carry the access token: the ``cblb_token``
  cookie the login form sets, or ``Authorization: Bearer <token>`` (for Prometheus, curl).
  A request without it gets 401 and the login form;
- every state-changing request is a POST carrying the session's CSRF token (form field
  ``csrf_token`` or header ``X-CSRF-Token``); one without gets 400, a wrong one 403.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path
from urllib.parse import urlsplit

from flask import (Blueprint, Response, abort, current_app, make_response, redirect,
                   render_template, request, session, url_for)

bp = Blueprint("auth", __name__)

COOKIE = "cblb_token"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]", "ip6-localhost"}
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def default_token_file() -> Path:
    """Where `cblb web` keeps its access token: /var/lib/cblb for root, else ~/.config/cblb."""
    if os.geteuid() == 0:
        return Path("/var/lib/cblb/web-token")
    return Path.home() / ".config" / "cblb" / "web-token"


def ensure_token(path: Path) -> tuple[str, bool]:
    """Read the access token from ``path``, generating it (mode 0600) on first use.

    Returns (token, created); the caller prints the token only when it was created.
    A token file readable by others is tightened to 0600 rather than trusted as is.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, (token + "\n").encode())
        finally:
            os.close(fd)
        return token, True
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, 0o600)
        token = os.read(fd, 4096).decode().strip()
    finally:
        os.close(fd)
    if len(token) < 16:
        raise ValueError(f"{path} holds no usable token; delete it and start again")
    return token, False


def is_loopback(host: str) -> bool:
    import ipaddress

    h = host.strip("[]")
    if h in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def csrf_token() -> str:
    """The session's CSRF token (made on first use); templates put it in forms and headers."""
    tok = session.get("csrf")
    if not tok:
        tok = session["csrf"] = secrets.token_urlsafe(24)
    return tok


def _presented_token() -> str:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[7:].strip()
    return request.cookies.get(COOKIE, "")


def token_ok(presented: str) -> bool:
    want = current_app.config.get("CBLB_TOKEN") or ""
    return bool(want) and hmac.compare_digest(presented.encode(), want.encode())


def _login_page(error: str = "", status: int = 401) -> Response:
    nxt = request.full_path if request.method == "GET" else "/"
    if request.path == url_for("auth.login"):
        nxt = request.args.get("next", "/")
    resp = make_response(render_template("login.html", error=error, next=_safe_next(nxt)), status)
    resp.headers["WWW-Authenticate"] = 'Bearer realm="cblb"'
    return resp


def _safe_next(nxt: str | None) -> str:
    """Only a local path: never redirect to another site after login."""
    if not nxt or not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt:
        return "/"
    return nxt.rstrip("?") or "/"


@bp.before_app_request
def guard() -> Response | None:
    cfg = current_app.config
    if not cfg["CBLB_REQUIRE_TOKEN"]:
        # Loopback only: refuse a foreign Host (DNS rebinding) before anything else.
        hostname = urlsplit("//" + request.host).hostname or ""
        if not is_loopback(hostname) and hostname not in cfg["CBLB_ALLOWED_HOSTS"]:
            abort(400, description=f"unexpected Host {request.host!r}: this page answers to "
                                   "127.0.0.1 or localhost only")
    if request.method in UNSAFE_METHODS:
        origin = request.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.host:
            abort(403, description="cross-site request refused (Origin does not match)")
    logging_in = request.endpoint == "auth.login" and request.method == "POST"
    if cfg["CBLB_REQUIRE_TOKEN"] and not logging_in and not token_ok(_presented_token()):
        # (the login view checks the token it is given, after the CSRF check below)
        if request.accept_mimetypes.accept_html and not request.headers.get("HX-Request"):
            return _login_page()
        return Response("401 access token required: log in at /login or send "
                        "'Authorization: Bearer <token>'\n", 401,
                        {"WWW-Authenticate": 'Bearer realm="cblb"', "Content-Type": "text/plain"})
    if request.method in UNSAFE_METHODS:
        sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
        want = session.get("csrf")
        if not sent:
            abort(400, description="CSRF token missing: reload the page and try again")
        if not want or not hmac.compare_digest(sent.encode(), want.encode()):
            abort(403, description="CSRF token does not match this session: reload the page")
    return None


@bp.after_app_request
def security_headers(resp: Response) -> Response:
    resp.headers.setdefault("X-Frame-Options", "DENY")
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "no-referrer")
    resp.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
    if request.endpoint != "static":
        resp.headers.setdefault("Cache-Control", "no-store")
    return resp


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response:
    if not current_app.config["CBLB_REQUIRE_TOKEN"]:
        return redirect(url_for("devices.index"))
    if request.method == "GET":
        if token_ok(_presented_token()):
            return redirect(_safe_next(request.args.get("next")))
        return _login_page()
    if not token_ok(request.form.get("token", "").strip()):
        return _login_page("That is not the access token. It was printed when `cblb web` "
                           "first started and is stored in its token file (mode 0600).")
    resp = redirect(_safe_next(request.form.get("next")), 303)
    resp.set_cookie(COOKIE, current_app.config["CBLB_TOKEN"], httponly=True, samesite="Strict",
                    secure=request.is_secure, max_age=30 * 24 * 3600)
    return resp


@bp.post("/logout")
def logout() -> Response:
    resp = redirect(url_for("auth.login") if current_app.config["CBLB_REQUIRE_TOKEN"]
                    else url_for("devices.index"), 303)
    resp.delete_cookie(COOKIE)
    session.clear()
    return resp
