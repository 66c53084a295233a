"""Block-hash verification: manifest, verify and diff.

- ``cblb manifest DEVICE -o FILE``: one XXH3 digest per block, in a manifest file.
- ``cblb verify A --against B``: B is a device, an image or a manifest. Exit 0 when equal,
  1 when they differ (the differing ranges are listed as block numbers), 2 on trouble (a
  missing file, an unreadable device), as cmp(1) does.
- ``cblb diff SNAPSHOT``: blocks where a snapshot and its live origin now differ, checked
  against the module's copy-on-write accounting. Exit 0 when consistent, 2 on trouble, 3
  when a block differs that the module never copied (a correctness bug).
"""

from __future__ import annotations

import argparse
import errno as E
import os
import sys

from ..control import Controller
from ..errors import CblbError
from ..hashing import ALGORITHMS, DEFAULT_BLOCK_SIZE, check_manifest_block_size, parse_size
from ..model import NAME_RE
from ..output import emit_json, human_bytes
from ..progress import progress_bar
from ..verify import (
    Comparison,
    compare,
    diff_snapshot,
    engine_for,
    format_ranges,
    make_manifest,
    open_side,
    total_bytes,
)

EXIT_BUG = 3


def resolve_source(ctl: Controller, arg: str) -> str:
    """A path as given, or /dev/<name> of the snapshot called ``arg``."""
    if os.path.exists(arg) or "/" in arg:
        return arg
    if NAME_RE.match(arg):
        return ctl.system.device_file(ctl.snapshot(arg).device)
    raise CblbError(f"{arg}: no such file, device or snapshot", E.ENOENT)


def block_size_arg(text: str) -> int:
    try:
        return check_manifest_block_size(parse_size(text))
    except CblbError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def threads_arg(text: str) -> int:
    n = int(text)
    if not 1 <= n <= 1024:
        raise argparse.ArgumentTypeError(f"threads {n} is out of range: 1..1024")
    return n


def _mbps(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:.0f} MB/s" if seconds > 0 else "-"


def print_comparison(c: Comparison, max_ranges: int) -> None:
    unit = f"{c.block_size}-byte blocks, {c.algorithm}"
    speed = (f"; {human_bytes(c.bytes_hashed)} hashed in {c.seconds:.2f} s "
             f"({_mbps(c.bytes_hashed, c.seconds)})")
    if c.size_a != c.size_b:
        print(f"sizes differ: {c.a} has {c.size_a} bytes, {c.b} has {c.size_b}")
    if c.equal:
        print(f"equal: {c.a} and {c.b} ({c.blocks} {unit}){speed}")
        return
    print(f"differ: {c.differing} of {c.blocks} blocks ({unit}) in {len(c.ranges)} "
          f"range{'s' if len(c.ranges) != 1 else ''}{speed}")
    for line in format_ranges(c.ranges, max_ranges):
        print(f"  {line}")


def _manifest(args: argparse.Namespace, ctl: Controller) -> int:
    src = resolve_source(ctl, args.device)
    size = os.path.getsize(src) if os.path.isfile(src) else _device_size(src)
    with progress_bar(f"manifest {os.path.basename(src)}", size, not args.json) as adv:
        r = make_manifest(src, args.output, args.block_size, args.algorithm, args.direct,
                          args.threads, adv)
    if args.json:
        emit_json(r.to_json())
    else:
        print(f"{r.path}: {r.blocks} {r.algorithm} digests of {r.block_size}-byte blocks of "
              f"{src} ({human_bytes(r.size)} in {r.seconds:.2f} s, {_mbps(r.size, r.seconds)})")
    return 0


