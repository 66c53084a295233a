"""Snapshots as a source for the backup tools administrators already run:

- ``cblb run ORIGIN... [--mount DIR] -- COMMAND``: a snapshot for the life of one command,
  released whatever happens (cblb/run.py); ``cblb release --stale`` (commands/snapshot.py)
  cleans what a killed run left;
- ``cblb cat SNAPSHOT``: the device's bytes on standard output (cblb/stream.py);
- ``cblb changes SNAPSHOT [--since PREVIOUS] [--json]``: the extents changed since the
  origin's previous start, from the module's map (cblb/changes.py).
"""

from __future__ import annotations

import argparse
import errno as E
import sys

from .. import changes, stream
from ..control import Controller
from ..errors import CblbError
from ..model import SET_MAX
from ..output import emit_json
from ..run import run
from . import blocks_arg

RUN_DESCRIPTION = f"""Take a snapshot of ORIGIN (several, up to {SET_MAX}: one point in time, a
set), mount it read-only at DIR (several: DIR/<name>) when --mount is given, run COMMAND,
then unmount and remove the snapshot, always: when COMMAND fails, when it is killed, on
SIGINT, SIGTERM and SIGHUP (passed on to COMMAND first). If cblb itself is killed, the next
'cblb run' or 'cblb release --stale' cleans up after it (a marker in /run/cblb/runs).
A second run of an origin while one runs is refused, naming the running one.

COMMAND gets, besides the environment of cblb:
  CBLB_ORIGINS        the origins, as given (space-separated, like every list here)
  CBLB_SNAPSHOTS      the snapshots' names (shadow-sda2)
  CBLB_DEVICES        their devices (/dev/shadow-sda2), to read with 'cblb cat' or dd
  CBLB_MOUNTS         the folders they are mounted on (with --mount)
  CBLB_SET            the set's name (several origins, or --set), else empty
  CBLB_START_TIME_NS  the point in time of the snapshot(s), ns since the epoch
  CBLB_GENERATION, CBLB_SEQUENCE, CBLB_CHANGED_FILE
                      for origins whose changes the module tracks: the changed-block
                      generation and sequence of this start, and a file with the
                      extents changed since the previous start ('cblb changes --json')

Exit status: COMMAND's (128+N when it was killed by signal N; 127 not found); 1 when the
run was refused before COMMAND started, or the release failed. cblb's own lines go to
standard error; standard output is COMMAND's."""

CHANGES_DESCRIPTION = """The extents of the origin written between its previous start and this
snapshot's, from the module's change map: exactly what 'cblb backup --since' copies, for
tools that keep images in formats of their own. --json prints one record:

  {"format": 1, "kind": "changes", "snapshot", "origin", "origin_dev", "size",
   "start_time_ns", "cbt": {"generation", "sequence", "block_size"}, "changed_bytes",
   "extents": [{"offset": BYTES, "length": BYTES}, ...]}      (sorted, disjoint)

The map covers the changes since the origin's previous start, whatever took it: keep each
record and give it as --since PREVIOUS next time, and the command refuses unless PREVIOUS
is of that very start (same generation, origin and size, sequence one less). A 'cblb run'
gives its command this record in the file CBLB_CHANGED_FILE."""

RUN_EPILOG = """examples:
  cblb run /dev/sda2 --mount /mnt/s -- restic -r /srv/restic backup /mnt/s
  cblb run /dev/sda2 --mount /mnt/s -- borg create /srv/borg::{now} /mnt/s
  cblb run /dev/sda2 --mount /mnt/s -- tar -C /mnt/s -cf /backup/sda2.tar .
  cblb run /dev/sda2 -- sh -c 'cblb cat $CBLB_SNAPSHOTS | restic -r /srv/restic backup \\
      --stdin --stdin-filename sda2.img'
  cblb run /dev/sdb1 /dev/sdc1 --mount /mnt/db -- restic -r /srv/restic backup /mnt/db
"""


def _run(args: argparse.Namespace, ctl: Controller) -> int:
    command = getattr(args, "command_words", None)
    if not command:
        raise CblbError("no command given: put it after '--' (cblb run /dev/sda2 --mount "
                        "/mnt/s -- restic backup /mnt/s)", E.EINVAL)
    r = run(ctl, args.origin, command, mount=args.mount, set_name=args.set,
            catalog=args.catalog, file_blocks=args.file_size, max_files=args.max_files,
            total=args.total, allow_exec=args.exec, quiet=args.quiet)
    return r.exit_code


