"""The fake cblb_module: its sysfs files and the commands written to ``cmd``.

:class:`FakeModule` keeps the module's files (``cmd``, ``<name>/state``, ...) in a folder and
carries out each command the way cblb_module does: it changes those files or fails the write
with the module's errno (kmod/doc/INTERFACE.md). Every rule and message about what a person
may do stays in cblb/control.py; this file only answers as the kernel would.

``startset`` follows start.c: every member is checked (sizes, exists, ``created``, named
once), then every catalog; the first bad member refuses the whole set (named in
``set_refused``, no member started), else all become active with one ``start_time_ns``.
At each start the origin's changed-block map is frozen into the snapshot's ``cbt_map`` (with
``cbt_generation``, ``cbt_sequence``, ``cbt_block_size``, ``cbt_changed_blocks``:
:mod:`.tracking`) and the snapshot device's file becomes a copy of the origin (:mod:`.devices`).

Origin writes: ``copy(name, nbytes)`` stands for writes that fill the store (then the
snapshot fails); ``write_origin`` writes real bytes, counts the chunks the snapshot copies and
marks the tracked origin's map; ``advance()`` copies at ``grow_bytes_per_s`` so the demo's
charts have something to draw.
"""

from __future__ import annotations

import errno as E
import math
import os
import shutil
import threading
from pathlib import Path
from typing import Callable

from ..model import CHUNK_SIZE, MAX_FILE_SIZE, MAX_FILES, MIN_FILE_SIZE, NAME_RE, NULL_UUID, SET_MAX
from .devices import FakeDevices
from .sysfs import read_field, write_fields
from .tracking import FakeTracking, bits

CMD_MAX = 4096                       # the module's command buffer (PAGE_SIZE)
FIELDS = {"state": "created", "origin": "", "origin_dev": "", "catalog": "", "file_size": "0",
          "max_files": "0", "files_used": "0", "chunk_size": str(CHUNK_SIZE),
          "cow_chunks": "0", "cow_bytes": "0", "store_capacity": "0", "error": "",
          "start_time_ns": "0", "start_latency_us": "0", "freeze": "", "index_bytes": "0",
          "store_extents": "", "set": "", "frozen_us": "0", "cbt_generation": NULL_UUID,
          "cbt_sequence": "0", "cbt_changed_blocks": "0"}