def _device_size(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return 0  # the engine reports the real error
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _verify(args: argparse.Namespace, ctl: Controller) -> int:
    a = resolve_source(ctl, args.a)
    b = resolve_source(ctl, args.against)
    sa = open_side(a, args.direct)
    try:
        sb = open_side(b, args.direct)
        try:
            eng = engine_for(sa, sb, args.block_size, args.algorithm, args.threads)
            with eng, progress_bar("verify", total_bytes(sa, sb), not args.json) as adv:
                c = compare(eng, sa, sb, adv)
        finally:
            sb.close()
    finally:
        sa.close()
    if args.json:
        emit_json(c.to_json())
    else:
        print_comparison(c, args.max_ranges)
    return 0 if c.equal else 1


def _diff(args: argparse.Namespace, ctl: Controller) -> int:
    snap = ctl.snapshot(args.snapshot)
    size = _device_size(snap.device)
    with progress_bar(f"diff {snap.name}", 2 * size, not args.json) as adv:
        d = diff_snapshot(ctl, args.snapshot, not args.buffered, args.threads, adv)
    if args.json:
        emit_json(d.to_json())
    else:
        c = d.comparison
        print(f"{d.name}: {d.differing_chunks} of {c.blocks} chunks ({d.chunk_size} bytes) "
              f"differ from the origin {d.origin} "
              f"({_mbps(c.bytes_hashed, c.seconds)}); the module reports {d.cow_chunks} "
              f"copied; {d.store_chunks} differing chunks lie in its temp files")
        for line in format_ranges(c.ranges, args.max_ranges):
            print(f"  {line}")
        if d.consistent:
            print("consistent: every differing chunk was copied before the origin changed")
    if not d.consistent:
        print(f"cblb: BUG: {d.differing_chunks - d.store_chunks} chunks of {d.name} differ "
              f"from the origin outside the module's temp files, but the module reports only "
              f"{d.cow_chunks} copied: {d.unexplained} changed without a copy; the snapshot "
              "does not hold the point-in-time data (cblb_module correctness bug; please "
              "report it with 'cblb diff --json' and dmesg)", file=sys.stderr)
        return EXIT_BUG
    return 0


def _common(p: argparse.ArgumentParser, block_size: bool = True) -> None:
    if block_size:
        p.add_argument("--block-size", type=block_size_arg, default=None,
                       help=f"bytes per hashed block: 4096, 4k, 1M ... (default "
                            f"{DEFAULT_BLOCK_SIZE}, or the manifest's)")
        p.add_argument("--algorithm", choices=list(ALGORITHMS), default=None,
                       help="xxh3_64 (default, 8-byte digests) or xxh3_128")
    p.add_argument("--threads", type=threads_arg, default=None,
                   help="hashing threads (default: one per CPU)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manifest", help="manifest DEVICE -o FILE: block hashes of a device "
                       "or image into a manifest file")
    p.add_argument("device", help="block device, image file or snapshot name")
    p.add_argument("-o", "--output", required=True, help="manifest file to write")
    p.add_argument("--direct", action="store_true", help="read with O_DIRECT (bypass the "
                   "page cache)")
    _common(p)
    p.set_defaults(func=_manifest_defaults(_manifest), trouble_exit=2)

    p = sub.add_parser("verify", help="verify A --against B: compare block by block "
                       "(exit 0 equal, 1 differ, 2 trouble)")
    p.add_argument("a", metavar="A", help="block device, image, manifest or snapshot name")
    p.add_argument("--against", required=True, metavar="B",
                   help="block device, image, manifest or snapshot name")
    p.add_argument("--direct", action="store_true", help="read devices with O_DIRECT")
    p.add_argument("--max-ranges", type=int, default=50,
                   help="differing ranges to list (default 50; 0 lists all)")
    _common(p)
    p.set_defaults(func=_verify, trouble_exit=2)

    p = sub.add_parser("diff", help="diff SNAPSHOT: blocks where the snapshot and its live "
                       "origin differ, checked against the module's copies (exit 0 "
                       "consistent, 2 trouble, 3 a module bug)")
    p.add_argument("snapshot", help="snapshot name")
    p.add_argument("--buffered", action="store_true",
                   help="read through the page cache (default: O_DIRECT)")
    p.add_argument("--max-ranges", type=int, default=50,
                   help="differing ranges to list (default 50; 0 lists all)")
    _common(p, block_size=False)
    p.set_defaults(func=_diff, trouble_exit=2)


def _manifest_defaults(fn):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace, ctl: Controller) -> int:
        args.block_size = args.block_size or DEFAULT_BLOCK_SIZE
        args.algorithm = args.algorithm or "xxh3_64"
        return fn(args, ctl)
    return run
