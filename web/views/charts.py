"""Charts as inline SVG partials: origin write throughput and latency, temp-file growth.

Both read the History worker's buffers (web/views/context.py builds them).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, render_template, url_for

from ..extensions import htmx
from .context import growth_context, io_context

bp = Blueprint("charts", __name__)

@bp.get("/charts/io")
def io() -> Any:
    if not htmx:
        return redirect(url_for("devices.index"))
    return render_template("partials/charts_io.html", **io_context())


@bp.get("/charts/growth")
def growth() -> Any:
    if not htmx:
        return redirect(url_for("devices.index"))
    return render_template("partials/charts_growth.html", **growth_context())
