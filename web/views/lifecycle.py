"""The snapshot lifecycle, one POST each: load, unload, create, start, mount, umount, remove.

Every value from a form goes to the control library, which validates it and says what to do
when it refuses; the refusal is shown inline beside the form (HTTP 422). The page adds only
two rules of its own, because it runs as root for whoever holds the token: a snapshot is
mounted only on an empty folder under CBLB_MOUNT_ROOTS, and destructive steps (remove,
unload) need the snapshot's name typed back (``confirm``), after a GET that asks for it.

An htmx request gets the lifecycle panel back (plus the devices table, out of band); a plain
form post gets a 303 to the page on success, or the whole page with the error.
"""

from __future__ import annotations

import errno as E
import os
import shutil
from typing import Any, Callable

from flask import (Blueprint, Response, current_app, flash, get_flashed_messages, redirect,
                   render_template, request, url_for)

from cblb.control import MAX_TOTAL, SECTOR, validate_name
from cblb.errors import CblbError
from cblb.output import human_bytes

from . import Problem, controller, module_status, remember_panel, session_id, signature

bp = Blueprint("lifecycle", __name__)

MIB_BLOCKS = 2**20 // SECTOR


# ---- input ---------------------------------------------------------------------------
def _int(field: str, label: str, lo: int, hi: int) -> int:
    raw = request.form.get(field, "").strip()
    try:
        v = int(raw, 10)
    except ValueError:
        raise CblbError(f"{label} must be a whole number from {lo} to {hi} "
                        f"(got {raw[:20]!r})", E.EINVAL) from None
    if not lo <= v <= hi:
        raise CblbError(f"{label} {v} is out of range: choose {lo}..{hi}", E.EINVAL)
    return v


def _text(field: str, label: str) -> str:
    v = request.form.get(field, "").strip()
    if not v:
        raise CblbError(f"{label} is empty: fill it in", E.EINVAL)
    if "\x00" in v or len(v) > 4096:
        raise CblbError(f"{label} is not a usable path", E.EINVAL)
    return v


def check_mount_dir(path: str, roots: tuple[str, ...] | list[str]) -> str:
    """The page mounts only on an empty (or new) folder under one of ``roots``."""
    if not os.path.isabs(path) or ".." in path.split("/"):
        raise CblbError(f"mount folder {path!r} must be an absolute path without '..'", E.EINVAL)
    norm = os.path.normpath(path)
    real = os.path.realpath(norm)
    allowed = [os.path.realpath(r) for r in roots]
    if not any(real != r and real.startswith(r.rstrip("/") + "/") for r in allowed):
        raise CblbError(f"mount folder {norm} is not under {', '.join(roots)}: the page mounts "
                        "snapshots only there (use 'cblb mount' for other places)", E.EPERM)
    if os.path.exists(real):
        if not os.path.isdir(real):
            raise CblbError(f"{norm} exists and is not a folder", E.ENOTDIR)
        if os.listdir(real):
            raise CblbError(f"{norm} is not empty: mounting there would hide its files; "
                            "choose an empty or new folder", E.ENOTEMPTY)
    return norm


# ---- rendering ------------------------------------------------------------------------
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
            "max_files": c["CBLB_DEFAULT_MAX_FILES"], "total": c["CBLB_DEFAULT_TOTAL"],
            "mount_root": c["CBLB_MOUNT_ROOTS"][0].rstrip("/") + "/cblb",
            "max_total": MAX_TOTAL}


def panel_context(problem: Problem | None = None, confirm: str = "") -> dict[str, Any]:
    st, read_error = module_status()
    names = {s.name for s in st.snapshots}
    orphan = False
    if problem is not None:
        key, _, name = problem.key.partition(":")
        # An error is shown beside its form; one whose form is not on the page goes on top.
        orphan = (name and name not in names) or (key in ("create", "unload") and not st.loaded) \
            or (key == "load" and st.loaded)
    session_id()
    remember_panel(signature(st))
    return {"st": st, "read_error": read_error, "problem": problem, "problem_orphan": orphan,
            "form": request.form,
            "confirm": confirm, "defaults": defaults(), "messages": get_flashed_messages(),
            "partitions": [p for p in partitions() if p.rsplit("/", 1)[-1] not in names]}


def respond(problem: Problem | None = None, message: str = "", confirm: str = "") -> Any:
    status = 422 if problem else 200
    if request.headers.get("HX-Request"):
        if message:
            flash(message)
        from .devices import devices_context

        ctx = panel_context(problem, confirm)
        ctx.update(devices_context())
        return render_template("partials/lifecycle_response.html", **ctx), status
    if problem is None and not confirm:
        if message:
            flash(message)
        return redirect(url_for("devices.index"), 303)
    from .devices import page_context

    return render_template("index.html", **page_context(problem, confirm)), status


