"""Access control for the page: the access token, the login form, CSRF and Host checks.

The page runs as root and drives the kernel, so on every bind, loopback included (any local
user can reach loopback):

- every request must prove it knows the access token: a session logged in through the form
  (held by the server, web/sessions.py; the cookie carries only its id), or
  ``Authorization: Bearer <token>`` (curl). A browser without it gets the login form,
  anything else 401;
- ``/metrics`` also takes its own read-only token (``CBLB_METRICS_TOKEN_FILE``), which
  opens nothing else, so a Prometheus configuration never holds the admin token;
- the token lives in a file owned by root and readable by no one else (a file that is not
  is refused, never tightened and trusted); rotating it (``cblb web --rotate-token``) ends
  every session at its next request, and its live stream within one round;
- failed logins (and wrong bearer tokens) draw from one bucket: a burst of
  ``CBLB_LOGIN_BURST`` then one per ``CBLB_LOGIN_INTERVAL`` seconds; beyond, 429 without
  looking at the token. Every login, failed login, logout and action is logged (logger
  ``cblb.web``; ``cblb web`` sends it to syslog) with the session's tag and the peer;
- bound to loopback, only requests whose Host is a loopback name are served (a DNS-rebinding
  page cannot reach us under its own name);
- every state-changing request is a POST carrying the session's CSRF token (form field
  ``csrf_token`` or header ``X-CSRF-Token``); one without gets 400, a wrong one 403;
- after login, ``next`` only ever leads to a path on this site.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable
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

from .extensions import htmx
from .sessions import ServerSession

bp = Blueprint("auth", __name__)
log = logging.getLogger("cblb.web")

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


def check_secret_file(path: Path, st: os.stat_result) -> None:
    """A file holding a secret must be a regular file owned by root (or by the user the page
    runs as) that no one else can read or write, as ssh's StrictModes asks. A file that is
    not is refused: someone else could have read it, or written their own token into it."""
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path} is not a regular file")
    if st.st_uid not in (0, os.geteuid()):
        raise ValueError(f"{path} is owned by uid {st.st_uid}, not root: refused (someone "
                         "else could have written it); delete it and start again")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ValueError(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: others may have "
                         "read it, so it is refused; rotate it (cblb web --rotate-token "
                         "writes a new one, mode 0600)")


def read_token(path: Path) -> str:
    """The token in ``path``, refused unless check_secret_file() accepts the file."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        check_secret_file(path, os.fstat(fd))
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