class FakeModule:
    """cblb_module's side of the fake machine: ``sysfs`` (/sys/kernel/cblb) and
    ``module_sysfs`` (/sys/module/cblb_module) while loaded, and ``ko``, its .ko file."""

    def __init__(self, sysfs: Path, module_sysfs: Path, ko: Path, devices: FakeDevices,
                 tracking: FakeTracking, lock: threading.RLock,
                 clock: Callable[[], float], grow_bytes_per_s: float = 0.0) -> None:
        self.sysfs = sysfs
        self.module_sysfs = module_sysfs
        self.devices = devices
        self.tracking = tracking
        self.lock = lock
        self.clock = clock
        self.grow = grow_bytes_per_s
        self.commands: list[str] = []              # every line written to cmd
        self._started: dict[str, float] = {}
        self._copied: dict[str, set[int]] = {}       # snapshot -> chunks copied since start
        self.ko = ko
        self.ko.parent.mkdir(parents=True, exist_ok=True)
        self.ko.write_bytes(b"")

    # ---- insmod and rmmod -------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return (self.sysfs / "cmd").exists()

    def insmod(self, total: int) -> None:
        self.sysfs.mkdir(parents=True, exist_ok=True)
        (self.sysfs / "cmd").write_text("")
        (self.sysfs / "set_refused").write_text("\n")
        (self.module_sysfs / "parameters").mkdir(parents=True, exist_ok=True)
        (self.module_sysfs / "parameters" / "total").write_text(f"{total}\n")
        (self.module_sysfs / "version").write_text("0.17-fake\n")

    def rmmod(self) -> None:
        """The module's files go, and tracking ends with the module (no snapshot is left:
        the caller checked)."""
        shutil.rmtree(self.sysfs, ignore_errors=True)
        shutil.rmtree(self.module_sysfs, ignore_errors=True)
        self.tracking.clear()

    def names(self) -> list[str]:
        if not self.sysfs.is_dir():
            return []
        return sorted(p.name for p in self.sysfs.iterdir() if (p / "state").exists())

    def _get(self, name: str, field: str) -> str:
        return read_field(self.sysfs / name, field)

    # ---- cmd ----------------------------------------------------------------------------
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
                self.tracking.track(words[1])
            elif words[:1] == ["untrack"] and len(words) == 2:
                self.tracking.untrack(words[1])
            else:
                raise OSError(E.EINVAL, "unknown command")

    def _create(self, name: str, origin: str) -> None:
        if origin not in self.devices.origins:
            raise OSError(E.ENOENT, "no such origin")
        names = self.names()
        if name in names:
            raise OSError(E.EEXIST, "name taken")
        majmin = "%d:%d" % self.devices.origins[origin]
        if any(self._get(n, "origin_dev") == majmin for n in names):
            raise OSError(E.EBUSY, "origin has a snapshot")
        if len(names) >= int((self.module_sysfs / "parameters" / "total").read_text()):
            raise OSError(E.ENOSPC, "no free slot")
        t = self.tracking.get(origin)        # tracking begins with the first create
        t.snap = name
        d = self.sysfs / name
        d.mkdir()
        write_fields(d, **{**FIELDS, "origin": origin, "origin_dev": majmin,
                           "cbt_block_size": t.block_size})
        (d / "cbt_map").write_bytes(b"")      # read as empty before start
        self.devices.add_snapshot(name)

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
        if name not in self.names():
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
            write_fields(self.sysfs / name, state="active", catalog=cat, file_size=fs,
                         max_files=mf, files_used=1,
                         store_capacity=mf * fs * 512 // CHUNK_SIZE,
                         start_time_ns=int(now * 1e9), start_latency_us=2300,
                         frozen_us=900 * len(sized), freeze="frozen", set=set_name or "")
            self._started[name] = now
            self._cbt_start(name)

    def _cbt_start(self, name: str) -> None:
        """prepare + flip for one started member; its snapshot device's file is the origin
        as it is now."""
        origin = self._get(name, "origin")
        t = self.tracking.start(name, origin)
        d = self.sysfs / name
        write_fields(d, cbt_generation=t.generation, cbt_sequence=t.sequence,
                     cbt_block_size=t.block_size, cbt_changed_blocks=bits(t.frozen))
        (d / "cbt_map").write_bytes(bytes(t.frozen))
        self.devices.freeze_snapshot(name, origin, t.size)
        self._copied[name] = set()

    def _remove(self, name: str) -> None:
        if name not in self.names():
            raise OSError(E.ENOENT, "no such snapshot")
        if self.devices.mounted(self.devices.snapshot_devnum(name)):
            raise OSError(E.EBUSY, "device open")
        origin = self._get(name, "origin")
        shutil.rmtree(self.sysfs / name)
        self._started.pop(name, None)
        self._copied.pop(name, None)
        t = self.tracking.tracked.get(origin)
        if t is not None and t.snap == name:
            t.snap = None                     # tracking goes on without the snapshot
        self.devices.remove_snapshot(name)

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
                write_fields(d, state="failed", error="temp-file store full")
            files = min(int(self._get(name, "max_files")), 1 + (chunks - 1) // per_file)
            write_fields(d, cow_chunks=chunks, cow_bytes=chunks * CHUNK_SIZE, files_used=files,
                         index_bytes=chunks * 5)

    def write_origin(self, origin: str, offset: int, data: bytes) -> None:
        """An origin write: ``data`` into the origin's file at ``offset``, marked in the
        current changed-block map when the origin is tracked, and copied first (counted in
        ``cow_chunks``) when a snapshot of it is active."""
        with self.lock:
            origin = self.devices.aliases.get(origin, origin)
            if origin not in self.devices.origins:
                raise FileNotFoundError(E.ENOENT, f"{origin}: not an origin of the fake")
            size = self.devices.device_size(origin)
            if offset < 0 or offset + len(data) > size:
                raise OSError(E.ENOSPC, f"{origin}: write beyond its {size} bytes")
            snap = next((n for n in self.names() if self._get(n, "origin") == origin
                         and self._get(n, "state") == "active"), None)
            if snap is not None and data:
                seen = self._copied.setdefault(snap, set())
                chunks = set(range(offset // CHUNK_SIZE,
                                   (offset + len(data) - 1) // CHUNK_SIZE + 1)) - seen
                seen |= chunks
                if chunks:
                    self.copy(snap, len(chunks) * CHUNK_SIZE)
            self.devices.write(origin, offset, data)
            t = self.tracking.tracked.get(origin)
            if t is not None and self.loaded:
                t.mark(offset, len(data))
                self.tracking.publish(t)

    def advance(self) -> None:
        """Copy what ``grow_bytes_per_s`` of a wavy write load has copied by now; the same
        bytes are marked in the origin's current changed-block map (a moving region, no
        data written), so the demo's tracking table moves too."""
        if not self.grow:
            return
        with self.lock:
            for name in self.names():
                if name not in self._started or self._get(name, "state") != "active":
                    continue
                el = self.clock() - self._started[name]
                want = int(self.grow * el + self.grow * 3 * math.sin(el / 7.0))
                have = int(self._get(name, "cow_bytes"))
                if want > have:
                    self.copy(name, want - have)
                    t = self.tracking.tracked.get(self._get(name, "origin"))
                    if t is not None and t.size:
                        t.mark(have % t.size, min(want - have, t.size - have % t.size))
                        self.tracking.publish(t)

    def write_samples(self) -> list[dict[str, float | str]]:
        """Synthetic origin write figures for each active snapshot (the demo's I/O charts)."""
        self.advance()
        now = self.clock()
        out: list[dict[str, float | str]] = []
        with self.lock:
            for name in self.names():
                if self._get(name, "state") != "active":
                    continue
                dev = self._get(name, "origin").rsplit("/", 1)[-1]
                mb = 40 + 25 * math.sin(now / 9.0) + 8 * math.sin(now / 2.3)
                out.append({"ts": now, "device": dev, "write_mb_s": mb, "write_iops": mb * 64,
                            "p50_us": 180 + 40 * math.sin(now / 5.0),
                            "p99_us": 1400 + 500 * math.sin(now / 3.1)})
        return out
