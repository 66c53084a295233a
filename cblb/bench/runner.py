"""The benchmark plan: experiments, run one step at a time with progress and ETA.

Every raw figure lands in ``results["runs"]`` as one flat record::

    {"experiment": "compare", "target": "cblb", "workload": "rand4k", "phase": "first",
     "rep": 0, "warmup": false, "metrics": {"write_bw": ..., "write_p99_us": ...},
     "info": {"fio_args": [...], ...}}

plus experiment parameters as top-level keys (``device``, ``frac``, ``total``, ``variant``,
``file_size``, ``max_files``). :mod:`.analysis` turns them into summaries and ratios.
The comparison, changed-block tracking's cost and the snapshot reads run on each device set
of :mod:`.devices` in turn (``ssd``, then ``ram``); the sweeps on ``ram``. Repetitions are
interleaved (rep 0 of every target, then rep 1, ...) and the target order rotates, so drift
of a shared, busy machine spreads over all targets alike. Every measured run lasts
``runtime`` seconds or moves 512 MiB (see :mod:`.workloads`). Changed-block tracking
(experiment ``cbt``) pairs a run with the origin tracked with the no-snapshot run of the
same repetition (``cbt_paired``), and reads the kernel memory of a tracked 1 TiB origin.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

from .. import __version__, stream
from ..control import Controller
from ..errors import CblbError
from ..model import Tracking
from ..system import devnum
from . import SCHEMA_VERSION
from . import devices as dv
from .workloads import (
    CHANGE,
    FILL,
    SEQREAD,
    WORKLOADS,
    MiB,
    Workload,
    fio_version,
    run_fio,
)

SNAP = "cbench0"
SEED_FILE_SIZE = 409600  # the seed's temp-file size, in 512-byte blocks (200 MiB)


@dataclass
class ModeConfig:
    name: str
    reps: int
    sweep_reps: int
    region: dict[str, int]          # bytes per workload
    snapread_region: int
    sweep_region: int
    runtime: float                  # seconds of every measured run (cap or time_based)
    workloads: tuple[str, ...] = ("seq1m", "seq1m8", "rand4k", "db")
    devices: tuple[str, ...] = ("ram", "ssd")
    snapread_reps: int = 3
    tracer_pairs: int = 5           # (unloaded, loaded) pairs of the tracer-cost test
    targets: tuple[str, ...] = ("none", "cblb", "dm4k", "dm64k")
    snapread_targets: tuple[str, ...] = ("cblb", "dm4k")
    fracs: tuple[float, ...] = (0.1, 0.5)
    totals: tuple[int, ...] = (1, 4, 16, 64, 255)
    several: int = 4
    file_sizes: tuple[int, ...] = (2048, 8192, 32768, 131072, SEED_FILE_SIZE)
    max_files_small: int = 2048     # file size of the max-files sweep (1 MiB)
    max_files: tuple[int, ...] = (4, 8, 16, 64)
    warmup: bool = True
    warmup_targets: tuple[str, ...] = ("none", "cblb", "dm4k", "dm64k")
    dm_rewrite: bool = True         # also time dm-snapshot's rewrite pass (no target needs it)
    skip: tuple[tuple[str, str], ...] = ()   # (target, workload) pairs not compared
    totals_several: bool = True     # total=N also with several snapshots at once
    catalog_on_origin: bool = True
    # changed-block tracking's cost: in the first cbt_reps repetitions of the comparison,
    # each workload of cbt_workloads runs once more, the origin tracked (no snapshot), next
    # to its no-snapshot run (the origin untracked), the order alternating by repetition
    cbt_reps: int = 5
    cbt_workloads: tuple[str, ...] = ("seq1m", "rand4k")
    # `cblb cat` of a snapshot (to /dev/null and through a pipe) against dd of the origin
    # (issue 24), on each device set: full mode only
    catstream_reps: int = 0

    @property
    def origin_size(self) -> int:
        """The span of the origin any experiment writes (all start at offset 0)."""
        return max(list(self.region.values()) + [self.snapread_region, self.sweep_region,
                                                 64 * MiB])


# Regions: a first pass must not run out of fresh blocks before ``runtime`` (or must be
# 512 MiB); the guest's ~1.5 GiB of writable RAM holds the origin plus one COW store.
MODES: dict[str, ModeConfig] = {
    "full": ModeConfig("full", reps=5, sweep_reps=3, runtime=10,
                       region={"seq1m": 512 * MiB, "seq1m8": 512 * MiB, "rand4k": 128 * MiB,
                               "db": 128 * MiB},
                       snapread_region=64 * MiB, sweep_region=128 * MiB, snapread_reps=5,
                       tracer_pairs=9, snapread_targets=("cblb", "dm4k", "dm64k"),
                       catstream_reps=3),
    # quick: 2 repetitions, not 3: under emulation one 5 s fio run costs about 9 s, and a
    # dm-snapshot set-up and removal about 7 s more; 3 would not fit 20 minutes. For the
    # same reason changed-block tracking is paired in one repetition and the write hook's
    # cost measured in 4 pairs (not 5).
    "quick": ModeConfig("quick", reps=2, sweep_reps=1, runtime=5, tracer_pairs=4, cbt_reps=1,
                        region={"seq1m": 512 * MiB, "rand4k": 128 * MiB},
                        workloads=("seq1m", "rand4k"),
                        snapread_region=32 * MiB, sweep_region=128 * MiB, snapread_reps=2,
                        snapread_targets=("cblb",), totals=(1, 255), several=2,
                        file_sizes=(2048, SEED_FILE_SIZE), max_files=(4,),
                        warmup_targets=("cblb", "dm4k"), dm_rewrite=False,
                        skip=(("dm64k", "rand4k"),), totals_several=False,
                        catalog_on_origin=False),
    "tiny": ModeConfig("tiny", reps=2, sweep_reps=1, runtime=2,
                       region={"seq1m": 64 * MiB, "rand4k": 16 * MiB},
                       workloads=("seq1m", "rand4k"),
                       snapread_region=16 * MiB, sweep_region=16 * MiB, snapread_reps=1,
                       tracer_pairs=2, snapread_targets=("cblb",), totals=(1, 255),
                       several=2, file_sizes=(2048, SEED_FILE_SIZE), max_files=(1,),
                       warmup=False, catalog_on_origin=False, cbt_reps=1),
}
MIN_BYTES = 512 * MiB   # a run shorter than ``runtime`` must move at least this much
TiB = 1 << 40           # the sparse origin whose tracking memory the bench reads


def cpu_calibration(seconds: float = 0.2) -> float:
    """Loop iterations per second of a fixed Python loop: shows how the CPU the guest got
    varied during the run (other VMs share the host)."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(1000):
            pass
        n += 1000
    return n / (time.perf_counter() - t0)


