"""The control library: the only code that touches the kernel module.

It wraps these kernel interfaces (see kmod/doc/INTERFACE.md):

- ``insmod`` / ``rmmod`` of ``cblb_module.ko`` and ``/sys/module/cblb_module/parameters/total``
- ``/sys/kernel/cblb/cmd``: the seed's ``create``, ``start`` and ``remove`` commands
- ``/sys/kernel/cblb/<dev>/*``: one value per file, read into :class:`Snapshot`
- ``/dev/<dev>``: the read-only snapshot device, mounted with ``ro,noload`` / ``ro,norecovery``

The command line, the web page and the benchmarks all go through :class:`Controller`.
Every refusal is a :class:`~cblb.errors.CblbError` whose message says what to do.
"""

from __future__ import annotations

import errno as E
import os
import re
import shutil
import stat
import subprocess
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import CblbError

MODULE_NAME = "cblb_module"
SYSFS_ROOT = Path("/sys/kernel/cblb")
CHUNK_SIZE = 4096
SECTOR = 512
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,30}$")
MAX_FILES = 4096
MIN_FILE_SIZE = 8
MAX_FILE_SIZE = 2**31 - 1
MAX_TOTAL = 255


class SnapshotState(str, Enum):
    """Mirror of the module's state machine (kmod/doc/INTERFACE.md).

    created --start--> active --store full / I/O error--> failed; remove from any state.
    """

    CREATED = "created"
    ACTIVE = "active"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, text: str) -> "SnapshotState":
        try:
            return cls(text.strip())
        except ValueError:
            return cls.UNKNOWN


@dataclass
class Snapshot:
    """One snapshot device as the module reports it in /sys/kernel/cblb/<name>/."""

    name: str
    state: SnapshotState
    origin: str
    origin_dev: str = ""
    catalog: str = ""
    file_size: int = 0
    max_files: int = 0
    files_used: int = 0
    chunk_size: int = CHUNK_SIZE
    cow_chunks: int = 0
    cow_bytes: int = 0
    store_capacity: int = 0
    error: str = ""
    start_time_ns: int = 0
    start_latency_us: int = 0
    freeze: str = ""
    index_bytes: int = 0
    store_extents: list[tuple[int, int]] = field(default_factory=list)
    mountpoint: str = ""

    @property
    def device(self) -> str:
        return f"/dev/{self.name}"

    @property
    def store_bytes(self) -> int:
        """Bytes the temp files can hold in all."""
        return self.store_capacity * self.chunk_size

    @property
    def store_used_fraction(self) -> float:
        return self.cow_chunks / self.store_capacity if self.store_capacity else 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        d["device"] = self.device
        d["store_extents"] = [list(x) for x in self.store_extents]
        return d


@dataclass
class ModuleStatus:
    loaded: bool
    total: int = 0
    version: str = ""
    snapshots: list[Snapshot] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "loaded": self.loaded,
            "total": self.total,
            "version": self.version,
            "snapshots": [s.to_json() for s in self.snapshots],
        }


_INT_FIELDS = (
    "file_size", "max_files", "files_used", "chunk_size", "cow_chunks", "cow_bytes",
    "store_capacity", "start_time_ns", "start_latency_us", "index_bytes",
)
_STR_FIELDS = ("origin", "origin_dev", "catalog", "error", "freeze")


def validate_name(name: str) -> None:
    """A snapshot name becomes /dev/<name>: letters, digits, '.', '_' and '-', 1..31 chars."""
    if not NAME_RE.fullmatch(name):
        raise CblbError(
            f"invalid snapshot name {name!r}: use 1-31 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (example: shadow-sda2)", E.EINVAL)


