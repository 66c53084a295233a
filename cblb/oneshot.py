"""`cblb snapshot` and `cblb release`: the whole lifecycle in one step, with defaults.

Defaults, each overridable:
- name: ``shadow-<origin basename>`` (the seed's own convention: shadow-sda2)
- catalog: ``/var/lib/cblb/<name>`` (created), which may sit on the origin itself
- store budget: a quarter of the origin's size, but at most half the catalog's free space;
  cut into temp files of 1/20 of the budget, between 8 MiB and the seed's 409600 blocks
  (200 MiB), at most 4096 files. A budget smaller than what the origin will be rewritten
  while the snapshot lives fails the snapshot (never the origin): raise it for busy disks.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .control import (
    MAX_FILES,
    SECTOR,
    Controller,
    Snapshot,
    block_device_size,
    check_block_device,
    validate_name,
)
from .errors import CblbError

MIB = 1 << 20
MIN_FILE = 8 * MIB
SEED_FILE = 409600 * SECTOR
DEFAULT_CATALOG_ROOT = Path("/var/lib/cblb")


@dataclass
class StorePlan:
    file_blocks: int
    max_files: int

    @property
    def budget_bytes(self) -> int:
        return self.file_blocks * SECTOR * self.max_files


def default_name(origin: str) -> str:
    return "shadow-" + os.path.basename(os.path.realpath(origin))


def plan_store(origin_bytes: int, catalog_free: int, file_blocks: int | None = None,
               max_files: int | None = None) -> StorePlan:
    """Temp-file size (512-byte blocks) and count for an origin and a catalog."""
    budget = min(origin_bytes // 4, catalog_free // 2)
    if file_blocks is None:
        size = min(max(budget // 20, MIN_FILE), SEED_FILE)
        file_blocks = size // SECTOR
    if max_files is None:
        max_files = max(1, min(MAX_FILES, budget // (file_blocks * SECTOR)))
    if file_blocks * SECTOR > catalog_free:
        raise CblbError(f"the catalog has {catalog_free // MIB} MiB free, less than one temp "
                        f"file of {file_blocks * SECTOR // MIB} MiB; choose another --catalog "
                        "or a smaller --file-size")
    return StorePlan(file_blocks, max_files)


def snapshot(ctl: Controller, origin: str, mount: str | None, name: str | None = None,
             catalog: str | None = None, file_blocks: int | None = None,
             max_files: int | None = None, total: int = 4, allow_exec: bool = False) -> Snapshot:
    """load (if needed) + create + start (+ mount), undoing what was done on failure."""
    check_block_device(origin)
    name = name or default_name(origin)
    validate_name(name)
    if not ctl.loaded():
        ctl.load(total)
    cat = Path(catalog) if catalog else DEFAULT_CATALOG_ROOT / name
    cat.mkdir(parents=True, exist_ok=True)
    plan = plan_store(block_device_size(origin), shutil.disk_usage(cat).free, file_blocks,
                      max_files)
    ctl.create(name, origin)
    try:
        ctl.start(name, str(cat), plan.file_blocks, plan.max_files)
        if mount:
            ctl.mount(name, mount, allow_exec)
    except CblbError:
        try:
            ctl.remove(name)
        except CblbError:
            pass
        raise
    return ctl.snapshot(name)


def release(ctl: Controller, target: str) -> str:
    """Unmount and remove the snapshot mounted at target (a folder) or named target."""
    ctl.require_loaded()
    snap = None
    real = os.path.realpath(target)
    for s in ctl.snapshots():
        if s.name == target or (s.mountpoint and os.path.realpath(s.mountpoint) == real):
            snap = s
            break
    if snap is None:
        raise CblbError(f"no snapshot is mounted at or named {target}; 'cblb list' shows them")
    if snap.mountpoint:
        ctl.umount(snap.mountpoint)
    ctl.remove(snap.name)
    return snap.name
