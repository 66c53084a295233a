"""A fake machine behind the real :class:`~cblb.control.Controller`, for host tests and the
demo page (``cblb web --standin``).

:class:`FakeSystem` keeps the module's sysfs files (``cmd``, ``<name>/state``, ...) in a
temporary folder and carries out the commands written to ``cmd`` the way cblb_module does:
it changes those files or fails the write with the module's errno (kmod/doc/INTERFACE.md).
It also plays the programs the controller runs (insmod, rmmod, blkid, mount, umount) and
the block devices it stats. Every rule and message about what a person may do stays in
cblb/control.py; this file only answers as the kernel would.

``copy(name, nbytes)`` stands for origin writes (the store fills, then the snapshot fails);
``advance()`` does it at ``grow_bytes_per_s`` so the demo's charts have something to draw.
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
from pathlib import Path
from typing import Callable

from .control import CHUNK_SIZE, MAX_FILES, MIN_FILE_SIZE, MODULE_NAME, Mount, System

DEFAULT_ORIGINS = {"/dev/vdb1": (254, 17), "/dev/vdb2": (254, 18), "/dev/loop0": (7, 0)}
SNAPSHOT_MAJOR = 252
KERNEL_NAMES = {"null", "zero", "full", "random", "urandom", "console", "tty"}
_FIELDS = {"state": "created", "origin": "", "origin_dev": "", "catalog": "", "file_size": "0",
           "max_files": "0", "files_used": "0", "chunk_size": str(CHUNK_SIZE),
           "cow_chunks": "0", "cow_bytes": "0", "store_capacity": "0", "error": "",
           "start_time_ns": "0", "start_latency_us": "0", "freeze": "", "index_bytes": "0",
           "store_extents": ""}


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
                 clock: Callable[[], float] = time.time) -> None:
        self.base = Path(base) if base else Path(tempfile.mkdtemp(prefix="cblb-fake-"))
        super().__init__(self.base / "sys/kernel/cblb", self.base / f"sys/module/{MODULE_NAME}")
        self.origins = dict(origins or DEFAULT_ORIGINS)
        self.aliases = dict(aliases or {})
        self.fstype = fstype
        self.grow = grow_bytes_per_s
        self.clock = clock
        self.lock = threading.RLock()
        self.commands: list[str] = []              # every line written to cmd
        self.programs: list[list[str]] = []        # every program run
        self.mount_table: list[Mount] = []
        self._devs: dict[str, tuple[int, int]] = {}   # snapshot name -> its device number
        self._started: dict[str, float] = {}
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
            words = line.split()
            if words[:1] == ["create"] and len(words) == 5:
                self._create(words[1], words[2])
            elif words[:1] == ["start"] and len(words) == 5:
                self._start(words[1], words[2], words[3], words[4])
            elif words[:1] == ["remove"] and len(words) == 2:
                self._remove(words[1])
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

    def resolve(self, path: str) -> str:
        if path in self.aliases:
            return self.aliases[path]
        if path in self.origins or path.removeprefix("/dev/") in self._devs:
            return path
        return os.path.realpath(path)

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

    def advance(self) -> None:
        """Copy what ``grow_bytes_per_s`` of a wavy write load has copied by now."""
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
        d = self.sysfs / name
        d.mkdir()
        self._set(d, **{**_FIELDS, "origin": origin, "origin_dev": majmin})
        used = set(self._devs.values())
        self._devs[name] = next((SNAPSHOT_MAJOR, i) for i in range(1 << 20)
                                if (SNAPSHOT_MAJOR, i) not in used)

    def _start(self, name: str, catalog: str, file_size: str, max_files: str) -> None:
        if name not in self._names():
            raise OSError(E.ENOENT, "no such snapshot")
        if self._get(name, "state") != "created":
            raise OSError(E.EALREADY, "already started")
        if not os.path.isdir(catalog):
            raise OSError(E.ENOTDIR if os.path.exists(catalog) else E.ENOENT, catalog)
        fs, mf = int(file_size), int(max_files)
        if fs < MIN_FILE_SIZE or not 1 <= mf <= MAX_FILES:
            raise OSError(E.EINVAL, "bad parameters")
        self._set(self.sysfs / name, state="active", catalog=catalog, file_size=fs,
                  max_files=mf, files_used=1, store_capacity=mf * fs * 512 // CHUNK_SIZE,
                  start_time_ns=int(self.clock() * 1e9), start_latency_us=2300,
                  freeze="frozen")
        self._started[name] = self.clock()

    def _remove(self, name: str) -> None:
        if name not in self._names():
            raise OSError(E.ENOENT, "no such snapshot")
        majmin = "%d:%d" % self._devs[name]
        if any(m.dev == majmin for m in self.mount_table):
            raise OSError(E.EBUSY, "device open")
        shutil.rmtree(self.sysfs / name)
        del self._devs[name]
        self._started.pop(name, None)

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
