"""The benchmark plan: experiments, run one step at a time with progress and ETA.

Every raw figure lands in ``results["runs"]`` as one flat record::

    {"experiment": "compare", "target": "cblb", "workload": "rand4k", "phase": "first",
     "rep": 0, "warmup": false, "metrics": {"write_bw": ..., "write_p99_us": ...},
     "info": {"fio_args": [...], ...}}

plus experiment parameters as top-level keys (``frac``, ``total``, ``variant``,
``file_size``, ``max_files``). :mod:`.analysis` turns them into summaries and ratios.
Repetitions are interleaved (rep 0 of every target, then rep 1, ...) and the target order
rotates, so drift of a shared, busy machine spreads over all targets alike.
"""

from __future__ import annotations

import datetime as _dt
from functools import partial
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..control import Controller, SnapshotState
from ..errors import CblbError
from . import SCHEMA_VERSION
from . import devices as dv
from .workloads import MiB, WORKLOADS, FioResult, Workload, fio_version, run_fio

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
    runtime_cap: float              # seconds; fio stops a slow first pass there
    targets: tuple[str, ...] = ("none", "cblb", "dm4k", "dm64k")
    snapread_targets: tuple[str, ...] = ("cblb", "dm4k")
    fracs: tuple[float, ...] = (0.1, 0.5)
    totals: tuple[int, ...] = (1, 4, 16, 64, 255)
    several: int = 4
    file_sizes: tuple[int, ...] = (2048, 8192, 32768, 131072, SEED_FILE_SIZE)
    max_files_small: int = 2048     # file size of the max-files sweep (1 MiB)
    max_files: tuple[int, ...] = (4, 8, 16, 64)
    warmup: bool = True
    catalog_on_origin: bool = True

    @property
    def origin_size(self) -> int:
        big = max(list(self.region.values()) + [self.snapread_region, self.sweep_region])
        return max(64 * MiB, 2 * big)


