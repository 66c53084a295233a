"""The page's Flask app: create_app (web/__init__.py's settings).

Apart from web/__init__.py so that importing the package (the `cblb web` command, web/command.py,
loaded by every `cblb` run) does not import Flask.
"""

from __future__ import annotations

import secrets
from typing import Any

from flask import Flask

from cblb.output import human_bytes, point_in_time

from .extensions import htmx
from .history import History
from .sampler import DiskstatsSampler


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    app = Flask("web")       # the package: its templates/ and static/, its logger's name
    app.config.from_mapping(
        SECRET_KEY=secrets.token_bytes(32),      # binds login flags to this server's life
        MAX_CONTENT_LENGTH=64 * 1024,
        CBLB_IDLE_TIMEOUT=15 * 60,     # seconds without a request before a session ends
        CBLB_SESSION_LIFETIME=8 * 3600,  # seconds after login a session ends regardless
        CBLB_LOGIN_BURST=5,            # wrong tokens accepted at once ...
        CBLB_LOGIN_INTERVAL=1.0,       # ... then one per this many seconds (else 429)
        CBLB_METRICS_TOKEN="",         # a read-only token for /metrics only, or
        CBLB_METRICS_TOKEN_FILE=None,  # the file holding it
        CBLB_CONTROLLER=None,          # default: cblb.control.Controller()
        CBLB_SAMPLER=None,             # callable -> [sample, ...]; default: /proc/diskstats
        CBLB_TOKEN="",                 # the access token, or
        CBLB_TOKEN_FILE=None,          # the file holding it (re-read when it changes)
        CBLB_CHECK_HOST=True,          # bound to loopback: refuse other Host names
        CBLB_ALLOWED_HOSTS=(),         # extra Host names accepted then
        CBLB_TRUSTED_PROXIES=(),       # addresses/networks whose X-Forwarded-* count
        CBLB_HISTORY_INTERVAL=2.0,     # seconds between samples for the charts
        CBLB_HISTORY_POINTS=900,       # samples kept per series (30 min at 2 s)
        CBLB_SSE_INTERVAL=2.0,         # seconds between live updates
        CBLB_SSE_MAX_ROUNDS=0,         # 0: stream until the browser goes away (tests: 1)
        CBLB_CATALOG_ROOTS=("/var/lib/cblb",),   # not /var/tmp: every user writes there
        CBLB_DEFAULT_CATALOG="/var/lib/cblb",
        CBLB_DEFAULT_FILE_MIB=64,
        CBLB_DEFAULT_MAX_FILES=64,
        CBLB_DEFAULT_TOTAL=4,
        CBLB_MOUNT_ROOTS=("/mnt", "/media", "/run/cblb"),
        CBLB_START_WORKER=None,        # None: start the history thread unless TESTING
    )
    if test_config:
        app.config.update(test_config)
    if app.testing and "CBLB_SSE_MAX_ROUNDS" not in (test_config or {}):
        app.config["CBLB_SSE_MAX_ROUNDS"] = 1   # the test client reads a stream to its end
    from .auth import LoginThrottle, TokenSource
    from .sessions import ServerSessionInterface, SessionStore

    cfg = app.config
    app.extensions["cblb_token"] = TokenSource(cfg["CBLB_TOKEN"] or "", cfg["CBLB_TOKEN_FILE"])
    if cfg["CBLB_METRICS_TOKEN"] or cfg["CBLB_METRICS_TOKEN_FILE"]:
        app.extensions["cblb_metrics_token"] = TokenSource(cfg["CBLB_METRICS_TOKEN"] or "",
                                                           cfg["CBLB_METRICS_TOKEN_FILE"])
    app.extensions["cblb_sessions"] = SessionStore(float(cfg["CBLB_IDLE_TIMEOUT"]),
                                                   float(cfg["CBLB_SESSION_LIFETIME"]))
    app.session_interface = ServerSessionInterface()
    from .proxy import TrustedProxies

    app.wsgi_app = TrustedProxies(app.wsgi_app,   # type: ignore[method-assign]
                                  cfg["CBLB_TRUSTED_PROXIES"])
    app.extensions["cblb_login_throttle"] = LoginThrottle(int(cfg["CBLB_LOGIN_BURST"]),
                                                          float(cfg["CBLB_LOGIN_INTERVAL"]))

    if app.config["CBLB_CONTROLLER"] is None:
        from cblb.control import Controller

        app.config["CBLB_CONTROLLER"] = Controller()
    ctl = app.config["CBLB_CONTROLLER"]

    history = History(ctl, None, app.config["CBLB_HISTORY_INTERVAL"],
                      app.config["CBLB_HISTORY_POINTS"])
    sampler = app.config["CBLB_SAMPLER"]
    if sampler is None:
        sampler = DiskstatsSampler(lambda: list(history.origin_devs))
    history.sampler = sampler
    app.extensions["cblb_history"] = history

    htmx.init_app(app)
    app.jinja_env.filters["bytes"] = human_bytes
    app.jinja_env.filters["point_in_time"] = point_in_time
    app.jinja_env.globals["csrf_token"] = _csrf_token

    from . import auth
    from .views import charts, devices, lifecycle, metrics

    app.register_blueprint(auth.bp)
    app.register_blueprint(devices.bp)
    app.register_blueprint(lifecycle.bp)
    app.register_blueprint(charts.bp)
    app.register_blueprint(metrics.bp)

    start = app.config["CBLB_START_WORKER"]
    if start is None:
        start = not app.testing
    if start:
        history.start()
    return app


def _csrf_token() -> str:
    from .auth import csrf_token

    return csrf_token()
