"""What a snapshot costs, measured with bcc: origin I/O latency and the module's COW work.

The BPF program (cblb/trace_bpf.c, tracepoints only) is compiled once per :class:`Tracer`
and keeps cumulative counters; :meth:`Tracer.sample` subtracts the previous reading, so
every record covers one interval:

    {"ts": 1718000000.1, "interval_s": 1.0, "device": "loop0",
     "write_mb_s": 12.1, "write_iops": 2950.0, "p50_us": 41.0, "p99_us": 230.0,
     "write_hist_us": [[32, 63, 2100], ...],          # log2 buckets, [low, high, count]
     "read_mb_s": ..., "read_iops": ..., "read_p50_us": ..., "read_p99_us": ...,
     "read_hist_us": [...], "totals": {...cumulative since start...},
     "cow": {"copies_per_s": ..., "chunks": ..., "bytes": ..., "copy_ns": ...,
             "batches": ..., "files_created": ..., "state_changes": [...],
             "snapshots": {"<name>": {...cumulative...}}},
     "missed": 0}

``missed`` counts probe runs the kernel skipped in the interval: a BPF program is not
run while another one runs on the same CPU (an I/O completion interrupting a probe), so
each skipped run may lose one request from the figures. It is the programs'
``recursion_misses`` (kernel 5.12 and later; 0 where the kernel does not say).

Latency is block-layer request latency (block:block_rq_issue -> block:block_rq_complete):
the time the disk spends on a request. cblb holds an origin write back *before* the
block layer while its chunks are copied, so that wait is not in these figures; it shows
in the application's own completion latency (fio's clat, which ``cblb trace --compare``
reports) and in the COW section (``copy_ns``). MB/s are 10^6 bytes per second.

The web page and the benchmarks use :class:`Tracer` (or :func:`records`) directly; the
command line is cblb/commands/trace.py.
"""

from __future__ import annotations

import errno as E
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import CblbError

BPF_SOURCE = Path(__file__).with_name("trace_bpf.c")
TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
OP_READ, OP_WRITE = 0, 1
OPS = {OP_READ: "read", OP_WRITE: "write"}
NAME_LEN = 32

# ---------------------------------------------------------------------------------------
# Environment checks: one actionable line each.


def _import_bcc() -> Any:
    try:
        import bcc  # type: ignore[import-not-found]
    except ImportError:
        raise CblbError("bcc is not installed: apt-get install python3-bpfcc bpfcc-tools "
                        "(a venv needs --system-site-packages to see it)", E.ENOENT) from None
    return bcc


def tracefs() -> Path | None:
    for d in TRACEFS_DIRS:
        if (d / "events").is_dir():
            return d
    return None


def kernel_headers_present(release: str | None = None) -> bool:
    release = release or os.uname().release
    return (Path(f"/lib/modules/{release}/build/include").is_dir()
            or Path("/sys/kernel/kheaders.tar.xz").exists())


def cblb_tracepoints_present() -> bool:
    d = tracefs()
    return bool(d and (d / "events/cblb/cblb_cow/format").exists())


def bpf_supported() -> bool:
    """The bpf() system call exists (CONFIG_BPF_SYSCALL) iff this sysctl does."""
    return Path("/proc/sys/kernel/unprivileged_bpf_disabled").exists()


def check_environment() -> Any:
    """Raise CblbError unless we can compile and attach the probes; return the bcc module."""
    if os.geteuid() != 0:
        raise CblbError("cblb trace needs root to load BPF programs: run it with sudo",
                        E.EPERM)
    bcc = _import_bcc()
    if not bpf_supported():
        raise CblbError("this kernel has no BPF support (built without CONFIG_BPF_SYSCALL): "
                        "boot a distribution kernel to trace", E.ENOSYS)
    release = os.uname().release
    if not kernel_headers_present(release):
        raise CblbError(f"kernel headers for {release} are missing (bcc compiles against "
                        f"them): apt-get install linux-headers-{release}", E.ENOENT)
    d = tracefs()
    if d is None:
        raise CblbError("tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing",
                        E.ENOENT)
    if not (d / "events/block/block_rq_issue").is_dir():
        raise CblbError(f"the block tracepoints are missing from {d}/events/block: this "
                        "kernel was built without CONFIG_BLK_DEV_IO_TRACE/tracepoints",
                        E.ENOENT)
    return bcc


