"""The page itself, the live devices table, /api/status and the server-sent event stream."""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

from flask import (
    Blueprint,
    Response,
    current_app,
    redirect,
    render_template,
    stream_with_context,
    url_for,
)

from ..extensions import htmx
from . import history, module_status, panel_is_stale, signature
from .context import devices_context, growth_context, io_context, page_context, panel_context

bp = Blueprint("devices", __name__)


@bp.get("/")
def index() -> str:
    return render_template("index.html", **page_context())


@bp.get("/devices")
def table() -> Any:
    if not htmx:
        return redirect(url_for("devices.index"))
    return render_template("partials/devices.html", **devices_context())


@bp.get("/api/status")
def api_status() -> Response:
    st, err = module_status()
    body = st.to_json()
    body["error"] = err
    body["io"] = history().latest_io()
    return current_app.response_class(json.dumps(body, indent=1, sort_keys=True) + "\n",
                                      mimetype="application/json")


def _event(name: str, html: str) -> str:
    data = "\n".join("data: " + line for line in html.splitlines() or [""])
    return f"event: {name}\n{data}\n\n"


@bp.get("/events")
def events() -> Response:
    """Server-sent events: the devices table and the charts every few seconds, and the
    lifecycle panel whenever a snapshot changes state (its markup depends only on state)."""
    from ..auth import stays_authenticated

    cfg = current_app.config
    interval = float(cfg["CBLB_SSE_INTERVAL"])
    rounds = int(cfg["CBLB_SSE_MAX_ROUNDS"])
    still_ok = stays_authenticated()

    def stream() -> Iterator[str]:
        n = 0
        yield "retry: 3000\n\n"
        while True:
            if not still_ok():    # logged out, idle too long, token rotated: stop here
                yield _event("session-ended", render_template("partials/session_ended.html"))
                return
            dctx = devices_context()
            sig = signature(dctx["st"])
            yield _event("devices", render_template("partials/devices.html", **dctx))
            yield _event("charts-io", render_template("partials/charts_io.html", **io_context()))
            yield _event("charts-growth", render_template("partials/charts_growth.html",
                                                          **growth_context()))
            if panel_is_stale(sig):   # this page's panel shows an older state
                yield _event("lifecycle", render_template("partials/lifecycle.html",
                                                          **panel_context()))
            n += 1
            if rounds and n >= rounds:
                return
            time.sleep(interval)

    resp = Response(stream_with_context(stream()), mimetype="text/event-stream")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp
