"""A fake machine behind the real :class:`~cblb.control.Controller`, for host tests and the
demo page (``cblb web --standin``).

:class:`FakeSystem` keeps the module's sysfs files (``cmd``, ``<name>/state``, ...) in a
temporary folder and carries out the commands written to ``cmd`` the way cblb_module does:
it changes those files or fails the write with the module's errno (kmod/doc/INTERFACE.md).
It also plays the programs the controller runs (insmod, rmmod, blkid, mount, umount) and
the block devices it stats. Every rule and message about what a person may do stays in
cblb/control.py; this file only answers as the kernel would.

``startset`` follows start.c: every member is checked (sizes, exists, ``created``, named
once), then every catalog; the first bad member refuses the whole set (named in
``set_refused``, no member started), else all become active with one ``start_time_ns``.

``copy(name, nbytes)`` stands for origin writes (the store fills, then the snapshot fails);
``advance()`` does it at ``grow_bytes_per_s`` so the demo's charts have something to draw.

Changed-block tracking follows cbt.c (kmod/doc/CBT.md): an origin is tracked from its first
``create`` (or ``track``) until ``untrack`` or rmmod, with a generation (uuid4), a sequence
(+1 at each start of a snapshot of it, set members included) and two maps of
``cbt_block_size(size)`` bytes per bit; ``/sys/kernel/cblb/tracking/<disk>/`` shows them.
At each start the current map is frozen into the snapshot's ``cbt_map`` (with
``cbt_generation``, ``cbt_sequence``, ``cbt_block_size``, ``cbt_changed_blocks``) and a
cleared one begins; an origin whose size changed (``resize_origin``) begins a new generation
at its next create or start, as cbt.c's same-origin check does.

Devices hold data in files under ``base/devices``: an origin's (made when first needed,
sparse) and, from its start, each snapshot's, a copy of its origin at that instant (copy-on-
write done at once). ``device_file()`` names them, so backups and verification read real
bytes. ``write_origin(origin, offset, data)`` is an origin write: it changes the origin's
file, marks the current map of a tracked origin and counts the chunks the snapshot of that
origin would copy, so tests can run full backup, writes, next snapshot, incremental backup
and restore against real files.
"""

from __future__ import annotations

import errno as E
import math
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .model import (
    CHUNK_SIZE,
    MAX_FILE_SIZE,
    MAX_FILES,
    MIN_FILE_SIZE,
    NAME_RE,
    NULL_UUID,
    SECTOR,
    SET_MAX,
)
from .system import MODULE_NAME, Mount, System

DEFAULT_ORIGINS = {"/dev/vdb1": (254, 17), "/dev/vdb2": (254, 18), "/dev/loop0": (7, 0)}
DEFAULT_ORIGIN_BYTES = 4 << 30       # what every fake origin holds
CMD_MAX = 4096                       # the module's command buffer (PAGE_SIZE)
SNAPSHOT_MAJOR = 252
KERNEL_NAMES = {"null", "zero", "full", "random", "urandom", "console", "tty"}
_FIELDS = {"state": "created", "origin": "", "origin_dev": "", "catalog": "", "file_size": "0",
           "max_files": "0", "files_used": "0", "chunk_size": str(CHUNK_SIZE),
           "cow_chunks": "0", "cow_bytes": "0", "store_capacity": "0", "error": "",
           "start_time_ns": "0", "start_latency_us": "0", "freeze": "", "index_bytes": "0",
           "store_extents": "", "set": "", "frozen_us": "0", "cbt_generation": NULL_UUID,
           "cbt_sequence": "0", "cbt_changed_blocks": "0"}
CBT_MIN_BLOCK = CHUNK_SIZE           # cbt.c: the smallest map block
CBT_MAX_BITS = 1 << 27               # cbt.c: at most 16 MiB per map
COPY_PIECE = 1 << 20


def cbt_block_size(nbytes: int, max_bits: int = CBT_MAX_BITS) -> int:
    """cbt.c's granularity: the smallest power of two, at least 4 KiB, that keeps one map
    at most ``max_bits`` (2^27) bits."""
    bs = CBT_MIN_BLOCK
    while nbytes // bs > max_bits:
        bs *= 2
    return bs