def fmt_s(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 60:02d}:{s % 60:02d}"


@dataclass
class Step:
    label: str
    weight: float
    fn: Callable[[], None]
    device: str = ""      # the device set it needs ("" for none)


class Progress:
    """One line per step: elapsed time, ETA (weighted by the steps' expected cost)."""

    def __init__(self, steps: list[Step], stream: Any = None) -> None:
        self.total_w = sum(s.weight for s in steps) or 1.0
        self.n = len(steps)
        self.done_w = 0.0
        self.t0 = time.monotonic()
        self.stream = stream or sys.stdout

    def line(self, i: int, step: Step) -> None:
        el = time.monotonic() - self.t0
        eta = "--:--" if self.done_w <= 0 else fmt_s(el / self.done_w * (self.total_w - self.done_w))
        print(f"[bench {i + 1:3d}/{self.n}] {fmt_s(el)} elapsed, ETA {eta}  {step.label}",
              file=self.stream, flush=True)


def machine_info() -> dict[str, Any]:
    cpu = ""
    flags = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    emulated = "QEMU" in cpu or "hypervisor" in flags
    return {"cpu": cpu, "cpus": os.cpu_count(), "mem_bytes": mem, "machine": platform.machine(),
            "hostname": platform.node(), "emulated": emulated,
            "tcg": "TCG" in cpu}


def kernel_info(note: str = "") -> dict[str, Any]:
    u = os.uname()
    cmdline = ""
    try:
        cmdline = Path("/proc/cmdline").read_text().strip()
    except OSError:
        pass
    return {"release": u.release, "version": u.version, "cmdline": cmdline, "note": note}


def _timed_dd(path: str) -> float:
    """Seconds dd takes to read ``path`` whole in 4 MiB O_DIRECT reads, as dd reports them
    (its process start-up left out, as the in-process cblb cat has none)."""
    t = time.monotonic()
    r = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=4M", "iflag=direct"],
                       capture_output=True, text=True, env={"LC_ALL": "C"}, check=True)
    m = re.search(r"copied, ([0-9.e+-]+) s", r.stderr)
    return float(m.group(1)) if m else time.monotonic() - t


