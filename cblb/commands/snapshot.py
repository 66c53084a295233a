"""`cblb snapshot ORIGIN --mount DIR` and `cblb release DIR`: the lifecycle in one step."""

from __future__ import annotations

import argparse

from .. import oneshot
from ..control import Controller
from ..output import emit_json, human_bytes


def _snapshot(args: argparse.Namespace, ctl: Controller) -> int:
    s = oneshot.snapshot(ctl, args.origin, args.mount, args.name, args.catalog,
                         args.file_size, args.max_files, args.total)
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
    print(f"{name}: unmounted and removed")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshot", help="take a snapshot in one step (load, create, start, mount)",
                       description=oneshot.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("origin", help="partition to snapshot, e.g. /dev/sda2")
    p.add_argument("--mount", metavar="DIR", help="mount the snapshot read-only here")
    p.add_argument("--name", help="snapshot name (default shadow-<origin>)")
    p.add_argument("--catalog", help="folder for temp files (default /var/lib/cblb/<name>)")
    p.add_argument("--file-size", type=int, metavar="BLOCKS",
                   help="temp file size in 512-byte blocks (default: derived)")
    p.add_argument("--max-files", type=int, help="most temp files (default: derived)")
    p.add_argument("--total", type=int, default=4, help="total=N if the module must be loaded")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_snapshot)

    p = sub.add_parser("release", help="undo 'cblb snapshot': unmount and remove")
    p.add_argument("target", help="the mount folder or the snapshot name")
    p.set_defaults(func=_release)
