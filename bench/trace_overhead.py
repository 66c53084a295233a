#!/usr/bin/env python3
"""trace_overhead: what `cblb trace` itself costs the writes it watches.

Runs the same fio job on a scratch loop device alternately without and with the
tracer attached (compiled once, attached/detached between runs), repeats, and reports
the medians: IOPS, fio completion latency p50/p99 and fio's CPU time, plus the
with/without ratios. Every figure is printed beside the kernel, CPU and command line it
ran with, and all of it is written as JSON to $CBLB_LAB_OUT (or --out).

USAGE: bench/trace_overhead.py [--runtime S] [--repeat N] [--bs 4k] [--rw randwrite]
                               [--device DEV] [--filtered] [--out FILE]

Needs root, bcc and fio; meant for the lab guest:
  scripts/lab --kver 6.1 -- python3 bench/trace_overhead.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cblb.trace import Tracer, check_environment  # noqa: E402
from cblb.trace_compare import parse_fio  # noqa: E402

EXAMPLES = """examples:
  bench/trace_overhead.py                       # 4k random writes, 5 x 6 s each way
  bench/trace_overhead.py --runtime 20 --repeat 5 --bs 64k --rw write
  bench/trace_overhead.py --filtered            # tracer limited to the fio device
"""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def virt() -> str:
    r = subprocess.run(["systemd-detect-virt", "--vm"], capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def prog_stats(tracer: Tracer) -> dict[str, tuple[int, int]]:
    """(run_time_ns, run_cnt) of every loaded probe, from /proc/self/fdinfo (counted only
    while kernel.bpf_stats_enabled=1): the tracer's own CPU time, measured by the kernel."""
    out = {}
    for name, fn in tracer.bpf.funcs.items():
        kv = {}
        for line in Path(f"/proc/self/fdinfo/{fn.fd}").read_text().splitlines():
            k, _, v = line.partition(":")
            kv[k.strip()] = v.strip()
        key = name.decode() if isinstance(name, bytes) else name
        out[key] = (int(kv.get("run_time_ns", 0)), int(kv.get("run_cnt", 0)))
    return out


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


def run_fio(argv: list[str]) -> dict:
    b0, t0 = busy_jiffies()
    r = subprocess.run(argv, capture_output=True, text=True, check=True)
    b1, t1 = busy_jiffies()
    res = parse_fio(r.stdout)
    res["system_busy_pct"] = round(100 * (b1 - b0) / max(t1 - t0, 1), 1)
    return res


