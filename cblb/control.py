"""The control library: the only code that touches the kernel module.

It wraps these kernel interfaces (see kmod/doc/INTERFACE.md):

- ``insmod`` / ``rmmod`` of ``cblb_module.ko`` and ``/sys/module/cblb_module/parameters/total``
- ``/sys/kernel/cblb/cmd``: the seed's ``create``, ``start`` and ``remove`` commands
- ``/sys/kernel/cblb/<dev>/*``: one value per file, read into :class:`Snapshot`; its
  binary ``cbt_map`` (the blocks changed since the origin's previous start) through
  :meth:`Controller.changed_blocks`
- ``/sys/kernel/cblb/tracking/<disk>/*``: each origin whose changed blocks the module tracks,
  read into :class:`Tracking`; ``track`` / ``untrack`` (kmod/doc/CBT.md)
- ``/dev/<dev>``: the read-only snapshot device, mounted ``ro,nosuid,nodev,noexec`` (plus
  ``noload`` for ext3/4, ``norecovery`` for xfs); ``noexec`` only when not asked otherwise

The command line, the web page and the benchmarks all go through :class:`Controller`.
Every refusal is a :class:`~cblb.errors.CblbError` whose message says what to do. Which
state allows which step is written once, in :meth:`Snapshot.require`; the page's templates
and the command line ask it (``s.can_mount``) instead of comparing state names.

This module holds the :class:`Controller` only. What it reads and checks is the model
(:mod:`cblb.model`: :class:`~cblb.model.Snapshot`, :class:`~cblb.model.Tracking`, the
limits and validators, no I/O); the machine itself (sysfs, /dev, the mount table, the
programs run) is the system seam (:mod:`cblb.system`), any object with the methods of
:class:`~cblb.system.SystemLike`: :class:`~cblb.system.System` on this machine,
:mod:`cblb.fake`'s FakeSystem with a fake module behind the same files, for host tests and
``cblb web --standin``.
"""

from __future__ import annotations

import errno as E
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

from .errors import CblbError
from .model import (
    NAME_RE,
    NULL_UUID,
    SECTOR,
    SET_MAX,
    ModuleStatus,
    SetMember,
    Snapshot,
    SnapshotState,
    Tracking,
    check_start_args,
    check_total,
    validate_name,
)
from .system import (
    MODULE_NAME,
    SYSFS_ROOT,
    System,
    SystemLike,
    check_block_device,
    devnum,
    devnum_of_fs,
)

# Every snapshot mount: read-only, no set-uid programs, no device files; noexec unless asked.
MOUNT_BASE = "ro,nosuid,nodev"
MOUNT_FS_OPTIONS = {"ext4": "noload", "ext3": "noload", "xfs": "norecovery,nouuid"}

_INT_FIELDS = (
    "file_size", "max_files", "files_used", "chunk_size", "cow_chunks", "cow_bytes",
    "store_capacity", "start_time_ns", "start_latency_us", "frozen_us", "index_bytes",
    "cbt_sequence", "cbt_block_size", "cbt_changed_blocks",
)
_STR_FIELDS = ("origin", "origin_dev", "catalog", "error", "freeze", "cbt_generation")
_TRACKING_INT_FIELDS = ("sequence", "block_size", "size_sectors", "changed_blocks",
                        "memory_bytes")
MAP_READ = 1 << 20           # bytes per pread of a cbt_map


def _read_map(fd: int) -> bytes:
    """All of a change map's attribute (sysfs gives it a page or so per read); closes fd."""
    parts = []
    try:
        off = 0
        while chunk := os.pread(fd, MAP_READ, off):
            parts.append(chunk)
            off += len(chunk)
    finally:
        os.close(fd)
    return b"".join(parts)


def _tracked_refusals(partition: str) -> dict[int, str]:
    """What the module's refusals of a command on a tracked origin mean."""
    return {
        E.ENOENT: f"{partition} is not tracked",
        E.ENOTBLK: f"{partition} is not a block device",
        E.EBUSY: f"{partition}: a snapshot of it exists; remove it first",
        E.EPERM: "writing /sys/kernel/cblb/cmd needs CAP_SYS_ADMIN",
    }


