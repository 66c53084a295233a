"""`cblb snapshot ORIGIN --mount DIR` and `cblb release DIR`: the lifecycle in one step."""

from __future__ import annotations

import argparse

from .. import oneshot
from ..control import Controller
from ..output import emit_json, human_bytes
from . import blocks_arg

DESCRIPTION = """Take a snapshot in one step: load the module if needed, create, start and
optionally mount it (read-only, nosuid, nodev, noexec unless --exec).

Defaults, each overridable:
  name     shadow-<origin's device name> (the seed's own convention: shadow-sda2)
  catalog  /var/lib/cblb/<name> (created); it may sit on the origin itself
  store    a quarter of the origin's size, at most half the catalog's free space, cut into
           temp files of 1/20 of it (8 MiB .. 200 MiB), at most 4096 files

A store smaller than what the origin is rewritten by while the snapshot lives fails the
snapshot (never the origin): give busy disks a larger --file-size or --max-files."""


def _snapshot(args: argparse.Namespace, ctl: Controller) -> int:
    s = oneshot.snapshot(ctl, args.origin, args.mount, args.name, args.catalog,
                         args.file_size, args.max_files, args.total, args.exec)
    if args.json:
        emit_json(s.to_json())
        return 0
    print(f"{s.name}: snapshot of {s.origin} taken in {s.start_latency_us / 1000:.1f} ms "
          f"(filesystem {s.freeze})")
    print(f"  temp files: up to {s.max_files} x {human_bytes(s.file_size * 512)} in {s.catalog} "
          f"(room for {human_bytes(s.store_bytes)} of changes)")
    if s.mountpoint:
        print(f"  mounted read-only at {s.mountpoint}; undo with: cblb release {s.mountpoint}")
    else:
        print(f"  device {s.device}; undo with: cblb release {s.name}")
    return 0


def _release(args: argparse.Namespace, ctl: Controller) -> int:
    name = oneshot.release(ctl, args.target)
    if args.json:
        emit_json({"name": name, "removed": True})
    else:
        print(f"{name}: unmounted and removed")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshot", help="take a snapshot in one step (load, create, start, mount)",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("origin", help="partition to snapshot, e.g. /dev/sda2")
    p.add_argument("--mount", metavar="DIR", help="mount the snapshot read-only here")
    p.add_argument("--name", help="snapshot name (default shadow-<origin>)")
    p.add_argument("--catalog", help="folder for temp files (default /var/lib/cblb/<name>)")
    p.add_argument("--file-size", type=blocks_arg, metavar="SIZE",
                   help="temp file size: 64M, 1G, ... or a bare number of 512-byte blocks "
                        "(default: derived)")
    p.add_argument("--max-files", type=int, help="most temp files (default: derived)")
    p.add_argument("--total", type=int, default=4, help="total=N if the module must be loaded")
    p.add_argument("--exec", action="store_true",
                   help="with --mount: allow running programs from the snapshot")
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    p.set_defaults(func=_snapshot)

    p = sub.add_parser("release", help="undo 'cblb snapshot': unmount and remove")
    p.add_argument("target", help="the mount folder or the snapshot name")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_release)