def _cat(args: argparse.Namespace, ctl: Controller) -> int:
    snap = ctl.snapshot(args.snapshot)
    snap.require("back up")
    stream.cat(ctl.system.device_file(snap.device), sys.stdout.fileno())
    return 0


def _changes(args: argparse.Namespace, ctl: Controller) -> int:
    snap, size, extents = changes.changed_extents(ctl, args.snapshot)
    if args.since:
        changes.since(snap, size, args.since)
    if args.json:
        emit_json(changes.record(snap, size, extents))
        return 0
    stream.write_extents(ctl.system.device_file(snap.device), extents, sys.stdout.fileno())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="snapshot, mount, run a command (restic, borg, tar, a "
                       "script), release whatever happens",
                       usage="cblb run ORIGIN... [options] -- COMMAND [ARGS...]",
                       description=RUN_DESCRIPTION, epilog=RUN_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("origin", nargs="+", metavar="ORIGIN",
                   help="partition to snapshot, e.g. /dev/sda2; several: one point in time")
    p.add_argument("--mount", metavar="DIR", help="mount read-only here (an empty or new "
                   "folder; several origins: DIR/<name> each); made folders are removed after")
    p.add_argument("--set", metavar="NAME", help="start as a set of this name (several "
                   "origins: default set-<first snapshot's name>)")
    p.add_argument("--catalog", metavar="DIR", help="folder for temp files (default "
                   "/var/lib/cblb/<name>; several origins: DIR/<name> each)")
    p.add_argument("--file-size", type=blocks_arg, metavar="SIZE",
                   help="temp file size: 64M, 1G, ... (default: derived, as cblb snapshot)")
    p.add_argument("--max-files", type=int, help="most temp files (default: derived)")
    p.add_argument("--total", type=int, default=4, help="total=N if the module must be loaded")
    p.add_argument("--exec", action="store_true",
                   help="with --mount: allow running programs from the snapshot")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no lines of cblb's own on standard error, except errors")
    p.set_defaults(func=_run)

    p = sub.add_parser("cat", help="write a snapshot's device to standard output, at disk "
                       "speed (for restic --stdin, a pipe, a file)",
                       description="Write the whole snapshot device to standard output "
                       "in large aligned reads (O_DIRECT when the device takes it). Standard "
                       "output may be a pipe, a file or a device, not a terminal.",
                       epilog="example:\n  cblb cat shadow-sda2 | restic -r /srv/restic "
                       "backup --stdin --stdin-filename sda2.img",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("snapshot", metavar="SNAPSHOT", help="an active snapshot's name")
    p.set_defaults(func=_cat)

    p = sub.add_parser("changes", help="the extents changed since the origin's previous "
                       "start (the module's map): JSON, or the data as a sparse-aware stream",
                       description=CHANGES_DESCRIPTION,
                       epilog="examples:\n"
                       "  cblb changes shadow-sda2 --json > sda2.changes.json\n"
                       "  cblb changes shadow-sda2 --since sda2.prev.json 1<> sda2.img   "
                       "# in place\n"
                       "  cblb changes shadow-sda2 > delta.img    # sparse: only the changes\n"
                       "  cblb changes shadow-sda2 | dd of=delta.img conv=sparse\n\n"
                       "Without --json the data goes to standard output: a file or device "
                       "gets each extent at its offset (the rest untouched: a new file is "
                       "sparse, an image of the previous start opened with 1<> is brought "
                       "up to this one); a pipe gets the whole device's length with zeros "
                       "where nothing changed.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("snapshot", metavar="SNAPSHOT", help="an active snapshot's name")
    p.add_argument("--since", metavar="PREVIOUS", help="refuse unless PREVIOUS (the "
                   "--json record of the previous start, or a cblb backup of it) is of the "
                   "start just before this snapshot's")
    p.add_argument("--json", action="store_true", help="print the extents as JSON "
                   "(offset, length) with the generation and sequence")
    p.set_defaults(func=_changes)
