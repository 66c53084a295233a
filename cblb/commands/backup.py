"""``cblb backup SNAPSHOT IMAGE [--since PREVIOUS]`` and ``cblb restore IMAGE TARGET``.

A full backup copies a snapshot to an image file with a progress bar, resumably, and writes
IMAGE.manifest beside it (cblb/backup.py), plus IMAGE.chain, the record an incremental backup
rests on. ``--since PREVIOUS`` writes an incremental image of only the blocks the module saw
change since PREVIOUS's snapshot; ``restore`` rebuilds a device from a chain
(cblb/incremental/)."""

from __future__ import annotations

import argparse
import errno as E
import os

from ..backup import MANIFEST_SUFFIX, backup
from ..control import Controller
from ..errors import CblbError
from ..hashing import ALGORITHMS, DEFAULT_ALGORITHM, DEFAULT_BLOCK_SIZE
from ..incremental import CHAIN_SUFFIX, IncrementalBackup, Restore, forget_full_record, record_full
from ..model import NAME_RE
from ..output import emit_json, human_bytes
from ..progress import progress_bar
from .verify import _device_size, block_size_arg, threads_arg


def _backup(args: argparse.Namespace, ctl: Controller) -> int:
    if args.since:
        return _backup_since(args, ctl)
    identity = None
    label = args.snapshot
    snap = None
    if os.path.exists(args.snapshot) or "/" in args.snapshot:
        source = args.snapshot
    elif NAME_RE.match(args.snapshot):
        snap = ctl.snapshot(args.snapshot)
        snap.require("back up")
        source = ctl.system.device_file(snap.device)
        identity = {"snapshot": snap.name, "origin": snap.origin,
                    "start_time_ns": snap.start_time_ns}
        label = f"{snap.device} (snapshot of {snap.origin})"
    else:
        raise CblbError(f"{args.snapshot}: no such file, device or snapshot", E.ENOENT)
    size = os.path.getsize(source) if os.path.isfile(source) else _device_size(source)
    direct = None if args.direct is None else args.direct
    if args.restart:
        forget_full_record(args.image)      # the image is about to be overwritten
    with progress_bar(f"backup {os.path.basename(source)}", size, not args.json) as adv:
        r = backup(source, args.image, block_size=args.block_size or DEFAULT_BLOCK_SIZE,
                   algorithm=args.algorithm or DEFAULT_ALGORITHM, restart=args.restart,
                   direct=direct, threads=args.threads, progress=adv, verify=args.verify,
                   identity=identity, label=label)
    chain = record_full(r.image, snap, r.size) if snap is not None else None
    if snap is None:
        forget_full_record(r.image)
    if args.json:
        j = r.to_json()
        j.update({"kind": "full", "chain": chain,
                  "generation": snap.cbt_generation if chain and snap else None,
                  "sequence": snap.cbt_sequence if chain and snap else None})
        emit_json(j)
    else:
        resumed = (f", resumed at {human_bytes(r.resumed_from)}" if r.resumed_from else "")
        print(f"{r.image}: {human_bytes(r.size)} from {source} in {r.seconds:.2f} s "
              f"({r.throughput / 1e6:.0f} MB/s{resumed}); manifest {r.manifest}"
              + ("; verified" if r.verified else ""))
        if chain and snap is not None:
            print(f"  changed-block generation {snap.cbt_generation[:8]}, sequence "
                  f"{snap.cbt_sequence}: the next snapshot of {snap.origin} can be backed up "
                  f"with --since {r.image}")
    return 0


