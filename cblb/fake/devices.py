"""The fake machine's block devices: the origins, the snapshot devices and their mounts.

:class:`FakeDevices` answers what the controller asks of /dev (stat, size, the real path of
a link, whether a name is taken) for the origins it was given (``/dev/vdb1``, ...), their
aliases (``/dev/disk/by-*`` links) and each snapshot device the fake module made. Their data
are files under ``base/devices``: an origin's (made when first needed, sparse, of
``origin_bytes`` unless resized) and, from its start, each snapshot's, a copy of its origin at
that instant (copy-on-write done at once). The mount table lists the mounts of these
devices, so the fake module can refuse to remove a mounted one.
"""

from __future__ import annotations

import errno as E
import os
import stat
import threading
from pathlib import Path

from ..system import Mount, block_device_size

DEFAULT_ORIGINS = {"/dev/vdb1": (254, 17), "/dev/vdb2": (254, 18), "/dev/loop0": (7, 0)}
DEFAULT_ORIGIN_BYTES = 4 << 30       # what every fake origin holds
SNAPSHOT_MAJOR = 252
KERNEL_NAMES = {"null", "zero", "full", "random", "urandom", "console", "tty"}
COPY_PIECE = 1 << 20


def sparse_copy(src: Path, dst: Path, size: int) -> None:
    """dst = the first ``size`` bytes of src, holes left as holes."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        fo.truncate(size)
        fdi, fdo = fi.fileno(), fo.fileno()
        off = 0
        while off < size:
            try:
                data = os.lseek(fdi, off, os.SEEK_DATA)
                hole = min(os.lseek(fdi, data, os.SEEK_HOLE), size)
            except OSError as e:
                if e.errno == E.ENXIO:
                    break                   # only a hole is left
                data, hole = off, size      # no SEEK_DATA here: copy all
            pos = data
            while pos < hole:
                chunk = os.pread(fdi, min(COPY_PIECE, hole - pos), pos)
                if not chunk:
                    break
                os.pwrite(fdo, chunk, pos)
                pos += len(chunk)
            off = max(hole, off + 1)


def blockdev(rdev: tuple[int, int]) -> os.stat_result:
    """What stat(2) says of a block device node with device number ``rdev``."""
    return os.stat_result((stat.S_IFBLK | 0o660, 0, 0, 1, 0, 0, 0, 0, 0, 0),
                          {"st_rdev": os.makedev(*rdev)})


class FakeDevices:
    """The origins (path -> device number), their aliases, the snapshot devices (name ->
    device number), the files that hold their data and the mounts of them."""

    def __init__(self, base: Path, origins: dict[str, tuple[int, int]],
                 aliases: dict[str, str], origin_bytes: int, lock: threading.RLock) -> None:
        self.base = base
        self.origins = origins
        self.aliases = aliases
        self.origin_bytes = origin_bytes
        self.lock = lock
        self.sizes: dict[str, int] = {}              # origin -> bytes (default origin_bytes)
        self.snapshots: dict[str, tuple[int, int]] = {}   # snapshot name -> its device number
        self.mount_table: list[Mount] = []

    # ---- what the controller asks of /dev ------------------------------------------------
    def stat(self, path: str) -> os.stat_result:
        with self.lock:
            if path in self.origins:
                return blockdev(self.origins[path])
            name = path.removeprefix("/dev/")
            if path.startswith("/dev/") and name in self.snapshots:
                return blockdev(self.snapshots[name])
            if path in self.aliases:
                return self.stat(self.aliases[path])
        return os.stat(path)

    def device_size(self, path: str) -> int:
        with self.lock:
            if path in self.origins:
                return self.sizes.get(path, self.origin_bytes)
            if path in self.aliases:
                return self.device_size(self.aliases[path])
        return block_device_size(path)

    def resolve(self, path: str) -> str:
        if path in self.aliases:
            return self.aliases[path]
        if path in self.origins or path.removeprefix("/dev/") in self.snapshots:
            return path
        return os.path.realpath(path)

    def device_file(self, path: str) -> str:
        """The file holding the data of origin or snapshot device ``path``; other paths
        as given."""
        with self.lock:
            path = self.aliases.get(path, path)
            if path in self.origins:
                return str(self.origin_file(path))
            name = path.removeprefix("/dev/")
            if path.startswith("/dev/") and name in self.snapshots and \
                    self.snap_file(name).exists():
                return str(self.snap_file(name))
        return path

    def mounts(self) -> list[Mount]:
        with self.lock:
            return list(self.mount_table)

    def block_name_taken(self, name: str) -> bool:
        return name in KERNEL_NAMES or f"/dev/{name}" in self.origins

    # ---- the snapshot devices ------------------------------------------------------------
    def is_snapshot(self, path: str) -> bool:
        return path.removeprefix("/dev/") in self.snapshots

    def add_snapshot(self, name: str) -> None:
        """/dev/<name> appears with the first free device number of the snapshot major."""
        used = set(self.snapshots.values())
        self.snapshots[name] = next((SNAPSHOT_MAJOR, i) for i in range(1 << 20)
                                    if (SNAPSHOT_MAJOR, i) not in used)

    def snapshot_devnum(self, name: str) -> str:
        return "%d:%d" % self.snapshots[name]

    def mounted(self, majmin: str) -> bool:
        return any(m.dev == majmin for m in self.mount_table)

    def freeze_snapshot(self, name: str, origin: str, size: int) -> None:
        """The snapshot device's file becomes the origin's first ``size`` bytes as they are
        now (its start)."""
        f = self.snap_file(name)
        f.parent.mkdir(parents=True, exist_ok=True)
        sparse_copy(self.origin_file(origin), f, size)

    def remove_snapshot(self, name: str) -> None:
        del self.snapshots[name]
        self.snap_file(name).unlink(missing_ok=True)

    # ---- the data of the devices ---------------------------------------------------------
    def origin_file(self, origin: str) -> Path:
        f = self.base / "devices" / "origin" / origin.strip("/").replace("/", "_")
        if not f.exists():
            f.parent.mkdir(parents=True, exist_ok=True)
            with open(f, "wb") as fh:
                fh.truncate(self.device_size(origin))
        return f

    def snap_file(self, name: str) -> Path:
        return self.base / "devices" / "snapshot" / name

    def write(self, origin: str, offset: int, data: bytes) -> None:
        """``data`` into the origin's file at ``offset`` (no module involved)."""
        fd = os.open(self.origin_file(origin), os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def read_origin(self, origin: str, offset: int = 0, length: int | None = None) -> bytes:
        """What the origin holds now (the whole device by default)."""
        with self.lock:
            origin = self.aliases.get(origin, origin)
            size = self.device_size(origin)
            length = size - offset if length is None else length
            with open(self.origin_file(origin), "rb") as f:
                f.seek(offset)
                return f.read(length)

    def resize_origin(self, origin: str, nbytes: int) -> None:
        """The origin grows or shrinks (lvextend, a loop file resized)."""
        with self.lock:
            origin = self.aliases.get(origin, origin)
            self.sizes[origin] = nbytes
            f = self.origin_file(origin)
            os.truncate(f, nbytes)
