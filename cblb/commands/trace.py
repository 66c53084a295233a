"""cblb trace: what a snapshot costs, live (bcc).

Per origin device, per interval: write and read throughput, block-layer latency (log2
histogram in microseconds, p50/p99), and the module's copy-on-write work (chunks copied
per second, bytes, time spent copying, temp files created, state changes).

USAGE: cblb trace [-d DEVICE] [-j] [interval [count]]
       cblb trace --compare -d DEVICE --snapshot-catalog DIR [--fio-args ARGS]

Needs root, bcc (python3-bpfcc) and the running kernel's headers. The BPF program
(cblb/trace_bpf.c) is compiled once per run, which takes seconds (tens under emulation).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from typing import Any

from .. import trace as tracemod
from ..control import Controller
from ..errors import CblbError
from ..trace import Tracer
from ..trace_compare import compare, render_compare
from ..units import parse_bytes
from . import blocks_arg

EXAMPLES = """examples:
  cblb trace                       # every disk, refresh each second, Ctrl-C ends
  cblb trace -d loop0 5 12         # loop0 only, 5 s intervals, 12 of them
  cblb trace -d sda2 -j            # JSON, one object per line per interval
  cblb trace --compare -d loop0 --snapshot-catalog /mnt/store/cblb
  cblb trace --compare -d loop0 --snapshot-catalog /mnt/store/cblb \\
             --fio-args "--rw=write --bs=64k" --runtime 20
notes:
  Latency is block-layer request latency (issue to completion). cblb holds a write
  back before the block layer while its chunks are copied; that wait shows in the
  COW line (time copying) and in --compare's fio figures, not in the histogram.