def _backup_since(args: argparse.Namespace, ctl: Controller) -> int:
    if args.verify:
        raise CblbError("--verify checks a full image; an incremental is checked by "
                        "'cblb restore IMAGE TARGET', which verifies every block", E.EINVAL)
    if "/" in args.snapshot or not NAME_RE.fullmatch(args.snapshot):
        raise CblbError(f"--since needs a snapshot name, not {args.snapshot}: the module's map "
                        "of changed blocks comes with the snapshot", E.EINVAL)
    job = IncrementalBackup(ctl, args.snapshot, args.image, args.since, restart=args.restart)
    try:
        for opt, have, want in (("--block-size", args.block_size, job.block_size),
                                ("--algorithm", args.algorithm, job.algorithm)):
            if have is not None and have != want:
                raise CblbError(f"{opt} {have}: an incremental keeps the manifest of "
                                f"{args.since} ({want}); drop {opt}", E.EINVAL)
        with progress_bar(f"incremental {args.snapshot}", job.read_bytes,
                          not args.json) as adv:
            r = job.run(adv, args.threads)
    finally:
        job.close()
    if args.json:
        emit_json(r.to_json())
    else:
        print(f"{r.image}: {human_bytes(r.bytes_copied)} changed of {human_bytes(r.size)} "
              f"({r.extents} extents, {r.changed_blocks} blocks of "
              f"{human_bytes(r.cbt_block_size)}) in {r.seconds:.2f} s; rests on {r.base}; "
              f"manifest {r.manifest}")
        print(f"  changed-block generation {r.generation[:8]}, sequence {r.sequence}; "
              f"restore with: cblb restore {r.image} TARGET")
    return 0


def _restore(args: argparse.Namespace, ctl: Controller) -> int:
    job = Restore(args.image, args.target)
    with progress_bar(f"restore {os.path.basename(args.image)}", job.total_bytes,
                      not args.json) as adv:
        r = job.run(adv, args.threads)
    if args.json:
        emit_json(r.to_json())
    else:
        n = len(r.chain) - 1
        print(f"{r.target}: {human_bytes(r.size)} restored from {r.chain[0].path}"
              + (f" and {n} incremental{'s' if n != 1 else ''}" if n else "")
              + f" in {r.seconds:.2f} s; every block verified against "
              f"{r.chain[-1].manifest}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backup", help="backup SNAPSHOT IMAGE [--since PREVIOUS]: copy a "
                       f"snapshot to an image (resumable) and write IMAGE{MANIFEST_SUFFIX}; "
                       "with --since, only the blocks changed since PREVIOUS")
    p.add_argument("snapshot", metavar="SNAPSHOT",
                   help="snapshot name (copies /dev/NAME), or a device or image path")
    p.add_argument("image", metavar="IMAGE", help="image file to write (or a block device)")
    p.add_argument("--since", metavar="PREVIOUS",
                   help="write an incremental image: only the blocks the module saw change "
                        "since PREVIOUS (the image of the previous backup of this origin, full "
                        "or incremental) was taken, plus the manifest of the whole device; "
                        "refused, asking for a full backup, when the chain is broken")
    p.add_argument("--restart", action="store_true",
                   help="start over instead of resuming an interrupted copy (also needed to "
                        "overwrite an existing image)")
    p.add_argument("--verify", action="store_true",
                   help="re-read the image afterwards and check it against the manifest (full "
                        "backups; 'cblb restore' verifies a chain)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--direct", dest="direct", action="store_true", default=None,
                   help="read the source with O_DIRECT (default for block devices)")
    g.add_argument("--buffered", dest="direct", action="store_false",
                   help="read the source through the page cache")
    p.add_argument("--block-size", type=block_size_arg, default=None,
                   help=f"manifest block size (default {DEFAULT_BLOCK_SIZE}; with --since, "
                        "PREVIOUS's)")
    p.add_argument("--algorithm", choices=list(ALGORITHMS), default=None,
                   help="xxh3_64 (default) or xxh3_128 (with --since, PREVIOUS's)")
    p.add_argument("--threads", type=threads_arg, default=None,
                   help="copy threads (default: one per CPU)")
    p.add_argument("--json", action="store_true",
                   help="print a summary: bytes, bytes copied, seconds, MB/s, manifest path "
                        "(and, with --since, the changed blocks and the image's size)")
    p.set_defaults(func=_backup)

    p = sub.add_parser("restore", help="restore IMAGE TARGET: rebuild a device from a full "
                       "backup and the incrementals resting on it, verified block by block")
    p.add_argument("image", metavar="IMAGE",
                   help="the last backup of the chain (full or incremental); the chain is "
                        f"followed back to its full backup (IMAGE{CHAIN_SUFFIX} / each "
                        "incremental's header)")
    p.add_argument("target", metavar="TARGET",
                   help="image file to write (created, or truncated to the device's size), or "
                        "an existing block device at least that large")
    p.add_argument("--threads", type=threads_arg, default=None,
                   help="copy and hashing threads (default: one per CPU)")
    p.add_argument("--json", action="store_true",
                   help="print a summary: the chain, bytes written, seconds")
    p.set_defaults(func=_restore)
