"""Access control for the page: the access token, the login form, CSRF and Host checks.

The page runs as root and drives the kernel, so on every bind, loopback included (any local
user can reach loopback):

- every request must prove it knows the access token: a session logged in through the form
  (the signed session cookie carries a flag derived from the token, never the token), or
  ``Authorization: Bearer <token>`` (for Prometheus, curl). A browser without it gets the
  login form, anything else 401;
- the token lives in a file only root can read; rotating it (``cblb web --rotate-token``)
  logs every session out at its next request, because the flag no longer matches;
- bound to loopback, only requests whose Host is a loopback name are served (a DNS-rebinding
  page cannot reach us under its own name);
- every state-changing request is a POST carrying the session's CSRF token (form field
  ``csrf_token`` or header ``X-CSRF-Token``); one without gets 400, a wrong one 403;
- after login, ``next`` only ever leads to a path on this site.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import stat
import threading
from hashlib import sha256
from pathlib import Path
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from . import htmx

bp = Blueprint("auth", __name__)

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION_FLAG = "auth"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]", "ip6-localhost"}
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
MIN_TOKEN = 16


def default_token_file() -> Path:
    """Where `cblb web` keeps its access token: /var/lib/cblb for root, else ~/.config/cblb."""
    if os.geteuid() == 0:
        return Path("/var/lib/cblb/web-token")
    return Path.home() / ".config" / "cblb" / "web-token"


def _write_new_token(path: Path) -> str:
    """A fresh token in ``path`` (mode 0600), replacing any old one in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return token


def read_token(path: Path) -> str:
    """The token in ``path``; a file readable by others is tightened to 0600, not trusted."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, 0o600)
        token = os.read(fd, 4096).decode().strip()
    finally:
        os.close(fd)
    if len(token) < MIN_TOKEN:
        raise ValueError(f"{path} holds no usable token; delete it and start again")
    return token


def ensure_token(path: Path) -> tuple[str, bool]:
    """Read the access token from ``path``, generating it (mode 0600) on first use.

    Returns (token, created); the caller prints the token only when it was created.
    """
    path = Path(path)
    try:
        return read_token(path), False
    except FileNotFoundError:
        return _write_new_token(path), True


def rotate_token(path: Path) -> str:
    """Replace the token in ``path``; a server reading that file takes it at its next request."""
    return _write_new_token(Path(path))


class TokenSource:
    """The current access token: fixed (``token``), or read from ``path`` and read again
    whenever that file changes, so a rotation needs no restart."""

    def __init__(self, token: str = "", path: Path | None = None) -> None:
        self.path = Path(path) if path else None
        self._token = token
        self._seen: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        if self.path:
            self.current()
        if len(self._token) < MIN_TOKEN:
            raise ValueError("the page needs an access token of at least 16 characters "
                             "(CBLB_TOKEN or CBLB_TOKEN_FILE)")

    def current(self) -> str:
        if self.path is None:
            return self._token
        with self._lock:
            st = os.stat(self.path)
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
            if seen != self._seen:
                self._token, self._seen = read_token(self.path), seen
            return self._token


def is_loopback(host: str) -> bool:
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
    return str(tok)


def _token() -> str:
    source: TokenSource = current_app.extensions["cblb_token"]
    try:
        return source.current()
    except (OSError, ValueError):
        return ""   # an unreadable token file lets nobody in


def _flag(token: str) -> str:
    """What the session carries: bound to this token and this server's secret key."""
    key = current_app.secret_key
    key_bytes = key if isinstance(key, bytes) else str(key).encode()
    return hmac.new(key_bytes, b"cblb-session:" + token.encode(), sha256).hexdigest()


def token_ok(presented: str) -> bool:
    want = _token()
    return bool(want) and hmac.compare_digest(presented.encode(), want.encode())


def authenticated() -> bool:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return token_ok(auth[7:].strip())
    flag = session.get(SESSION_FLAG)
    want = _token()
    return bool(flag and want) and hmac.compare_digest(str(flag), _flag(want))


def safe_next(nxt: str | None) -> str:
    """Only a path on this site: never somewhere else after login.

    Browsers drop tabs and newlines from URLs and read a backslash as a slash, so
    ``/\\t/evil.example`` would become ``//evil.example``: any control character, blank or
    backslash sends the user to ``/`` instead.
    """
    if not nxt or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in nxt) or "\\" in nxt:
        return "/"
    if not nxt.startswith("/") or nxt.startswith("//"):
        return "/"
    parts = urlsplit(nxt)
    if parts.scheme or parts.netloc:
        return "/"
    return nxt.rstrip("?") or "/"


def _login_page(error: str = "", status: int = 401) -> Response:
    nxt = request.full_path if request.method == "GET" else "/"
    if request.endpoint == "auth.login":
        nxt = request.values.get("next", "/")
    resp = make_response(render_template("login.html", error=error, next=safe_next(nxt)), status)
    resp.headers["WWW-Authenticate"] = 'Bearer realm="cblb"'
    return resp


@bp.before_app_request
def guard() -> BaseResponse | None:
    cfg = current_app.config
    if cfg["CBLB_CHECK_HOST"]:
        # Bound to loopback: refuse a foreign Host (DNS rebinding) before anything else.
        hostname = urlsplit("//" + request.host).hostname or ""
        if not is_loopback(hostname) and hostname not in cfg["CBLB_ALLOWED_HOSTS"]:
            abort(400, description=f"unexpected Host {request.host!r}: this page answers to "
                                   "127.0.0.1 or localhost only")
    if request.method in UNSAFE_METHODS:
        origin = request.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.host:
            abort(403, description="cross-site request refused (Origin does not match)")
    logging_in = request.endpoint == "auth.login" and request.method == "POST"
    if not logging_in and not authenticated():
        # (the login view checks the token it is given, after the CSRF check below)
        if request.accept_mimetypes.accept_html and not htmx:
            return _login_page()
        return Response("401 access token required: log in at /login or send "
                        "'Authorization: Bearer <token>'\n", 401,
                        {"WWW-Authenticate": 'Bearer realm="cblb"', "Content-Type": "text/plain"})
    if request.method in UNSAFE_METHODS:
        sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
        want = session.get("csrf")
        if not sent:
            abort(400, description="CSRF token missing: reload the page and try again")
        if not want or not hmac.compare_digest(sent.encode(), str(want).encode()):
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
def login() -> BaseResponse:
    if request.method == "GET":
        return redirect(safe_next(request.args.get("next")))   # the guard let us in: logged in
    if not token_ok(request.form.get("token", "").strip()):
        return _login_page("That is not the access token. It was printed when `cblb web` "
                           "first started and is stored in its token file (root only).")
    session.clear()                      # a fresh session: nothing from before the login
    session.permanent = True
    session[SESSION_FLAG] = _flag(_token())
    csrf_token()
    return redirect(safe_next(request.form.get("next")), 303)


@bp.post("/logout")
def logout() -> BaseResponse:
    session.clear()
    return redirect(url_for("auth.login"), 303)
