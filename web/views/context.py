"""What the page's templates are rendered with: one builder per part of the page.

The blueprints (devices, lifecycle, charts) import these; they never import each other.
The charts read the History worker's buffers; nothing here samples anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flask import current_app, get_flashed_messages, request

from cblb.model import MAX_TOTAL
from cblb.output import human_bytes

from .. import svg
from ..history import project
from . import Problem, history, module_status, remember_panel, session_id, signature

SET_FORM_MIN = 2          # created snapshots before the page offers to start them as a set


# ---- the lifecycle panel ----------------------------------------------------------------
def partitions() -> list[str]:
    """Block devices for the origin field's suggestions, from /proc/partitions."""
    out = []
    try:
        with open("/proc/partitions") as f:
            for line in f.readlines()[2:]:
                p = line.split()
                if len(p) == 4 and not p[3].startswith(("ram", "zram")):
                    out.append(f"/dev/{p[3]}")
    except OSError:
        pass
    return out


def defaults() -> dict[str, Any]:
    c = current_app.config
    return {"catalog": c["CBLB_DEFAULT_CATALOG"], "file_mib": c["CBLB_DEFAULT_FILE_MIB"],
            "catalog_roots": c["CBLB_CATALOG_ROOTS"], "mount_roots": c["CBLB_MOUNT_ROOTS"],
            "max_files": c["CBLB_DEFAULT_MAX_FILES"], "total": c["CBLB_DEFAULT_TOTAL"],
            "mount_root": c["CBLB_MOUNT_ROOTS"][0].rstrip("/") + "/cblb",
            "max_total": MAX_TOTAL, "set_form_min": SET_FORM_MIN}


def panel_context(problem: Problem | None = None, confirm: str = "") -> dict[str, Any]:
    st, read_error = module_status()
    names = {s.name for s in st.snapshots}
    orphan = False
    if problem is not None:
        key, _, name = problem.key.partition(":")
        # An error is shown beside its form; one whose form is not on the page goes on top.
        startable = sum(1 for s in st.snapshots if s.can_start)
        orphan = (name and name not in names) or (key in ("create", "unload") and not st.loaded) \
            or (key == "load" and st.loaded) or (key == "set" and startable < SET_FORM_MIN)
    session_id()
    remember_panel(signature(st))
    return {"st": st, "read_error": read_error, "problem": problem, "problem_orphan": orphan,
            "form": request.form,
            "confirm": confirm, "defaults": defaults(), "messages": get_flashed_messages(),
            "partitions": [p for p in partitions() if p.rsplit("/", 1)[-1] not in names]}


# ---- the devices table and the whole page ------------------------------------------------
def devices_context() -> dict[str, Any]:
    st, err = module_status()
    return {"st": st, "read_error": err, "now": time.time()}


def page_context(problem: Problem | None = None, confirm: str = "") -> dict[str, Any]:
    ctx = panel_context(problem, confirm)
    ctx.update(devices_context())
    ctx.update(io_context())
    ctx.update(growth_context())
    return ctx


# ---- the charts -------------------------------------------------------------------------
COLOURS = ("s0", "s1", "s2", "s3", "s4", "s5")


def duration(sec: float) -> str:
    sec = int(sec)
    if sec < 90:
        return f"{sec} s"
    if sec < 5400:
        return f"{sec // 60} min"
    if sec < 2 * 86400:
        return f"{sec // 3600} h {sec % 3600 // 60} min"
    return f"{sec // 86400} days"


def _in_unit(unit: str) -> Callable[[float], str]:
    return lambda v: f"{v:g} {unit}"


def io_context() -> dict[str, Any]:
    _growth, io = history().view()
    tput, lat = [], []
    latest = {}
    for i, (dev, samples) in enumerate(sorted(io.items())):
        c = COLOURS[i % len(COLOURS)]
        tput.append(svg.Series(f"{dev} MB/s", [(s["ts"], s.get("write_mb_s", 0.0))
                                                for s in samples], c))
        for key, label, dashed in (("p50_us", "p50", False), ("p99_us", "p99", True),
                                   ("avg_us", "mean", False)):
            pts = [(s["ts"], s[key] / 1000.0) for s in samples if s.get(key) is not None]
            if pts:
                lat.append(svg.Series(f"{dev} {label} ms", pts, c, dashed))
        if samples:
            latest[dev] = samples[-1]
    t_chart = svg.Chart("origin write throughput (MB/s)", tput, y_fmt=lambda v: f"{v:g}",
                        empty_text="no origin writes sampled yet (sampled while a snapshot "
                                   "of the origin exists)")
    l_chart = svg.Chart("origin write latency (ms)", lat, y_fmt=lambda v: f"{v:g}",
                        empty_text="no origin writes sampled yet")
    return {"io_tput_svg": svg.render(t_chart), "io_tput_legend": svg.legend(tput),
            "io_lat_svg": svg.render(l_chart), "io_lat_legend": svg.legend(lat),
            "io_latest": latest}


def growth_context() -> dict[str, Any]:
    growth, _io = history().view()
    now = time.time()
    charts = []
    for name, pts in sorted(growth.items()):
        if not pts:
            continue
        last = pts[-1]
        proj = project(pts)
        # Ticks in round binary units: plot in MiB, or GiB for stores of 2 GiB and more.
        unit, uname = (2**30, "GiB") if last.store_bytes >= 2 * 2**30 else (2**20, "MiB")
        series = [svg.Series("copied (COW bytes)", [(p.ts, p.cow_bytes / unit) for p in pts],
                             "s0")]
        markers, caption = [], ""
        x_end = last.ts
        if proj.full_ts is not None:
            left = proj.seconds_left(last.ts) or 0.0
            span = max(last.ts - pts[0].ts, 60.0)
            # Draw the projection up to the point where the store runs out, when that is in
            # view (within 4x the history shown); else only up to the edge of the chart.
            end = min(proj.full_ts, last.ts + 4 * span)
            y_end = last.cow_bytes + proj.rate * (end - last.ts)
            series.append(svg.Series("projection at recent rate",
                                     [(last.ts, last.cow_bytes / unit), (end, y_end / unit)],
                                     "proj", True))
            x_end = end
            caption = (f"at {human_bytes(proj.rate)}/s the store is full in about "
                       f"{duration(left)} ({time.strftime('%H:%M', time.localtime(proj.full_ts))})")
            if end >= proj.full_ts:
                markers.append(svg.Marker(proj.full_ts, last.store_bytes / unit,
                                          f"full ~{time.strftime('%H:%M:%S', time.localtime(proj.full_ts))}"))
        elif last.store_bytes and last.cow_bytes >= last.store_bytes:
            caption = "the store is full: the snapshot has failed"
        else:
            caption = "not growing: the origin is not being written"
        hl = [svg.HLine(last.store_bytes / unit, f"store {human_bytes(last.store_bytes)}")] \
            if last.store_bytes else []
        chart = svg.Chart(f"{name}: temp-file store use", series, markers, hl,
                          y_fmt=_in_unit(uname),
                          x_range=(pts[0].ts, max(x_end, pts[0].ts + 1)))
        charts.append({"name": name, "svg": svg.render(chart), "legend": svg.legend(series),
                       "caption": caption, "files_used": last.files_used,
                       "max_files": last.max_files, "cow_bytes": last.cow_bytes,
                       "store_bytes": last.store_bytes,
                       "fraction": last.cow_bytes / last.store_bytes if last.store_bytes else 0})
    return {"growth_charts": charts, "now": now}
