"""The bench's rig: what every experiment stands on.

:class:`Rig` holds the mode, the :class:`~cblb.control.Controller` and the results being
written; it loads and reloads the module (``total=N``), sets up and tears down the device
sets of :mod:`.devices` (``ram``, ``ssd``) and the small extra origins, and opens and
closes one target at a time on the current set: no snapshot, a fresh cblb snapshot or a
dm-snapshot (:meth:`Rig.target_open`). :meth:`Rig.record` adds one raw figure to
``results["runs"]``. The experiments (:mod:`.experiments`) call down into it, never the
other way.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..control import Controller
from ..errors import CblbError
from . import devices as dv
from .modes import SEED_FILE_SIZE, ModeConfig
from .workloads import MiB

SNAP = "cbench0"


class Rig:
    """The module, the device sets and the targets of one benchmark run; ``results`` is the
    results.json being written (its ``meta`` and ``runs``)."""

    def __init__(self, mode: ModeConfig, ctl: Controller, results: dict[str, Any], logs: Path,
                 stream: Any = None) -> None:
        self.mode = mode
        self.ctl = ctl
        self.results = results
        self.logs = logs
        self.stream = stream or sys.stdout
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

    # ---- the mounted ext4 origin of the start-latency and catalog sweeps -----------
    @contextmanager
    def mounted_origin(self) -> Iterator[tuple[dv.Loop, Path]]:
        """(loop device, mount folder) of a fresh ext4 origin, mounted, with a ``data.bin``
        of the sweep region in it (and room for a catalog); unmounted and detached after,
        every snapshot removed first."""
        m = self.mode
        fs = dv.make_loop(2 * m.sweep_region + 64 * MiB, "mounted", sparse=True)
        mnt = dv.WORKDIR / "mnt"
        mnt.mkdir(parents=True, exist_ok=True)
        dv.sh(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
               fs.device])
        dv.sh(["mount", fs.device, str(mnt)])
        try:
            dv.sh(["fallocate", "-l", str(m.sweep_region), str(mnt / "data.bin")])
            yield fs, mnt
        finally:
            self.cleanup_snapshots()
            dv.sh(["umount", str(mnt)], check=False)
            fs.detach()
