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

The machine itself (sysfs, /dev, the mount table, the programs run) is a :class:`System`;
:mod:`cblb.fake` gives one with a fake module behind the same files, for host tests and
``cblb web --standin``.
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
from typing import Any, Callable, NamedTuple, Sequence

from .errors import CblbError

MODULE_NAME = "cblb_module"
SYSFS_ROOT = Path("/sys/kernel/cblb")
MODULE_SYSFS = Path(f"/sys/module/{MODULE_NAME}")
RUN_DIR = Path("/run/cblb")      # markers of running `cblb run`s (cblb/run.py)
CHUNK_SIZE = 4096
SECTOR = 512
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,30}$")
MAX_FILES = 4096
SET_MAX = 16                 # members of one startset (CBLB_SET_MAX)
MIN_FILE_SIZE = 8
MAX_FILE_SIZE = 2**31 - 1
MAX_TOTAL = 255
# Every snapshot mount: read-only, no set-uid programs, no device files; noexec unless asked.
MOUNT_BASE = "ro,nosuid,nodev"
MOUNT_FS_OPTIONS = {"ext4": "noload", "ext3": "noload", "xfs": "norecovery,nouuid"}


class SnapshotState(str, Enum):
    """Mirror of the module's state machine (kmod/doc/INTERFACE.md).

    created --start--> active --store full / I/O error--> failed; remove from any state.
    """

    CREATED = "created"
    ACTIVE = "active"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, text: str) -> SnapshotState:
        try:
            return cls(text.strip())
        except ValueError:
            return cls.UNKNOWN

    @property
    def can_start(self) -> bool:
        return self is SnapshotState.CREATED

    @property
    def can_read(self) -> bool:
        """The device holds the point in time: it can be mounted and copied."""
        return self is SnapshotState.ACTIVE

    @property
    def failed(self) -> bool:
        return self is SnapshotState.FAILED


# What each step needs, written once: (allowed?, message, errno) per step.
ACTIONS = ("start", "mount", "back up", "compare", "umount", "remove")


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
    frozen_us: int = 0          # first freeze to last thaw of its start (a set's: all)
    freeze: str = ""
    set_name: str = ""          # the set it was started with (startset), "" if alone
    index_bytes: int = 0
    store_extents: list[tuple[int, int]] = field(default_factory=list)
    # Changed-block tracking of this start (kmod/doc/CBT.md); "" and 0 before start.
    cbt_generation: str = ""    # the origin's generation (UUID) at this start
    cbt_sequence: int = 0       # this start's number in that generation: 1, 2, ...
    cbt_block_size: int = 0     # bytes per bit of cbt_map
    cbt_changed_blocks: int = 0  # bits set in cbt_map
    mountpoint: str = ""
    unreadable: bool = False    # its sysfs files could not be parsed (``error`` says why)

    @classmethod
    def unreadable_one(cls, name: str, why: str) -> Snapshot:
        """What a listing shows for a device whose sysfs files make no sense: the name, state
        unknown (so no guard allows anything), and why, instead of failing the whole list."""
        return cls(name=name, state=SnapshotState.UNKNOWN, origin="", error=why,
                   unreadable=True)

    @property
    def device(self) -> str:
        return f"/dev/{self.name}"

    # ---- the lifecycle guards: every caller asks these, none compares state names ----
    @property
    def can_start(self) -> bool:
        return self.state.can_start

    @property
    def can_mount(self) -> bool:
        return self.state.can_read and not self.mountpoint

    @property
    def can_back_up(self) -> bool:
        return self.state.can_read

    @property
    def can_umount(self) -> bool:
        return bool(self.mountpoint)

    @property
    def can_remove(self) -> bool:
        return not self.mountpoint

    def require(self, action: str) -> None:
        """Refuse ``action`` (one of ACTIONS) unless this snapshot's state allows it."""
        st = self.state.value
        if action == "start" and not self.can_start:
            raise CblbError(f"{self.name} is already {st}; only a created snapshot can be "
                            "started", E.EALREADY)
        if action == "mount":
            if not self.state.can_read:
                raise CblbError(f"{self.name} is {st}; only an active snapshot can be mounted",
                                E.EINVAL)
            if self.mountpoint:
                raise CblbError(f"{self.name} is already mounted at {self.mountpoint}", E.EBUSY)
        if action in ("back up", "compare") and not self.can_back_up:
            why = f" ({self.error})" if self.error else ""
            what = "copied" if action == "back up" else "compared with its origin"
            raise CblbError(f"{self.name} is {st}{why}; only an active snapshot can be {what}",
                            E.EINVAL)
        if action == "umount" and not self.can_umount:
            raise CblbError(f"{self.name} is not mounted", E.EINVAL)
        if action == "remove" and not self.can_remove:
            raise CblbError(f"{self.name} is mounted at {self.mountpoint}: unmount it first "
                            f"(cblb umount {self.name})", E.EBUSY,
                            page=f"{self.name} is mounted at {self.mountpoint}: unmount it "
                                 "first")
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")

    @property
    def has_cbt(self) -> bool:
        """This start froze a map of the blocks changed since the origin's previous start."""
        return bool(self.cbt_generation) and self.cbt_sequence > 0 and self.cbt_block_size > 0

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


