"""`cblb snapshot ORIGIN... --mount DIR` and `cblb release DIR|NAME...`: the lifecycle in one
step, for one origin or for several at one point in time (a set)."""

from __future__ import annotations

import argparse
import errno as E

from .. import oneshot
from ..control import Controller
from ..errors import CblbError
from ..model import SET_MAX, Snapshot
from ..output import emit_json, human_bytes, point_in_time
from ..run import Runs
from . import blocks_arg

DESCRIPTION = f"""Take a snapshot in one step: load the module if needed, create, start and
optionally mount it (read-only, nosuid, nodev, noexec unless --exec).

Defaults, each overridable:
  name     shadow-<origin's device name> (the seed's own convention: shadow-sda2)
  catalog  /var/lib/cblb/<name> (created); it may sit on the origin itself
  store    a quarter of the origin's size, at most half the catalog's free space, cut into
           temp files of 1/20 of it (8 MiB .. 200 MiB), at most 4096 files

Several origins (up to {SET_MAX}) are taken at one point in time, as a set: a database's data
and log partitions agree with each other. Each is named shadow-<device name>, its temp
files go in CATALOG/<name> (default /var/lib/cblb/<name>), --file-size and --max-files
apply to each, and with --mount DIR each is mounted at DIR/<name>. The set is named
set-<first snapshot's name> unless --set NAME. Undo with: cblb release DIR (or the set's
name). If any step fails, everything done so far is undone.

A store smaller than what the origin is rewritten by while the snapshot lives fails the
snapshot (never the origin): give busy disks a larger --file-size or --max-files."""


def _describe(s: Snapshot, undo: bool) -> None:
    print(f"{s.name}: snapshot of {s.origin} taken in {s.start_latency_us / 1000:.1f} ms "
          f"(filesystem {s.freeze})")
    print(f"  temp files: up to {s.max_files} x {human_bytes(s.file_size * 512)} in {s.catalog} "
          f"(room for {human_bytes(s.store_bytes)} of changes)")
    if s.mountpoint:
        print(f"  mounted read-only at {s.mountpoint}"
              + (f"; undo with: cblb release {s.mountpoint}" if undo else ""))
    else:
        print(f"  device {s.device}" + (f"; undo with: cblb release {s.name}" if undo else ""))


def _snapshot(args: argparse.Namespace, ctl: Controller) -> int:
    if len(args.origin) > 1:
        return _snapshot_set(args, ctl)
    s = oneshot.snapshot(ctl, args.origin[0], args.mount, args.name, args.catalog,
                         args.file_size, args.max_files, args.total, args.exec, args.set)
    if args.json:
        emit_json(s.to_json())
        return 0
    if s.set_name:
        print(f"set {s.set_name}: point in time {point_in_time(s.start_time_ns)}")
    _describe(s, undo=True)
    return 0


def _snapshot_set(args: argparse.Namespace, ctl: Controller) -> int:
    if args.name:
        raise CblbError("--name names one snapshot; with several origins each is named "
                        "shadow-<device name> (drop --name, or use 'cblb create' for "
                        "other names)", E.EINVAL)
    r = oneshot.snapshot_set(ctl, args.origin, args.mount, args.set, args.catalog,
                             args.file_size, args.max_files, args.total, args.exec)
    if args.json:
        emit_json(r.to_json())
        return 0
    print(f"set {r.name}: {len(r.snapshots)} snapshots at one point in time, "
          f"{point_in_time(r.start_time_ns)}")
    for s in r.snapshots:
        _describe(s, undo=False)
    print(f"undo with: cblb release {args.mount or r.name}")
    return 0


def _release_stale(args: argparse.Namespace, ctl: Controller) -> int:
    """--stale: clean up after every 'cblb run' that was killed (cblb/run.py)."""
    cleaned = Runs(ctl).release_stale()
    left = [x for c in cleaned for x in c.left]
    if args.json:
        emit_json({"stale_runs": [c.to_json() for c in cleaned], "left": left})
    elif not cleaned:
        print("no stale cblb run: nothing to clean up")
    for c in cleaned if not args.json else []:
        what = ", ".join(c.removed) or "no snapshot left"
        extra = (" (ended its command)" if c.ended_command else "") + \
            (f"; removed {', '.join(c.folders)}" if c.folders else "")
        print(f"run {c.pid} (killed): released {what}{extra}")
    if left:
        raise CblbError(f"could not clean up: {'; '.join(left)}", E.EBUSY)
    return 0


def _release(args: argparse.Namespace, ctl: Controller) -> int:
    if args.stale:
        code = _release_stale(args, ctl)
        if not args.target:
            return code
    elif not args.target:
        raise CblbError("give what to release (a mount folder, snapshot or set name), or "
                        "--stale", E.EINVAL)
    done = oneshot.release(ctl, args.target)
    names = [s.name for s in done]
    if args.json:
        emit_json({"names": names, "removed": True} | ({"name": names[0]} if len(names) == 1
                                                      else {}))
        return 0
    for s in done:
        print(f"{s.name}: " + ("unmounted and removed" if s.mountpoint else "removed"))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshot", help="take a snapshot in one step (load, create, start, "
                       "mount); several origins at one point in time",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("origin", nargs="+", metavar="ORIGIN",
                   help="partition to snapshot, e.g. /dev/sda2; several: one point in time "
                        f"for all (up to {SET_MAX})")
    p.add_argument("--mount", metavar="DIR", help="mount the snapshot read-only here (several "
                   "origins: each at DIR/<name>)")
    p.add_argument("--name", help="snapshot name (default shadow-<origin>; one origin only)")
    p.add_argument("--catalog", metavar="DIR", help="folder for temp files (default "
                   "/var/lib/cblb/<name>; several origins: DIR/<name> each, created)")
    p.add_argument("--set", metavar="NAME", help="name of the set (several origins; default "
                   "set-<first snapshot's name>); with one origin, start it as a set of one")
    p.add_argument("--file-size", type=blocks_arg, metavar="SIZE",
                   help="temp file size: 64M, 1G, ... or a bare number of 512-byte blocks "
                        "(default: derived; several origins: for each)")
    p.add_argument("--max-files", type=int, help="most temp files (default: derived; several "
                   "origins: for each)")
    p.add_argument("--total", type=int, default=4, help="total=N if the module must be loaded")
    p.add_argument("--exec", action="store_true",
                   help="with --mount: allow running programs from the snapshot")
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON (several "
                   "origins: {set, start_time_ns, snapshots})")
    p.set_defaults(func=_snapshot)

    p = sub.add_parser("release", help="undo 'cblb snapshot': unmount and remove; --stale: "
                       "what killed 'cblb run's left")
    p.add_argument("target", nargs="*", metavar="TARGET",
                   help="a mount folder or snapshot name; a set's name or the --mount DIR of "
                        "a set releases every member")
    p.add_argument("--stale", action="store_true", help="clean up after every 'cblb run' "
                   "that was killed: end what is left of its command, unmount and remove its "
                   "snapshots, delete its folders and files (live runs are left alone)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_release)
