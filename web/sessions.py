"""Sessions held by the server: the browser's cookie carries a random id, nothing else.

The state (the login flag, the CSRF token) lives in this process's memory, which only root
can read, so a session ends for good when the server says so:

- at logout (the id is forgotten, a saved copy of the cookie opens nothing);
- at token rotation (web/auth.py ends a session whose login flag no longer matches);
- after ``CBLB_IDLE_TIMEOUT`` seconds without a request (default 15 minutes; the live
  stream does not count as activity, and closes when its session ends);
- after ``CBLB_SESSION_LIFETIME`` seconds whatever happens (default 8 hours);
- when the server stops.

The cookie is ``HttpOnly``, ``SameSite=Strict``, ``Secure`` when the request came over
TLS, and named after the port the page listens on (``cblb_session_8470``): browsers send
every 127.0.0.1 cookie to every port, and the name keeps two pages on one host apart and
makes a cookie caught by another port's server useless there unchanged. A login always
starts a new id (no session fixation).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Request, request
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.datastructures import CallbackDict
from werkzeug.wrappers import Response

MAX_SESSIONS = 4096     # the oldest idle ones go first beyond this (login pages make them too)


def new_id() -> str:
    return secrets.token_urlsafe(32)


@dataclass
class _Record:
    data: dict[str, Any]
    created: float
    seen: float


@dataclass
class SessionStore:
    """id -> state, with the idle and absolute limits; thread-safe."""

    idle: float
    lifetime: float
    clock: Callable[[], float] = time.monotonic
    _records: OrderedDict[str, _Record] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _live(self, sid: str, now: float) -> _Record | None:
        rec = self._records.get(sid)
        if rec is None:
            return None
        if now - rec.seen > self.idle or now - rec.created > self.lifetime:
            del self._records[sid]
            return None
        return rec

    def open(self, sid: str, touch: bool = True) -> dict[str, Any] | None:
        """The state of a live session (a copy), or None once it ended."""
        with self._lock:
            now = self.clock()
            rec = self._live(sid, now)
            if rec is None:
                return None
            if touch:
                rec.seen = now
                self._records.move_to_end(sid)
            return dict(rec.data)

    def alive(self, sid: str) -> bool:
        """Whether ``sid`` is a live session, without counting this as activity."""
        with self._lock:
            return self._live(sid, self.clock()) is not None

    def save(self, sid: str | None, data: dict[str, Any], fresh: bool = False) -> str:
        """Store ``data`` under ``sid``; returns the id. A ``fresh`` id (made by this server
        for a new login) is created; any other id that is not live gets a new random one, so
        an id a client made up never becomes a session."""
        with self._lock:
            now = self.clock()
            rec = self._live(sid, now) if sid else None
            if rec is None:
                if not (fresh and sid):
                    sid = new_id()
                rec = self._records[sid] = _Record({}, now, now)
            assert sid is not None
            rec.data, rec.seen = dict(data), now
            self._records.move_to_end(sid)
            while len(self._records) > MAX_SESSIONS:
                self._records.popitem(last=False)
            return sid

    def end(self, sid: str | None) -> None:
        with self._lock:
            if sid:
                self._records.pop(sid, None)


class ServerSession(CallbackDict[str, Any], SessionMixin):
    """Flask's ``session`` for one request: the stored state, plus the id it belongs to."""

    def __init__(self, sid: str | None, data: dict[str, Any] | None = None) -> None:
        def changed(_self: Any) -> None:
            self.modified = True

        super().__init__(data or {}, changed)
        self.sid = sid
        self.ended: str | None = None   # the id this request ended (login, logout)
        self.modified = False

    def regenerate(self) -> None:
        """End this session and continue, empty, under a new id made here (login, logout,
        token rotation): the old id opens nothing from now on."""
        self.clear()
        if self.ended is None:
            self.ended = self.sid or ""
        self.sid = new_id()


def cookie_name(request: Request) -> str:
    """``cblb_session_<port>``: the port this server listens on (not the Host header's)."""
    port = str(request.environ.get("SERVER_PORT", "")).strip()
    return f"cblb_session_{port}" if port.isdigit() else "cblb_session"


def store_of(app: Flask) -> SessionStore:
    return app.extensions["cblb_sessions"]


class ServerSessionInterface(SessionInterface):
    def open_session(self, app: Flask, request: Request) -> ServerSession:
        sid = request.cookies.get(cookie_name(request))
        data = store_of(app).open(sid) if sid else None
        if data is None:
            return ServerSession(None)
        return ServerSession(sid, data)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        assert isinstance(session, ServerSession)
        store = store_of(app)
        name = cookie_name(request)
        renewed = session.ended is not None
        if renewed:
            store.end(session.ended)
        if not session:
            if renewed:
                response.delete_cookie(name, path="/", httponly=True, samesite="Strict")
            return
        if not (session.modified or renewed or session.sid is None):
            return
        sid = store.save(session.sid, dict(session), fresh=renewed)
        if sid != request.cookies.get(name):
            response.set_cookie(name, sid, path="/", httponly=True, samesite="Strict",
                                secure=request.is_secure)

