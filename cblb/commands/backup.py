"""``cblb backup SNAPSHOT IMAGE``: copy a snapshot to an image file with a progress bar,
resumably, and write IMAGE.manifest beside it (cblb/backup.py does the work)."""

from __future__ import annotations

import argparse
import errno as E
import os

from ..backup import MANIFEST_SUFFIX, backup
from ..control import NAME_RE, Controller
from ..errors import CblbError
from ..hashing import ALGORITHMS, DEFAULT_ALGORITHM, DEFAULT_BLOCK_SIZE
from ..output import emit_json, human_bytes
from ..progress import progress_bar
from .verify import _device_size, block_size_arg, threads_arg


def _backup(args: argparse.Namespace, ctl: Controller) -> int:
    identity = None
    label = args.snapshot
    if os.path.exists(args.snapshot) or "/" in args.snapshot:
        source = args.snapshot
    elif NAME_RE.match(args.snapshot):
        snap = ctl.snapshot(args.snapshot)
        snap.require("back up")
        source = snap.device
        identity = {"snapshot": snap.name, "origin": snap.origin,
                    "start_time_ns": snap.start_time_ns}
        label = f"{snap.device} (snapshot of {snap.origin})"
    else:
        raise CblbError(f"{args.snapshot}: no such file, device or snapshot", E.ENOENT)
    size = os.path.getsize(source) if os.path.isfile(source) else _device_size(source)
    direct = None if args.direct is None else args.direct
    with progress_bar(f"backup {os.path.basename(source)}", size, not args.json) as adv:
        r = backup(source, args.image, block_size=args.block_size, algorithm=args.algorithm,
                   restart=args.restart, direct=direct, threads=args.threads, progress=adv,
                   verify=args.verify, identity=identity, label=label)
    if args.json:
        emit_json(r.to_json())
    else:
        resumed = (f", resumed at {human_bytes(r.resumed_from)}" if r.resumed_from else "")
        print(f"{r.image}: {human_bytes(r.size)} from {source} in {r.seconds:.2f} s "
              f"({r.throughput / 1e6:.0f} MB/s{resumed}); manifest {r.manifest}"
              + ("; verified" if r.verified else ""))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backup", help="backup SNAPSHOT IMAGE: copy a snapshot to an image "
                       f"(resumable) and write IMAGE{MANIFEST_SUFFIX}")
    p.add_argument("snapshot", metavar="SNAPSHOT",
                   help="snapshot name (copies /dev/NAME), or a device or image path")
    p.add_argument("image", metavar="IMAGE", help="image file to write (or a block device)")
    p.add_argument("--restart", action="store_true",
                   help="start over instead of resuming an interrupted copy (also needed to "
                        "overwrite an existing image)")
    p.add_argument("--verify", action="store_true",
                   help="re-read the image afterwards and check it against the manifest")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--direct", dest="direct", action="store_true", default=None,
                   help="read the source with O_DIRECT (default for block devices)")
    g.add_argument("--buffered", dest="direct", action="store_false",
                   help="read the source through the page cache")
    p.add_argument("--block-size", type=block_size_arg, default=DEFAULT_BLOCK_SIZE,
                   help=f"manifest block size (default {DEFAULT_BLOCK_SIZE})")
    p.add_argument("--algorithm", choices=list(ALGORITHMS), default=DEFAULT_ALGORITHM,
                   help="xxh3_64 (default) or xxh3_128")
    p.add_argument("--threads", type=threads_arg, default=None,
                   help="copy threads (default: one per CPU)")
    p.add_argument("--json", action="store_true",
                   help="print a summary: bytes, seconds, MB/s, manifest path")
    p.set_defaults(func=_backup)