def act(key: str, fn: Callable[[], str]) -> Any:
    try:
        message = fn()
    except CblbError as e:
        return respond(Problem(key, str(e)))
    return respond(message=message)


# ---- routes -------------------------------------------------------------------------------
@bp.get("/lifecycle")
def panel() -> Any:
    if not request.headers.get("HX-Request"):
        return redirect(url_for("devices.index"))
    return render_template("partials/lifecycle.html", **panel_context())


@bp.get("/lifecycle/cost")
def cost() -> str:
    """What a start with these parameters would cost (live preview beside the form)."""
    a = request.args
    try:
        mib = int(a.get("file_mib", ""))
        files = int(a.get("max_files", ""))
    except ValueError:
        return render_template("partials/cost.html", bad="file size and max files must be "
                               "whole numbers")
    if mib < 1 or files < 1:
        return render_template("partials/cost.html", bad="file size and max files must be "
                               "at least 1")
    catalog = a.get("catalog", "").strip()
    free = None
    if os.path.isabs(catalog) and os.path.isdir(catalog):
        try:
            free = shutil.disk_usage(catalog).free
        except OSError:
            free = None
    return render_template("partials/cost.html", bad="", file_bytes=mib * 2**20, files=files,
                           store=mib * 2**20 * files, free=free, catalog=catalog)


@bp.post("/module/load")
def load() -> Any:
    def run() -> str:
        total = _int("total", "total", 1, MAX_TOTAL)
        controller().load(total)
        return f"cblb_module loaded with total={total}"
    return act("load", run)


@bp.get("/module/unload")
def unload_confirm() -> Any:
    return respond(confirm="module")


@bp.post("/module/unload")
def unload() -> Any:
    def run() -> str:
        if request.form.get("confirm") != "unload":
            raise CblbError("type 'unload' to confirm unloading the module", E.EINVAL)
        controller().unload()
        return "cblb_module unloaded"
    return act("unload", run)


@bp.post("/snapshots")
def create() -> Any:
    def run() -> str:
        name = request.form.get("name", "").strip()
        origin = _text("origin", "origin")
        s = controller().create(name, origin)
        return f"{s.name}: created for {s.origin}; start it to take the snapshot"
    return act("create", run)


@bp.post("/snapshots/<name>/start")
def start(name: str) -> Any:
    def run() -> str:
        validate_name(name)
        catalog = _text("catalog", "catalog")
        mib = _int("file_mib", "file size (MiB)", 1, (2**31 - 1) // MIB_BLOCKS)
        files = _int("max_files", "max files", 1, 4096)
        s = controller().start(name, catalog, mib * MIB_BLOCKS, files)
        return (f"{s.name}: active; /dev/{s.name} is the snapshot of {s.origin} "
                f"(start took {s.start_latency_us / 1000:.1f} ms)")
    return act(f"start:{name}", run)


@bp.post("/snapshots/<name>/mount")
def mount(name: str) -> Any:
    def run() -> str:
        validate_name(name)
        target = check_mount_dir(_text("dir", "mount folder"), current_app.config["CBLB_MOUNT_ROOTS"])
        controller().mount(name, target)
        return f"/dev/{name} mounted read-only at {target}"
    return act(f"mount:{name}", run)


@bp.post("/snapshots/<name>/umount")
def umount(name: str) -> Any:
    def run() -> str:
        s = controller().snapshot(name)   # validates the name; never a free-form path
        if not s.mountpoint:
            raise CblbError(f"{name} is not mounted", E.EINVAL)
        controller().umount(name)
        return f"{name}: unmounted from {s.mountpoint}"
    return act(f"umount:{name}", run)


@bp.get("/snapshots/<name>/remove")
def remove_confirm(name: str) -> Any:
    try:
        controller().snapshot(name)
    except CblbError as e:
        return respond(Problem(f"remove:{name}", str(e)))
    return respond(confirm=name)


@bp.post("/snapshots/<name>/remove")
def remove(name: str) -> Any:
    def run() -> str:
        validate_name(name)
        if request.form.get("confirm") != name:
            raise CblbError(f"type the name {name} to confirm: remove deletes the snapshot "
                            "and its temp files", E.EINVAL)
        controller().remove(name)
        return f"{name}: removed, temp files deleted"
    return act(f"remove:{name}", run)

