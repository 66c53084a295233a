"""The snapshot lifecycle, one POST each: load, unload, create, start, start several created
snapshots as one set (one point in time), mount, umount, remove.

Every value from a form goes to the control library, which validates it and says what to do
when it refuses; the refusal is shown inline beside the form (HTTP 422). The page adds only
the rules of cblb/folders.py (temp files only in CBLB_CATALOG_ROOTS, mounts only under
CBLB_MOUNT_ROOTS), and destructive steps (remove, unload) need the snapshot's name typed back
(``confirm``), after a GET that asks for it.

An htmx request gets the lifecycle panel back (plus the devices table, out of band); a plain
form post gets a 303 to the page on success, or the whole page with the error.
"""

from __future__ import annotations

import errno as E
import os
import shutil
from collections.abc import Callable
from typing import Any

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)

from cblb.errors import CblbError
from cblb.folders import check_catalog_dir, check_mount_dir, member_catalogs, within
from cblb.model import MAX_FILES, MAX_TOTAL, SECTOR, SetMember, validate_name
from cblb.oneshot import check_set_name_free, default_set_name

from ..extensions import htmx
from . import Problem, controller
from .context import devices_context, page_context, panel_context

bp = Blueprint("lifecycle", __name__)

MIB_BLOCKS = 2**20 // SECTOR


# ---- input ---------------------------------------------------------------------------
FILE_MIB_MAX = (2**31 - 1) // MIB_BLOCKS


def whole_number(raw: str, label: str, lo: int, hi: int) -> int:
    """``raw`` as a number in lo..hi, or a refusal that echoes at most 20 characters of it
    (a number of 4,000 digits is refused by its length, never computed with)."""
    raw = raw.strip()
    digits = raw.removeprefix("-")
    if not digits.isdigit():
        raise CblbError(f"{label} must be a whole number from {lo} to {hi} "
                        f"(got {raw[:20]!r})", E.EINVAL)
    if len(digits) > len(str(hi)):
        raise CblbError(f"{label} {raw[:20]}... is out of range: choose {lo}..{hi}", E.EINVAL)
    v = int(raw, 10)
    if not lo <= v <= hi:
        raise CblbError(f"{label} {v} is out of range: choose {lo}..{hi}", E.EINVAL)
    return v


def _int(field: str, label: str, lo: int, hi: int) -> int:
    return whole_number(request.form.get(field, ""), label, lo, hi)


def _text(field: str, label: str) -> str:
    v = request.form.get(field, "").strip()
    if not v:
        raise CblbError(f"{label} is empty: fill it in", E.EINVAL)
    if "\x00" in v or len(v) > 4096:
        raise CblbError(f"{label} is not a usable path", E.EINVAL)
    return v


def respond(problem: Problem | None = None, message: str = "", confirm: str = "") -> Any:
    status = 422 if problem else 200
    if htmx:
        if message:
            flash(message)
        ctx = panel_context(problem, confirm)
        ctx.update(devices_context())
        return render_template("partials/lifecycle_response.html", **ctx), status
    if problem is None and not confirm:
        if message:
            flash(message)
        return redirect(url_for("devices.index"), 303)
    return render_template("index.html", **page_context(problem, confirm)), status


def act(key: str, fn: Callable[[], str]) -> Any:
    try:
        message = fn()
    except CblbError as e:
        return respond(Problem(key, e.for_page()))
    return respond(message=message)


# ---- routes -------------------------------------------------------------------------------
@bp.get("/lifecycle")
def panel() -> Any:
    if not htmx:
        return redirect(url_for("devices.index"))
    return render_template("partials/lifecycle.html", **panel_context())