# ---------------------------------------------------------------------------------------
# Devices


def kernel_dev(major: int, minor: int) -> int:
    """The kernel's internal dev_t (MKDEV), as block tracepoints report it."""
    return (major << 20) | minor


def user_majmin(kdev: int) -> tuple[int, int]:
    return kdev >> 20, kdev & ((1 << 20) - 1)


@dataclass
class DeviceFilter:
    """The device to trace: block tracepoints name the whole disk, so a partition is the
    disk plus a sector range."""

    name: str            # what the user asked for, e.g. "sda2" or "loop0"
    disk: str            # whole disk, e.g. "sda"
    kdev: int            # kernel dev_t of the disk
    lo: int = 0          # first sector of a partition on the disk
    hi: int = 0          # one past its last sector; 0 = whole disk

    def cflags(self) -> list[str]:
        return [f"-DFILTER_DEV={self.kdev}", f"-DFILTER_LO={self.lo}ULL",
                f"-DFILTER_HI={self.hi}ULL"]


def resolve_device(device: str, sysfs: Path = Path("/sys/class/block")) -> DeviceFilter:
    """loop0, /dev/loop0 or a symlink to it -> DeviceFilter (partitions supported)."""
    path = Path(device if device.startswith("/") else f"/dev/{device}")
    name = path.resolve().name if path.exists() else Path(device).name
    d = sysfs / name
    if not (d / "dev").exists():
        raise CblbError(f"{device}: no such block device; give one such as loop0 or "
                        "/dev/sda2 ('lsblk' lists them)", E.ENOENT)
    if (d / "partition").exists():
        disk = d.resolve().parent.name
        start = int((d / "start").read_text())
        size = int((d / "size").read_text())
        major, minor = (int(x) for x in (sysfs / disk / "dev").read_text().split(":"))
        return DeviceFilter(name, disk, kernel_dev(major, minor), start, start + size)
    major, minor = (int(x) for x in (d / "dev").read_text().split(":"))
    return DeviceFilter(name, name, kernel_dev(major, minor))


_NAMES: dict[int, str] = {}


def disk_name(kdev: int) -> str:
    if kdev not in _NAMES:
        major, minor = user_majmin(kdev)
        p = Path(f"/sys/dev/block/{major}:{minor}")
        _NAMES[kdev] = p.resolve().name if p.exists() else f"{major}:{minor}"
    return _NAMES[kdev]


# ---------------------------------------------------------------------------------------
# Histograms: slots as trace_bpf.c's lat_slot() writes them.


def slot_bounds(slot: int) -> tuple[float, float]:
    """[low, high) microseconds covered by one fine slot."""
    if slot < 16:
        return float(slot), float(slot + 1)
    log = (slot - 8) // 8 + 4              # bpf_log2l(us) = floor(log2(us)) + 1
    sub = (slot - 8) % 8
    width = 1 << (log - 4)
    low = (1 << (log - 1)) + sub * width
    return float(low), float(low + width)


def log2_index(slot: int) -> int:
    """bcc's log2 bucket (floor(log2(us)) + 1, 0 for 0 us) of a fine slot."""
    return int(slot_bounds(slot)[0]).bit_length()


