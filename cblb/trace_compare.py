"""`cblb trace --compare`: the same fio workload without and with an active snapshot.

The primary figures are fio's own (completion latency clat p50/p99, bandwidth, IOPS):
they include the time cblb holds a write back while its chunks are copied, which the
block-layer histograms cannot see. The bcc records of each phase are the breakdown:
device latency (block layer only) and the module's COW work.
"""

from __future__ import annotations

import errno as E
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

from . import trace as _trace
from .control import Controller
from .errors import CblbError
from .trace import Tracer, resolve_device

DEFAULT_FIO = ["--rw=randwrite", "--bs=4k", "--direct=1", "--ioengine=psync",
               "--iodepth=1", "--time_based=1"]


def fio_argv(target: str, size_mb: int, runtime: float, extra: list[str]) -> list[str]:
    """fio command line; options in ``extra`` come last, so they win."""
    return (["fio", "--name=cblb-trace", f"--filename={target}", "--output-format=json",
             f"--size={size_mb}M", f"--runtime={runtime:g}"] + DEFAULT_FIO + extra)


def parse_fio(text: str) -> dict[str, Any]:
    """fio --output-format=json -> the figures we compare (write side, all jobs summed)."""
    start = text.find("{")
    if start < 0:
        raise CblbError("fio printed no JSON result; run the fio command by hand to see why",
                        E.EIO)
    data = json.loads(text[start:])
    jobs = data.get("jobs") or []
    if not jobs:
        raise CblbError("fio's JSON result has no jobs", E.EIO)
    w = jobs[0]["write"]
    pct = (w.get("clat_ns") or {}).get("percentile") or {}
    ios = sum(j["write"].get("total_ios", 0) for j in jobs)
    return {
        "clat_p50_us": round(pct.get("50.000000", 0) / 1000, 1),
        "clat_p99_us": round(pct.get("99.000000", 0) / 1000, 1),
        "clat_mean_us": round((w.get("clat_ns") or {}).get("mean", 0) / 1000, 1),
        "bw_mb_s": round(sum(j["write"].get("bw", 0) for j in jobs) * 1024 / 1e6, 3),
        "iops": round(sum(j["write"].get("iops", 0) for j in jobs), 1),
        "total_ios": ios,
        "usr_cpu_pct": round(jobs[0].get("usr_cpu", 0.0), 2),
        "sys_cpu_pct": round(jobs[0].get("sys_cpu", 0.0), 2),
        "fio_version": data.get("fio version", ""),
    }


def run_fio(argv: list[str]) -> dict[str, Any]:
    if not shutil.which(argv[0]):
        raise CblbError("fio is not installed: apt-get install fio", E.ENOENT)
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        msg = (r.stderr.strip() or r.stdout.strip()).splitlines()
        raise CblbError(f"fio failed: {msg[-1] if msg else r.returncode} "
                        f"(command: {shlex.join(argv)})", E.EIO)
    return parse_fio(r.stdout)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(b / a, 3) if a and b is not None else None


RATIO_KEYS = ("clat_p50_us", "clat_p99_us", "bw_mb_s", "iops")


