"""The seed's lifecycle, one subcommand each: load, create, start, mount, umount, remove,
list/status, unload."""

from __future__ import annotations

import argparse

from ..control import Controller
from ..output import emit_json, human_bytes, table


def _load(args: argparse.Namespace, ctl: Controller) -> int:
    ctl.load(args.total, args.ko)
    print(f"cblb_module loaded, total={ctl.total()}")
    return 0


def _unload(args: argparse.Namespace, ctl: Controller) -> int:
    ctl.unload()
    print("cblb_module unloaded")
    return 0


def _create(args: argparse.Namespace, ctl: Controller) -> int:
    s = ctl.create(args.name, args.origin)
    print(f"{s.name}: created for {s.origin}")
    return 0


def _start(args: argparse.Namespace, ctl: Controller) -> int:
    s = ctl.start(args.name, args.catalog, args.file_size, args.max_files)
    print(f"{s.name}: active; /dev/{s.name} is the snapshot of {s.origin} "
          f"(start took {s.start_latency_us / 1000:.1f} ms, filesystem {s.freeze})")
    return 0


def _mount(args: argparse.Namespace, ctl: Controller) -> int:
    ctl.mount(args.name, args.dir)
    print(f"/dev/{args.name} mounted read-only at {args.dir}")
    return 0


def _umount(args: argparse.Namespace, ctl: Controller) -> int:
    ctl.umount(args.target)
    return 0


def _remove(args: argparse.Namespace, ctl: Controller) -> int:
    ctl.remove(args.name)
    print(f"{args.name}: removed")
    return 0


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
        rows.append([s.name, s.origin, s.state.value, s.catalog or "-",
                     f"{s.files_used}/{s.max_files}", human_bytes(s.cow_bytes),
                     s.mountpoint or "-", s.error or ""])
    if rows:
        print(table(["NAME", "ORIGIN", "STATE", "CATALOG", "FILES", "COW", "MOUNTED", "ERROR"],
                    rows))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("load", help="insmod cblb_module.ko total=N")
    p.add_argument("--total", type=int, default=4,
                   help="most snapshots at once, 1..255 (default 4; costs nothing per write)")
    p.add_argument("--ko", help="path of cblb_module.ko (default: built for this kernel)")
    p.set_defaults(func=_load)

    p = sub.add_parser("unload", help="rmmod cblb_module (refused while snapshots exist)")
    p.set_defaults(func=_unload)

    p = sub.add_parser("create", help="create NAME ORIGIN: register a snapshot device")
    p.add_argument("name", help="snapshot device name, e.g. shadow-sda2")
    p.add_argument("origin", help="partition to snapshot, e.g. /dev/sda2")
    p.set_defaults(func=_create)

    p = sub.add_parser("start", help="start NAME CATALOG FILE_SIZE MAX_FILES: take the snapshot")
    p.add_argument("name")
    p.add_argument("catalog", help="existing folder for temp files (ext4/xfs)")
    p.add_argument("file_size", type=int, help="temp file size in 512-byte blocks")
    p.add_argument("max_files", type=int, help="most temp files")
    p.set_defaults(func=_start)

    p = sub.add_parser("mount", help="mount NAME DIR: mount the snapshot read-only")
    p.add_argument("name")
    p.add_argument("dir")
    p.set_defaults(func=_mount)

    p = sub.add_parser("umount", help="umount NAME|DIR")
    p.add_argument("target")
    p.set_defaults(func=_umount)

    p = sub.add_parser("remove", help="remove NAME: delete the snapshot and its temp files")
    p.add_argument("name")
    p.set_defaults(func=_remove)

    for name in ("list", "status"):
        p = sub.add_parser(name, help="show the module and its snapshots")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=_list)
