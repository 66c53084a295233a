"""The model of cblb_module's objects, as plain values: no I/O, no kernel, no programs.

- :class:`SnapshotState` mirrors the module's state machine; :class:`Snapshot` is one device
  as /sys/kernel/cblb/<name>/ reports it, with the lifecycle guards (:meth:`Snapshot.require`
  says once which state allows which step); :class:`Tracking` one origin whose changed blocks
  are tracked; :class:`ModuleStatus` all of it; :class:`SetMember` one member of a startset.
- The module's limits (names, sizes, totals) and the validators that refuse what the module
  would refuse (:func:`validate_name`, :func:`check_total`, :func:`check_start_args`).

:mod:`cblb.system` is the machine, :mod:`cblb.control` the one road to the kernel: the
controller imports this module, and this module imports neither of them, nor subprocess
(pyproject.toml's import-linter contracts). :func:`check_start_args` makes the catalog path
absolute (the working folder), the only thing here that asks the process anything.
"""

from __future__ import annotations

import errno as E
import os
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, NamedTuple

from .errors import CblbError

CHUNK_SIZE = 4096
SECTOR = 512
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,30}$")
MAX_FILES = 4096
SET_MAX = 16                 # members of one startset (CBLB_SET_MAX)
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
    def map_bytes(self) -> int:
        """Bytes of each of its maps: one bit per block, rounded up to 8 bytes
        (kmod/doc/CBT.md)."""
        bits = -(-self.size // self.block_size) if self.block_size else 0
        return -(-bits // 64) * 8

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