def log2_hist(fine: dict[int, int]) -> list[list[int]]:
    """Fine slots -> [[low_us, high_us, count], ...] in log2 buckets, from the first to
    the last non-empty bucket (bcc's print_log2_hist ranges)."""
    buckets: dict[int, int] = {}
    for slot, n in fine.items():
        if n:
            i = log2_index(slot)
            buckets[i] = buckets.get(i, 0) + n
    if not buckets:
        return []
    out = []
    for i in range(min(buckets), max(buckets) + 1):
        low, high = (0, 0) if i == 0 else ((1 << i) >> 1, (1 << i) - 1)
        out.append([low, high, buckets.get(i, 0)])
    return out


def percentile(fine: dict[int, int], q: float) -> float | None:
    """q-th percentile (0..100) in microseconds, interpolated inside a fine slot
    (error below 1/8 of a power of two)."""
    total = sum(fine.values())
    if total == 0:
        return None
    rank = q / 100.0 * total
    seen = 0
    for slot in sorted(fine):
        n = fine[slot]
        if n and seen + n >= rank:
            low, high = slot_bounds(slot)
            return round(low + (high - low) * max(rank - seen, 0) / n, 1)
        seen += n
    low, high = slot_bounds(max(fine))
    return high


# ---------------------------------------------------------------------------------------
# Raw readings and interval records (pure: testable without a kernel)


def empty_reading(t: float = 0.0) -> dict[str, Any]:
    return {"t": t, "wall": 0.0, "io": {}, "lat": {}, "cow": {}, "states": [], "missed": 0}


def _sub(a: dict, b: dict) -> dict:
    out = {}
    for k, v in a.items():
        old = b.get(k)
        if isinstance(v, tuple):
            out[k] = tuple(x - (old[i] if old else 0) for i, x in enumerate(v))
        else:
            out[k] = v - (old or 0)
    return out


COW_FIELDS = ("batches", "chunks", "bytes", "ns", "files", "file_blocks")


def _op_fields(io: dict, lat: dict, devs: set[int] | None, op: int,
               dt: float) -> dict[str, Any]:
    """Figures for one direction; write percentiles are p50_us/p99_us, read ones
    read_p50_us/read_p99_us."""
    count = nbytes = ns = 0
    for (dev, o), (c, b, n) in io.items():
        if o == op and (devs is None or dev in devs):
            count, nbytes, ns = count + c, nbytes + b, ns + n
    fine: dict[int, int] = {}
    for (dev, o, slot), n in lat.items():
        if o == op and (devs is None or dev in devs) and n:
            fine[slot] = fine.get(slot, 0) + n
    p50, p99 = percentile(fine, 50), percentile(fine, 99)
    name = "write" if op == OP_WRITE else "read"
    pfx = "" if op == OP_WRITE else "read_"
    return {
        f"{name}_mb_s": round(nbytes / dt / 1e6, 3) if dt else 0.0,
        f"{name}_iops": round(count / dt, 1) if dt else 0.0,
        f"{pfx}p50_us": p50,
        f"{pfx}p99_us": p99,
        f"{name}_avg_us": round(ns / count / 1000, 1) if count else None,
        f"{name}_count": count,
        f"{name}_bytes": nbytes,
        f"{name}_hist_us": log2_hist(fine),
    }


def device_record(io: dict, lat: dict, devs: set[int] | None, dt: float) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    rec.update(_op_fields(io, lat, devs, OP_WRITE, dt))
    rec.update(_op_fields(io, lat, devs, OP_READ, dt))
    return rec