@dataclass
class _Tracked:
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


def _bits(m: bytes | bytearray) -> int:
    return int.from_bytes(m, "little").bit_count()


def _sparse_copy(src: Path, dst: Path, size: int) -> None:
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


def _blockdev(rdev: tuple[int, int]) -> os.stat_result:
    return os.stat_result((stat.S_IFBLK | 0o660, 0, 0, 1, 0, 0, 0, 0, 0, 0),
                          {"st_rdev": os.makedev(*rdev)})


def _done(argv: list[str], rc: int = 0, out: str = "",
          err: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(argv, rc, out, err)


class FakeSystem(System):
    """The module's files under ``base`` (a fresh temporary folder when not given)."""

    def __init__(self, base: Path | None = None, origins: dict[str, tuple[int, int]] | None = None,
                 aliases: dict[str, str] | None = None, loaded: bool = False, total: int = 4,
                 fstype: str = "ext4", grow_bytes_per_s: float = 0.0,
                 clock: Callable[[], float] = time.time,
                 origin_bytes: int = DEFAULT_ORIGIN_BYTES,
                 cbt_max_bits: int = CBT_MAX_BITS) -> None:
        self.base = Path(base) if base else Path(tempfile.mkdtemp(prefix="cblb-fake-"))
        super().__init__(self.base / "sys/kernel/cblb", self.base / f"sys/module/{MODULE_NAME}",
                         self.base / "run/cblb")
        self.origins = dict(origins or DEFAULT_ORIGINS)
        self.aliases = dict(aliases or {})
        self.origin_bytes = origin_bytes
        self.cbt_max_bits = cbt_max_bits             # smaller: larger map blocks (tests)
        self.fstype = fstype
        self.grow = grow_bytes_per_s
        self.clock = clock
        self.lock = threading.RLock()
        self.commands: list[str] = []              # every line written to cmd
        self.programs: list[list[str]] = []        # every program run
        self.mount_table: list[Mount] = []
        self._devs: dict[str, tuple[int, int]] = {}   # snapshot name -> its device number
        self._started: dict[str, float] = {}
        self.sizes: dict[str, int] = {}              # origin -> bytes (default origin_bytes)
        self._tracked: dict[str, _Tracked] = {}      # origin -> its changed-block tracking
        self._copied: dict[str, set[int]] = {}       # snapshot -> chunks copied since start
        self.ko = self.base / f"{MODULE_NAME}.ko"
        self.ko.parent.mkdir(parents=True, exist_ok=True)
        self.ko.write_bytes(b"")
        if loaded:
            self._insmod(total)

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    # ---- the System interface ---------------------------------------------------------
    def write_command(self, line: str) -> None:
        with self.lock:
            self.commands.append(line)
            if not (self.sysfs / "cmd").exists():
                raise FileNotFoundError(E.ENOENT, "no cmd file")
            if len(line) >= CMD_MAX:
                raise OSError(E.E2BIG, "command too long")
            words = line.split()
            if words[:1] == ["create"] and len(words) == 5:
                self._create(words[1], words[2])
            elif words[:1] == ["start"] and len(words) == 5:
                self._start_members(None, [(words[1], words[2], words[3], words[4])])
            elif words[:1] == ["startset"]:
                self._startset(words[1:])
            elif words[:1] == ["remove"] and len(words) == 2:
                self._remove(words[1])
            elif words[:1] == ["track"] and len(words) == 2:
                self._track(words[1])
            elif words[:1] == ["untrack"] and len(words) == 2:
                self._untrack(words[1])
            else:
                raise OSError(E.EINVAL, "unknown command")

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        with self.lock:
            self.programs.append(list(argv))
            prog = argv[0]
            if prog == "insmod":
                if self.loaded:
                    return _done(argv, 1, err="insmod: ERROR: could not insert module: File exists")
                self._insmod(int(argv[-1].split("=")[1]))
                return _done(argv)
            if prog == "rmmod":
                if self._names():
                    return _done(argv, 1, err=f"rmmod: ERROR: Module {MODULE_NAME} is in use")
                shutil.rmtree(self.sysfs, ignore_errors=True)
                shutil.rmtree(self.module_sysfs, ignore_errors=True)
                self._tracked.clear()        # tracking ends with the module
                return _done(argv)
            if prog == "modinfo":
                return _done(argv, 1)
            if prog == "blkid":
                return _done(argv, out=self.fstype + "\n")
            if prog == "mount":
                return self._mount(argv)
            if prog == "umount":
                for m in self.mount_table:
                    if m.target == argv[-1]:
                        self.mount_table.remove(m)
                        return _done(argv)
                return _done(argv, 32, err=f"umount: {argv[-1]}: not mounted.")
        raise FileNotFoundError(E.ENOENT, f"{prog}: not in the fake machine")

    def stat(self, path: str) -> os.stat_result:
        with self.lock:
            if path in self.origins:
                return _blockdev(self.origins[path])
            name = path.removeprefix("/dev/")
            if path.startswith("/dev/") and name in self._devs:
                return _blockdev(self._devs[name])
            if path in self.aliases:
                return self.stat(self.aliases[path])
        return os.stat(path)

    def device_size(self, path: str) -> int:
        with self.lock:
            if path in self.origins:
                return self.sizes.get(path, self.origin_bytes)
            if path in self.aliases:
                return self.device_size(self.aliases[path])
        return super().device_size(path)

    def resolve(self, path: str) -> str:
        if path in self.aliases:
            return self.aliases[path]
        if path in self.origins or path.removeprefix("/dev/") in self._devs:
            return path
        return os.path.realpath(path)

    def device_file(self, path: str) -> str:
        """The file holding the data of origin or snapshot device ``path``; other paths
        as given."""
        with self.lock:
            path = self.aliases.get(path, path)
            if path in self.origins:
                return str(self._origin_file(path))
            name = path.removeprefix("/dev/")
            if path.startswith("/dev/") and name in self._devs and self._snap_file(name).exists():
                return str(self._snap_file(name))
        return path

    def mounts(self) -> list[Mount]:
        with self.lock:
            return list(self.mount_table)

    def block_name_taken(self, name: str) -> bool:
        return name in KERNEL_NAMES or f"/dev/{name}" in self.origins

    def module_candidates(self, module_dir: Path | None) -> list[Path]:
        return [self.ko]

    # ---- origin writes ------------------------------------------------------------------
    def copy(self, name: str, nbytes: int) -> None:
        """Origin writes that make the module copy ``nbytes`` more into the store."""
        with self.lock:
            d = self.sysfs / name
            if self._get(name, "state") != "active":
                return
            cap = int(self._get(name, "store_capacity"))
            chunks = int(self._get(name, "cow_chunks")) + -(-nbytes // CHUNK_SIZE)
            per_file = max(1, int(self._get(name, "file_size")) * 512 // CHUNK_SIZE)
            if chunks >= cap:
                chunks = cap
                self._set(d, state="failed", error="temp-file store full")
            files = min(int(self._get(name, "max_files")), 1 + (chunks - 1) // per_file)
            self._set(d, cow_chunks=chunks, cow_bytes=chunks * CHUNK_SIZE, files_used=files,
                      index_bytes=chunks * 5)

    def write_origin(self, origin: str, offset: int, data: bytes) -> None:
        """An origin write: ``data`` into the origin's file at ``offset``, marked in the
        current changed-block map when the origin is tracked, and copied first (counted in
        ``cow_chunks``) when a snapshot of it is active."""
        with self.lock:
            origin = self.aliases.get(origin, origin)
            if origin not in self.origins:
                raise FileNotFoundError(E.ENOENT, f"{origin}: not an origin of the fake")
            size = self.device_size(origin)
            if offset < 0 or offset + len(data) > size:
                raise OSError(E.ENOSPC, f"{origin}: write beyond its {size} bytes")
            snap = next((n for n in self._names() if self._get(n, "origin") == origin
                         and self._get(n, "state") == "active"), None)
            if snap is not None and data:
                seen = self._copied.setdefault(snap, set())
                chunks = set(range(offset // CHUNK_SIZE,
                                   (offset + len(data) - 1) // CHUNK_SIZE + 1)) - seen
                seen |= chunks
                if chunks:
                    self.copy(snap, len(chunks) * CHUNK_SIZE)
            fd = os.open(self._origin_file(origin), os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
            t = self._tracked.get(origin)
            if t is not None and self.loaded:
                t.mark(offset, len(data))
                self._publish(t)

    def read_origin(self, origin: str, offset: int = 0, length: int | None = None) -> bytes:
        """What the origin holds now (the whole device by default)."""
        with self.lock:
            origin = self.aliases.get(origin, origin)
            size = self.device_size(origin)
            length = size - offset if length is None else length
            with open(self._origin_file(origin), "rb") as f:
                f.seek(offset)
                return f.read(length)

    def resize_origin(self, origin: str, nbytes: int) -> None:
        """The origin grows or shrinks (lvextend, a loop file resized): its tracking begins
        a new generation at the next create or start."""
        with self.lock:
            origin = self.aliases.get(origin, origin)
            self.sizes[origin] = nbytes
            f = self._origin_file(origin)
            os.truncate(f, nbytes)

    def advance(self) -> None:
        """Copy what ``grow_bytes_per_s`` of a wavy write load has copied by now; the same
        bytes are marked in the origin's current changed-block map (a moving region, no
        data written), so the demo's tracking table moves too."""
        if not self.grow:
            return
        with self.lock:
            for name in self._names():
                if name not in self._started or self._get(name, "state") != "active":
                    continue
                el = self.clock() - self._started[name]
                want = int(self.grow * el + self.grow * 3 * math.sin(el / 7.0))
                have = int(self._get(name, "cow_bytes"))
                if want > have:
                    self.copy(name, want - have)
                    t = self._tracked.get(self._get(name, "origin"))
                    if t is not None and t.size:
                        t.mark(have % t.size, min(want - have, t.size - have % t.size))
                        self._publish(t)

    def write_samples(self) -> list[dict[str, float | str]]:
        """Synthetic origin write figures for each active snapshot (the demo's I/O charts)."""
        self.advance()
        now = self.clock()
        out: list[dict[str, float | str]] = []
        with self.lock:
            for name in self._names():
                if self._get(name, "state") != "active":
                    continue
                dev = self._get(name, "origin").rsplit("/", 1)[-1]
                mb = 40 + 25 * math.sin(now / 9.0) + 8 * math.sin(now / 2.3)
                out.append({"ts": now, "device": dev, "write_mb_s": mb, "write_iops": mb * 64,
                            "p50_us": 180 + 40 * math.sin(now / 5.0),
                            "p99_us": 1400 + 500 * math.sin(now / 3.1)})
        return out

    # ---- the module's side ----------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return (self.sysfs / "cmd").exists()

    def _insmod(self, total: int) -> None:
        self.sysfs.mkdir(parents=True, exist_ok=True)
        (self.sysfs / "cmd").write_text("")
        (self.sysfs / "set_refused").write_text("\n")
        (self.module_sysfs / "parameters").mkdir(parents=True, exist_ok=True)
        (self.module_sysfs / "parameters" / "total").write_text(f"{total}\n")
        (self.module_sysfs / "version").write_text("0.17-fake\n")

    def _names(self) -> list[str]:
        if not self.sysfs.is_dir():
            return []
        return sorted(p.name for p in self.sysfs.iterdir() if (p / "state").exists())

    def _get(self, name: str, field: str) -> str:
        return (self.sysfs / name / field).read_text().strip()

    @staticmethod
    def _set(d: Path, **fields: object) -> None:
        for k, v in fields.items():
            (d / k).write_text(f"{v}\n")

    # ---- device files ----------------------------------------------------------------------
    def _origin_file(self, origin: str) -> Path:
        f = self.base / "devices" / "origin" / origin.strip("/").replace("/", "_")
        if not f.exists():
            f.parent.mkdir(parents=True, exist_ok=True)
            with open(f, "wb") as fh:
                fh.truncate(self.device_size(origin))
        return f

    def _snap_file(self, name: str) -> Path:
        return self.base / "devices" / "snapshot" / name

    # ---- changed-block tracking (cbt.c) ---------------------------------------------------
    def _publish(self, t: _Tracked) -> None:
        """/sys/kernel/cblb/tracking/<disk>/ as cbt.c shows it."""
        d = self.sysfs / "tracking" / t.disk
        d.mkdir(parents=True, exist_ok=True)
        self._set(d, dev="%d:%d" % t.dev, generation=t.generation, sequence=t.sequence,
                  block_size=t.block_size, size_sectors=t.size // SECTOR,
                  changed_blocks=_bits(t.current), memory_bytes=2 * len(t.current))

    def _cbt_get(self, origin: str) -> _Tracked:
        """cbt_get: the origin's tracking, begun if there is none, re-begun (a new
        generation) if the origin is not the same any more."""
        size = self.device_size(origin)
        t = self._tracked.get(origin)
        if t is None:
            t = _Tracked(origin, origin.rsplit("/", 1)[-1], self.origins[origin],
                         max_bits=self.cbt_max_bits)
            t.begin(size)
            self._tracked[origin] = t
        elif t.size != size:
            t.begin(size)
        self._publish(t)
        return t

    def _track(self, path: str) -> None:
        if path.removeprefix("/dev/") in self._devs:
            raise OSError(E.EINVAL, "a snapshot device")
        if path not in self.origins:
            raise OSError(E.ENOENT, "no such block device")
        if path in self._tracked:
            raise OSError(E.EEXIST, "tracked already")
        self._cbt_get(path)

    def _untrack(self, path: str) -> None:
        if path not in self.origins:
            raise OSError(E.ENOENT, "no such block device")
        t = self._tracked.get(path)
        if t is None:
            raise OSError(E.ENOENT, "not tracked")
        if t.snap is not None:
            raise OSError(E.EBUSY, f"snapshot {t.snap} exists")
        del self._tracked[path]
        shutil.rmtree(self.sysfs / "tracking" / t.disk, ignore_errors=True)

    def _cbt_start(self, name: str) -> None:
        """prepare + flip for one started member; its snapshot device's file is the origin
        as it is now."""
        origin = self._get(name, "origin")
        t = self._cbt_get(origin)             # prepare: a resized origin re-begins
        t.snap = name
        t.rotate()
        self._publish(t)
        d = self.sysfs / name
        self._set(d, cbt_generation=t.generation, cbt_sequence=t.sequence,
                  cbt_block_size=t.block_size, cbt_changed_blocks=_bits(t.frozen))
        (d / "cbt_map").write_bytes(bytes(t.frozen))
        f = self._snap_file(name)
        f.parent.mkdir(parents=True, exist_ok=True)
        _sparse_copy(self._origin_file(origin), f, t.size)
        self._copied[name] = set()

    def _create(self, name: str, origin: str) -> None:
        if origin not in self.origins:
            raise OSError(E.ENOENT, "no such origin")
        names = self._names()
        if name in names:
            raise OSError(E.EEXIST, "name taken")
        majmin = "%d:%d" % self.origins[origin]
        if any(self._get(n, "origin_dev") == majmin for n in names):
            raise OSError(E.EBUSY, "origin has a snapshot")
        if len(names) >= int((self.module_sysfs / "parameters" / "total").read_text()):
            raise OSError(E.ENOSPC, "no free slot")
        t = self._cbt_get(origin)             # tracking begins with the first create
        t.snap = name
        d = self.sysfs / name
        d.mkdir()
        self._set(d, **{**_FIELDS, "origin": origin, "origin_dev": majmin,
                        "cbt_block_size": t.block_size})
        (d / "cbt_map").write_bytes(b"")      # read as empty before start
        used = set(self._devs.values())
        self._devs[name] = next((SNAPSHOT_MAJOR, i) for i in range(1 << 20)
                                if (SNAPSHOT_MAJOR, i) not in used)

    def _startset(self, words: list[str]) -> None:
        """startset <set> <dev> <catalog> <file size> <max files> [...] (kmod/sysfs.c)."""
        if len(words) > 1 + 4 * SET_MAX:
            raise OSError(E.E2BIG, f"at most {SET_MAX} members")
        if len(words) < 5 or (len(words) - 1) % 4:
            raise OSError(E.EINVAL, "usage: startset <set> <dev> <catalog> <size> <files> ...")
        groups = [words[i:i + 4] for i in range(1, len(words), 4)]
        self._start_members(words[0], [(g[0], g[1], g[2], g[3]) for g in groups])

    def _check_member(self, name: str, file_size: int, max_files: int) -> None:
        """start.c's check_members for one member, in its order."""
        if not MIN_FILE_SIZE <= file_size <= MAX_FILE_SIZE or not 1 <= max_files <= MAX_FILES:
            raise OSError(E.EINVAL, "bad parameters")
        if name not in self._names():
            raise OSError(E.ENOENT, "no such snapshot")
        if self._get(name, "state") != "created":
            raise OSError(E.EALREADY, "already started")

    @staticmethod
    def _prepare_member(catalog: str) -> None:
        """start.c's prepare: the catalog must be a folder (the store is made there)."""
        if not os.path.isdir(catalog):
            raise OSError(E.ENOTDIR if os.path.exists(catalog) else E.ENOENT, catalog)

    def _start_members(self, set_name: str | None,
                       members: list[tuple[str, str, str, str]]) -> None:
        """cblb_cmd_start_set: every member starts at one instant, or none does. ``set_name``
        is None for the seed's single start (which names no set and no refused member)."""
        if any(not (w.isascii() and w.isdigit()) for m in members for w in m[2:]):
            raise OSError(E.EINVAL, "sizes must be numbers")
        if set_name is not None and not NAME_RE.fullmatch(set_name):
            raise OSError(E.EINVAL, "invalid set name")
        if set_name is not None:
            (self.sysfs / "set_refused").write_text("\n")
        sized = [(n, c, int(fs), int(mf)) for n, c, fs, mf in members]
        bad = 0
        try:
            for i, (name, _cat, fs, mf) in enumerate(sized):
                bad = i
                self._check_member(name, fs, mf)
                if any(m[0] == name for m in sized[:i]):
                    raise OSError(E.EINVAL, f"{name} named twice")
            for i, (_name, cat, _fs, _mf) in enumerate(sized):
                bad = i
                self._prepare_member(cat)
        except OSError:
            if set_name is not None:
                (self.sysfs / "set_refused").write_text(f"{set_name} {sized[bad][0]}\n")
            raise
        now = self.clock()
        for name, cat, fs, mf in sized:
            self._set(self.sysfs / name, state="active", catalog=cat, file_size=fs,
                      max_files=mf, files_used=1, store_capacity=mf * fs * 512 // CHUNK_SIZE,
                      start_time_ns=int(now * 1e9), start_latency_us=2300,
                      frozen_us=900 * len(sized), freeze="frozen", set=set_name or "")
            self._started[name] = now
            self._cbt_start(name)

    def _remove(self, name: str) -> None:
        if name not in self._names():
            raise OSError(E.ENOENT, "no such snapshot")
        majmin = "%d:%d" % self._devs[name]
        if any(m.dev == majmin for m in self.mount_table):
            raise OSError(E.EBUSY, "device open")
        origin = self._get(name, "origin")
        shutil.rmtree(self.sysfs / name)
        del self._devs[name]
        self._started.pop(name, None)
        self._copied.pop(name, None)
        t = self._tracked.get(origin)
        if t is not None and t.snap == name:
            t.snap = None                     # tracking goes on without the snapshot
        self._snap_file(name).unlink(missing_ok=True)

    def _mount(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        opts = argv[argv.index("-o") + 1]
        fs = argv[argv.index("-t") + 1] if "-t" in argv else self.fstype
        device, target = argv[-2], argv[-1]
        if not os.path.isdir(target):
            return _done(argv, 32, err=f"mount: {target}: mount point does not exist.")
        st = self.stat(device)
        majmin = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        self.mount_table.append(Mount(majmin, target, fs, device, opts))
        return _done(argv)