def compare(device: str, catalog: str, ctl: Controller, *, fio_args: list[str] | None = None,
            target: str | None = None, size_mb: int = 64, runtime: float = 10,
            file_size: int = 131072, max_files: int = 8, tracer: Tracer | None = None,
            log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the workload twice (no snapshot, then an active snapshot of ``device``) and
    return both phases' fio figures, bcc records and the ratios with/without."""
    _trace.check_environment()  # root, bcc, headers: before anything is written
    dev = resolve_device(device)
    devpath = f"/dev/{dev.name}"
    ctl.require_loaded()
    if not shutil.which("fio"):
        raise CblbError("fio is not installed: apt-get install fio", E.ENOENT)
    st = os.stat(devpath)
    majmin = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    for s in ctl.snapshots():
        if s.origin_dev == majmin:
            raise CblbError(f"{devpath} already has a snapshot ({s.name}); --compare takes "
                            "its own: remove it first", E.EBUSY)
    made_file = False
    if target is None:
        mnt = next((m.target for m in ctl.system.mounts() if m.dev == majmin), "")
        if not mnt:
            raise CblbError(f"{devpath} is not mounted: give --fio-target (a file on it, or "
                            "the device itself, whose data fio will overwrite)", E.EINVAL)
        target = str(Path(mnt) / ".cblb-trace-compare.fio")
    ctl.check_catalog(catalog, file_size)
    extra = list(fio_args or [])
    own_tracer = tracer is None
    tracer = tracer or Tracer(dev.name)
    name = f"trace-cmp-{os.getpid()}"
    result: dict[str, Any] = {"device": dev.name, "target": target, "catalog": catalog,
                              "kernel": os.uname().release, "file_size": file_size,
                              "max_files": max_files}
    try:
        if not Path(target).exists() or Path(target).is_file():
            made_file = not Path(target).exists()
            log(f"laying out {size_mb} MiB at {target}")
            prep = fio_argv(target, size_mb, 0, ["--rw=write", "--bs=1M", "--time_based=0",
                                                  "--end_fsync=1"])
            run_fio([a for a in prep if not a.startswith("--runtime")])
        log("compiling the BPF program")
        tracer.start()
        argv = fio_argv(target, size_mb, runtime, extra)
        result["fio_cmdline"] = shlex.join(argv)
        log(f"phase 1/2: no snapshot: {shlex.join(argv)}")
        tracer.sample()
        without = run_fio(argv)
        bcc_without = tracer.sample()
        log(f"phase 2/2: active snapshot {name} (catalog {catalog})")
        ctl.create(name, devpath)
        try:
            ctl.start(name, catalog, file_size, max_files)
            tracer.sample()
            with_ = run_fio(argv)
            bcc_with = tracer.sample()
            snap = ctl.snapshot(name)
            result["snapshot"] = {"name": name, "state": snap.state.value,
                                  "cow_chunks": snap.cow_chunks, "cow_bytes": snap.cow_bytes,
                                  "files_used": snap.files_used,
                                  "start_latency_us": snap.start_latency_us}
        finally:
            ctl.remove(name)
    finally:
        if own_tracer:
            tracer.close()
        if made_file:
            Path(target).unlink(missing_ok=True)
    result["without"] = {"fio": without, "bcc": bcc_without}
    result["with"] = {"fio": with_, "bcc": bcc_with}
    rat = {k: ratio(without[k], with_[k]) for k in RATIO_KEYS}
    rat["device_p50_us"] = ratio(bcc_without["p50_us"], bcc_with["p50_us"])
    rat["device_p99_us"] = ratio(bcc_without["p99_us"], bcc_with["p99_us"])
    result["ratios"] = rat
    return result


def render_compare(r: dict[str, Any]) -> str:
    a, b = r["without"], r["with"]

    def row(label: str, x: Any, y: Any, rt: Any) -> str:
        def f(v: Any) -> str:
            return "-" if v is None else f"{v:.1f}"

        rs = "-" if rt is None else f"{rt:.2f}x"
        return f"{label:<26}{f(x):>10}{f(y):>10}{rs:>9}"

    rt = r["ratios"]
    lines = [
        f"cblb trace --compare  {r['device']}  kernel {r['kernel']}",
        f"workload: {r.get('fio_cmdline', '')}",
        "",
        f"{'':<26}{'without':>10}{'with':>10}{'ratio':>9}",
        "what the application sees (fio):",
        row("  clat p50 (us)", a["fio"]["clat_p50_us"], b["fio"]["clat_p50_us"],
            rt["clat_p50_us"]),
        row("  clat p99 (us)", a["fio"]["clat_p99_us"], b["fio"]["clat_p99_us"],
            rt["clat_p99_us"]),
        row("  bandwidth (MB/s)", a["fio"]["bw_mb_s"], b["fio"]["bw_mb_s"], rt["bw_mb_s"]),
        row("  IOPS", a["fio"]["iops"], b["fio"]["iops"], rt["iops"]),
        "breakdown (bcc, block layer only: excludes the COW wait):",
        row("  device write p50 (us)", a["bcc"]["p50_us"], b["bcc"]["p50_us"],
            rt["device_p50_us"]),
        row("  device write p99 (us)", a["bcc"]["p99_us"], b["bcc"]["p99_us"],
            rt["device_p99_us"]),
        row("  device reads (IOPS)", a["bcc"]["read_iops"], b["bcc"]["read_iops"], None),
    ]
    cow = b["bcc"]["cow"]
    snap = r.get("snapshot", {})
    lines.append(f"COW during the run: {cow['chunks']} chunks, {cow['bytes'] / 2**20:.1f} MiB "
                 f"copied, {cow['copy_ns'] / 1e9:.2f} s copying")
    lines.append(f"snapshot (sysfs): {snap.get('cow_chunks', 0)} chunks in "
                 f"{snap.get('files_used', 0)} temp file(s), start took "
                 f"{snap.get('start_latency_us', 0) / 1000:.1f} ms")
    return "\n".join(lines)