def build_record(prev: dict[str, Any], cur: dict[str, Any], device: str | None,
                 per_device: bool = False) -> dict[str, Any]:
    """One interval's record from two cumulative readings (see the module docstring)."""
    dt = cur["t"] - prev["t"]
    io = _sub(cur["io"], prev["io"])
    lat = _sub(cur["lat"], prev["lat"])
    rec: dict[str, Any] = {"ts": round(cur["wall"], 3), "interval_s": round(dt, 3),
                           "device": device or "all"}
    rec.update(device_record(io, lat, None, dt))
    tot: dict[str, int] = {"writes": 0, "write_bytes": 0, "reads": 0, "read_bytes": 0}
    for (_dev, op), (c, b, _n) in cur["io"].items():
        key = "writes" if op == OP_WRITE else "reads"
        tot[key] += c
        tot[key.rstrip("s") + "_bytes"] += b
    rec["totals"] = tot
    rec["missed"] = cur.get("missed", 0) - prev.get("missed", 0)
    if per_device:
        devs = sorted({d for d, _ in cur["io"]})
        rec["per_device"] = {disk_name(d): device_record(io, lat, {d}, dt) for d in devs
                             if any(io.get((d, o), (0,))[0] for o in OPS)}
    cow = _sub(cur["cow"], prev["cow"])
    sums = {f: 0 for f in COW_FIELDS}
    for vals in cow.values():
        for f, v in zip(COW_FIELDS, vals):
            sums[f] += v
    rec["cow"] = {
        "copies_per_s": round(sums["chunks"] / dt, 1) if dt else 0.0,
        "chunks": sums["chunks"],
        "bytes": sums["bytes"],
        "copy_ns": sums["ns"],
        "batches": sums["batches"],
        "files_created": sums["files"],
        "state_changes": list(cur["states"]),
        "snapshots": {name: dict(zip(COW_FIELDS, vals)) for name, vals in
                      sorted(cur["cow"].items())},
    }
    return rec


# ---------------------------------------------------------------------------------------
# The tracer


