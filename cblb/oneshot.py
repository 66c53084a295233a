"""`cblb snapshot` and `cblb release`: the whole lifecycle in one step, with defaults.

Several origins are taken at one point in time, as a set (kmod/doc/SETS.md): each member
gets its own name, catalog (CATALOG_ROOT/<name>) and store plan, all start with one
``startset`` and, with a mount folder DIR, each is mounted at DIR/<name>.

Defaults, each overridable:
- name: ``shadow-<origin basename>`` (the seed's own convention: shadow-sda2)
- catalog: ``/var/lib/cblb/<name>`` (created), which may sit on the origin itself
- store budget: a quarter of the origin's size, but at most half the catalog's free space;
  cut into temp files of 1/20 of the budget, between 8 MiB and the seed's 409600 blocks
  (200 MiB), at most 4096 files. A budget smaller than what the origin will be rewritten
  while the snapshot lives fails the snapshot (never the origin): raise it for busy disks.
"""

from __future__ import annotations

import errno as E
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .control import Controller
from .errors import CblbError
from .model import MAX_FILES, SECTOR, SET_MAX, SetMember, Snapshot, validate_name
from .system import check_block_device, devnum

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


def default_name(origin: str, resolve: Callable[[str], str] = os.path.realpath) -> str:
    return "shadow-" + os.path.basename(resolve(origin))


def default_set_name(names: Sequence[str]) -> str:
    """set-<first member's name>, cut to the 31 characters a name may have."""
    return ("set-" + names[0])[:31]


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
             max_files: int | None = None, total: int = 4, allow_exec: bool = False,
             set_name: str | None = None) -> Snapshot:
    """load (if needed) + create + start (+ mount), undoing what was done on failure.
    With ``set_name`` it is started as a set of one of that name."""
    check_block_device(origin, ctl.system.stat)
    name = name or default_name(origin, ctl.system.resolve)
    validate_name(name)
    if set_name is not None:
        validate_name(set_name, "set")
    if not ctl.loaded():
        ctl.load(total)
    if set_name is not None:
        check_set_name_free(ctl, set_name)
    cat = Path(catalog) if catalog else DEFAULT_CATALOG_ROOT / name
    cat.mkdir(parents=True, exist_ok=True)
    plan = plan_store(ctl.system.device_size(origin), shutil.disk_usage(cat).free, file_blocks,
                      max_files)
    ctl.create(name, origin)
    try:
        if set_name is None:
            ctl.start(name, str(cat), plan.file_blocks, plan.max_files)
        else:
            ctl.start_set(set_name, [SetMember(name, str(cat), plan.file_blocks, plan.max_files)])
        if mount:
            ctl.mount(name, mount, allow_exec)
    except CblbError:
        try:
            ctl.remove(name)
        except CblbError:
            pass
        raise
    return ctl.snapshot(name)


def set_members(ctl: Controller, set_name: str) -> list[Snapshot]:
    """The snapshots started together as ``set_name``."""
    return [s for s in ctl.snapshots() if s.set_name == set_name]


def check_set_name_free(ctl: Controller, set_name: str) -> None:
    """A set's name must name nothing else, so that 'cblb release NAME' means one thing."""
    if any(s.name == set_name for s in ctl.snapshots()):
        raise CblbError(f"a snapshot is named {set_name}; give the set another name (--set NAME)",
                        E.EEXIST, page=f"a snapshot is named {set_name}; give the set "
                                       "another name")
    members = set_members(ctl, set_name)
    if members:
        raise CblbError(f"a set named {set_name} exists already ("
                        f"{', '.join(s.name for s in members)}); give another name (--set NAME) "
                        f"or release it first (cblb release {set_name})", E.EEXIST,
                        page=f"a set named {set_name} exists already ("
                             f"{', '.join(s.name for s in members)}); give the set another "
                             "name, or remove those snapshots first")


@dataclass
class SetResult:
    """What 'cblb snapshot' with several origins took: one point in time for all."""

    name: str
    snapshots: list[Snapshot]

    @property
    def start_time_ns(self) -> int:
        return self.snapshots[0].start_time_ns if self.snapshots else 0

    def to_json(self) -> dict[str, Any]:
        return {"set": self.name, "start_time_ns": self.start_time_ns,
                "snapshots": [s.to_json() for s in self.snapshots]}


@dataclass
class _Undo:
    """What snapshot_set did so far, undone in reverse on failure."""

    ctl: Controller
    folders: list[Path] = field(default_factory=list)       # catalogs, mount folder it made
    created: list[str] = field(default_factory=list)
    mounts: list[tuple[str, str, bool]] = field(default_factory=list)  # name, folder, made

    def run(self) -> list[str]:
        """Undo everything; the snapshots that could not be removed."""
        for name, target, made in reversed(self.mounts):
            try:
                self.ctl.umount(name)
            except CblbError:
                continue
            if made:
                _rmdir(Path(target))
        left = []
        for name in reversed(self.created):
            try:
                self.ctl.remove(name)
            except CblbError:
                left.append(name)
        for folder in reversed(self.folders):
            _rmdir(folder)
        return left


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()           # only when empty: nothing of anyone's is lost
    except OSError:
        pass


