"""The programs the controller runs, played on the fake machine: insmod, rmmod, modinfo,
blkid, mount and umount.

:class:`FakePrograms` answers each as a :class:`subprocess.CompletedProcess` with the exit
status and message the real program gives: insmod and rmmod load and unload the fake module
(:mod:`.module`), blkid names one filesystem type for every device, mount and umount change
the fake devices' mount table (:mod:`.devices`). Any other program is not installed.
"""

from __future__ import annotations

import errno as E
import os
import subprocess
import threading

from ..system import MODULE_NAME, Mount
from .devices import FakeDevices
from .module import FakeModule


def _done(argv: list[str], rc: int = 0, out: str = "",
          err: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(argv, rc, out, err)


class FakePrograms:
    """Every program run is kept in ``programs``; ``fstype`` is what blkid finds."""

    def __init__(self, module: FakeModule, devices: FakeDevices, lock: threading.RLock,
                 fstype: str = "ext4") -> None:
        self.module = module
        self.devices = devices
        self.lock = lock
        self.fstype = fstype
        self.programs: list[list[str]] = []        # every program run

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        with self.lock:
            self.programs.append(list(argv))
            prog = argv[0]
            if prog == "insmod":
                if self.module.loaded:
                    return _done(argv, 1, err="insmod: ERROR: could not insert module: File exists")
                self.module.insmod(int(argv[-1].split("=")[1]))
                return _done(argv)
            if prog == "rmmod":
                if self.module.names():
                    return _done(argv, 1, err=f"rmmod: ERROR: Module {MODULE_NAME} is in use")
                self.module.rmmod()
                return _done(argv)
            if prog == "modinfo":
                return _done(argv, 1)
            if prog == "blkid":
                return _done(argv, out=self.fstype + "\n")
            if prog == "mount":
                return self._mount(argv)
            if prog == "umount":
                table = self.devices.mount_table
                for m in table:
                    if m.target == argv[-1]:
                        table.remove(m)
                        return _done(argv)
                return _done(argv, 32, err=f"umount: {argv[-1]}: not mounted.")
        raise FileNotFoundError(E.ENOENT, f"{prog}: not in the fake machine")

    def _mount(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        opts = argv[argv.index("-o") + 1]
        fs = argv[argv.index("-t") + 1] if "-t" in argv else self.fstype
        device, target = argv[-2], argv[-1]
        if not os.path.isdir(target):
            return _done(argv, 32, err=f"mount: {target}: mount point does not exist.")
        st = self.devices.stat(device)
        majmin = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        self.devices.mount_table.append(Mount(majmin, target, fs, device, opts))
        return _done(argv)
