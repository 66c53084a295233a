"""The seed's lifecycle, one subcommand each: load, create, start, mount, umount, remove,
list/status, unload, and track/untrack (changed-block tracking without a snapshot). Each
takes --json (what changed, as one JSON object)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .. import keep
from ..control import Controller
from ..errors import CblbError
from ..model import MAX_TOTAL, ModuleStatus, check_total
from ..output import emit_json, human_bytes, table
from . import blocks_arg


def _say(args: argparse.Namespace, text: str, obj: dict[str, Any]) -> int:
    if args.json:
        emit_json(obj)
    else:
        print(text)
    return 0


def _load(args: argparse.Namespace, ctl: Controller) -> int:
    done = ctl.load(args.total, args.ko)
    text = (f"cblb_module loaded, total={ctl.total()}" if done
            else f"cblb_module was already loaded with total={ctl.total()}")
    return _say(args, text, {"loaded": True, "changed": done, "total": ctl.total()})


def _unload(args: argparse.Namespace, ctl: Controller) -> int:
    done = ctl.unload()
    text = "cblb_module unloaded" if done else "cblb_module is not loaded: nothing to unload"
    return _say(args, text, {"loaded": False, "changed": done})


def _create(args: argparse.Namespace, ctl: Controller) -> int:
    s = ctl.create(args.name, args.origin)
    return _say(args, f"{s.name}: created for {s.origin}", s.to_json())


def _start(args: argparse.Namespace, ctl: Controller) -> int:
    s = ctl.start(args.name, args.catalog, args.file_size, args.max_files)
    return _say(args, f"{s.name}: active; /dev/{s.name} is the snapshot of {s.origin} "
                f"(start took {s.start_latency_us / 1000:.1f} ms, filesystem {s.freeze})",
                s.to_json())


def _mount(args: argparse.Namespace, ctl: Controller) -> int:
    target = ctl.mount(args.name, args.dir, args.exec)
    s = ctl.snapshot(args.name)
    opts = "nosuid, nodev" + ("" if args.exec else ", noexec")
    return _say(args, f"/dev/{args.name} mounted read-only ({opts}) at {target}", s.to_json())


def _umount(args: argparse.Namespace, ctl: Controller) -> int:
    name = ctl.mounted_snapshot(args.target).name
    target = ctl.umount(args.target)
    return _say(args, f"{name}: unmounted from {target}", {"name": name, "unmounted": target})


def _remove(args: argparse.Namespace, ctl: Controller) -> int:
    ctl.remove(args.name)
    return _say(args, f"{args.name}: removed", {"name": args.name, "removed": True})


def _list(args: argparse.Namespace, ctl: Controller) -> int:
    st = ctl.status()
    if args.json:
        emit_json(st.to_json())
        return 0
    if not st.loaded:
        print("cblb_module is not loaded ('cblb load' loads it)")
        return 0
    print(f"cblb_module {st.version} total={st.total} used={len(st.snapshots)}")
    rows = []
    for s in st.snapshots:
        rows.append([s.name, s.set_name or "-", s.origin, s.state.value, s.catalog or "-",
                     f"{s.files_used}/{s.max_files}", human_bytes(s.cow_bytes),
                     s.mountpoint or "-", s.error or ""])
    if rows:
        # SET: the set a snapshot was started with at one point in time ('-' if alone)
        print(table(["NAME", "SET", "ORIGIN", "STATE", "CATALOG", "FILES", "COW", "MOUNTED",
                     "ERROR"], rows))
    _print_tracking(st)
    return 0


def _print_tracking(st: ModuleStatus) -> None:
    """Changed-block tracking per origin (kmod/doc/CBT.md): GENERATION (its first 8
    characters) and SEQUENCE (of the last start) are what an incremental backup rests on;
    CHANGED is what was written since the last start, in whole map blocks."""
    if not st.tracking:
        return
    rows = [[f"/dev/{t.disk}", t.short_generation or "-", t.sequence,
             human_bytes(t.changed_bytes), human_bytes(t.block_size), human_bytes(t.memory_bytes),
             next((s.name for s in st.snapshots if s.origin_dev == t.dev), "-")]
            for t in st.tracking]
    print()
    print(table(["TRACKED", "GENERATION", "SEQUENCE", "CHANGED", "BLOCK", "MEMORY",
                 "SNAPSHOT"], rows))


def _track(args: argparse.Namespace, ctl: Controller) -> int:
    t = ctl.track(args.partition)
    return _say(args, f"{args.partition}: changed blocks tracked (generation "
                f"{t.short_generation}, blocks of {human_bytes(t.block_size)}, "
                f"{human_bytes(t.memory_bytes)} of kernel memory)", t.to_json())


def _untrack(args: argparse.Namespace, ctl: Controller) -> int:
    ctl.untrack(args.partition)
    # not tracked at the next boot either (cblb-tracking.service)
    keep.forget(keep.KEEP_DIR, os.path.basename(os.path.realpath(args.partition)))
    return _say(args, f"{args.partition}: no longer tracked; its next backup must be a full one",
                {"partition": args.partition, "tracked": False})


def total_arg(text: str) -> int:
    """--total's type: not a number and out of range are both usage errors (exit 2), with
    the control library's own range message."""
    try:
        return check_total(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid total {text!r}: a whole number "
                                         f"1..{MAX_TOTAL}") from None
    except CblbError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("load", help="insmod cblb_module.ko total=N")
    p.add_argument("--total", type=total_arg, default=4,
                   help="most snapshots at once, 1..255 (default 4; costs nothing per write)")
    p.add_argument("--ko", help="path of cblb_module.ko (default: built for this kernel)")
    _json(p)
    p.set_defaults(func=_load)

    p = sub.add_parser("unload", help="rmmod cblb_module (refused while snapshots exist)")
    _json(p)
    p.set_defaults(func=_unload)

    p = sub.add_parser("create", help="create NAME ORIGIN: register a snapshot device")
    p.add_argument("name", help="snapshot device name, e.g. shadow-sda2")
    p.add_argument("origin", help="partition to snapshot, e.g. /dev/sda2")
    _json(p)
    p.set_defaults(func=_create)

    p = sub.add_parser("start", help="start NAME CATALOG FILE_SIZE MAX_FILES: take the snapshot")
    p.add_argument("name", help="the created snapshot's name")
    p.add_argument("catalog", help="existing folder for temp files (ext4/xfs)")
    p.add_argument("file_size", type=blocks_arg,
                   help="temp file size: 64M, 1G, ... or a bare number of 512-byte blocks")
    p.add_argument("max_files", type=int, help="most temp files")
    _json(p)
    p.set_defaults(func=_start)

    p = sub.add_parser("mount", help="mount NAME DIR: mount the snapshot read-only "
                       "(nosuid, nodev, noexec)")
    p.add_argument("name", help="the active snapshot's name")
    p.add_argument("dir", help="folder to mount it on (created if missing)")
    p.add_argument("--exec", action="store_true",
                   help="allow running programs from the snapshot (default noexec)")
    _json(p)
    p.set_defaults(func=_mount)

    p = sub.add_parser("umount", help="umount NAME|DIR: unmount a snapshot (only a cblb "
                       "snapshot's mount)")
    p.add_argument("target", help="the snapshot's name or the folder it is mounted on")
    _json(p)
    p.set_defaults(func=_umount)

    p = sub.add_parser("remove", help="remove NAME: delete the snapshot and its temp files")
    p.add_argument("name", help="the snapshot's name")
    _json(p)
    p.set_defaults(func=_remove)

    p = sub.add_parser("track", help="track PARTITION: track its changed blocks from now on, "
                       "without a snapshot (a snapshot's create does it too)")
    p.add_argument("partition", help="partition to track, e.g. /dev/sda2")
    _json(p)
    p.set_defaults(func=_track)

    p = sub.add_parser("untrack", help="untrack PARTITION: stop tracking its changed blocks "
                       "(refused while it has a snapshot; its next backup must be full)")
    p.add_argument("partition", help="a tracked partition, e.g. /dev/sda2")
    _json(p)
    p.set_defaults(func=_untrack)

    for name in ("list", "status"):
        p = sub.add_parser(name, help="show the module, its snapshots (with the set each "
                           "was started in) and the origins whose changed blocks it tracks")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=_list)