@bp.get("/lifecycle/cost")
def cost() -> Any:
    """What a start with these parameters would cost (live preview beside the form).

    The catalog's free space is shown only for a folder the page may use: a path elsewhere
    gets the same answer whether it exists or not."""
    a = request.args
    try:
        mib = whole_number(a.get("file_mib", ""), "file size (MiB)", 1, FILE_MIB_MAX)
        files = whole_number(a.get("max_files", ""), "max files", 1, MAX_FILES)
    except CblbError as e:
        return render_template("partials/cost.html", bad=e.for_page()), 422
    catalog = a.get("catalog", "").strip()
    roots = current_app.config["CBLB_CATALOG_ROOTS"]
    allowed = within(catalog, roots)
    free = None
    if allowed and os.path.isdir(catalog):
        try:
            free = shutil.disk_usage(catalog).free
        except OSError:
            free = None
    return render_template("partials/cost.html", bad="", file_bytes=mib * 2**20, files=files,
                           store=mib * 2**20 * files, free=free, catalog=catalog,
                           allowed=allowed, roots=roots)


@bp.post("/module/load")
def load() -> Any:
    def run() -> str:
        total = _int("total", "total", 1, MAX_TOTAL)
        if not controller().load(total):
            return f"cblb_module was already loaded with total={total}"
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
        if not controller().unload():
            return "cblb_module was not loaded"
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
        catalog = check_catalog_dir(_text("catalog", "catalog"),
                                    current_app.config["CBLB_CATALOG_ROOTS"])
        mib = _int("file_mib", "file size (MiB)", 1, FILE_MIB_MAX)
        files = _int("max_files", "max files", 1, MAX_FILES)
        s = controller().start(name, catalog, mib * MIB_BLOCKS, files)
        return (f"{s.name}: active; /dev/{s.name} is the snapshot of {s.origin} "
                f"(start took {s.start_latency_us / 1000:.1f} ms)")
    return act(f"start:{name}", run)


@bp.post("/sets")
def start_set() -> Any:
    """Start the ticked created snapshots at one point in time (startset). Each member's temp
    files go in <catalog root>/<name> (cblb/folders.py); the sizes apply to each member."""
    def run() -> str:
        ctl = controller()
        names = [n.strip() for n in request.form.getlist("member")]
        if not names:
            raise CblbError("no snapshot is ticked: tick the created snapshots to start at "
                            "one point in time", E.EINVAL)
        for n in names:
            validate_name(n)
        set_name = request.form.get("set_name", "").strip() or default_set_name(names)
        validate_name(set_name, "set")
        root = _text("catalog", "catalog root")
        mib = _int("file_mib", "file size (MiB)", 1, FILE_MIB_MAX)
        files = _int("max_files", "max files", 1, MAX_FILES)
        check_set_name_free(ctl, set_name)
        for n in names:                      # before any folder is made for them
            ctl.snapshot(n).require("start")
        catalogs = member_catalogs(root, names, current_app.config["CBLB_CATALOG_ROOTS"])
        try:
            snaps = ctl.start_set(set_name, [SetMember(n, cat, mib * MIB_BLOCKS, files)
                                             for n, (cat, _made) in zip(names, catalogs)])
        except CblbError:
            for cat, made in catalogs:
                if made:
                    try:
                        os.rmdir(cat)
                    except OSError:
                        pass
            raise
        return (f"set {set_name}: {', '.join(s.name for s in snaps)} active at one point in "
                "time")
    return act("set", run)


@bp.post("/snapshots/<name>/mount")
def mount(name: str) -> Any:
    def run() -> str:
        validate_name(name)
        target = check_mount_dir(_text("dir", "mount folder"),
                                 current_app.config["CBLB_MOUNT_ROOTS"])
        allow_exec = request.form.get("exec") == "on"
        target = controller().mount(name, target, allow_exec)
        return (f"/dev/{name} mounted read-only at {target} (nosuid, nodev"
                + ("" if allow_exec else ", noexec") + ")")
    return act(f"mount:{name}", run)


@bp.post("/snapshots/<name>/umount")
def umount(name: str) -> Any:
    def run() -> str:
        validate_name(name)   # a name, never a free-form path
        return f"{name}: unmounted from {controller().umount(name)}"
    return act(f"umount:{name}", run)


@bp.get("/snapshots/<name>/remove")
def remove_confirm(name: str) -> Any:
    try:
        controller().snapshot(name)
    except CblbError as e:
        return respond(Problem(f"remove:{name}", e.for_page()))
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