MODES: dict[str, ModeConfig] = {
    "full": ModeConfig("full", reps=5, sweep_reps=3,
                       region={"seq1m": 128 * MiB, "rand4k": 32 * MiB, "db": 32 * MiB},
                       snapread_region=128 * MiB, sweep_region=32 * MiB, runtime_cap=120,
                       snapread_targets=("cblb", "dm4k", "dm64k")),
    "quick": ModeConfig("quick", reps=3, sweep_reps=2,
                        region={"seq1m": 32 * MiB, "rand4k": 8 * MiB, "db": 8 * MiB},
                        snapread_region=32 * MiB, sweep_region=8 * MiB, runtime_cap=15,
                        totals=(1, 16, 255), file_sizes=(2048, 16384, 131072, SEED_FILE_SIZE),
                        max_files=(4, 8, 32)),
    "tiny": ModeConfig("tiny", reps=2, sweep_reps=1,
                       region={"seq1m": 8 * MiB, "rand4k": 2 * MiB, "db": 2 * MiB},
                       snapread_region=8 * MiB, sweep_region=2 * MiB, runtime_cap=5,
                       fracs=(0.1, 0.5), totals=(1, 255), several=2,
                       file_sizes=(2048, SEED_FILE_SIZE), max_files=(1, 16), warmup=False,
                       catalog_on_origin=False),
}


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
                "storage": "loop devices over files in the guest's /tmp (RAM): the figures "
                           "measure CPU and copy overhead, not a disk",
                "notes": [],
            },
            "config": {k: v for k, v in mode.__dict__.items()},
            "runs": [],
        }
        self.origin: dv.Loop | None = None
        self.cow: dv.Loop | None = None
        self.catalog: dv.Catalog | None = None
        self.extras: list[dv.Loop] = []

    # ---- helpers ------------------------------------------------------------------
    def note(self, text: str) -> None:
        self.results["meta"]["notes"].append(text)
        print(f"[bench] note: {text}", file=self.stream, flush=True)

    def record(self, experiment: str, target: str, metrics: dict[str, float], *,
               workload: str = "", phase: str = "", rep: int = 0, warmup: bool = False,
               info: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
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

    def start_cblb(self, name: str, origin: str, file_size: int = SEED_FILE_SIZE,
                   max_files: int = 4, catalog: str | None = None) -> tuple[Any, float]:
        self.ctl.create(name, origin)
        cat = catalog or self.catalog.folder(name)  # type: ignore[union-attr]
        t = time.monotonic()
        snap = self.ctl.start(name, cat, file_size, max_files)
        return snap, (time.monotonic() - t) * 1e6

    def files_needed(self, region: int, file_size: int) -> int:
        return min(4096, math.ceil(region * 1.25 / (file_size * 512)) + 2)

    # ---- setup --------------------------------------------------------------------
    def setup(self) -> None:
        dv.prepare_kernel()
        m = self.mode
        self.origin = dv.make_loop(m.origin_size, "origin")
        self.cow = dv.make_loop(m.origin_size + 8 * MiB, "dmcow")
        # The seed's first temp file (200 MiB) plus the largest sweep, plus room for ext4.
        self.catalog = dv.make_catalog(SEED_FILE_SIZE * 512 + m.origin_size + 96 * MiB)
        for i in range(max(0, m.several - 1)):
            self.extras.append(dv.make_loop(16 * MiB, f"extra{i}"))
        self.reload(4)

    def teardown(self) -> None:
        try:
            self.cleanup_snapshots()
        except Exception:
            pass
        for loop in [self.origin, self.cow] + self.extras:
            if loop:
                loop.detach()
        if self.catalog:
            self.catalog.teardown()

    # ---- one target, set up fresh ---------------------------------------------------
    def target_open(self, target: str) -> tuple[str, str, Any]:
        """(write path, snapshot path, handle) of a fresh snapshot of the origin."""
        assert self.origin and self.cow
        if target == "none":
            return self.origin.device, "", None
        if target == "cblb":
            snap, wall_us = self.start_cblb(SNAP, self.origin.device)
            return self.origin.device, snap.device, ("cblb", snap, wall_us)
        if target.startswith("dm"):
            chunk = {"dm4k": 8, "dm64k": 128}[target]
            dm = dv.DmSnapshot(self.origin, self.cow, chunk)
            return dm.origin_path, dm.snap_path, ("dm", dm)
        raise CblbError(f"unknown target {target}")

    def target_close(self, handle: Any) -> None:
        if not handle:
            return
        if handle[0] == "cblb":
            self.ctl.remove(SNAP)
        else:
            handle[1].remove()

    def cow_state(self, handle: Any) -> dict[str, float]:
        if not handle:
            return {}
        if handle[0] == "cblb":
            s = self.ctl.snapshot(SNAP)
            return {"cow_bytes": s.cow_bytes, "cow_chunks": s.cow_chunks,
                    "files_used": s.files_used, "index_bytes": s.index_bytes,
                    "start_latency_us": s.start_latency_us, "failed": float(
                        s.state.failed)}
        data, meta = handle[1].cow_bytes()
        return {"cow_bytes": data, "cow_meta_bytes": meta,
                "cow_chunks": data / (handle[1].chunk * 512)}

    # ---- experiments ----------------------------------------------------------------
    def compare_one(self, target: str, wl: Workload, rep: int, warmup: bool,
                    scale: float = 1.0) -> None:
        """First-touch pass then rewrite pass of one workload on a fresh snapshot."""
        region = max(wl.bs * 16, int(self.mode.region[wl.name] * scale))
        path, _snap, handle = self.target_open(target)
        try:
            slab0 = dv.slab_bytes()
            base = self.cow_state(handle)
            log = None
            if rep == 0 and not warmup:
                log = str(self.logs / f"{target}-{wl.name}-first")
            first = run_fio(wl, path, region, lat_log=log, runtime=self.mode.runtime_cap)
            after1 = self.cow_state(handle)
            slab1 = dv.slab_bytes()
            done = first.write_bytes + first.read_bytes
            log2 = log.replace("-first", "-rewrite") if log else None
            rew = run_fio(wl, path, region, io_size=done, lat_log=log2)
            after2 = self.cow_state(handle)
        finally:
            self.target_close(handle)
        for phase, r, before, after, lg in (("first", first, base, after1, log),
                                            ("rewrite", rew, after1, after2, log2)):
            m = r.metrics()
            if handle:
                cow = after.get("cow_bytes", 0) - before.get("cow_bytes", 0)
                m["cow_bytes"] = cow
                m["cow_per_byte"] = cow / r.write_bytes if r.write_bytes else 0.0
                for k in ("files_used", "index_bytes", "cow_chunks", "failed", "cow_meta_bytes"):
                    if k in after:
                        m[k] = after[k]
                if phase == "first" and handle[0] == "cblb":
                    chunks = after.get("cow_chunks", 0)
                    m["index_per_chunk"] = after["index_bytes"] / chunks if chunks else 0.0
                    m["slab_delta_bytes"] = slab1 - slab0
                    m["slab_per_chunk"] = (slab1 - slab0) / chunks if chunks else 0.0
                    m["start_latency_us"] = after["start_latency_us"]
            self.record("compare", target, m, workload=wl.name, phase=phase, rep=rep,
                        warmup=warmup, info={"fio_args": r.argv, "region": region,
                                             "lat_log": (lg + "_clat.1.log") if lg else ""})

    def snapread_one(self, target: str, frac: float, rep: int) -> None:
        region = self.mode.snapread_region
        path, snap, handle = self.target_open(target)
        try:
            change = run_fio(WORKLOADS["rand4k"], path, region, io_size=int(region * frac) // 4096 * 4096)
            seqr = Workload("seqread", "sequential 1 MiB reads", "read", MiB)
            orig = run_fio(seqr, path, region)
            sr = run_fio(seqr, snap, region)
            st = self.cow_state(handle)
            vr = None
            if target == "cblb" and rep == 0 and frac == self.mode.fracs[0]:
                vr = self.verify_one(snap, region)
        finally:
            self.target_close(handle)
        info = {"changed_bytes": change.write_bytes, "region": region}
        self.record("snapread", target, {"read_bw": orig.read_bw}, workload="seqread",
                    phase="origin", rep=rep, frac=frac, info=info)
        self.record("snapread", target, {"read_bw": sr.read_bw, **{
            k: v for k, v in st.items() if k in ("cow_bytes", "cow_chunks")}},
            workload="seqread", phase="snapshot", rep=rep, frac=frac, info=info)
        if vr:
            self.record("verify", "cblb", {"hash_bw": vr[1], "read_bw": sr.read_bw,
                                           "bytes": region}, workload="hash",
                        phase="snapshot", rep=0, info={"engine": vr[0]})

    def verify_one(self, dev: str, size: int) -> tuple[str, float] | None:
        from .verifyhash import hash_throughput
        try:
            return hash_throughput(dev, size)
        except Exception as e:  # noqa: BLE001 - a missing engine is a note, not a failure
            self.note(f"verification throughput skipped: {e}")
            return None

    def totals_one(self, total: int, variant: str, rep: int) -> None:
        self.reload(total)
        assert self.origin
        k = 1 if variant == "one" else min(total, self.mode.several)
        region = self.mode.sweep_region
        fsz = 32768
        try:
            for i in range(k - 1):
                self.start_cblb(f"cbenchx{i}", self.extras[i].device, fsz, 4)
            snap, _ = self.start_cblb(SNAP, self.origin.device, fsz,
                                      self.files_needed(region, fsz))
            r = run_fio(WORKLOADS["rand4k"], self.origin.device, region,
                        runtime=self.mode.runtime_cap)
        finally:
            self.cleanup_snapshots()
        self.record("totals", "cblb", {**r.metrics()}, workload="rand4k", phase="first",
                    rep=rep, total=total, variant=variant, info={"snapshots": k,
                                                                 "fio_args": r.argv})

    def filesize_one(self, file_size: int, rep: int) -> None:
        assert self.origin
        region = self.mode.sweep_region
        mf = self.files_needed(region, file_size)
        if (file_size * 512) > self.catalog.free():  # type: ignore[union-attr]
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
                        runtime=self.mode.runtime_cap)
        finally:
            stop.set()
            th.join()
            s = self.ctl.snapshot(SNAP)
            self.cleanup_snapshots()
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
        if (file_size * 512) > self.catalog.free():  # type: ignore[union-attr]
            return
        snap, wall_us = self.start_cblb(SNAP, fs.device, file_size, 2)
        s = self.ctl.snapshot(SNAP)
        self.cleanup_snapshots()
        self.record("start", "cblb", {"start_latency_us": s.start_latency_us,
                                      "start_wall_us": wall_us}, phase="mounted", rep=rep,
                    file_size=file_size, info={"freeze": s.freeze})

    def maxfiles_one(self, max_files: int) -> None:
        assert self.origin
        region = self.mode.sweep_region
        fsz = self.mode.max_files_small
        self.start_cblb(SNAP, self.origin.device, fsz, max_files)
        err = ""
        try:
            r = run_fio(WORKLOADS["rand4k"], self.origin.device, region,
                        runtime=self.mode.runtime_cap)
            m = r.metrics()
            m["fio_ok"] = 1.0
        except CblbError as e:
            m, err = {"fio_ok": 0.0}, str(e)
        s = self.ctl.snapshot(SNAP)
        self.cleanup_snapshots()
        m.update({"files_used": s.files_used, "cow_bytes": s.cow_bytes,
                  "store_bytes": s.store_bytes,
                  "failed": float(s.state.failed)})
        self.record("maxfiles", "cblb", m, workload="rand4k", phase="first", rep=0,
                    file_size=fsz, max_files=max_files,
                    info={"state": s.state.value, "error": s.error, "fio_error": err,
                          "region": region})

    def tracer_one(self, variant: str, rep: int) -> None:
        """The tracer's own cost: writes to a device that has no snapshot, with the module
        unloaded vs loaded with an active snapshot on another device."""
        assert self.origin
        if variant == "unloaded":
            self.unload()
        else:
            self.reload(4)
            self.start_cblb("cbenchx0", self.extras[0].device, 32768, 4)
        try:
            r = run_fio(WORKLOADS["rand4k"], self.origin.device, self.mode.sweep_region,
                        runtime=self.mode.runtime_cap)
        finally:
            if self.ctl.loaded():
                self.cleanup_snapshots()
        self.record("tracer", variant, r.metrics(), workload="rand4k", phase="rewrite",
                    rep=rep, variant=variant, info={"fio_args": r.argv})

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
            first = run_fio(WORKLOADS["rand4k"], f, region, runtime=self.mode.runtime_cap)
            rew = run_fio(WORKLOADS["rand4k"], f, region, io_size=first.write_bytes)
        finally:
            if handle:
                self.cleanup_snapshots()
        for phase, r in (("first", first), ("rewrite", rew)):
            self.record("catorigin", target, r.metrics(), workload="rand4k", phase=phase,
                        rep=rep, info={"fio_args": r.argv})

    # ---- the plan -------------------------------------------------------------------
    def plan(self) -> list[Step]:
        m = self.mode
        steps: list[Step] = []
        rw = {n: (m.region[n] / MiB) for n in WORKLOADS}
        tw = {"none": 1.0, "cblb": 1.5, "dm4k": 4.0, "dm64k": 2.5}

        def add(label: str, w: float, fn: Callable[[], None]) -> None:
            steps.append(Step(label, w, fn))

        if m.warmup:
            for t in m.targets:
                for wl in WORKLOADS.values():
                    add(f"warm-up {t} {wl.name}", tw[t] * rw[wl.name] / 4,
                        partial(self.compare_one, t, wl, -1, True, 0.25))
        for rep in range(m.reps):
            order = list(m.targets[rep % len(m.targets):] + m.targets[:rep % len(m.targets)])
            for t in order:
                for wl in WORKLOADS.values():
                    add(f"compare rep {rep + 1}/{m.reps} {t:5s} {wl.name} (first + rewrite)",
                        tw[t] * rw[wl.name] * 2,
                        partial(self.compare_one, t, wl, rep, False))
        for frac in m.fracs:
            for rep in range(m.reps):
                for t in m.snapread_targets:
                    add(f"snapshot reads {t} {int(frac * 100)}% changed rep {rep + 1}",
                        tw[t] * m.snapread_region / MiB * (0.5 + frac),
                        partial(self.snapread_one, t, frac, rep))
        for rep in range(m.sweep_reps):
            for total in m.totals:
                for variant in ("one", "several"):
                    if variant == "several" and total < 2:
                        continue
                    add(f"total={total} {variant} snapshot(s) rep {rep + 1}",
                        2 * m.sweep_region / MiB + 2,
                        partial(self.totals_one, total, variant, rep))
        for rep in range(m.sweep_reps):
            for variant in ("unloaded", "loaded") if rep % 2 == 0 else ("loaded", "unloaded"):
                add(f"tracer cost: module {variant} rep {rep + 1}", m.sweep_region / MiB + 2,
                    partial(self.tracer_one, variant, rep))
        add("reload total=4", 1, lambda: self.reload(4))
        for rep in range(m.sweep_reps):
            for fsz in m.file_sizes:
                add(f"file size {fsz} blocks ({fsz * 512 // MiB or fsz * 512 // 1024} "
                    f"{'MiB' if fsz * 512 >= MiB else 'KiB'}) rep {rep + 1}",
                    2 * m.sweep_region / MiB + 1,
                    partial(self.filesize_one, fsz, rep))
        for mf in m.max_files:
            add(f"max files {mf} (1 MiB files)", 2 * m.sweep_region / MiB,
                partial(self.maxfiles_one, mf))
        add("mounted origin: start latency per file size, catalog on origin",
            len(m.file_sizes) * m.sweep_reps + (12 * m.sweep_region / MiB * m.sweep_reps
                                                if m.catalog_on_origin else 0),
            self.mounted_suite)
        return steps

    def mounted_suite(self) -> None:
        m = self.mode
        fs = dv.make_loop(max(96 * MiB, 4 * m.sweep_region), "mounted")
        mnt = dv.WORKDIR / "mnt"
        mnt.mkdir(parents=True, exist_ok=True)
        dv.sh(["mkfs.ext4", "-q", "-F", fs.device])
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