NULL_UUID = "00000000-0000-0000-0000-000000000000"   # a snapshot's generation before start


@dataclass
class Tracking:
    """One origin whose changed blocks the module tracks, as it reports it in
    /sys/kernel/cblb/tracking/<disk>/ (kmod/doc/CBT.md)."""

    disk: str                   # the folder's name: the kernel's name of the origin (sda2)
    dev: str = ""               # major:minor
    generation: str = ""        # UUID; new whenever continuity was lost
    sequence: int = 0           # of the last start (0 before the first)
    block_size: int = 0         # bytes per map bit
    size_sectors: int = 0
    changed_blocks: int = 0     # written since the last start
    memory_bytes: int = 0       # the two maps

    @property
    def size(self) -> int:
        return self.size_sectors * SECTOR

    @property
    def changed_bytes(self) -> int:
        """Bytes written since the last start, in whole map blocks (at most the size)."""
        return min(self.changed_blocks * self.block_size, self.size)

    @property
    def short_generation(self) -> str:
        return self.generation[:8]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = self.size
        d["changed_bytes"] = self.changed_bytes
        return d


@dataclass
class ModuleStatus:
    loaded: bool
    total: int = 0
    version: str = ""
    snapshots: list[Snapshot] = field(default_factory=list)
    tracking: list[Tracking] = field(default_factory=list)

    def tracking_of(self, snap: Snapshot) -> Tracking | None:
        """The tracked origin of ``snap``, if any."""
        return next((t for t in self.tracking if t.dev == snap.origin_dev), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "loaded": self.loaded,
            "total": self.total,
            "version": self.version,
            "snapshots": [s.to_json() for s in self.snapshots],
            "tracking": [t.to_json() for t in self.tracking],
        }


_INT_FIELDS = (
    "file_size", "max_files", "files_used", "chunk_size", "cow_chunks", "cow_bytes",
    "store_capacity", "start_time_ns", "start_latency_us", "frozen_us", "index_bytes",
    "cbt_sequence", "cbt_block_size", "cbt_changed_blocks",
)
_STR_FIELDS = ("origin", "origin_dev", "catalog", "error", "freeze", "cbt_generation")
_TRACKING_INT_FIELDS = ("sequence", "block_size", "size_sectors", "changed_blocks",
                        "memory_bytes")
MAP_READ = 1 << 20           # bytes per pread of a cbt_map


class SetMember(NamedTuple):
    """One member of a snapshot set: the words of the seed's start command."""

    name: str
    catalog: str
    file_size: int
    max_files: int


def check_total(total: int) -> int:
    """total=N of the module: 1..MAX_TOTAL, or a refusal saying so."""
    if not 1 <= total <= MAX_TOTAL:
        raise CblbError(f"total={total} is out of range: choose 1..{MAX_TOTAL}", E.EINVAL)
    return total


def validate_name(name: str, what: str = "snapshot") -> None:
    """A snapshot name becomes /dev/<name>: letters, digits, '.', '_' and '-', 1..31 chars.
    Set names follow the same rule."""
    if not NAME_RE.fullmatch(name):
        shown = repr(name) if len(name) <= 40 else f"{name[:40]!r}... ({len(name)} characters)"
        raise CblbError(
            f"invalid {what} name {shown}: use 1-31 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (example: shadow-sda2)", E.EINVAL)


def check_block_device(path: str,
                       stat_fn: Callable[[str], os.stat_result] = os.stat) -> os.stat_result:
    try:
        st = stat_fn(path)
    except FileNotFoundError:
        raise CblbError(f"{path}: no such device; give a partition such as /dev/sda2",
                        E.ENOENT) from None
    except PermissionError:
        raise CblbError(f"{path}: permission denied; run as root", E.EACCES) from None
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


@dataclass
class Mount:
    """One line of /proc/self/mountinfo."""

    dev: str          # major:minor
    target: str
    fstype: str
    source: str
    options: str      # the mount point's own options (ro,nosuid,nodev,noexec,...)


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if "-" not in parts:
            continue
        sep = parts.index("-")
        out.append(Mount(parts[2], _unescape(parts[4]), parts[sep + 1],
                         _unescape(parts[sep + 2]), parts[5]))
    return out


def check_start_args(snap: Snapshot, catalog: str, file_size: int, max_files: int) -> str:
    """Refuse what 'start' would refuse, before the kernel sees it; the absolute catalog."""
    snap.require("start")
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


