"""A filesystem's own record of its last write, read from its superblock.

A tracked origin's map is kept across a restart only if nothing wrote to the origin
between the save at shutdown and the tracking at the next boot (cblb/keep.py). The module
cannot see that time; the filesystem can: ext4 rewrites its superblock at every
read-write mount and unmount (mount count, mount and write times, state, lifetime KiB
written), and xfs rewrites its superblock at unmount with the log sequence of that write
(v5) and its counters. A :class:`Stamp` is a digest of that superblock plus the fields a
person reads to see what changed. Two equal stamps taken at the save and at the next
boot mean the filesystem was not mounted read-write in between (nor repaired, nor tuned).

What no stamp sees: writes that bypass the filesystem (``dd`` to the raw device while it
is unmounted and cblb is not loaded). Content with no filesystem cblb reads (no ext4, no
xfs) has no stamp at all, and its tracking is never kept across a restart.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

EXT4_SB = 1024          # the superblock's byte offset and size
EXT4_MAGIC = 0xEF53
XFS_MAGIC = b"XFSB"


@dataclass(frozen=True)
class Stamp:
    fstype: str                 # ext4 (also ext2/ext3: one superblock format) or xfs
    uuid: str                   # the filesystem's UUID
    digest: str                 # sha256 of the superblock as on disk
    fields: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Stamp:
        return cls(fstype=str(d["fstype"]), uuid=str(d["uuid"]), digest=str(d["digest"]),
                   fields=dict(d.get("fields") or {}))

    def what_changed(self, now: Stamp) -> str:
        """One phrase on how ``now`` differs from this stamp, for a person."""
        if now.fstype != self.fstype or now.uuid != self.uuid:
            return (f"it holds another filesystem ({now.fstype} {now.uuid}, was "
                    f"{self.fstype} {self.uuid})")
        diffs = [f"{k} {self.fields.get(k)} -> {v}" for k, v in now.fields.items()
                 if self.fields.get(k) != v]
        return ("its filesystem was written after the save ("
                + (", ".join(diffs) if diffs else "superblock changed") + ")")


def _ext4(sb: bytes) -> Stamp:
    wtime = struct.unpack_from("<I", sb, 0x30)[0] | (sb[0x274] << 32)
    fields = {
        "write time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(wtime)) + " UTC",
        "mount count": struct.unpack_from("<H", sb, 0x34)[0],
        "KiB written": struct.unpack_from("<Q", sb, 0x178)[0],
        "state": struct.unpack_from("<H", sb, 0x3A)[0],
    }
    return Stamp("ext4", str(uuid.UUID(bytes=sb[0x68:0x78])),
                 hashlib.sha256(sb).hexdigest(), fields)


def _xfs(sb: bytes) -> Stamp:
    fields = {
        "free blocks": struct.unpack_from(">Q", sb, 0x90)[0],
        "inodes": struct.unpack_from(">Q", sb, 0x80)[0],
    }
    if len(sb) >= 0xF8 and (struct.unpack_from(">H", sb, 0x64)[0] & 0xF) >= 5:
        fields["log sequence"] = struct.unpack_from(">Q", sb, 0xF0)[0]
    return Stamp("xfs", str(uuid.UUID(bytes=sb[32:48])), hashlib.sha256(sb).hexdigest(),
                 fields)


def read_stamp(device: str) -> Stamp | None:
    """The stamp of the filesystem on ``device``, or None if it holds neither ext4 nor xfs.
    OSError if the device cannot be read."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.pread(fd, EXT4_SB * 2, 0)
    finally:
        os.close(fd)
    if head[:4] == XFS_MAGIC:
        return _xfs(head[:512])
    if len(head) >= EXT4_SB * 2 and \
            struct.unpack_from("<H", head, EXT4_SB + 0x38)[0] == EXT4_MAGIC:
        return _ext4(head[EXT4_SB:])
    return None
