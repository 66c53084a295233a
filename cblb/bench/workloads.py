"""The fio workloads and the parser of fio's JSON output.

Every figure comes from a run of at least ``runtime`` seconds (5 s in ``--quick``) or
512 MiB, however fast the target:

- no snapshot: ``time_based``, the job loops over its region for the whole runtime;
- *first* pass on a snapshot: each block written exactly once (fio's random map on,
  ``randrepeat=1``, fixed seed), each write forcing a copy; ``runtime`` caps it, the region
  is sized so that the cap, not the region, ends it (or the region is 512 MiB);
- *rewrite* pass: ``time_based`` over a span whose every chunk is already copied: for
  sequential writes the span the first pass wrote ([0, its bytes)); for random ones the
  whole region, after a sequential pass (``FILL``, not measured) has copied the chunks the
  first pass left (:func:`rewrite_span`). (fio's ``loops`` cannot replay a capped random
  pass: checked with write_iolog on fio 3.33, the second loop neither re-seeds nor stops
  at ``io_size``.)
  Peers publish one number mixing first writes and rewrites.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CblbError

MiB = 1 << 20
PHASES = ("first", "rewrite")


@dataclass(frozen=True)
class Workload:
    """One fio job shape. ``size`` is the region in bytes, chosen by the runner's mode."""

    name: str
    title: str
    rw: str
    bs: int
    iodepth: int = 1
    extra: tuple[str, ...] = ()

    def args(self, filename: str, size: int, offset: int = 0, io_size: int | None = None,
             lat_log: str | None = None, runtime: float | None = None,
             time_based: bool = False) -> list[str]:
        a = [f"--name={self.name}", f"--filename={filename}", f"--rw={self.rw}",
             f"--bs={self.bs}", f"--size={size}", f"--offset={offset}",
             f"--iodepth={self.iodepth}", "--direct=1", "--ioengine=libaio",
             "--randrepeat=1", "--randseed=7", "--group_reporting=1", "--thread=1",
             "--output-format=json"]
        if io_size is not None:
            a.append(f"--io_size={io_size}")
        if runtime:
            # Without time_based a cap: a first pass stops there, each block written
            # once. time_based (no snapshot, rewrites, reads) loops over the region.
            a.append(f"--runtime={max(1, round(runtime))}")
            if time_based:
                a.append("--time_based=1")
        if lat_log:
            a += [f"--write_lat_log={lat_log}", "--log_avg_msec=100"]
        return a + list(self.extra)


WORKLOADS: dict[str, Workload] = {
    w.name: w for w in (
        Workload("seq1m", "sequential 1 MiB writes", "write", MiB),
        # several writes in the air: the COW worker batches them and keeps flights going
        Workload("seq1m8", "sequential 1 MiB writes, queue depth 8", "write", MiB, iodepth=8),
        Workload("rand4k", "random 4 KiB writes", "randwrite", 4096),
        Workload("db", "database-like mix (70% reads, 8 KiB, queue depth 4)", "randrw", 8192,
                 iodepth=4, extra=("--rwmixread=70",)),
    )
}
SEQREAD = Workload("seqread", "sequential 1 MiB reads", "read", MiB)
# Before a random rewrite pass: copies every chunk of the region (not measured).
FILL = Workload("fill1m", "sequential 1 MiB writes over the region", "write", MiB)
# Changes before the snapshot-read test: random 4 KiB writes, queue depth 8 (not measured).
CHANGE = Workload("change4k", "random 4 KiB writes, queue depth 8", "randwrite", 4096,
                  iodepth=8)
# The rewrite pass of rand4k *is* "random overwrites of already-copied blocks".
OVERWRITE_LABEL = "random 4 KiB overwrites of already-copied blocks (rand4k, rewrite pass)"


@dataclass
class FioResult:
    """The figures one fio run gives, in plain units (bytes, seconds, microseconds)."""

    write_bytes: int = 0
    read_bytes: int = 0
    runtime_s: float = 0.0
    write_bw: float = 0.0        # bytes/s
    read_bw: float = 0.0
    write_iops: float = 0.0
    read_iops: float = 0.0
    write_p50_us: float = 0.0
    write_p99_us: float = 0.0
    write_mean_us: float = 0.0
    read_p50_us: float = 0.0
    read_p99_us: float = 0.0
    errors: int = 0
    argv: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        d = {k: float(v) for k, v in self.__dict__.items() if isinstance(v, (int, float))}
        return d


def _pct(clat: dict[str, Any], p: str) -> float:
    pc = clat.get("percentile") or {}
    for k, v in pc.items():
        if abs(float(k) - float(p)) < 1e-6:
            return v / 1000.0
    return 0.0


def parse_fio_json(text: str) -> FioResult:
    """Parse ``fio --output-format=json``; tolerate fio's leading warning lines."""
    start = text.find("{")
    if start < 0:
        raise CblbError(f"fio gave no JSON output: {text[:200]!r}")
    data = json.loads(text[start:])
    job = data["jobs"][0]
    r = FioResult(errors=int(job.get("error", 0)))
    for d in ("write", "read"):
        s = job.get(d) or {}
        clat = s.get("clat_ns") or {}
        setattr(r, f"{d}_bytes", int(s.get("io_bytes", 0)))
        setattr(r, f"{d}_bw", float(s.get("bw_bytes", s.get("bw", 0) * 1024)))
        setattr(r, f"{d}_iops", float(s.get("iops", 0.0)))
        setattr(r, f"{d}_p50_us", _pct(clat, "50"))
        setattr(r, f"{d}_p99_us", _pct(clat, "99"))
        if d == "write":
            r.write_mean_us = float(clat.get("mean", 0.0)) / 1000.0
    r.runtime_s = max(float((job.get("write") or {}).get("runtime", 0)),
                      float((job.get("read") or {}).get("runtime", 0))) / 1000.0
    return r


def fio_version() -> str:
    exe = shutil.which("fio")
    if not exe:
        return ""
    return subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()


def run_fio(wl: Workload, filename: str, size: int, *, offset: int = 0,
            io_size: int | None = None, lat_log: str | None = None,
            runtime: float | None = None, time_based: bool = False,
            timeout: float = 900) -> FioResult:
    exe = shutil.which("fio")
    if not exe:
        raise CblbError("fio not found; install it (apt-get install fio)")
    argv = [exe] + wl.args(filename, size, offset, io_size, lat_log, runtime, time_based)
    if lat_log:
        Path(lat_log).parent.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise CblbError(f"fio {wl.name} on {filename} failed ({p.returncode}): "
                        f"{p.stderr.strip()[:400]}")
    r = parse_fio_json(p.stdout)
    r.argv = argv[1:]
    return r


def rewrite_span(wl: Workload, path: str, region: int, done: int) -> tuple[int, int]:
    """(span, bytes written to fill it): the span a rewrite pass runs over, time-based,
    whose every chunk the snapshot has already copied. A sequential first pass copied
    [0, done); after a random one, a sequential pass over the region (not measured)
    copies the chunks it left."""
    if wl.rw == "write":
        return max(wl.bs, done // wl.bs * wl.bs), 0
    return region, run_fio(FILL, path, region).write_bytes


def read_lat_log(path: str) -> list[tuple[float, float]]:
    """(seconds, mean latency in us) rows of a fio ``*_clat.1.log`` averaged log."""
    rows = []
    try:
        with open(path) as f:
            for line in f:
                parts = [x.strip() for x in line.split(",")]
                if len(parts) >= 2:
                    rows.append((int(parts[0]) / 1000.0, int(parts[1]) / 1000.0))
    except OSError:
        pass
    return rows
