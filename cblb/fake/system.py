"""The fake machine as one object: :class:`FakeSystem`, the system seam of host tests and of
``cblb web --standin``.

It implements :class:`cblb.system.SystemLike`, every method of the real
:class:`cblb.system.System`, without inheriting it (a method added to System and not here
would otherwise run against the real machine inside a test;
tests/host/test_fake_protocol.py checks both), by handing each call to the part of the
machine it concerns: :mod:`.programs` (insmod, mount, ...) over :mod:`.module` (the sysfs
files and ``cmd``) over :mod:`.tracking` (changed-block maps) over :mod:`.devices` (the
origins, the snapshot devices, their data files and mounts). The helpers tests use to play
origin writes (``write_origin``, ``copy``, ``resize_origin``, ...) are here too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from ..system import MODULE_NAME, Mount
from .devices import DEFAULT_ORIGIN_BYTES, DEFAULT_ORIGINS, FakeDevices
from .module import FakeModule
from .programs import FakePrograms
from .tracking import CBT_MAX_BITS, FakeTracking


class FakeSystem:
    """The module's files under ``base`` (a fresh temporary folder when not given)."""

    sysfs: Path             # base/sys/kernel/cblb
    module_sysfs: Path      # base/sys/module/cblb_module
    run_dir: Path           # base/run/cblb

    def __init__(self, base: Path | None = None, origins: dict[str, tuple[int, int]] | None = None,
                 aliases: dict[str, str] | None = None, loaded: bool = False, total: int = 4,
                 fstype: str = "ext4", grow_bytes_per_s: float = 0.0,
                 clock: Callable[[], float] = time.time,
                 origin_bytes: int = DEFAULT_ORIGIN_BYTES,
                 cbt_max_bits: int = CBT_MAX_BITS) -> None:
        self.base = Path(base) if base else Path(tempfile.mkdtemp(prefix="cblb-fake-"))
        self.sysfs = self.base / "sys/kernel/cblb"
        self.module_sysfs = self.base / f"sys/module/{MODULE_NAME}"
        self.run_dir = self.base / "run/cblb"
        self.lock = threading.RLock()
        self.devices = FakeDevices(self.base, dict(origins or DEFAULT_ORIGINS),
                                   dict(aliases or {}), origin_bytes, self.lock)
        self.tracking = FakeTracking(self.sysfs, self.devices, cbt_max_bits)
        self.module = FakeModule(self.sysfs, self.module_sysfs, self.base / f"{MODULE_NAME}.ko",
                                 self.devices, self.tracking, self.lock, clock, grow_bytes_per_s)
        self.tools = FakePrograms(self.module, self.devices, self.lock, fstype)
        if loaded:
            self.module.insmod(total)

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    # ---- what tests look at ---------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self.module.loaded

    @property
    def commands(self) -> list[str]:
        """Every line written to cmd."""
        return self.module.commands

    @property
    def programs(self) -> list[list[str]]:
        """Every program run."""
        return self.tools.programs

    @property
    def mount_table(self) -> list[Mount]:
        return self.devices.mount_table

    @property
    def sizes(self) -> dict[str, int]:
        """origin -> bytes (default origin_bytes); set one to resize it without a new
        generation (:meth:`resize_origin` also resizes its file)."""
        return self.devices.sizes

    # ---- the System interface (cblb.system.SystemLike) ---------------------------------------
    def write_command(self, line: str) -> None:
        self.module.write_command(line)

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return self.tools.run(argv)

    def stat(self, path: str) -> os.stat_result:
        return self.devices.stat(path)

    def device_size(self, path: str) -> int:
        return self.devices.device_size(path)

    def resolve(self, path: str) -> str:
        return self.devices.resolve(path)

    def device_file(self, path: str) -> str:
        """The file holding the data of origin or snapshot device ``path``; other paths
        as given."""
        return self.devices.device_file(path)

    def mounts(self) -> list[Mount]:
        return self.devices.mounts()

    def block_name_taken(self, name: str) -> bool:
        return self.devices.block_name_taken(name)

    def module_candidates(self, module_dir: Path | None) -> list[Path]:
        return [self.module.ko]

    # ---- origin writes ------------------------------------------------------------------
    def copy(self, name: str, nbytes: int) -> None:
        """Origin writes that make the module copy ``nbytes`` more into the store."""
        self.module.copy(name, nbytes)

    def write_origin(self, origin: str, offset: int, data: bytes) -> None:
        """An origin write: ``data`` into the origin's file at ``offset``, marked in the
        current changed-block map when the origin is tracked, and copied first (counted in
        ``cow_chunks``) when a snapshot of it is active."""
        self.module.write_origin(origin, offset, data)

    def read_origin(self, origin: str, offset: int = 0, length: int | None = None) -> bytes:
        """What the origin holds now (the whole device by default)."""
        return self.devices.read_origin(origin, offset, length)

    def resize_origin(self, origin: str, nbytes: int) -> None:
        """The origin grows or shrinks (lvextend, a loop file resized): its tracking begins
        a new generation at the next create or start."""
        self.devices.resize_origin(origin, nbytes)

    def advance(self) -> None:
        """Copy what ``grow_bytes_per_s`` has copied by now (the demo's charts move)."""
        self.module.advance()

    def write_samples(self) -> list[dict[str, float | str]]:
        """Synthetic origin write figures for each active snapshot (the demo's I/O charts)."""
        return self.module.write_samples()