def snapshot_set(ctl: Controller, origins: Sequence[str], mount: str | None,
                 set_name: str | None = None, catalog_root: str | None = None,
                 file_blocks: int | None = None, max_files: int | None = None, total: int = 4,
                 allow_exec: bool = False) -> SetResult:
    """Several origins at one point in time: load (if needed), create each member
    (shadow-<device>), start them all with one startset, mount each at MOUNT/<name>.

    Each member's catalog is CATALOG_ROOT/<name> (default /var/lib/cblb/<name>), created,
    and its store is planned as for one origin. On any failure everything done is undone.
    """
    if not 1 <= len(origins) <= SET_MAX:
        raise CblbError(f"a set has 1..{SET_MAX} origins, not {len(origins)}; take the others "
                        "in another set", E.EINVAL)
    names: list[str] = []
    seen: dict[str, str] = {}
    for origin in origins:
        st = check_block_device(origin, ctl.system.stat)
        if devnum(st) in seen:
            raise CblbError(f"{origin} and {seen[devnum(st)]} are the same device; give each "
                            "origin once", E.EINVAL)
        seen[devnum(st)] = origin
        name = default_name(origin, ctl.system.resolve)
        validate_name(name)
        if name in names:
            raise CblbError(f"two origins would both be named {name}; take them in two runs "
                            "with 'cblb create' and 'cblb start'", E.EINVAL)
        names.append(name)
    set_name = set_name or default_set_name(names)
    validate_name(set_name, "set")
    if not ctl.loaded():
        ctl.load(total)
    check_set_name_free(ctl, set_name)
    root = Path(catalog_root) if catalog_root else DEFAULT_CATALOG_ROOT
    undo = _Undo(ctl)
    try:
        members = []
        for origin, name in zip(origins, names):
            cat = root / name
            if not cat.is_dir():
                try:
                    cat.mkdir(parents=True)
                except OSError as e:
                    raise CblbError(f"cannot create the catalog {cat}: {e.strerror}; give "
                                    "--catalog a folder you may write", e.errno or 0) from None
                undo.folders.append(cat)
            plan = plan_store(ctl.system.device_size(origin), shutil.disk_usage(cat).free,
                              file_blocks, max_files)
            members.append(SetMember(name, str(cat), plan.file_blocks, plan.max_files))
        for origin, name in zip(origins, names):
            ctl.create(name, origin)
            undo.created.append(name)
        ctl.start_set(set_name, members)
        if mount:
            if not os.path.lexists(mount):
                undo.folders.append(Path(mount))
            for name in names:
                target = os.path.join(mount, name)
                made = not os.path.lexists(target)
                undo.mounts.append((name, ctl.mount(name, target, allow_exec), made))
    except BaseException as e:
        left = undo.run()
        if left and isinstance(e, CblbError):
            raise CblbError(f"{e}; undoing it could not remove {', '.join(left)}: "
                            f"'cblb release {' '.join(left)}' removes them", e.errno) from None
        raise
    return SetResult(set_name, [ctl.snapshot(n) for n in names])


def release_targets(ctl: Controller, targets: Sequence[str]) -> list[Snapshot]:
    """The snapshots each target names, in order, each once. A target is a snapshot's name,
    the folder it is mounted on, a set's name (all its members), or the folder holding the
    mount folders of 'cblb snapshot A B --mount DIR' (those snapshots and their sets)."""
    ctl.require_loaded()
    snaps = ctl.snapshots()
    out: dict[str, Snapshot] = {}
    for target in targets:
        real = ctl.system.resolve(target)
        mounted = {s.name: ctl.system.resolve(s.mountpoint) for s in snaps if s.mountpoint}
        found = ([s for s in snaps if s.name == target]
                 or [s for s in snaps if mounted.get(s.name) == real]
                 or [s for s in snaps if s.set_name == target])
        if not found:
            inside = {n for n, m in mounted.items() if os.path.dirname(m) == real}
            sets = {s.set_name for s in snaps if s.name in inside and s.set_name}
            found = [s for s in snaps if s.name in inside or s.set_name in sets]
        if not found:
            raise CblbError(f"no snapshot is named, mounted at or in, or in a set named "
                            f"{target}; 'cblb list' shows them (nothing was released)", E.ENOENT)
        for s in found:
            out.setdefault(s.name, s)
    return list(out.values())


def release(ctl: Controller, targets: Sequence[str]) -> list[Snapshot]:
    """Unmount and remove every snapshot the targets name (see release_targets); the
    snapshots released. All targets are looked up before anything is released."""
    snaps = release_targets(ctl, targets)
    done: list[Snapshot] = []
    for s in snaps:
        try:
            if s.mountpoint:
                ctl.umount(s.mountpoint)
            ctl.remove(s.name)
        except CblbError as e:
            gone = {x.name for x in done}
            rest = " ".join(x.name for x in snaps if x.name not in gone)
            so_far = f"released {', '.join(x.name for x in done)}; " if done else ""
            raise CblbError(f"{e} ({so_far}left: {rest}; fix that, then 'cblb release {rest}')",
                            e.errno) from None
        done.append(s)
    return done
