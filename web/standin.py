"""An in-memory stand-in for :class:`cblb.control.Controller`, for tests and demos.

It keeps the module's state machine (created -> active -> failed; remove from any state),
refuses what the real controller refuses with the same kind of message and errno, and lets
active snapshots "copy" ``grow_bytes_per_s`` so the charts have something to draw. It never
touches the kernel, /sys or /dev; mount and umount only record the folder.

``cblb web --standin`` serves the page with it (to look at the page on a machine without
the module); the host tests and the host browser test use it too.
"""

from __future__ import annotations

import errno as E
import math
import os
import threading
import time
from typing import Any, Callable

from cblb.control import (CHUNK_SIZE, check_start_args, MAX_FILE_SIZE, MAX_FILES, MAX_TOTAL, MIN_FILE_SIZE,
                          ModuleStatus, Snapshot, SnapshotState, validate_name)
from cblb.errors import CblbError

DEFAULT_ORIGINS = {"/dev/vdb1": "254:17", "/dev/vdb2": "254:18", "/dev/loop0": "7:0"}


class StandInController:
    def __init__(self, origins: dict[str, str] | None = None, loaded: bool = False,
                 total: int = 4, grow_bytes_per_s: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.origins = dict(origins or DEFAULT_ORIGINS)
        self._loaded = loaded
        self._total = total if loaded else 0
        self.grow = grow_bytes_per_s
        self.clock = clock
        self.snaps: dict[str, Snapshot] = {}
        self._started: dict[str, float] = {}
        self.lock = threading.Lock()
        self.calls: list[tuple[str, tuple[Any, ...]]] = []   # for tests: what reached us

    # ---- module ---------------------------------------------------------------------
    def loaded(self) -> bool:
        return self._loaded

    def require_loaded(self) -> None:
        if not self._loaded:
            raise CblbError("the cblb module is not loaded; run 'cblb load' (or "
                            "insmod cblb_module.ko total=N) first", E.ENODEV)

    def total(self) -> int:
        return self._total

    def version(self) -> str:
        return "0.17-standin" if self._loaded else ""

    def load(self, total: int = 4, ko: Any = None) -> None:
        self.calls.append(("load", (total,)))
        if not 1 <= total <= MAX_TOTAL:
            raise CblbError(f"total={total} is out of range: choose 1..{MAX_TOTAL}", E.EINVAL)
        if self._loaded:
            if total == self._total:
                return
            raise CblbError(f"the module is already loaded with total={self._total}; "
                            "'cblb unload' first to change it", E.EEXIST)
        self._loaded, self._total = True, total

    def unload(self) -> None:
        self.calls.append(("unload", ()))
        if not self._loaded:
            return
        if self.snaps:
            raise CblbError(f"snapshots still exist ({', '.join(sorted(self.snaps))}); "
                            "'cblb remove' them first", E.EBUSY)
        self._loaded, self._total = False, 0

    # ---- state ----------------------------------------------------------------------
    def _advance(self, s: Snapshot) -> None:
        if s.state is not SnapshotState.ACTIVE or not self.grow:
            return
        el = self.clock() - self._started[s.name]
        # A wavy but rising write load, so the projection has something to fit.
        copied = self.grow * el + self.grow * 3 * math.sin(el / 7.0)
        s.cow_chunks = max(s.cow_chunks, int(copied // CHUNK_SIZE))
        s.cow_bytes = s.cow_chunks * CHUNK_SIZE
        per_file = s.file_size * 512 // CHUNK_SIZE
        s.files_used = min(s.max_files, 1 + s.cow_chunks // max(per_file, 1))
        if s.cow_chunks >= s.store_capacity:
            s.cow_chunks = s.store_capacity
            s.cow_bytes = s.cow_chunks * CHUNK_SIZE
            s.state = SnapshotState.FAILED
            s.error = "temp-file store full"

    def names(self) -> list[str]:
        return sorted(self.snaps) if self._loaded else []

    def snapshot(self, name: str) -> Snapshot:
        validate_name(name)
        with self.lock:
            if name not in self.snaps:
                self.require_loaded()
                raise CblbError(f"no snapshot named {name}; 'cblb list' shows the existing ones",
                                E.ENOENT)
            s = self.snaps[name]
            self._advance(s)
            return Snapshot(**{**s.__dict__})

    def snapshots(self) -> list[Snapshot]:
        return [self.snapshot(n) for n in self.names()]

    def status(self) -> ModuleStatus:
        if not self._loaded:
            return ModuleStatus(loaded=False)
        return ModuleStatus(True, self._total, self.version(), self.snapshots())

    # ---- commands ---------------------------------------------------------------------
    def create(self, name: str, origin: str) -> Snapshot:
        self.calls.append(("create", (name, origin)))
        validate_name(name)
        if origin not in self.origins:
            if origin.startswith("/dev/"):
                raise CblbError(f"{origin}: no such device; give a partition such as /dev/sda2",
                                E.ENOENT)
            raise CblbError(f"{origin} is not a block device; give a partition such as "
                            "/dev/sda2", E.ENOTBLK)
        self.require_loaded()
        with self.lock:
            for s in self.snaps.values():
                if s.name == name:
                    raise CblbError(f"a snapshot named {name} already exists (of {s.origin}); "
                                    "choose another name or 'cblb remove' it", E.EEXIST)
                if s.origin == origin:
                    raise CblbError(f"{origin} already has a snapshot ({s.name}); one "
                                    "snapshot per origin", E.EBUSY)
            if len(self.snaps) >= self._total:
                raise CblbError(f"all {self._total} snapshot slots are used; remove a snapshot "
                                "or reload the module with a larger total (cblb unload; "
                                "cblb load --total N)", E.ENOSPC)
            self.snaps[name] = Snapshot(name=name, state=SnapshotState.CREATED, origin=origin,
                                        origin_dev=self.origins[origin])
        return self.snapshot(name)

    def start(self, name: str, catalog: str, file_size: int, max_files: int) -> Snapshot:
        self.calls.append(("start", (name, catalog, file_size, max_files)))
        snap = self.snapshot(name)
        catalog = check_start_args(snap, catalog, file_size, max_files)
        if not os.path.exists(catalog):
            raise CblbError(f"catalog {catalog} does not exist; create it with mkdir", E.ENOENT)
        if not os.path.isdir(catalog):
            raise CblbError(f"catalog {catalog} is not a folder", E.ENOTDIR)
        with self.lock:
            s = self.snaps[name]
            s.state = SnapshotState.ACTIVE
            s.catalog, s.file_size, s.max_files, s.files_used = catalog, file_size, max_files, 1
            s.store_capacity = max_files * file_size * 512 // CHUNK_SIZE
            s.start_time_ns = int(self.clock() * 1e9)
            s.start_latency_us = 2300
            s.freeze = "frozen"
            self._started[name] = self.clock()
        return self.snapshot(name)

    def remove(self, name: str) -> None:
        self.calls.append(("remove", (name,)))
        snap = self.snapshot(name)
        if snap.mountpoint:
            raise CblbError(f"{name} is mounted at {snap.mountpoint}: unmount it first "
                            f"(cblb umount {name})", E.EBUSY)
        with self.lock:
            del self.snaps[name]
            self._started.pop(name, None)

    def mount(self, name: str, target: str) -> str:
        self.calls.append(("mount", (name, target)))
        snap = self.snapshot(name)
        if snap.state is not SnapshotState.ACTIVE:
            raise CblbError(f"{name} is {snap.state.value}; only an active snapshot can be "
                            "mounted", E.EINVAL)
        if snap.mountpoint:
            raise CblbError(f"{name} is already mounted at {snap.mountpoint}", E.EBUSY)
        with self.lock:
            self.snaps[name].mountpoint = target
        return target

    def umount(self, name_or_dir: str) -> None:
        self.calls.append(("umount", (name_or_dir,)))
        with self.lock:
            for s in self.snaps.values():
                if name_or_dir in (s.name, s.mountpoint) and s.mountpoint:
                    s.mountpoint = ""
                    return
        raise CblbError(f"umount {name_or_dir} failed: not mounted", E.EBUSY)


class StandInSampler:
    """Synthetic origin write samples for the stand-in's active snapshots."""

    def __init__(self, ctl: StandInController, clock: Callable[[], float] = time.time) -> None:
        self.ctl = ctl
        self.clock = clock

    def __call__(self) -> list[dict[str, Any]]:
        now = self.clock()
        out = []
        for s in self.ctl.snapshots():
            if s.state is not SnapshotState.ACTIVE:
                continue
            dev = s.origin.rsplit("/", 1)[-1]
            mb = 40 + 25 * math.sin(now / 9.0) + 8 * math.sin(now / 2.3)
            out.append({"ts": now, "device": dev, "write_mb_s": mb, "write_iops": mb * 64,
                        "p50_us": 180 + 40 * math.sin(now / 5.0),
                        "p99_us": 1400 + 500 * math.sin(now / 3.1)})
        return out