class Runner:
    def __init__(self, mode: ModeConfig, out: Path, ctl: Controller | None = None,
                 argv: list[str] | None = None, kernel_note: str = "",
                 stream: Any = None) -> None:
        self.mode = mode
        self.out = out
        self.ctl = ctl or Controller()
        self.stream = stream or sys.stdout
        self.logs = out / "logs"
        self.results: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "meta": {
                "command_line": " ".join(shlex.quote(a) for a in (argv or sys.argv)),
                "mode": mode.name,
                "kernel": kernel_info(kernel_note),
                "machine": machine_info(),
                "cblb_version": __version__,
                "fio_version": fio_version(),
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "storage": "; ".join(f"{k}: {dv.DEVICE_LABEL[k]}" for k in mode.devices),
                "devices": {},
                "min_runtime_s": mode.runtime,
                "min_bytes": MIN_BYTES,
                "notes": [],
            },
            "config": {k: v for k, v in mode.__dict__.items()},
            "runs": [],
        }
        self.dev: dv.DeviceSet | None = None
        self.failed_sets: set[str] = set()
        self.extras: list[dv.Loop] = []

    # ---- helpers ------------------------------------------------------------------
    @property
    def origin(self) -> dv.Loop | dv.Disk:
        return self.devset().origin

    @property
    def catalog(self) -> dv.Catalog:
        return self.devset().catalog

    def devset(self, kind: str | None = None) -> dv.DeviceSet:
        if self.dev is None or (kind and self.dev.kind != kind):
            raise CblbError(f"bench: the {kind or 'current'} device set is not set up")
        return self.dev

    def note(self, text: str) -> None:
        self.results["meta"]["notes"].append(text)
        print(f"[bench] note: {text}", file=self.stream, flush=True)

    def record(self, experiment: str, target: str, metrics: dict[str, float], *,
               workload: str = "", phase: str = "", rep: int = 0, warmup: bool = False,
               info: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
        params.setdefault("device", self.dev.kind if self.dev else "ram")
        run = {"experiment": experiment, "target": target, "workload": workload,
               "phase": phase, "rep": rep, "warmup": warmup, **params,
               "metrics": {k: float(v) for k, v in metrics.items()}, "info": info or {}}
        self.results["runs"].append(run)
        return run

    def reload(self, total: int) -> None:
        self.cleanup_snapshots()
        if self.ctl.loaded():
            if self.ctl.total() == total:
                return
            self.ctl.unload()
        self.ctl.load(total)

    def unload(self) -> None:
        self.cleanup_snapshots()
        self.ctl.unload()

    def cleanup_snapshots(self) -> None:
        if not self.ctl.loaded():
            return
        for s in self.ctl.snapshots():
            for _ in range(25):
                try:
                    self.ctl.remove(s.name)
                    break
                except CblbError:
                    time.sleep(0.2)
        self.untrack_all()

    def untrack_all(self) -> None:
        """End the changed-block tracking of every origin without a snapshot. A snapshot's
        ``create`` begins tracking and ``remove`` does not end it (kmod/doc/CBT.md): left
        alone, every target after the first cblb one would run on a tracked origin, and a
        tracked null_blk disk holds its driver, which the ssd set's teardown must unload."""
        if not self.ctl.loaded():
            return
        for t in self.ctl.tracking():
            try:
                self.ctl.untrack(f"/dev/{t.disk}")
            except CblbError:
                pass    # a snapshot of it exists, or it went away meanwhile

    def start_cblb(self, name: str, origin: str, file_size: int = SEED_FILE_SIZE,
                   max_files: int = 4, catalog: str | None = None) -> tuple[Any, float]:
        self.ctl.create(name, origin)
        cat = catalog or self.catalog.folder(name)
        t = time.monotonic()
        snap = self.ctl.start(name, cat, file_size, max_files)
        return snap, (time.monotonic() - t) * 1e6

    def files_needed(self, region: int, file_size: int) -> int:
        return min(4096, math.ceil(region * 1.25 / (file_size * 512)) + 2)

    # ---- setup --------------------------------------------------------------------
    def setup(self) -> None:
        dv.prepare_kernel()
        for i in range(max(1, self.mode.several - 1)):
            self.extras.append(dv.make_loop(16 * MiB, f"extra{i}"))
        self.reload(4)

    def open_set(self, kind: str) -> None:
        """Set up one device set; the one before it is torn down first (RAM is short)."""
        self.close_set()
        m = self.mode
        try:
            if kind == "ram":
                # The catalog holds the seed's 200 MiB temp files for the largest region
                # (allocated, never written: sparse costs nothing) plus ext4's own room.
                self.dev = dv.make_ram_set(m.origin_size, m.origin_size + 64 * MiB,
                                           2 * m.origin_size + SEED_FILE_SIZE * 512
                                           + 256 * MiB)
            elif kind == "ssd":
                self.dev = dv.make_ssd_set(m.origin_size)
            else:
                raise CblbError(f"bench: unknown device set {kind}")
        except (CblbError, OSError, subprocess.SubprocessError):
            self.failed_sets.add(kind)
            raise
        self.results["meta"]["devices"][kind] = self.dev.describe()

    def close_set(self) -> None:
        if self.dev is None:
            return
        try:
            self.cleanup_snapshots()
        finally:
            dev, self.dev = self.dev, None
            dev.teardown()

    def teardown(self) -> None:
        try:
            self.cleanup_snapshots()
        except Exception:
            pass
        try:
            self.close_set()
        except Exception:
            pass
        for loop in self.extras:
            loop.detach()

    # ---- one target, set up fresh ---------------------------------------------------
    def target_open(self, target: str) -> tuple[str, str, Any]:
        """(write path, snapshot path, handle) of a fresh snapshot of the origin. Every
        target begins with an untracked origin (cblb's ``create`` tracks it)."""
        d = self.devset()
        self.untrack_all()
        if target == "none":
            return d.origin.device, "", None
        if target == "cblb":
            region = max(self.mode.region.values())
            snap, wall_us = self.start_cblb(SNAP, d.origin.device, SEED_FILE_SIZE,
                                            self.files_needed(region, SEED_FILE_SIZE))
            return d.origin.device, snap.device, ("cblb", snap, wall_us)
        if target.startswith("dm"):
            chunk = {"dm4k": 8, "dm64k": 128}[target]
            dm = dv.DmSnapshot(d.origin, d.cow, chunk)
            return dm.origin_path, dm.snap_path, ("dm", dm)
        raise CblbError(f"unknown target {target}")

    def target_close(self, handle: Any) -> None:
        if not handle:
            return
        used = 0
        try:
            if handle[0] == "cblb":
                self.ctl.remove(SNAP)
            else:
                # the store's used sectors (data and metadata, from the start): all a
                # discard has to give back
                sectors = dv.parse_dm_status(handle[1].status())[0]
                used = sectors * 512 + MiB if sectors else 0   # unreadable: all
                handle[1].remove()
        finally:
            if self.dev:
                self.dev.after_target(handle[0], used)

    def cow_state(self, handle: Any) -> dict[str, Any]:
        if not handle:
            return {}
        if handle[0] == "cblb":
            s = self.ctl.snapshot(SNAP)
            return {"cow_bytes": s.cow_bytes, "cow_chunks": s.cow_chunks,
                    "files_used": s.files_used, "index_bytes": s.index_bytes,
                    "start_latency_us": s.start_latency_us, "failed": float(
                        s.state.failed)}
        dm = handle[1]
        status = dm.status()
        used, _total, meta = dv.parse_dm_status(status)
        data = (used - meta) * 512
        return {"cow_bytes": data, "cow_meta_bytes": meta * 512,
                "cow_chunks": data / dm.chunk_bytes, "dm_status": status}

    @staticmethod
    def expected_chunks(handle: Any, wl: Workload, written: int) -> float | None:
        """Chunks a first pass must copy, where the workload tells exactly: a sequential
        pass from offset 0 touches ceil(bytes / chunk) chunks; random writes as large as
        the chunk touch one fresh chunk each (fio's random map). cblb copies 4 KiB per
        4 KiB written."""
        if handle[0] == "cblb":
            return written / 4096
        chunk = handle[1].chunk_bytes
        if wl.rw == "write":
            return float(math.ceil(written / chunk))
        if wl.rw == "randwrite" and wl.bs == chunk:
            return written / chunk
        return None

    # ---- experiments ----------------------------------------------------------------
    def compare_one(self, target: str, wl: Workload, rep: int, warmup: bool,
                    cbt_pair: bool = False) -> None:
        """No snapshot: one time-based run (the origin untracked; ``cbt_pair``: a
        :meth:`cbt_one` run sits next to it in the plan, and the record says so). A
        snapshot (fresh): the first pass, then the rewrite pass over chunks already copied
        (:meth:`rewrite_span`)."""
        m = self.mode
        region = m.region[wl.name] // (8 if warmup else 1)
        runtime = 1.0 if warmup else m.runtime
        path, _snap, handle = self.target_open(target)
        log = None
        if rep == 0 and not warmup:
            log = str(self.logs / f"{self.devset().kind}-{target}-{wl.name}-first")
        if handle is None:
            try:
                r = run_fio(wl, path, region, lat_log=log, runtime=runtime, time_based=True)
            finally:
                self.target_close(handle)
            self.record("compare", target, r.metrics(), workload=wl.name, phase="base",
                        rep=rep, warmup=warmup,
                        info={"fio_args": r.argv, "region": region,
                              "lat_log": (log + "_clat.1.log") if log else ""},
                        **({"cbt_paired": True} if cbt_pair else {}))
            return
        log2 = log.replace("-first", "-rewrite") if log else None
        try:
            slab0 = dv.slab_bytes()
            base = self.cow_state(handle)
            first = run_fio(wl, path, region, lat_log=log, runtime=runtime)
            after1 = self.cow_state(handle)
            slab1 = dv.slab_bytes()
            done = first.write_bytes + first.read_bytes
            rew = None
            if not warmup and (handle[0] == "cblb" or self.mode.dm_rewrite):
                span, filled = self.rewrite_span(wl, path, region, done)
                before2 = self.cow_state(handle)
                rew = run_fio(wl, path, span, lat_log=log2, runtime=runtime, time_based=True)
                after2 = self.cow_state(handle)
                rew_info = {"span": span, "fill_bytes": filled}
        finally:
            self.target_close(handle)
        passes = [("first", first, base, after1, log)]
        if rew is not None:
            passes.append(("rewrite", rew, before2, after2, log2))
        for phase, r, before, after, lg in passes:
            mt = r.metrics()
            cow = after.get("cow_bytes", 0) - before.get("cow_bytes", 0)
            chunks = after.get("cow_chunks", 0) - before.get("cow_chunks", 0)
            mt["cow_bytes"] = cow
            mt["cow_per_byte"] = cow / r.write_bytes if r.write_bytes else 0.0
            mt["chunks_copied"] = chunks
            if phase == "first":
                want = self.expected_chunks(handle, wl, r.write_bytes)
                if want is not None:
                    mt["chunks_expected"] = want
                    mt["copied_all"] = float(chunks >= want - 1e-9)
            for k in ("files_used", "index_bytes", "failed", "cow_meta_bytes"):
                if k in after:
                    mt[k] = after[k]
            if phase == "first" and handle[0] == "cblb":
                total_chunks = after.get("cow_chunks", 0)
                mt["index_per_chunk"] = (after["index_bytes"] / total_chunks
                                         if total_chunks else 0.0)
                mt["slab_delta_bytes"] = slab1 - slab0
                mt["slab_per_chunk"] = (slab1 - slab0) / total_chunks if total_chunks else 0.0
                mt["start_latency_us"] = after["start_latency_us"]
            info: dict[str, Any] = {"fio_args": r.argv, "region": region,
                                    "lat_log": (lg + "_clat.1.log") if lg else ""}
            if phase == "rewrite":
                info.update(rew_info)
            if handle[0] == "dm":
                info["dm_status"] = {"before": before.get("dm_status", ""),
                                     "after": after.get("dm_status", "")}
                info["dm_tables"] = [f"{n}: {t}" for n, t in handle[1].tables]
            self.record("compare", target, mt, workload=wl.name, phase=phase, rep=rep,
                        warmup=warmup, info=info)

    def rewrite_span(self, wl: Workload, path: str, region: int, done: int) -> tuple[int, int]:
        """(span, bytes written to fill it): the span a rewrite pass runs over, time-based,
        whose every chunk the snapshot has already copied. A sequential first pass copied
        [0, done); after a random one, a sequential pass over the region (not measured)
        copies the chunks it left."""
        if wl.rw == "write":
            return max(wl.bs, done // wl.bs * wl.bs), 0
        return region, run_fio(FILL, path, region).write_bytes

    def snapread_one(self, target: str, frac: float, rep: int) -> None:
        m = self.mode
        region = m.snapread_region
        path, snap, handle = self.target_open(target)
        try:
            change = run_fio(CHANGE, path, region,
                             io_size=int(region * frac) // 4096 * 4096)
            orig = run_fio(SEQREAD, path, region, runtime=m.runtime, time_based=True)
            sr = run_fio(SEQREAD, snap, region, runtime=m.runtime, time_based=True)
            st = self.cow_state(handle)
            vr = None
            if (target == "cblb" and rep == 0 and frac == m.fracs[0]
                    and self.devset().kind == m.devices[0]):
                vr = self.verify_one(snap, region)
        finally:
            self.target_close(handle)
        info = {"changed_bytes": change.write_bytes, "region": region}
        self.record("snapread", target, orig.metrics(), workload="seqread",
                    phase="origin", rep=rep, frac=frac, info={**info, "fio_args": orig.argv})
        self.record("snapread", target, {**sr.metrics(), **{
            k: v for k, v in st.items() if k in ("cow_bytes", "cow_chunks")}},
            workload="seqread", phase="snapshot", rep=rep, frac=frac,
            info={**info, "fio_args": sr.argv})
        if vr:
            self.record("verify", "cblb", {"hash_bw": vr[1], "read_bw": sr.read_bw,
                                           "bytes": region}, workload="hash",
                        phase="snapshot", rep=0, info={"engine": vr[0]})

    def catstream_one(self, rep: int) -> None:
        """Whole-device reads, one after the other: dd of the origin (4 MiB, O_DIRECT), dd
        of an unchanged snapshot of it, `cblb cat` of that snapshot to /dev/null and
        through a pipe into dd (cblb/stream.py, the code the command runs, in-process so
        that the interpreter's start-up is not counted)."""
        path, snap, handle = self.target_open("cblb")
        try:
            size = self.ctl.system.device_size(path)
            figures = {"dd_origin": _timed_dd(path), "dd_snapshot": _timed_dd(snap)}
            with open(os.devnull, "wb") as null:
                t = time.monotonic()
                stream.cat(snap, null.fileno())
                figures["cat"] = time.monotonic() - t
            reader = subprocess.Popen(["dd", "of=/dev/null", "bs=4M", "status=none"],
                                      stdin=subprocess.PIPE)
            assert reader.stdin is not None
            time.sleep(1)                    # dd is up and reading: its start-up not counted
            t = time.monotonic()
            stream.cat(snap, reader.stdin.fileno())
            reader.stdin.close()
            reader.wait()
            figures["cat_pipe"] = time.monotonic() - t
        finally:
            self.target_close(handle)
        for phase, seconds in figures.items():
            self.record("catstream", "cblb", {"read_bw": size / seconds, "bytes": size,
                                              "seconds": seconds},
                        workload="seqread", phase=phase, rep=rep,
                        info={"device": path, "snapshot": snap})

    def tracking_of(self, device: str) -> Tracking:
        """The module's tracking of ``device``, as sysfs shows it now."""
        dev = devnum(self.ctl.system.stat(device))
        t = next((t for t in self.ctl.tracking() if t.dev == dev), None)
        if t is None:
            raise CblbError(f"bench: {device} ({dev}) is not tracked")
        return t

    def cbt_one(self, wl: Workload, rep: int) -> None:
        """Changed-block tracking's cost on origin writes: the origin tracked (``track``,
        no snapshot), one time-based run exactly like the comparison's no-snapshot run of
        the same repetition (same region and seconds), which the plan puts next to it
        with the origin untracked. Untracked afterwards."""
        m = self.mode
        region = m.region[wl.name]
        origin = self.origin.device
        self.cleanup_snapshots()            # no snapshot, nothing tracked
        t0 = self.ctl.track(origin)
        try:
            r = run_fio(wl, origin, region, runtime=m.runtime, time_based=True)
            t = self.tracking_of(origin)
        finally:
            self.ctl.untrack(origin)
        mt = r.metrics()
        mt.update({"memory_bytes": t.memory_bytes, "block_size": t.block_size,
                   "size_bytes": t.size, "changed_blocks": t.changed_blocks})
        self.record("cbt", "tracked", mt, workload=wl.name, phase="base", rep=rep,
                    variant="tracked", info={"fio_args": r.argv, "region": region,
                                             "generation": t.generation,
                                             "generation_at_track": t0.generation})

    def cbt_memory(self) -> None:
        """Kernel memory of changed-block tracking per TiB: a sparse 1 TiB file in the
        scratch folder on a loop device, tracked, its ``memory_bytes`` read, untracked."""
        if not self.ctl.loaded():
            self.ctl.load(4)
        loop = dv.make_loop(TiB, "cbt1t", sparse=True)
        try:
            self.ctl.track(loop.device)
            try:
                t = self.tracking_of(loop.device)
            finally:
                self.ctl.untrack(loop.device)
        finally:
            loop.detach()
        self.record("cbt", "tracked", {
            "memory_bytes": t.memory_bytes, "block_size": t.block_size, "size_bytes": t.size,
            "cbt_memory_per_tib_bytes": t.memory_bytes * TiB / t.size if t.size else 0.0},
            phase="memory", rep=0, device="ram",
            info={"device": loop.device, "image": str(loop.image), "sparse": True,
                  "generation": t.generation})

    def verify_one(self, dev: str, size: int) -> tuple[str, float] | None:
        from .verifyhash import hash_throughput
        try:
            return hash_throughput(dev, size)
        except Exception as e:  # noqa: BLE001 - a missing engine is a note, not a failure
            self.note(f"verification throughput skipped: {e}")
            return None

    def totals_one(self, total: int, variant: str, rep: int) -> None:
        self.reload(total)
        k = 1 if variant == "one" else min(total, self.mode.several)
        region = self.mode.sweep_region
        fsz = 32768
        try:
            for i in range(k - 1):
                self.start_cblb(f"cbenchx{i}", self.extras[i].device, fsz, 4)
            snap, _ = self.start_cblb(SNAP, self.origin.device, fsz,
                                      self.files_needed(region, fsz))
            r = run_fio(WORKLOADS["rand4k"], self.origin.device, region,
                        runtime=self.mode.runtime)
        finally:
            self.cleanup_snapshots()
            self.devset().after_target("cblb")
        self.record("totals", "cblb", {**r.metrics()}, workload="rand4k", phase="first",
                    rep=rep, total=total, variant=variant, info={"snapshots": k,
                                                                 "fio_args": r.argv})

    def filesize_one(self, file_size: int, rep: int) -> None:
        region = self.mode.sweep_region
        mf = self.files_needed(region, file_size)
        if (file_size * 512) > self.catalog.free():
            self.note(f"file size {file_size} skipped: catalog too small")
            return
        snap, wall_us = self.start_cblb(SNAP, self.origin.device, file_size, mf)
        growth: list[list[float]] = []
        stop = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not stop.is_set():
                try:
                    s = self.ctl.snapshot(SNAP)
                    growth.append([round(time.monotonic() - t0, 3), s.files_used, s.cow_bytes])
                except Exception:  # noqa: BLE001
                    pass
                stop.wait(0.25)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        try:
            r = run_fio(WORKLOADS["rand4k"], self.origin.device, region,
                        runtime=self.mode.runtime)
        finally:
            stop.set()
            th.join()
            s = self.ctl.snapshot(SNAP)
            self.cleanup_snapshots()
            self.devset().after_target("cblb")
        m = r.metrics()
        m.update({"start_latency_us": s.start_latency_us, "start_wall_us": wall_us,
                  "files_used": s.files_used, "cow_bytes": s.cow_bytes,
                  "cow_per_byte": s.cow_bytes / r.write_bytes if r.write_bytes else 0.0,
                  "failed": float(s.state.failed)})
        self.record("filesize", "cblb", m, workload="rand4k", phase="first", rep=rep,
                    file_size=file_size, max_files=mf, info={"growth": growth,
                                                            "fio_args": r.argv})

    def start_mounted_one(self, file_size: int, rep: int, fs: dv.Loop, mnt: Path) -> None:
        """start latency with a mounted, busy-free ext4 origin (freeze and thaw included)."""
        if (file_size * 512) > self.catalog.free():
            return
        snap, wall_us = self.start_cblb(SNAP, fs.device, file_size, 2)
        s = self.ctl.snapshot(SNAP)
        self.cleanup_snapshots()
        self.record("start", "cblb", {"start_latency_us": s.start_latency_us,
                                      "start_wall_us": wall_us}, phase="mounted", rep=rep,
                    file_size=file_size, info={"freeze": s.freeze})

    def maxfiles_one(self, max_files: int) -> None:
        region = self.mode.sweep_region
        fsz = self.mode.max_files_small
        self.start_cblb(SNAP, self.origin.device, fsz, max_files)
        err = ""
        try:
            r = run_fio(WORKLOADS["rand4k"], self.origin.device, region,
                        runtime=self.mode.runtime)
            m = r.metrics()
            m["fio_ok"] = 1.0
        except CblbError as e:
            m, err = {"fio_ok": 0.0}, str(e)
        s = self.ctl.snapshot(SNAP)
        self.cleanup_snapshots()
        self.devset().after_target("cblb")
        m.update({"files_used": s.files_used, "cow_bytes": s.cow_bytes,
                  "store_bytes": s.store_bytes,
                  "failed": float(s.state.failed)})
        self.record("maxfiles", "cblb", m, workload="rand4k", phase="first", rep=0,
                    file_size=fsz, max_files=max_files,
                    info={"state": s.state.value, "error": s.error, "fio_error": err,
                          "region": region})

    def tracer_one(self, variant: str, pair: int) -> None:
        """The module's write hook on its own: time-based writes to a device that has no
        snapshot, with the module unloaded vs loaded with an active snapshot on another
        device. Pairs run back to back, their order alternating; the cost is the ratio
        within each pair."""
        if variant == "unloaded":
            self.unload()
        else:
            self.reload(4)
            self.start_cblb("cbenchx0", self.extras[0].device, 32768, 4)
        try:
            r = run_fio(WORKLOADS["rand4k"], self.origin.device, self.mode.sweep_region,
                        runtime=self.mode.runtime, time_based=True)
        finally:
            if self.ctl.loaded():
                self.cleanup_snapshots()
        self.record("tracer", variant, r.metrics(), workload="rand4k", phase="base",
                    rep=pair, variant=variant, info={"fio_args": r.argv})

    def catorigin_one(self, target: str, rep: int, fs: dv.Loop, mnt: Path) -> None:
        """rand4k on a file in a mounted ext4 origin: no snapshot, catalog on a separate
        ext4, catalog on the origin filesystem itself."""
        region = self.mode.sweep_region
        f = str(mnt / "data.bin")
        handle = None
        if target != "none":
            cat = str(mnt / "catalog") if target == "cblb-catalog-on-origin" else None
            if cat:
                Path(cat).mkdir(exist_ok=True)
            self.start_cblb(SNAP, fs.device, 32768, self.files_needed(region, 32768),
                            catalog=cat)
            handle = True
        try:
            first = run_fio(WORKLOADS["rand4k"], f, region, runtime=self.mode.runtime)
            span, _filled = self.rewrite_span(WORKLOADS["rand4k"], f, region,
                                              first.write_bytes)
            rew = run_fio(WORKLOADS["rand4k"], f, span, runtime=self.mode.runtime,
                          time_based=True)
        finally:
            if handle:
                self.cleanup_snapshots()
                self.devset().after_target("cblb")
        for phase, r in (("first", first), ("rewrite", rew)):
            self.record("catorigin", target, r.metrics(), workload="rand4k", phase=phase,
                        rep=rep, info={"fio_args": r.argv})

    # ---- the plan -------------------------------------------------------------------
    def plan(self) -> list[Step]:
        """The steps, each weighted by its expected seconds under emulation (for the ETA).
        The ram set goes last: its sweeps are the least needed if a run runs out of time."""
        m = self.mode
        steps: list[Step] = []
        run = m.runtime + 3.5                 # one fio run, its start-up and bookkeeping
        open_w = {"none": 0.0, "cblb": 5.0, "dm4k": 7.0, "dm64k": 7.0}
        wls = [WORKLOADS[n] for n in m.workloads]

        def add(label: str, w: float, fn: Callable[[], None], kind: str = "") -> None:
            steps.append(Step(label, w, fn, kind))

        add("changed-block tracking: kernel memory of a 1 TiB origin (sparse loop device)", 5,
            self.cbt_memory)
        kinds = sorted(m.devices, key=lambda k: k == "ram")
        for kind in kinds:
            add(f"[{kind}] set up the {dv.DEVICE_LABEL[kind]} devices", 12,
                partial(self.open_set, kind), kind)
            if m.warmup:
                # One short first pass per target (1 s, random writes: the most code paths).
                for t in m.warmup_targets:
                    add(f"[{kind}] warm-up {t}", 4.5 + open_w[t],
                        partial(self.compare_one, t, wls[-1], -1, True), kind)
            for rep in range(m.reps):
                order = list(m.targets[rep % len(m.targets):] + m.targets[:rep % len(m.targets)])
                for t in order:
                    passes = 1 if t == "none" else 1 if t.startswith("dm") and \
                        not m.dm_rewrite else 2
                    what = {1: "time-based" if t == "none" else "first pass",
                            2: "first + rewrite"}[passes]
                    for wl in wls:
                        if (t, wl.name) in m.skip:
                            continue
                        pair = t == "none" and rep < m.cbt_reps and wl.name in m.cbt_workloads
                        cbt = (f"[{kind}] changed-block tracking rep {rep + 1}/"
                               f"{min(m.reps, m.cbt_reps)}: origin tracked, {wl.name} "
                               "(time-based)", run + 1, partial(self.cbt_one, wl, rep), kind)
                        if pair and rep % 2:
                            add(*cbt)
                        fill = 6.0 if passes == 2 and wl.rw != "write" else 0.0
                        add(f"[{kind}] compare rep {rep + 1}/{m.reps} {t:5s} {wl.name} ({what})",
                            passes * run + open_w[t] + fill,
                            partial(self.compare_one, t, wl, rep, False, pair), kind)
                        if pair and not rep % 2:
                            add(*cbt)
            for frac in m.fracs:
                for rep in range(m.snapread_reps):
                    for t in m.snapread_targets:
                        add(f"[{kind}] snapshot reads {t} {int(frac * 100)}% changed "
                            f"rep {rep + 1}", 2 * run + open_w[t] + 4 + 10 * frac,
                            partial(self.snapread_one, t, frac, rep), kind)
            for rep in range(m.catstream_reps):
                add(f"[{kind}] cblb cat vs dd of the origin rep {rep + 1}/{m.catstream_reps}",
                    4 * run, partial(self.catstream_one, rep), kind)
            if kind == "ram":
                self.plan_ram_sweeps(add, run)
            add(f"[{kind}] tear down", 4, self.close_set, kind)
        return steps

    def plan_ram_sweeps(self, add: Callable[..., None], run: float) -> None:
        m = self.mode
        for pair in range(m.tracer_pairs):
            for variant in ("unloaded", "loaded") if pair % 2 == 0 else ("loaded", "unloaded"):
                add(f"[ram] module write hook cost: module {variant} pair {pair + 1}/"
                    f"{m.tracer_pairs}", run + 5, partial(self.tracer_one, variant, pair), "ram")
        for rep in range(m.sweep_reps):
            for total in m.totals:
                for variant in ("one", "several") if m.totals_several else ("one",):
                    if variant == "several" and total < 2:
                        continue
                    add(f"[ram] total={total} {variant} snapshot(s) rep {rep + 1}", run + 8,
                        partial(self.totals_one, total, variant, rep), "ram")
        add("[ram] reload total=4", 5, lambda: self.reload(4), "ram")
        for rep in range(m.sweep_reps):
            for fsz in m.file_sizes:
                add(f"[ram] file size {fsz} blocks ({fsz * 512 // MiB or fsz * 512 // 1024} "
                    f"{'MiB' if fsz * 512 >= MiB else 'KiB'}) rep {rep + 1}", run + 5,
                    partial(self.filesize_one, fsz, rep), "ram")
        for mf in m.max_files:
            add(f"[ram] max files {mf} (1 MiB files)", run + 5,
                partial(self.maxfiles_one, mf), "ram")
        add("[ram] mounted origin: start latency per file size"
            + (", catalog on origin" if m.catalog_on_origin else ""),
            10 + 5 * len(m.file_sizes) * m.sweep_reps + (6 * run * m.sweep_reps
                                                    if m.catalog_on_origin else 0),
            self.mounted_suite, "ram")

    def mounted_suite(self) -> None:
        m = self.mode
        fs = dv.make_loop(2 * m.sweep_region + 64 * MiB, "mounted", sparse=True)
        mnt = dv.WORKDIR / "mnt"
        mnt.mkdir(parents=True, exist_ok=True)
        dv.sh(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
               fs.device])
        dv.sh(["mount", fs.device, str(mnt)])
        try:
            dv.sh(["fallocate", "-l", str(m.sweep_region), str(mnt / "data.bin")])
            for rep in range(m.sweep_reps):
                for fsz in m.file_sizes:
                    self.start_mounted_one(fsz, rep, fs, mnt)
            if m.catalog_on_origin:
                for rep in range(m.sweep_reps):
                    for t in ("none", "cblb", "cblb-catalog-on-origin"):
                        self.catorigin_one(t, rep, fs, mnt)
        finally:
            self.cleanup_snapshots()
            dv.sh(["umount", str(mnt)], check=False)
            fs.detach()

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        print(f"[bench] mode {self.mode.name}; kernel {os.uname().release}; "
              f"cpu {self.results['meta']['machine']['cpu']}; "
              f"command: {self.results['meta']['command_line']}", file=self.stream, flush=True)
        self.setup()
        steps = self.plan()
        prog = Progress(steps, self.stream)
        try:
            for i, st in enumerate(steps):
                if st.device in self.failed_sets:
                    prog.done_w += st.weight
                    continue   # its device set could not be set up: noted once
                prog.line(i, st)
                try:
                    st.fn()
                except (CblbError, OSError, subprocess.SubprocessError, ValueError,
                        KeyError, AssertionError) as e:
                    self.note(f"step '{st.label}' failed: {type(e).__name__}: {e}")
                    try:
                        self.cleanup_snapshots()
                        if not self.ctl.loaded():
                            self.ctl.load(4)
                    except CblbError:
                        pass
                prog.done_w += st.weight
                self.results["meta"].setdefault("cpu_calibration", []).append(
                    round(cpu_calibration()))
                self.save_partial()
        finally:
            self.teardown()
            try:
                if not self.ctl.loaded():
                    self.ctl.load(4)
            except CblbError:
                pass
        meta = self.results["meta"]
        meta["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        meta["duration_s"] = round(time.monotonic() - t0, 1)
        print(f"[bench] done in {fmt_s(meta['duration_s'])}", file=self.stream, flush=True)
        return self.results

    def save_partial(self) -> None:
        p = self.out / "results.partial.json"
        p.write_text(json.dumps(self.results, indent=1, default=str))