def check_block_device(path: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CblbError(f"{path}: no such device; give a partition such as /dev/sda2", E.ENOENT)
    except PermissionError:
        raise CblbError(f"{path}: permission denied; run as root", E.EACCES)
    if not stat.S_ISBLK(st.st_mode):
        raise CblbError(f"{path} is not a block device; give a partition such as /dev/sda2",
                        E.ENOTBLK)
    return st


def block_device_size(path: str) -> int:
    """Size in bytes of a block device (or of a regular file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def mounts() -> list[tuple[str, str, str, str]]:
    """(major:minor, mountpoint, fstype, source) for every mount, from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            out.append((parts[2], parts[4].replace("\\040", " "), parts[sep + 1], parts[sep + 2]))
    return out


def mountpoint_of_dev(majmin: str) -> str:
    for dev, mnt, _fs, _src in mounts():
        if dev == majmin:
            return mnt
    return ""


def check_start_args(snap: Snapshot, catalog: str, file_size: int, max_files: int) -> str:
    """Refuse what 'start' would refuse, before the kernel sees it; the absolute catalog."""
    if snap.state is not SnapshotState.CREATED:
        raise CblbError(f"{snap.name} is already {snap.state.value}; only a created snapshot "
                        "can be started", E.EALREADY)
    if not MIN_FILE_SIZE <= file_size <= MAX_FILE_SIZE:
        raise CblbError(f"file size {file_size} is out of range: {MIN_FILE_SIZE}.."
                        f"{MAX_FILE_SIZE} blocks of 512 bytes", E.EINVAL)
    if not 1 <= max_files <= MAX_FILES:
        raise CblbError(f"max files {max_files} is out of range: 1..{MAX_FILES}", E.EINVAL)
    catalog = os.path.abspath(catalog)
    if any(c.isspace() for c in catalog):
        raise CblbError(f"catalog path {catalog!r} contains blanks; the module's command "
                        "syntax cannot carry them: use a path without spaces", E.EINVAL)
    return catalog


def devnum(st: os.stat_result) -> str:
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def _run(argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise CblbError(f"{what}: {argv[0]} not found; install it (see README.md)", E.ENOENT)


class Controller:
    """Drives cblb_module through sysfs. ``root`` is /sys/kernel/cblb."""

    def __init__(self, root: Path = SYSFS_ROOT, module_dir: Path | None = None) -> None:
        self.root = Path(root)
        self.module_dir = module_dir

    # ---- module -----------------------------------------------------------------
    def loaded(self) -> bool:
        return (self.root / "cmd").exists()

    def require_loaded(self) -> None:
        if not self.loaded():
            raise CblbError("the cblb module is not loaded; run 'cblb load' (or "
                            "insmod cblb_module.ko total=N) first", E.ENODEV)

    def total(self) -> int:
        p = Path(f"/sys/module/{MODULE_NAME}/parameters/total")
        return int(p.read_text()) if p.exists() else 0

    def version(self) -> str:
        p = Path(f"/sys/module/{MODULE_NAME}/version")
        return p.read_text().strip() if p.exists() else ""

    def find_module(self) -> Path:
        """The .ko for the running kernel: the checkout's kmod/ build, else the installed one."""
        kver = os.uname().release
        candidates = []
        if self.module_dir:
            candidates.append(Path(self.module_dir) / f"{MODULE_NAME}.ko")
        here = Path(__file__).resolve().parent.parent / "kmod"
        candidates += [here / "build" / kver / f"{MODULE_NAME}.ko", here / f"{MODULE_NAME}.ko",
                       Path(f"/lib/modules/{kver}/kernel/drivers/block/{MODULE_NAME}.ko"),
                       Path(f"/lib/modules/{kver}/updates/dkms/{MODULE_NAME}.ko")]
        for c in candidates:
            if c.exists() and self._ko_matches(c, kver):
                return c
        raise CblbError(f"no {MODULE_NAME}.ko built for kernel {kver}; run "
                        f"'make -C kmod KVER={kver}' or 'sudo ./install make && sudo ./install install'",
                        E.ENOENT)

    @staticmethod
    def _ko_matches(ko: Path, kver: str) -> bool:
        r = subprocess.run(["modinfo", "-F", "vermagic", str(ko)], capture_output=True, text=True)
        if r.returncode != 0:
            return True  # no modinfo: let insmod decide
        return r.stdout.split(" ")[0].strip() == kver

    def load(self, total: int = 4, ko: Path | None = None) -> None:
        """insmod cblb_module.ko total=N."""
        if not 1 <= total <= MAX_TOTAL:
            raise CblbError(f"total={total} is out of range: choose 1..{MAX_TOTAL}", E.EINVAL)
        if self.loaded():
            cur = self.total()
            if cur == total:
                return
            raise CblbError(f"the module is already loaded with total={cur}; "
                            "'cblb unload' first to change it", E.EEXIST)
        ko = ko or self.find_module()
        r = _run(["insmod", str(ko), f"total={total}"], "load")
        if r.returncode != 0:
            raise CblbError(f"insmod {ko} failed: {r.stderr.strip() or r.stdout.strip()}", E.EIO)

    def unload(self) -> None:
        """rmmod cblb_module; refused while snapshots exist."""
        if not self.loaded():
            return
        snaps = self.snapshots()
        if snaps:
            names = ", ".join(s.name for s in snaps)
            raise CblbError(f"snapshots still exist ({names}); 'cblb remove' them first", E.EBUSY)
        r = _run(["rmmod", MODULE_NAME], "unload")
        if r.returncode != 0:
            raise CblbError(f"rmmod {MODULE_NAME} failed: {r.stderr.strip()}", E.EBUSY)

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
                            E.ENOENT)
        return self._read(d)

    def snapshots(self) -> list[Snapshot]:
        out = []
        for n in self.names():
            try:
                out.append(self._read(self.root / n))
            except FileNotFoundError:
                continue  # removed while we read
        return out

    def status(self) -> ModuleStatus:
        if not self.loaded():
            return ModuleStatus(loaded=False)
        return ModuleStatus(True, self.total(), self.version(), self.snapshots())

    def _read(self, d: Path) -> Snapshot:
        def rd(f: str) -> str:
            try:
                return (d / f).read_text().strip()
            except FileNotFoundError:
                return ""

        kw: dict[str, Any] = {f: rd(f) for f in _STR_FIELDS}
        for f in _INT_FIELDS:
            v = rd(f)
            kw[f] = int(v) if v.lstrip("-").isdigit() else 0
        ext = []
        for line in rd("store_extents").splitlines():
            a, b = line.split()
            ext.append((int(a), int(b)))
        snap = Snapshot(name=d.name, state=SnapshotState.parse(rd("state")), store_extents=ext, **kw)
        if snap.state in (SnapshotState.ACTIVE, SnapshotState.FAILED):
            try:
                snap.mountpoint = mountpoint_of_dev(devnum(os.stat(snap.device)))
            except OSError:
                pass
        return snap

    # ---- commands ---------------------------------------------------------------
    def _cmd(self, line: str, explain: dict[int, str]) -> None:
        self.require_loaded()
        try:
            fd = os.open(self.root / "cmd", os.O_WRONLY)
        except PermissionError:
            raise CblbError("permission denied writing /sys/kernel/cblb/cmd; run as root", E.EACCES)
        try:
            os.write(fd, line.encode())
        except OSError as e:
            msg = explain.get(e.errno or 0) or f"the module refused '{line}': {os.strerror(e.errno or 0)}"
            raise CblbError(msg, e.errno or 0) from None
        finally:
            os.close(fd)

    def create(self, name: str, origin: str) -> Snapshot:
        """create <name> <origin> begin end."""
        validate_name(name)
        st = check_block_device(origin)
        self.require_loaded()
        for s in self.snapshots():
            if s.name == name:
                raise CblbError(f"a snapshot named {name} already exists (of {s.origin}); "
                                "choose another name or 'cblb remove' it", E.EEXIST)
            if s.origin_dev == devnum(st):
                raise CblbError(f"{origin} already has a snapshot ({s.name}); "
                                "one snapshot per origin", E.EBUSY)
        if Path(f"/sys/class/block/{name}").exists() or os.path.lexists(f"/dev/{name}"):
            raise CblbError(f"/dev/{name} already exists; choose another name", E.EEXIST)
        self._cmd(f"create {name} {origin} begin end", {
            E.EINVAL: f"the module refused the name {name!r} or origin {origin}",
            E.ENOENT: f"{origin}: no such block device",
            E.ENOTBLK: f"{origin} is not a block device",
            E.EEXIST: f"the name {name} is taken; choose another",
            E.EBUSY: f"{origin} already has a snapshot",
            E.ENOSPC: f"all {self.total()} snapshot slots are used; remove a snapshot or "
                      "reload the module with a larger total (cblb unload; cblb load --total N)",
        })
        return self.snapshot(name)

    def check_catalog(self, catalog: str, file_size: int, origin_dev: str = "") -> None:
        p = Path(catalog)
        if not p.exists():
            raise CblbError(f"catalog {catalog} does not exist; create it with mkdir", E.ENOENT)
        if not p.is_dir():
            raise CblbError(f"catalog {catalog} is not a folder", E.ENOTDIR)
        if not os.access(p, os.W_OK | os.X_OK):
            raise CblbError(f"catalog {catalog} is not writable", E.EACCES)
        need = file_size * SECTOR
        free = shutil.disk_usage(p).free
        if free < need:
            raise CblbError(f"catalog {catalog} has {free // 2**20} MiB free but one temp file "
                            f"needs {need // 2**20} MiB; free space or choose a smaller file size",
                            E.ENOSPC)

    def start(self, name: str, catalog: str, file_size: int, max_files: int) -> Snapshot:
        """start <name> <catalog> <file size in 512-byte blocks> <max files>."""
        catalog = check_start_args(self.snapshot(name), catalog, file_size, max_files)
        self.check_catalog(catalog, file_size)
        self._cmd(f"start {name} {catalog} {file_size} {max_files}", {
            E.ENOENT: f"catalog {catalog} or snapshot {name} not found",
            E.ENOTDIR: f"catalog {catalog} is not a folder",
            E.EALREADY: f"{name} is already started",
            E.EOPNOTSUPP: f"catalog {catalog} must be on an ext4 or xfs filesystem on a block "
                          "device (tmpfs, btrfs and network filesystems cannot hold temp files)",
            E.EXDEV: f"catalog {catalog} is on the snapshot device itself",
            E.ENOSPC: f"no room in {catalog} for the first temp file of {file_size} blocks",
            E.EINVAL: f"the module refused the start parameters (file size {file_size}, "
                      f"max files {max_files})",
            E.EBUSY: f"{name}: the origin filesystem could not be frozen (busy)",
        })
        return self.snapshot(name)

    def remove(self, name: str) -> None:
        """remove <name>: refused while /dev/<name> is mounted or open."""
        snap = self.snapshot(name)
        if snap.mountpoint:
            raise CblbError(f"{name} is mounted at {snap.mountpoint}: unmount it first "
                            f"(cblb umount {name})", E.EBUSY)
        self._cmd(f"remove {name}", {
            E.ENOENT: f"no snapshot named {name}",
            E.EBUSY: f"/dev/{name} is open by a process (mounted or being read); close it first",
        })

    # ---- mounting ---------------------------------------------------------------
    def fstype(self, device: str) -> str:
        r = _run(["blkid", "-p", "-o", "value", "-s", "TYPE", device], "blkid")
        return r.stdout.strip()

    def mount(self, name: str, target: str) -> str:
        """mount -o ro,noload (ext*) or ro,norecovery (xfs) /dev/<name> <target>."""
        snap = self.snapshot(name)
        if snap.state is not SnapshotState.ACTIVE:
            raise CblbError(f"{name} is {snap.state.value}; only an active snapshot can be "
                            "mounted", E.EINVAL)
        if snap.mountpoint:
            raise CblbError(f"{name} is already mounted at {snap.mountpoint}", E.EBUSY)
        Path(target).mkdir(parents=True, exist_ok=True)
        fs = self.fstype(snap.device)
        opts = {"ext4": "ro,noload", "ext3": "ro,noload", "ext2": "ro",
                "xfs": "ro,norecovery,nouuid"}.get(fs, "ro")
        argv = ["mount", "-o", opts] + (["-t", fs] if fs else []) + [snap.device, target]
        r = _run(argv, "mount")
        if r.returncode != 0:
            raise CblbError(f"mount {snap.device} on {target} failed: {r.stderr.strip()}", E.EIO)
        return target

    def umount(self, name_or_dir: str) -> None:
        target = name_or_dir
        if NAME_RE.fullmatch(name_or_dir) and (self.root / name_or_dir).is_dir():
            snap = self.snapshot(name_or_dir)
            if not snap.mountpoint:
                return
            target = snap.mountpoint
        for attempt in range(10):
            r = _run(["umount", target], "umount")
            if r.returncode == 0:
                return
            if "busy" not in r.stderr:
                break
            time.sleep(0.2 * (attempt + 1))
        raise CblbError(f"umount {target} failed: {r.stderr.strip()}", E.EBUSY)