"""

BAR = 30


def _mib_arg(text: str) -> int:
    try:
        nbytes = parse_bytes(text, bare_unit=1 << 20)
    except CblbError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if nbytes < 1 << 20 or nbytes % (1 << 20):
        raise argparse.ArgumentTypeError(f"size {text!r}: give whole MiB (at least 1M)")
    return nbytes >> 20


def _hist_lines(hist: list[list[int]], label: str) -> list[str]:
    if not hist:
        return []
    peak = max(n for _l, _h, n in hist) or 1
    out = [f"{label + ' (us)':>22} : count    distribution"]
    for low, high, n in hist:
        stars = int(round(n * BAR / peak))
        out.append(f"{low:>10} -> {high:<9}: {n:<8} |{'*' * stars:<{BAR}}|")
    return out


def _num(v: Any, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def render(rec: dict[str, Any]) -> str:
    """One interval for people, under 80 columns."""
    ts = time.strftime("%H:%M:%S", time.localtime(rec["ts"]))
    lines = [f"{ts}  {rec['device']}  interval {rec['interval_s']:.1f} s   "
             "(latency: block layer, issue -> complete)",
             f"{'':<8}{'MB/s':>10}{'IOPS':>10}{'p50 us':>10}{'p99 us':>10}{'avg us':>10}",
             f"{'write':<8}{rec['write_mb_s']:>10.2f}{rec['write_iops']:>10.0f}"
             f"{_num(rec['p50_us']):>10}{_num(rec['p99_us']):>10}"
             f"{_num(rec['write_avg_us']):>10}",
             f"{'read':<8}{rec['read_mb_s']:>10.2f}{rec['read_iops']:>10.0f}"
             f"{_num(rec['read_p50_us']):>10}{_num(rec['read_p99_us']):>10}"
             f"{_num(rec['read_avg_us']):>10}"]
    for name, d in (rec.get("per_device") or {}).items():
        lines.append(f"  {name:<12} write {d['write_mb_s']:>8.2f} MB/s "
                     f"{d['write_iops']:>7.0f} IOPS  read {d['read_mb_s']:>8.2f} MB/s")
    lines += _hist_lines(rec["write_hist_us"], "write latency")
    cow = rec["cow"]
    lines.append(f"COW  {cow['copies_per_s']:.0f} chunks/s  {cow['bytes'] / 2**20:.1f} MiB "
                 f"copied  {cow['copy_ns'] / 1e6:.1f} ms copying  "
                 f"{cow['files_created']} new temp file(s)")
    for name, s in cow["snapshots"].items():
        lines.append(f"  {name:<20} total {s['chunks']} chunks, {s['files']} file(s)")
    for ch in cow["state_changes"]:
        lines.append(f"  state: {ch['snapshot']} {ch['old']} -> {ch['new']}")
    if rec.get("missed"):
        lines.append(f"note: the kernel skipped {rec['missed']} probe run(s) (a probe "
                     "interrupted by another): up to that many requests are not counted")
    return "\n".join(lines)


def _run_trace(args: argparse.Namespace, tracer: Tracer) -> int:
    live = sys.stdout.isatty() and not args.json
    tracemod.check_environment()  # root, bcc, headers: say so before any progress line
    if not args.json:
        print("compiling the BPF program ...", file=sys.stderr, flush=True)
    tracer.start()
    if not args.json:
        print("tracing; Ctrl-C ends", file=sys.stderr, flush=True)
    try:
        for rec in tracer.records(args.interval, args.count):
            if args.json:
                sys.stdout.write(json.dumps(rec, sort_keys=True) + "\n")
            else:
                text = render(rec)
                sys.stdout.write(("\033[H\033[2J" + text + "\n") if live else text + "\n\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        tracer.close()
    return 0


def _trace(args: argparse.Namespace, ctl: Controller) -> int:
    if args.interval <= 0:
        raise CblbError("interval must be a positive number of seconds")
    if args.compare:
        return _compare(args, ctl)
    tracer = Tracer(args.device)
    if args.ebpf:
        print(tracer.ebpf_text())
        return 0
    return _run_trace(args, tracer)


def _compare(args: argparse.Namespace, ctl: Controller) -> int:
    if not args.device or not args.snapshot_catalog:
        raise CblbError("--compare needs --device DEV and --snapshot-catalog DIR")
    log = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    res = compare(args.device, args.snapshot_catalog, ctl,
                  fio_args=shlex.split(args.fio_args or ""), target=args.fio_target,
                  size_mb=args.size, runtime=args.runtime, file_size=args.file_size,
                  max_files=args.max_files, log=log)
    if args.json:
        sys.stdout.write(json.dumps(res, sort_keys=True) + "\n")
    else:
        print(render_compare(res))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="origin write latency and COW activity (bcc, root)",
                       description=__doc__.split("\n\n")[1], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("interval", nargs="?", type=float, default=1.0,
                   help="seconds per output interval (default 1)")
    p.add_argument("count", nargs="?", type=int, default=None,
                   help="number of intervals (default: until Ctrl-C)")
    p.add_argument("-d", "--device", help="origin disk or partition, e.g. loop0 or /dev/sda2 "
                   "(default: every disk)")
    p.add_argument("-j", "--json", action="store_true",
                   help="one JSON object per interval (per line)")
    p.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)
    g = p.add_argument_group("compare", "the same fio run without and with a snapshot")
    g.add_argument("--compare", action="store_true",
                   help="measure a fio workload without, then with an active snapshot")
    g.add_argument("--snapshot-catalog", metavar="DIR",
                   help="catalog folder for the temporary snapshot's files (ext4/xfs)")
    g.add_argument("--fio-args", metavar="ARGS", default="",
                   help="extra fio options, e.g. \"--rw=write --bs=64k\" (they win)")
    g.add_argument("--fio-target", metavar="PATH",
                   help="file or device fio writes (default: a file on the mounted device)")
    g.add_argument("--size", type=_mib_arg, default=64,
                   help="fio file size: 256M, 1G, ... or a bare number of MiB (default 64)")
    g.add_argument("--runtime", type=float, default=10,
                   help="seconds per phase (default 10)")
    g.add_argument("--file-size", type=blocks_arg, default=131072,
                   help="snapshot temp file size: 64M, ... or a bare number of 512-byte "
                        "blocks (default 64M)")
    g.add_argument("--max-files", type=int, default=8,
                   help="most snapshot temp files (default 8)")
    p.set_defaults(func=_trace)