class LoginThrottle:
    """One bucket for every failed try, whoever makes it: ``burst`` at once, then one per
    ``interval`` seconds. A try finds the bucket empty -> 429, and the token is not looked
    at. (On loopback every user has the same address, so a per-address limit would not
    slow a local user down; the price is that a flood of wrong tries delays the
    administrator's login too, for as long as it lasts.)"""

    def __init__(self, burst: int, interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.interval, self.clock = burst, interval, clock
        self._tokens, self._at = float(burst), clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Take one try; False when none is left (then answer 429)."""
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) / self.interval)
            self._at = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True

    def give_back(self) -> None:
        """The try succeeded: it costs nothing."""
        with self._lock:
            self._tokens = min(self.burst, self._tokens + 1)

    def wait(self) -> int:
        with self._lock:
            return max(1, int((1 - self._tokens) * self.interval + 0.999))


def session_tag() -> str:
    """A short name for this request's session in logs: derived from its id, not the id."""
    sid = getattr(session._get_current_object(), "sid", None)  # type: ignore[attr-defined]
    return sha256(sid.encode()).hexdigest()[:10] if sid else "-"


def audit(event: str, **fields: object) -> None:
    """One line per login, failed login, logout and action: who (session tag, peer) and what."""
    extra = "".join(f" {k}={v!r}" for k, v in fields.items())
    log.info("%s session=%s peer=%s%s", event, session_tag(), request.remote_addr, extra)


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


def _token(which: str = "cblb_token") -> str:
    source: TokenSource | None = current_app.extensions.get(which)
    if source is None:
        return ""
    try:
        return source.current()
    except (OSError, ValueError):
        return ""   # an unreadable (or no longer trusted) token file lets nobody in


def _flag(token: str) -> str:
    """What the session carries: bound to this token and this server's secret key."""
    key = current_app.secret_key
    key_bytes = key if isinstance(key, bytes) else str(key).encode()
    return hmac.new(key_bytes, b"cblb-session:" + token.encode(), sha256).hexdigest()


def token_ok(presented: str, which: str = "cblb_token") -> bool:
    want = _token(which)
    return bool(want) and hmac.compare_digest(presented.encode(), want.encode())


def _throttle() -> LoginThrottle:
    return current_app.extensions["cblb_login_throttle"]


class Throttled(Exception):
    pass


def _bearer_ok(presented: str) -> bool:
    """The admin token anywhere; the metrics token on GET /metrics only."""
    if not _throttle().take():
        raise Throttled()
    ok = token_ok(presented) or (request.endpoint == "metrics.metrics"
                                 and request.method == "GET"
                                 and token_ok(presented, "cblb_metrics_token"))
    if ok:
        _throttle().give_back()
    else:
        audit("bearer-refused", path=request.path)
    return ok


def session_alive() -> bool:
    """Whether this request's session is still logged in with the current token, without
    counting as activity (the live stream asks this every round)."""
    from .sessions import store_of

    sess = session._get_current_object()  # type: ignore[attr-defined]
    sid = getattr(sess, "sid", None)
    flag, want = session.get(SESSION_FLAG), _token()
    return bool(sid and flag and want and store_of(current_app).alive(sid)
                and hmac.compare_digest(str(flag), _flag(want)))


def stays_authenticated() -> Callable[[], bool]:
    """For a long response (the live stream): a check, not counting as activity, that the
    credential this request came with still holds (the session is live and its login flag
    matches the current token, or the bearer token is still the token)."""
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        presented = auth[7:].strip()
        return lambda: token_ok(presented)
    return session_alive


def authenticated() -> bool:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return _bearer_ok(auth[7:].strip())
    flag = session.get(SESSION_FLAG)
    if not flag:
        return False
    want = _token()
    if want and hmac.compare_digest(str(flag), _flag(want)):
        return True
    audit("session-ended", why="the access token changed or is unreadable")
    _end_session()
    return False


def _end_session() -> None:
    sess = session._get_current_object()  # type: ignore[attr-defined]
    if isinstance(sess, ServerSession):
        sess.regenerate()
    else:
        sess.clear()


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
        allowed = {h.lower().strip("[]") for h in cfg["CBLB_ALLOWED_HOSTS"]}
        if not is_loopback(hostname) and hostname.strip("[]") not in allowed:
            names = ", ".join(["127.0.0.1", "localhost", *sorted(allowed)])
            abort(400, description=f"unexpected Host {request.host[:100]!r}: this page "
                                   f"answers to {names} only")
    if request.method in UNSAFE_METHODS:
        origin = request.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.host:
            abort(403, description="cross-site request refused (Origin does not match)")
    logging_in = request.endpoint == "auth.login" and request.method == "POST"
    try:
        ok = logging_in or authenticated()
    except Throttled:
        return _too_many()
    if not ok:
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


def _too_many() -> Response:
    wait = _throttle().wait()
    audit("login-throttled", path=request.path)
    return Response(f"429 too many wrong access tokens: try again in {wait} s\n", 429,
                    {"Retry-After": str(wait), "Content-Type": "text/plain"})


@bp.after_app_request
def audit_actions(resp: Response) -> Response:
    if request.method in UNSAFE_METHODS and request.endpoint not in ("auth.login",
                                                                     "auth.logout"):
        audit("action", method=request.method, path=request.path, status=resp.status_code)
    return resp


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
    if not _throttle().take():
        return _too_many()
    if not token_ok(request.form.get("token", "").strip()):
        audit("login-failed")
        return _login_page("That is not the access token. It was printed when the page's "
                           "server first started and is kept in its token file (root only).")
    _throttle().give_back()
    _end_session()                       # a fresh session id: nothing from before the login
    session[SESSION_FLAG] = _flag(_token())
    csrf_token()
    audit("login")
    return redirect(safe_next(request.form.get("next")), 303)


@bp.post("/logout")
def logout() -> BaseResponse:
    audit("logout")
    _end_session()
    return redirect(url_for("auth.login"), 303)
