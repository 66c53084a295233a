"""The fake module's changed-block tracking, as cbt.c does it (kmod/doc/CBT.md).

An origin is tracked from its first ``create`` (or ``track``) until ``untrack`` or rmmod,
with a generation (uuid4), a sequence (+1 at each start of a snapshot of it, set members
included) and two maps of :func:`cbt_block_size` bytes per bit;
``/sys/kernel/cblb/tracking/<disk>/`` shows them. At each start the current map is frozen
(the snapshot's ``cbt_map``) and a cleared one begins; an origin whose size changed begins a
new generation at its next create or start, as cbt.c's same-origin check does.
"""

from __future__ import annotations

import errno as E
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..model import CHUNK_SIZE, SECTOR
from .devices import FakeDevices
from .sysfs import write_fields

CBT_MIN_BLOCK = CHUNK_SIZE           # cbt.c: the smallest map block
CBT_MAX_BITS = 1 << 27               # cbt.c: at most 16 MiB per map


def cbt_block_size(nbytes: int, max_bits: int = CBT_MAX_BITS) -> int:
    """cbt.c's granularity: the smallest power of two, at least 4 KiB, that keeps one map
    at most ``max_bits`` (2^27) bits."""
    bs = CBT_MIN_BLOCK
    while nbytes // bs > max_bits:
        bs *= 2
    return bs


@dataclass
class Tracked:
    """One tracked origin (cbt.c's struct cblb_cbt)."""

    origin: str
    disk: str
    dev: tuple[int, int]
    size: int = 0
    block_size: int = CBT_MIN_BLOCK
    nbits: int = 0
    generation: str = ""
    sequence: int = 0
    current: bytearray = field(default_factory=bytearray)
    frozen: bytearray = field(default_factory=bytearray)
    snap: str | None = None          # the snapshot on this origin (one at most)
    max_bits: int = CBT_MAX_BITS

    def begin(self, size: int) -> None:
        """Maps sized for ``size`` bytes, cleared: a new generation."""
        self.size = size
        self.block_size = cbt_block_size(size, self.max_bits)
        self.nbits = -(-size // self.block_size)
        nbytes = -(-self.nbits // 64) * 8
        self.current, self.frozen = bytearray(nbytes), bytearray(nbytes)
        self.generation = str(uuid.uuid4())
        self.sequence = 0

    def mark(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        first = offset // self.block_size
        last = min(offset + length - 1, self.size - 1) // self.block_size
        for b in range(first, last + 1):
            self.current[b >> 3] |= 1 << (b & 7)

    def rotate(self) -> None:
        """The start's flip: the current map is frozen, a cleared one is current."""
        self.frozen = self.current
        self.current = bytearray(len(self.frozen))
        self.sequence += 1


def bits(m: bytes | bytearray) -> int:
    """Bits set in a map."""
    return int.from_bytes(m, "little").bit_count()


class FakeTracking:
    """Every tracked origin (origin -> :class:`Tracked`) and its folder under
    ``sysfs/tracking``."""

    def __init__(self, sysfs: Path, devices: FakeDevices, max_bits: int = CBT_MAX_BITS) -> None:
        self.sysfs = sysfs
        self.devices = devices
        self.max_bits = max_bits                     # smaller: larger map blocks (tests)
        self.tracked: dict[str, Tracked] = {}

    def publish(self, t: Tracked) -> None:
        """/sys/kernel/cblb/tracking/<disk>/ as cbt.c shows it."""
        d = self.sysfs / "tracking" / t.disk
        d.mkdir(parents=True, exist_ok=True)
        write_fields(d, dev="%d:%d" % t.dev, generation=t.generation, sequence=t.sequence,
                     block_size=t.block_size, size_sectors=t.size // SECTOR,
                     changed_blocks=bits(t.current), memory_bytes=2 * len(t.current))

    def get(self, origin: str) -> Tracked:
        """cbt_get: the origin's tracking, begun if there is none, re-begun (a new
        generation) if the origin is not the same any more."""
        size = self.devices.device_size(origin)
        t = self.tracked.get(origin)
        if t is None:
            t = Tracked(origin, origin.rsplit("/", 1)[-1], self.devices.origins[origin],
                        max_bits=self.max_bits)
            t.begin(size)
            self.tracked[origin] = t
        elif t.size != size:
            t.begin(size)
        self.publish(t)
        return t

    def track(self, path: str) -> None:
        if self.devices.is_snapshot(path):
            raise OSError(E.EINVAL, "a snapshot device")
        if path not in self.devices.origins:
            raise OSError(E.ENOENT, "no such block device")
        if path in self.tracked:
            raise OSError(E.EEXIST, "tracked already")
        self.get(path)

    def untrack(self, path: str) -> None:
        if path not in self.devices.origins:
            raise OSError(E.ENOENT, "no such block device")
        t = self.tracked.get(path)
        if t is None:
            raise OSError(E.ENOENT, "not tracked")
        if t.snap is not None:
            raise OSError(E.EBUSY, f"snapshot {t.snap} exists")
        del self.tracked[path]
        shutil.rmtree(self.sysfs / "tracking" / t.disk, ignore_errors=True)

    def start(self, name: str, origin: str) -> Tracked:
        """prepare + flip for one started snapshot ``name`` of ``origin``: a resized origin
        re-begins, the current map is frozen, a cleared one is current."""
        t = self.get(origin)
        t.snap = name
        t.rotate()
        self.publish(t)
        return t

    def clear(self) -> None:
        """rmmod: tracking ends with the module."""
        self.tracked.clear()
