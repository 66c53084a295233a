"""`cblb bench`: tune total=N, the temp-file size and the number of files, side by side
with no snapshot and dm-snapshot. Writes report.html and results.json (see bench/README.md)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..control import Controller
from ..errors import CblbError


def _default_out() -> Path:
    lab = os.environ.get("CBLB_LAB_OUT")
    return Path(lab) / "bench" if lab else Path("bench-out")


def _writable(out: Path) -> bool:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
        return True
    except OSError:
        return False


def _check_out(out: Path) -> Path:
    out = out.resolve()
    lab = os.environ.get("CBLB_LAB_OUT")
    if lab:
        # In the lab guest only lab-out/ may be written, and scripts/lab shares just
        # lab-out/<kver>/ read-write: a folder elsewhere under lab-out/ lands there instead.
        root = Path(lab).resolve().parent
        if root not in out.parents and out != root:
            raise CblbError(f"--out {out} is not writable in the lab guest: choose a folder "
                            f"inside {root}")
        if not _writable(out):
            alt = Path(lab).resolve() / out.name
            print(f"cblb bench: {out} is read-only in the guest; writing to {alt}",
                  file=sys.stderr)
            out = alt
    if not _writable(out):
        raise CblbError(f"cannot write to {out}; choose another --out")
    return out


def _bench(args: argparse.Namespace, ctl: Controller) -> int:
    from ..bench import report
    if args.report_only:
        src = Path(args.report_only)
        if src.is_dir():
            src = src / "results.json"
        if not src.exists():
            raise CblbError(f"{src} not found; give a results.json or its folder")
        p = report.render_from_json(src, Path(args.out).resolve() if args.out else None)
        print(f"report: {p}")
        return 0
    if os.geteuid() != 0:
        raise CblbError("cblb bench loads the module and sets up loop devices: run it as root "
                        "(in the lab: scripts/lab --kver 6.12 -- python3 -m cblb.cli bench "
                        "--quick)")
    from ..bench.modes import MODES
    from ..bench.runner import Runner
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    cfg = MODES[mode]
    if args.reps:
        cfg.reps = args.reps
    out = _check_out(Path(args.out) if args.out else _default_out())
    argv = ["cblb", "bench"] + sys.argv[sys.argv.index("bench") + 1:] \
        if "bench" in sys.argv else ["cblb", "bench"]
    runner = Runner(cfg, out, ctl, argv=argv, kernel_note=args.kernel_note or "")
    results = runner.run()
    if args.no_report:
        report.write_results(results, out)
        print(f"results: {out / 'results.json'}\n"
              f"render the report where plotting is cheap: cblb bench --report-only {out}")
    else:
        p = report.render(results, out)
        print(f"report: {p}\nresults: {out / 'results.json'}")
    (out / "results.partial.json").unlink(missing_ok=True)
    for t in results["targets"]:
        if t["value"] is None:
            continue

        def fmt(v: float, unit: str = t["unit"]) -> str:
            return f"{v * 100:.1f}%" if unit == "frac" else f"{v:.3g}"

        rng = (f"{fmt(t['lo'])}..{fmt(t['hi'])}" if t.get("lo") is not None
               and t.get("hi") is not None else "")
        mark = {True: "met", False: "MISSED", None: "?"}[t["met"]]
        print(f"  {t.get('device', ''):3s} {t['target'][:64]:64s} {fmt(t['value']):>7s} "
              f"{rng:>15s} ({t['op']} {t['threshold']:g}) {mark}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="benchmark cblb vs no snapshot and dm-snapshot; write report.html",
        description="Measure origin writes, snapshot reads, start latency and memory with "
        "cblb, dm-snapshot and no snapshot, sweep total=N, temp-file size and max files, and "
        "write report.html + results.json. Needs root, fio and dmsetup; run it in the lab.",
        epilog="examples:\n  make bench-quick\n  scripts/lab --kver 6.12 --timeout 1500 -- "
        "python3 -m cblb.cli bench --quick --no-report --out lab-out/bench-quick\n"
        "  cblb bench --report-only lab-out/bench-quick   # re-render on the host",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="2 repetitions of 5 s runs on RAM and an SSD-like null_blk, fewer sweep "
                   "points (<20 min in the lab)")
    p.add_argument("--tiny", action="store_true",
                   help="smallest run that exercises every experiment (a few minutes; tests)")
    p.add_argument("--out", help="output folder (default $CBLB_LAB_OUT/bench or ./bench-out)")
    p.add_argument("--reps", type=int, help="repetitions per measurement (default by mode)")
    p.add_argument("--kernel-note", metavar="TEXT",
                   help="a note printed beside the kernel in the report (e.g. build under test)")
    p.add_argument("--no-report", action="store_true",
                   help="write results.json only, no plots: under QEMU's emulation (the lab) "
                   "plotting takes longer than measuring; render with --report-only on the host")
    p.add_argument("--report-only", metavar="RESULTS",
                   help="re-render report.html from an existing results.json (no root needed)")
    p.set_defaults(func=_bench)