class Tracer:
    """Compile trace_bpf.c once; attach, sample and detach as often as needed.

    ``device``: trace only this disk or partition (None: every disk, with a per-device
    breakdown in each record). ``with_cblb``: attach the module's tracepoints (default:
    when they exist, i.e. the module is loaded at compile time).
    """

    BLOCK_TPS = ("block:block_rq_issue", "block:block_rq_complete")
    CBLB_TPS = ("cblb:cblb_cow", "cblb:cblb_file", "cblb:cblb_state")

    def __init__(self, device: str | None = None, with_cblb: bool | None = None) -> None:
        self.filter = resolve_device(device) if device else None
        self.with_cblb = cblb_tracepoints_present() if with_cblb is None else with_cblb
        self.bpf: Any = None
        self.attached = False
        self._prev: dict[str, Any] = empty_reading()
        self._states: list[dict[str, Any]] = []
        self._boot_offset = time.time() - time.monotonic()

    # -- program ---------------------------------------------------------------------
    def cflags(self) -> list[str]:
        flags = self.filter.cflags() if self.filter else []
        return flags + [f"-DWITH_CBLB={1 if self.with_cblb else 0}"]

    def ebpf_text(self) -> str:
        """The program as compiled: the parameters as #defines, then trace_bpf.c."""
        defs = []
        for f in self.cflags():
            name, _, val = f[2:].partition("=")
            defs.append(f"#define {name} {val}")
        return "\n".join(defs) + "\n" + BPF_SOURCE.read_text()

    def compile(self) -> None:
        if self.bpf is not None:
            return
        bcc = check_environment()
        try:
            self.bpf = bcc.BPF(src_file=str(BPF_SOURCE).encode(), cflags=self.cflags())
        except Exception as e:  # bcc raises bare Exceptions with the compiler's words
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "Operation not permitted" in str(e) or isinstance(e, PermissionError):
                raise CblbError("the kernel refused the BPF program (lockdown or missing "
                                "CAP_BPF): run as root on a kernel that allows BPF",
                                E.EPERM) from None
            raise CblbError(f"could not compile/load the BPF program: {first} (check that "
                            "the kernel headers match 'uname -r')", E.EIO) from None
        self.attached = True  # bcc attaches TRACEPOINT_PROBEs on load
        if self.with_cblb:
            self.bpf[b"state_events"].open_perf_buffer(self._on_state, page_cnt=8)

    def _tp_fn(self, tp: str) -> str:
        cat, ev = tp.split(":")
        return f"tracepoint__{cat}__{ev}"

    def tracepoints(self) -> tuple[str, ...]:
        return self.BLOCK_TPS + (self.CBLB_TPS if self.with_cblb else ())

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Compile (first time) and attach; returns the baseline reading."""
        self.compile()
        if not self.attached:
            for tp in self.tracepoints():
                try:
                    self.bpf.attach_tracepoint(tp=tp.encode(), fn_name=self._tp_fn(tp).encode())
                except Exception as e:
                    self.stop()
                    raise CblbError(f"could not attach {tp}: {str(e).strip()} "
                                    "(is the cblb module loaded?)", E.ENOENT) from None
            self.attached = True
        self._states = []
        self._prev = self.read()
        return self._prev

    def stop(self) -> None:
        """Detach every tracepoint (the program stays compiled: start() re-attaches).
        Needed before 'rmmod cblb_module', which the attached probes hold busy."""
        if self.bpf is None or not self.attached:
            return
        if self.with_cblb:
            self.poll()
        for tp in self.tracepoints():
            try:
                self.bpf.detach_tracepoint(tp.encode())
            except Exception:
                pass
        self.attached = False

    def close(self) -> None:
        self.stop()
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None

    def __enter__(self) -> "Tracer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- readings --------------------------------------------------------------------
    def _on_state(self, _cpu: int, data: Any, _size: int) -> None:
        e = self.bpf[b"state_events"].event(data)
        self._states.append({
            "ts": round(e.ts / 1e9 + self._boot_offset, 3),
            "snapshot": e.name.decode(errors="replace"),
            "old": e.old.decode(errors="replace"),
            "new": e.new.decode(errors="replace"),
        })

    def poll(self) -> None:
        if self.bpf is not None and self.with_cblb:
            self.bpf.perf_buffer_poll(timeout=0)

    def read(self) -> dict[str, Any]:
        """Cumulative counters now (state events are drained into the reading)."""
        self.poll()
        r = empty_reading(time.monotonic())
        r["wall"] = time.time()
        for k, v in self.bpf[b"io"].items():
            r["io"][(k.dev, k.op)] = (v.count, v.bytes, v.ns)
        for k, v in self.bpf[b"lat"].items():
            r["lat"][(k.dev, k.op, k.slot)] = v.value
        if self.with_cblb:
            for k, v in self.bpf[b"cow"].items():
                r["cow"][k.name.decode(errors="replace")] = tuple(
                    getattr(v, f) for f in COW_FIELDS)
        r["states"], self._states = self._states, []
        r["missed"] = self.missed()
        return r

    def missed(self) -> int:
        """Probe runs the kernel skipped so far (the programs' recursion_misses)."""
        total = 0
        for fn in getattr(self.bpf, "funcs", {}).values():
            try:
                info = Path(f"/proc/self/fdinfo/{fn.fd}").read_text()
            except OSError:
                continue
            m = re.search(r"^recursion_misses:\s+(\d+)", info, re.MULTILINE)
            total += int(m.group(1)) if m else 0
        return total

    def sample(self) -> dict[str, Any]:
        """The record for the interval since the previous sample() (or start())."""
        cur = self.read()
        rec = build_record(self._prev, cur, self.filter.name if self.filter else None,
                           per_device=self.filter is None)
        self._prev = cur
        return rec

    def records(self, interval: float = 1.0, count: int | None = None) -> Iterator[dict]:
        """Start, then yield one record per interval (forever when count is None)."""
        if not self.attached or self.bpf is None:
            self.start()
        n = 0
        while count is None or n < count:
            time.sleep(interval)
            yield self.sample()
            n += 1


def records(device: str | None = None, interval: float = 1.0,
            count: int | None = None) -> Iterator[dict]:
    """Convenience generator for the web page and benchmarks: one dict per interval."""
    t = Tracer(device)
    try:
        yield from t.records(interval, count)
    finally:
        t.close()