def _run(system: SystemLike, argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        return system.run(argv)
    except FileNotFoundError:
        raise CblbError(f"{what}: {argv[0]} not found; install it (see README.md)",
                        E.ENOENT) from None


class Controller:
    """Drives cblb_module through sysfs. ``root`` is /sys/kernel/cblb; ``system`` the machine
    (default: this one, with ``root`` as its sysfs folder)."""

    def __init__(self, root: Path = SYSFS_ROOT, module_dir: Path | None = None,
                 system: SystemLike | None = None) -> None:
        self.system: SystemLike = system or System(Path(root))
        self.root = self.system.sysfs
        self.module_dir = module_dir

    # ---- module -----------------------------------------------------------------
    def loaded(self) -> bool:
        return (self.root / "cmd").exists()

    def require_loaded(self) -> None:
        if not self.loaded():
            raise CblbError("the cblb module is not loaded; run 'cblb load' (or "
                            "insmod cblb_module.ko total=N) first", E.ENODEV,
                            page="the cblb module is not loaded: load it first (Load the "
                                 "module, under Lifecycle)")

    def total(self) -> int:
        p = self.system.module_sysfs / "parameters" / "total"
        if not p.exists():
            return 0
        text = p.read_text().strip()
        if not text.isdigit():
            raise CblbError(f"cannot read {p}: {text[:40]!r} is not a number", E.EIO)
        return int(text)

    def version(self) -> str:
        p = self.system.module_sysfs / "version"
        return p.read_text().strip() if p.exists() else ""

    def find_module(self) -> Path:
        """The .ko for the running kernel: the checkout's kmod/ build, else the installed one."""
        kver = os.uname().release
        for c in self.system.module_candidates(self.module_dir):
            if c.exists() and self._ko_matches(c, kver):
                return c
        raise CblbError(f"no {MODULE_NAME}.ko built for kernel {kver}; run "
                        f"'make -C kmod KVER={kver}' or 'sudo ./install make && sudo ./install install'",
                        E.ENOENT)

    def _ko_matches(self, ko: Path, kver: str) -> bool:
        try:
            r = self.system.run(["modinfo", "-F", "vermagic", str(ko)])
        except FileNotFoundError:
            return True  # no modinfo: let insmod decide
        if r.returncode != 0:
            return True
        return r.stdout.split(" ")[0].strip() == kver

    def load(self, total: int = 4, ko: Path | None = None) -> bool:
        """insmod cblb_module.ko total=N. False when it was already loaded with that total."""
        check_total(total)
        if self.loaded():
            cur = self.total()
            if cur == total:
                return False
            raise CblbError(f"the module is already loaded with total={cur}; "
                            "'cblb unload' first to change it", E.EEXIST,
                            page=f"the module is already loaded with total={cur}; unload it "
                                 "first to change it")
        ko = ko or self.find_module()
        r = _run(self.system, ["insmod", str(ko), f"total={total}"], "load")
        if r.returncode != 0:
            raise CblbError(f"insmod {ko} failed: {r.stderr.strip() or r.stdout.strip()}", E.EIO)
        return True

    def unload(self) -> bool:
        """rmmod cblb_module; refused while snapshots exist. False when it was not loaded."""
        if not self.loaded():
            return False
        snaps = self.snapshots()
        if snaps:
            names = ", ".join(s.name for s in snaps)
            raise CblbError(f"snapshots still exist ({names}); 'cblb remove' them first", E.EBUSY,
                            page=f"snapshots still exist ({names}); remove them first")
        r = _run(self.system, ["rmmod", MODULE_NAME], "unload")
        if r.returncode != 0:
            raise CblbError(f"rmmod {MODULE_NAME} failed: {r.stderr.strip()}", E.EBUSY)
        return True

    # ---- state ------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.loaded():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / "state").exists())

    def snapshot(self, name: str) -> Snapshot:
        validate_name(name)
        d = self.root / name
        if not (d / "state").exists():
            self.require_loaded()
            raise CblbError(f"no snapshot named {name}; 'cblb list' shows the existing ones",
                            E.ENOENT, page=f"no snapshot named {name}; the devices table "
                                           "shows the existing ones")
        return self._read(d)

    def snapshots(self) -> list[Snapshot]:
        out = []
        for n in self.names():
            try:
                out.append(self._read(self.root / n))
            except FileNotFoundError:
                continue  # removed while we read
            except CblbError as e:
                out.append(Snapshot.unreadable_one(n, str(e)))
        return out

    def status(self) -> ModuleStatus:
        if not self.loaded():
            return ModuleStatus(loaded=False)
        return ModuleStatus(True, self.total(), self.version(), self.snapshots(),
                            self.tracking())

    def _read(self, d: Path) -> Snapshot:
        """One snapshot from its sysfs folder; a file that does not parse is a CblbError
        naming it (snapshots() lists that device as unreadable, the others as usual)."""
        def rd(f: str) -> str:
            try:
                return (d / f).read_text().strip()
            except FileNotFoundError:
                return ""
            except UnicodeDecodeError:
                raise CblbError(f"{d.name}: cannot read {d / f}: not text", E.EIO) from None

        kw: dict[str, Any] = {f: rd(f) for f in _STR_FIELDS}
        kw["set_name"] = rd("set")
        if kw["cbt_generation"] == NULL_UUID:
            kw["cbt_generation"] = ""
        for f in _INT_FIELDS:
            v = rd(f)
            kw[f] = int(v) if v.lstrip("-").isdigit() else 0
        ext = []
        for line in rd("store_extents").splitlines():
            try:
                a, b = line.split()
                ext.append((int(a), int(b)))
            except ValueError:
                raise CblbError(f"{d.name}: cannot read {d / 'store_extents'}: line "
                                f"{line[:40]!r} is not two numbers", E.EIO) from None
        snap = Snapshot(name=d.name, state=SnapshotState.parse(rd("state")), store_extents=ext, **kw)
        if snap.state in (SnapshotState.ACTIVE, SnapshotState.FAILED):
            try:
                snap.mountpoint = self._mountpoint_of(devnum(self.system.stat(snap.device)))
            except OSError:
                pass
        return snap

    # ---- changed-block tracking (kmod/doc/CBT.md) --------------------------------------
    def tracking(self) -> list[Tracking]:
        """Every tracked origin, by disk name."""
        top = self.root / "tracking"
        if not self.loaded() or not top.is_dir():
            return []
        out = []
        for d in sorted(top.iterdir()):
            try:
                out.append(self._read_tracking(d))
            except FileNotFoundError:
                continue  # untracked while we read
        return out

    @staticmethod
    def _read_tracking(d: Path) -> Tracking:
        if not (d / "generation").exists():
            raise FileNotFoundError(d)
        kw: dict[str, Any] = {f: (d / f).read_text().strip() for f in ("dev", "generation")}
        for f in _TRACKING_INT_FIELDS:
            v = (d / f).read_text().strip()
            kw[f] = int(v) if v.isdigit() else 0
        return Tracking(disk=d.name, **kw)

    def changed_blocks(self, name: str, expect: Snapshot | None = None) -> tuple[int, bytes]:
        """(bytes per bit, map) of the blocks of ``name``'s origin written between the
        origin's previous start and this snapshot's: bit i (byte i // 8, bit i % 8, least
        significant first) set = block i changed. Refused before start, and when the
        snapshot changed while its map was read, or since ``expect`` (the caller's earlier
        view of it, whose start the caller checked) was read."""
        snap = expect or self.snapshot(name)
        if not snap.has_cbt:
            raise CblbError(f"{name} has no changed-block map: only a started snapshot has "
                            "one (and only from a module that tracks changes, "
                            "kmod/doc/CBT.md)", E.ENOENT)
        path = self.root / name / "cbt_map"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except PermissionError:
            raise CblbError(f"{path} is readable by root only; run as root", E.EACCES) from None
        except FileNotFoundError:
            raise CblbError(f"{name} has no changed-block map ({path} is missing): the "
                            "module does not track changes; take a full backup",
                            E.ENOENT) from None
        bitmap = _read_map(fd)
        again = self.snapshot(name)
        if (again.cbt_generation, again.cbt_sequence, again.start_time_ns) != \
                (snap.cbt_generation, snap.cbt_sequence, snap.start_time_ns):
            raise CblbError(f"{name} changed while its changed-block map was read; try again",
                            E.EAGAIN)
        if not bitmap:
            raise CblbError(f"{name}'s changed-block map is empty: the start that made it "
                            "was undone or is not finished", E.ENODATA)
        return snap.cbt_block_size, bitmap

    def _tracked(self, dev: str) -> Tracking | None:
        return next((t for t in self.tracking() if t.dev == dev), None)

    def track(self, partition: str) -> Tracking:
        """track <partition>: begin tracking its changed blocks without a snapshot."""
        st = check_block_device(partition, self.system.stat)
        node = self.system.resolve(partition)
        self.require_loaded()
        t = self._tracked(devnum(st))
        if t is not None:
            raise CblbError(f"{partition} is already tracked (generation {t.short_generation}, "
                            f"sequence {t.sequence})", E.EEXIST)
        self._cmd(f"track {node}", {
            E.EEXIST: f"{partition} is already tracked",
            E.ENOENT: f"{partition}: no such block device",
            E.ENOTBLK: f"{partition} is not a block device",
            E.EINVAL: f"{partition} is a snapshot device; track its origin instead",
            E.ENOMEM: f"not enough kernel memory for {partition}'s two change maps",
            E.EPERM: "writing /sys/kernel/cblb/cmd needs CAP_SYS_ADMIN",
        })
        t = self._tracked(devnum(st))
        if t is None:
            raise CblbError(f"the module accepted 'track {node}' but shows no tracking of it",
                            E.EIO)
        return t

    def untrack(self, partition: str) -> None:
        """untrack <partition>: stop tracking; its next incremental backup needs a full one."""
        st = check_block_device(partition, self.system.stat)
        node = self.system.resolve(partition)
        self.require_loaded()
        if self._tracked(devnum(st)) is None:
            raise CblbError(f"{partition} is not tracked ('cblb status' lists the tracked "
                            "origins)", E.ENOENT)
        snap = next((s for s in self.snapshots() if s.origin_dev == devnum(st)), None)
        if snap is not None:
            raise CblbError(f"{partition}: a snapshot of it exists ({snap.name}); remove it "
                            "first", E.EBUSY)
        self._cmd(f"untrack {node}", _tracked_refusals(partition))

    # ---- tracking kept across a restart (kmod/doc/CBT.md, cblb/keep.py) ----------
    def seal(self, partition: str) -> None:
        """seal <partition>: from now on a write to it shows in its ``sealed`` attribute,
        so a map read after this is known complete while that attribute says yes."""
        node = self.system.resolve(partition)
        self._cmd(f"seal {node}", {
            **_tracked_refusals(partition),
            E.EINVAL: "the module does not know 'seal': load a module of cblb 0.17 or later",
        })

    def sealed(self, t: Tracking) -> str:
        """``yes`` (sealed, nothing written since), ``written`` or ``no``."""
        try:
            return (self.root / "tracking" / t.disk / "sealed").read_text().strip()
        except FileNotFoundError:
            return "no"

    def current_map(self, t: Tracking) -> bytes:
        """The map of what was written to ``t`` since its last start (read page by page)."""
        return _read_map(os.open(self.root / "tracking" / t.disk / "map",
                                 os.O_RDONLY | os.O_CLOEXEC))

    def give_back_map(self, t: Tracking, bitmap: bytes) -> None:
        """OR a saved map into ``t``'s current one (only while its generation is fresh)."""
        fd = os.open(self.root / "tracking" / t.disk / "map", os.O_WRONLY | os.O_CLOEXEC)
        try:
            view, off = memoryview(bitmap), 0
            while off < len(bitmap):  # sysfs takes a page per write
                off += os.pwrite(fd, view[off:off + 4096], off)
        except OSError as e:
            raise CblbError(f"{t.disk}: the module refused the saved map: "
                            f"{os.strerror(e.errno or 0)}", e.errno or E.EIO) from None
        finally:
            os.close(fd)

    def resume(self, partition: str, generation: str, sequence: int, block_size: int,
               fresh: str) -> None:
        """resume <partition> ...: its fresh generation ``fresh`` (the one the saved map was
        written into) takes the saved one's place."""
        node = self.system.resolve(partition)
        self._cmd(f"resume {node} {generation} {sequence} {block_size} {fresh}", {
            E.ENOENT: f"{partition} is not tracked",
            E.EBUSY: f"{partition} was started, resumed or tracked anew since generation "
                     f"{fresh[:8]} began",
            E.EINVAL: f"{partition}: the module refused generation {generation} or block "
                      f"size {block_size}",
        })

    def _mountpoint_of(self, majmin: str) -> str:
        for m in self.system.mounts():
            if m.dev == majmin:
                return m.target
        return ""

    # ---- commands ---------------------------------------------------------------
    def _cmd(self, line: str, explain: dict[int, str],
             page: dict[int, str] | None = None) -> None:
        self.require_loaded()
        try:
            self.system.write_command(line)
        except PermissionError:
            raise CblbError("permission denied writing /sys/kernel/cblb/cmd; run as root",
                            E.EACCES) from None
        except OSError as e:
            msg = explain.get(e.errno or 0) or f"the module refused '{line}': {os.strerror(e.errno or 0)}"
            raise CblbError(msg, e.errno or 0, (page or {}).get(e.errno or 0)) from None

    def create(self, name: str, origin: str) -> Snapshot:
        """create <name> <origin> begin end; the origin goes to the module as its device node
        (a /dev/disk/by-* link is resolved first, so the module sees what was checked)."""
        validate_name(name)
        st = check_block_device(origin, self.system.stat)
        node = self.system.resolve(origin)
        self.require_loaded()
        for s in self.snapshots():
            if s.name == name:
                raise CblbError(f"a snapshot named {name} already exists (of {s.origin}); "
                                "choose another name or 'cblb remove' it", E.EEXIST,
                                page=f"a snapshot named {name} already exists (of "
                                     f"{s.origin}); choose another name or remove it")
            if s.origin_dev == devnum(st):
                raise CblbError(f"{origin} already has a snapshot ({s.name}); "
                                "one snapshot per origin", E.EBUSY)
        if self.system.block_name_taken(name):
            raise CblbError(f"/dev/{name} already exists; choose another name", E.EEXIST)
        self._cmd(f"create {name} {node} begin end", {
            E.EINVAL: f"the module refused the name {name!r} or origin {origin}",
            E.ENOENT: f"{origin}: no such block device",
            E.ENOTBLK: f"{origin} is not a block device",
            E.EEXIST: f"the name {name} is taken; choose another",
            E.EBUSY: f"{origin} already has a snapshot, overlaps the origin of one (a disk "
                     "and its partition), or holds a started snapshot's catalog",
            E.EPERM: "writing /sys/kernel/cblb/cmd needs CAP_SYS_ADMIN",
            E.ENOSPC: f"all {self.total()} snapshot slots are used; remove a snapshot or "
                      "reload the module with a larger total (cblb unload; cblb load --total N)",
        }, page={
            E.ENOSPC: f"all {self.total()} snapshot slots are used; remove a snapshot, or "
                      "unload the module and load it with a larger total",
        })
        return self.snapshot(name)

    def check_catalog(self, catalog: str, file_size: int, origin_dev: str = "",
                      max_files: int = 1) -> None:
        """The catalog exists, is a writable folder and has room for what `start` makes at
        once: one temp file, or the whole store when the catalog is on the origin itself
        (kmod/doc/LAYOUTS.md)."""
        p = Path(catalog)
        if not p.exists():
            raise CblbError(f"catalog {catalog} does not exist; create it with mkdir", E.ENOENT)
        if not p.is_dir():
            raise CblbError(f"catalog {catalog} is not a folder", E.ENOTDIR)
        if not os.access(p, os.W_OK | os.X_OK):
            raise CblbError(f"catalog {catalog} is not writable", E.EACCES)
        on_origin = bool(origin_dev) and devnum_of_fs(p) == origin_dev
        need = file_size * SECTOR * (max_files if on_origin else 1)
        free = shutil.disk_usage(p).free
        if free < need and on_origin:
            raise CblbError(f"catalog {catalog} is on the origin, so the whole store "
                            f"({max_files} files of {file_size} blocks, {need // 2**20} MiB) is "
                            f"made at start, but it has {free // 2**20} MiB free; use fewer or "
                            "smaller files, or a catalog on another device", E.ENOSPC)
        if free < need:
            raise CblbError(f"catalog {catalog} has {free // 2**20} MiB free but one temp file "
                            f"needs {need // 2**20} MiB; free space or choose a smaller file size",
                            E.ENOSPC)

    @staticmethod
    def _start_refusals(name: str, catalog: str, file_size: int,
                        max_files: int) -> dict[int, str]:
        """What each errno of 'start' (and of a member of 'startset') means for a user."""
        return {
            E.ENOENT: f"catalog {catalog} or snapshot {name} not found",
            E.ENOTDIR: f"catalog {catalog} is not a folder",
            E.EALREADY: f"{name} is already started",
            E.EOPNOTSUPP: f"catalog {catalog} is on the origin's own filesystem, which is not "
                          "ext4 or xfs (or cannot hold temp files); put it on another device",
            E.ELOOP: f"catalog {catalog} is on a device built on the origin (LVM, dm-crypt, a "
                     "loop file on it) or on another snapshot's origin; put it on another "
                     "device (the kernel log says which)",
            E.EXDEV: f"catalog {catalog} is on a snapshot device, or its temp files are not on "
                     "its own device",
            E.ENOSPC: f"no room in {catalog} for the temp files start makes at once",
            E.EINVAL: f"the module refused the start parameters (file size {file_size}, "
                      f"max files {max_files})",
            E.EBUSY: f"{name}: the origin or catalog filesystem is frozen or busy",
            E.EPERM: "writing /sys/kernel/cblb/cmd needs CAP_SYS_ADMIN",
        }

    def start(self, name: str, catalog: str, file_size: int, max_files: int) -> Snapshot:
        """start <name> <catalog> <file size in 512-byte blocks> <max files>."""
        snap = self.snapshot(name)
        catalog = check_start_args(snap, catalog, file_size, max_files)
        self.check_catalog(catalog, file_size, snap.origin_dev, max_files)
        self._cmd(f"start {name} {catalog} {file_size} {max_files}",
                  self._start_refusals(name, catalog, file_size, max_files))
        return self.snapshot(name)

    def start_set(self, set_name: str, members: Sequence[SetMember]) -> list[Snapshot]:
        """startset: start created snapshots at one point in time (kmod/doc/SETS.md).

        Either every member is active afterwards or none is; a refusal names the member.
        """
        validate_name(set_name, "set")
        if not 1 <= len(members) <= SET_MAX:
            raise CblbError(f"a set has 1..{SET_MAX} members, not {len(members)}", E.EINVAL)
        names = [m.name for m in members]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise CblbError(f"set {set_name}: {dup} is named twice", E.EINVAL)
        words, checked = [], []
        for m in members:
            try:
                snap = self.snapshot(m.name)
                catalog = check_start_args(snap, m.catalog, m.file_size, m.max_files)
                self.check_catalog(catalog, m.file_size, snap.origin_dev, m.max_files)
            except CblbError as e:
                raise CblbError(f"set {set_name}: member {m.name}: {e}", e.errno) from None
            checked.append(SetMember(m.name, catalog, m.file_size, m.max_files))
            words.append(f"{m.name} {catalog} {m.file_size} {m.max_files}")
        line = f"startset {set_name} " + " ".join(words)
        os.sync()   # the members' freezes are taken one by one: leave them little to write
        try:
            self._cmd(line, {E.E2BIG: f"set {set_name}: the command is too long for the "
                                      "module (shorter catalog paths or fewer members)"})
        except CblbError as e:
            try:
                who = (self.root / "set_refused").read_text().split()
            except OSError:
                who = []
            member = next((m for m in checked if who[1:] == [m.name]), None)
            if member is None or e.errno == E.E2BIG:
                raise
            why = self._start_refusals(member.name, member.catalog, member.file_size,
                                       member.max_files).get(e.errno, str(e))
            raise CblbError(f"set {set_name} not started: member {member.name}: {why}",
                            e.errno) from None
        return [self.snapshot(n) for n in names]

    def remove(self, name: str) -> None:
        """remove <name>: refused while /dev/<name> is mounted or open."""
        self.snapshot(name).require("remove")
        self._cmd(f"remove {name}", {
            E.ENOENT: f"no snapshot named {name}",
            E.EBUSY: f"/dev/{name} is open by a process (mounted or being read); close it first",
        })

    # ---- mounting ---------------------------------------------------------------
    def fstype(self, device: str) -> str:
        r = _run(self.system, ["blkid", "-p", "-o", "value", "-s", "TYPE", device], "blkid")
        return r.stdout.strip()

    @staticmethod
    def mount_options(fstype: str, allow_exec: bool = False) -> str:
        """ro,nosuid,nodev[,noexec] plus what replays no journal on a read-only device."""
        opts = [MOUNT_BASE] + ([] if allow_exec else ["noexec"])
        if fstype in MOUNT_FS_OPTIONS:
            opts.append(MOUNT_FS_OPTIONS[fstype])
        return ",".join(opts)

    def mount(self, name: str, target: str, allow_exec: bool = False) -> str:
        """mount -o ro,nosuid,nodev,noexec,... /dev/<name> <target>; returns the folder mounted.

        ``target`` is resolved once, and that resolved folder is the one created, checked and
        mounted: a symbolic link swapped in between cannot send the mount elsewhere.
        """
        snap = self.snapshot(name)
        snap.require("mount")
        real = self.system.resolve(target)
        if os.path.lexists(real) and not os.path.isdir(real):
            raise CblbError(f"{target} exists and is not a folder", E.ENOTDIR)
        try:
            Path(real).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CblbError(f"cannot create the mount folder {real}: {e.strerror}",
                            e.errno or 0) from None
        if self.system.resolve(real) != real:
            raise CblbError(f"{target} changed while it was being prepared (a symbolic link "
                            "appeared); try again", E.EAGAIN)
        fs = self.fstype(snap.device)
        argv = (["mount", "-o", self.mount_options(fs, allow_exec)] + (["-t", fs] if fs else [])
                + [snap.device, real])
        r = _run(self.system, argv, "mount")
        if r.returncode != 0:
            raise CblbError(f"mount {snap.device} on {real} failed: {r.stderr.strip()}", E.EIO)
        return real

    def mounted_snapshot(self, name_or_dir: str) -> Snapshot:
        """The snapshot named ``name_or_dir``, or the one mounted on that folder; refused for
        any other mount (umount(8) is the tool for those)."""
        if NAME_RE.fullmatch(name_or_dir) and (self.root / name_or_dir / "state").exists():
            snap = self.snapshot(name_or_dir)
            snap.require("umount")
            return snap
        real = self.system.resolve(name_or_dir)
        for s in self.snapshots():
            if s.mountpoint and self.system.resolve(s.mountpoint) == real:
                return s
        raise CblbError(f"{name_or_dir} is not a cblb snapshot's mount ('cblb list' shows "
                        "them); use umount(8) for other mounts", E.EINVAL,
                        page=f"{name_or_dir} is not mounted")

    def umount(self, name_or_dir: str) -> str:
        """umount the snapshot named ``name_or_dir`` or mounted there; returns the folder."""
        target = self.mounted_snapshot(name_or_dir).mountpoint
        for attempt in range(10):
            r = _run(self.system, ["umount", target], "umount")
            if r.returncode == 0:
                return target
            if "busy" not in r.stderr:
                break
            time.sleep(0.2 * (attempt + 1))
        raise CblbError(f"umount {target} failed: {r.stderr.strip()}", E.EBUSY)