def devnum_of_fs(path: Path) -> str:
    """major:minor of the device the filesystem holding path lives on."""
    st = os.stat(path)
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


class System:
    """This machine as the controller sees it: the module's sysfs files, /dev, the mount
    table, the programs it runs (insmod, rmmod, modinfo, blkid, mount, umount) and the
    folder under /run where `cblb run` leaves its markers.

    Every method is one kernel interface; :class:`cblb.fake.FakeSystem` answers the same
    calls from a temporary folder, for host tests and the demo page.
    """

    def __init__(self, sysfs: Path = SYSFS_ROOT, module_sysfs: Path = MODULE_SYSFS,
                 run_dir: Path = RUN_DIR) -> None:
        self.sysfs = Path(sysfs)
        self.module_sysfs = Path(module_sysfs)
        self.run_dir = Path(run_dir)       # where `cblb run` keeps its markers (tmpfs /run)

    def write_command(self, line: str) -> None:
        """One write(2) of ``line`` to /sys/kernel/cblb/cmd; the module's errno as OSError."""
        fd = os.open(self.sysfs / "cmd", os.O_WRONLY)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """Run a program; FileNotFoundError when it is not installed."""
        return subprocess.run(argv, capture_output=True, text=True, check=False)

    def stat(self, path: str) -> os.stat_result:
        return os.stat(path)

    def device_size(self, path: str) -> int:
        """Size in bytes of a block device (an origin, to plan its store)."""
        return block_device_size(path)

    def resolve(self, path: str) -> str:
        """The path with every symbolic link resolved (the device node, the real folder)."""
        return os.path.realpath(path)

    def device_file(self, path: str) -> str:
        """What to open to read the device node ``path`` (a snapshot or an origin): the node
        itself on this machine; :class:`cblb.fake.FakeSystem` answers with the file that
        stands in for it."""
        return path

    def mounts(self) -> list[Mount]:
        with open("/proc/self/mountinfo") as f:
            return parse_mountinfo(f.read())

    def block_name_taken(self, name: str) -> bool:
        return Path(f"/sys/class/block/{name}").exists() or os.path.lexists(f"/dev/{name}")

    def module_candidates(self, module_dir: Path | None) -> list[Path]:
        kver = os.uname().release
        out = [Path(module_dir) / f"{MODULE_NAME}.ko"] if module_dir else []
        here = Path(__file__).resolve().parent.parent / "kmod"
        return out + [here / "build" / kver / f"{MODULE_NAME}.ko", here / f"{MODULE_NAME}.ko",
                      Path(f"/lib/modules/{kver}/kernel/drivers/block/{MODULE_NAME}.ko"),
                      Path(f"/lib/modules/{kver}/updates/dkms/{MODULE_NAME}.ko")]


def _run(system: System, argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        return system.run(argv)
    except FileNotFoundError:
        raise CblbError(f"{what}: {argv[0]} not found; install it (see README.md)",
                        E.ENOENT) from None


class Controller:
    """Drives cblb_module through sysfs. ``root`` is /sys/kernel/cblb; ``system`` the machine
    (default: this one, with ``root`` as its sysfs folder)."""

    def __init__(self, root: Path = SYSFS_ROOT, module_dir: Path | None = None,
                 system: System | None = None) -> None:
        self.system = system or System(Path(root))
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
        parts = []
        try:
            off = 0
            while chunk := os.pread(fd, MAP_READ, off):
                parts.append(chunk)
                off += len(chunk)
        finally:
            os.close(fd)
        bitmap = b"".join(parts)
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
        self._cmd(f"untrack {node}", {
            E.ENOENT: f"{partition} is not tracked",
            E.ENOTBLK: f"{partition} is not a block device",
            E.EBUSY: f"{partition}: a snapshot of it exists; remove it first",
            E.EPERM: "writing /sys/kernel/cblb/cmd needs CAP_SYS_ADMIN",
        })

    # ---- tracking kept across a restart (kmod/doc/CBT.md, cblb/keep.py) ----------
    def seal(self, partition: str) -> None:
        """seal <partition>: from now on a write to it shows in its ``sealed`` attribute,
        so a map read after this is known complete while that attribute says yes."""
        node = self.system.resolve(partition)
        self._cmd(f"seal {node}", {
            E.ENOENT: f"{partition} is not tracked",
            E.ENOTBLK: f"{partition} is not a block device",
            E.EBUSY: f"{partition}: a snapshot of it exists; remove it first",
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
        parts = []
        fd = os.open(self.root / "tracking" / t.disk / "map", os.O_RDONLY | os.O_CLOEXEC)
        try:
            off = 0
            while chunk := os.pread(fd, MAP_READ, off):
                parts.append(chunk)
                off += len(chunk)
        finally:
            os.close(fd)
        return b"".join(parts)

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
