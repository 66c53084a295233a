"""The system seam: this machine as the controller sees it, and nothing else.

:class:`System` is every kernel interface cblb uses, one method each: the module's sysfs
files, /dev, the mount table (:func:`parse_mountinfo` reads /proc/self/mountinfo into
:class:`Mount`), the programs run (insmod, rmmod, modinfo, blkid, mount, umount) and the
folder under /run where `cblb run` leaves its markers. :class:`SystemLike` is the Protocol of
those methods: :class:`cblb.control.Controller` is typed against it, and :mod:`cblb.fake`'s
FakeSystem implements it without inheriting System (tests/host/test_fake_protocol.py).
The device helpers here stat or open devices: :func:`check_block_device`,
:func:`block_device_size`, :func:`devnum` and :func:`devnum_of_fs`.
"""

from __future__ import annotations

import errno as E
import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from .errors import CblbError

MODULE_NAME = "cblb_module"
SYSFS_ROOT = Path("/sys/kernel/cblb")
MODULE_SYSFS = Path(f"/sys/module/{MODULE_NAME}")
RUN_DIR = Path("/run/cblb")      # markers of running `cblb run`s (cblb/run.py)


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


def devnum(st: os.stat_result) -> str:
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def devnum_of_fs(path: Path) -> str:
    """major:minor of the device the filesystem holding path lives on."""
    st = os.stat(path)
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


class SystemLike(Protocol):
    """What the controller asks of a machine: :class:`System`'s public methods and folders,
    every one of them (tests/host/test_fake_protocol.py checks that this list, System and
    cblb.fake.FakeSystem agree)."""

    sysfs: Path             # /sys/kernel/cblb
    module_sysfs: Path      # /sys/module/cblb_module
    run_dir: Path           # /run/cblb: the markers of `cblb run`

    def write_command(self, line: str) -> None: ...

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]: ...

    def stat(self, path: str) -> os.stat_result: ...

    def device_size(self, path: str) -> int: ...

    def resolve(self, path: str) -> str: ...

    def device_file(self, path: str) -> str: ...

    def mounts(self) -> list[Mount]: ...

    def block_name_taken(self, name: str) -> bool: ...

    def module_candidates(self, module_dir: Path | None) -> list[Path]: ...


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