def median(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runtime", type=float, default=6, help="seconds per fio run")
    p.add_argument("--repeat", type=int, default=5, help="runs each way (default 5)")
    p.add_argument("--bs", default="4k")
    p.add_argument("--rw", default="randwrite")
    p.add_argument("--size", default="192M", help="fio region (default 192M)")
    p.add_argument("--device", help="write this device (its data is destroyed); default: "
                   "a fresh 256 MiB loop device on /tmp")
    p.add_argument("--filtered", action="store_true",
                   help="trace only the fio device (default: every disk, like 'cblb trace')")
    p.add_argument("--out", help="JSON result file (default $CBLB_LAB_OUT/trace_overhead.json)")
    a = p.parse_args()

    check_environment()
    loop_img = None
    dev = a.device
    if not dev:
        subprocess.run(["modprobe", "loop"], check=False)
        loop_img = f"/tmp/trace-overhead-{os.getpid()}.img"
        subprocess.run(["truncate", "-s", "256M", loop_img], check=True)
        dev = subprocess.run(["losetup", "-f", "--show", loop_img], capture_output=True,
                             text=True, check=True).stdout.strip()
    argv = ["fio", "--name=overhead", f"--filename={dev}", f"--rw={a.rw}", f"--bs={a.bs}",
            "--direct=1", "--ioengine=psync", "--iodepth=1", f"--size={a.size}",
            f"--runtime={a.runtime:g}", "--time_based=1", "--randseed=42",
            "--output-format=json"]
    ctx = {"kernel": os.uname().release, "cpu": cpu_model(), "cpus": os.cpu_count(),
           "virt": virt(), "fio_cmdline": shlex.join(argv),
           "bench_cmdline": shlex.join([sys.argv[0]] + sys.argv[1:]),
           "tracer": f"cblb trace ({'device ' + dev if a.filtered else 'every disk'})"}
    tag = f"[{ctx['kernel']}, {ctx['cpu']} x{ctx['cpus']}, {ctx['virt']}]"
    print(f"kernel {ctx['kernel']}  cpu {ctx['cpu']} x{ctx['cpus']}  virt {ctx['virt']}")
    print(f"fio: {ctx['fio_cmdline']}")
    print(f"bench: {ctx['bench_cmdline']}")
    try:
        t0 = time.monotonic()
        tracer = Tracer(dev if a.filtered else None)
        tracer.compile()
        tracer.stop()
        ctx["compile_s"] = round(time.monotonic() - t0, 1)
        print(f"BPF compile + load: {ctx['compile_s']} s {tag}")
        subprocess.run(argv[:-3] + ["--runtime=2", "--time_based=1", "--output-format=json"],
                       capture_output=True, check=True)  # warm-up, not measured
        off: list[dict] = []
        on: list[dict] = []
        old_stats = BPF_STATS.read_text().strip() if BPF_STATS.exists() else None
        if old_stats is not None:
            BPF_STATS.write_text("1")
        for i in range(a.repeat):
            off.append(run_fio(argv))
            tracer.start()
            s0 = prog_stats(tracer)
            on.append(run_fio(argv))
            s1 = prog_stats(tracer)
            rec = tracer.sample()
            tracer.stop()
            ns = sum(s1[k][0] - s0[k][0] for k in s1)
            cnt = sum(s1[k][1] - s0[k][1] for k in s1)
            on[-1]["probe_ns"] = ns
            on[-1]["probe_events"] = cnt
            on[-1]["probe_ns_per_event"] = round(ns / cnt, 1) if cnt else 0.0
            on[-1]["probe_ns_per_write"] = round(ns / max(on[-1]["total_ios"], 1), 1)
            on[-1]["probe_cpu_pct"] = round(100 * ns / (a.runtime * 1e9), 3)
            on[-1]["tracer_writes_seen"] = rec["write_count"]
            print(f"run {i + 1}/{a.repeat}: iops off {off[-1]['iops']:.0f}  "
                  f"on {on[-1]['iops']:.0f}  (tracer saw {rec['write_count']} writes, "
                  f"fio issued {on[-1]['total_ios']}) {tag}")
        tracer.close()
        if old_stats is not None:
            BPF_STATS.write_text(old_stats)
    finally:
        if loop_img:
            subprocess.run(["losetup", "-d", dev], check=False)
            os.unlink(loop_img)

    keys = ("iops", "bw_mb_s", "clat_p50_us", "clat_p99_us", "usr_cpu_pct", "sys_cpu_pct",
            "system_busy_pct")
    summary = {}
    print(f"\n{'median of ' + str(a.repeat):<18}{'untraced':>10}{'traced':>10}{'ratio':>8}")
    for k in keys:
        x, y = median(off, k), median(on, k)
        r = round(y / x, 3) if x else None
        summary[k] = {"untraced": x, "traced": y, "ratio": r}
        print(f"{k:<18}{x:>10.1f}{y:>10.1f}{(f'{r:.3f}' if r else '-'):>8}  {tag}")
    overhead = round(100 * (1 - summary["iops"]["traced"] / summary["iops"]["untraced"]), 1)
    print(f"tracer overhead: {overhead}% fewer IOPS ({a.rw} {a.bs}, psync iodepth 1) {tag}")
    for k in ("probe_ns_per_event", "probe_ns_per_write", "probe_cpu_pct"):
        summary[k] = median(on, k)
        print(f"{k:<18}{summary[k]:>10.3f}  (kernel bpf_stats, median) {tag}")
    out = Path(a.out) if a.out else (Path(os.environ.get("CBLB_LAB_OUT", "/tmp"))
                                     / "trace_overhead.json")
    out.write_text(json.dumps({"context": ctx, "summary": summary,
                               "iops_overhead_pct": overhead, "untraced": off, "traced": on},
                              indent=1, sort_keys=True))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
