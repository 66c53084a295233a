"""Scratch devices for the benchmark, inside the lab guest.

Loop devices over files in /tmp (guest RAM): the figures measure the CPU and copy cost
of each snapshot method, not a disk. Images are fully allocated up front (fallocate)
so that no run pays for tmpfs page allocation that another run does not.

dm-snapshot is set up the way LVM does it: a ``snapshot-origin`` target over the origin
(writes go to it) plus a ``snapshot`` target with a persistent exception store on its own
COW device, chunk size 8 sectors (4 KiB, LVM's default) or 128 sectors (64 KiB).
The cblb module is driven only through :class:`cblb.control.Controller`.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import CblbError

WORKDIR = Path("/tmp/cblb-bench")


def sh(cmd: list[str] | str, check: bool = True, timeout: float = 300) -> str:
    r = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        shown = cmd if isinstance(cmd, str) else " ".join(cmd)
        raise CblbError(f"bench: '{shown}' failed ({r.returncode}): "
                        f"{(r.stderr or r.stdout).strip()[:300]}")
    return r.stdout


@dataclass
class Loop:
    image: Path
    device: str
    size: int

    def detach(self) -> None:
        sh(["losetup", "-d", self.device], check=False)
        self.image.unlink(missing_ok=True)


def make_loop(size: int, tag: str) -> Loop:
    WORKDIR.mkdir(parents=True, exist_ok=True)
    img = WORKDIR / f"{tag}-{uuid.uuid4().hex[:6]}.img"
    sh(["fallocate", "-l", str(size), str(img)])
    dev = sh(["losetup", "-f", "--show", str(img)]).strip()
    return Loop(img, dev, size)


@dataclass
class Catalog:
    """A separate ext4 filesystem (loop-backed) holding the catalog folders."""

    loop: Loop
    mnt: Path

    def folder(self, name: str) -> str:
        p = self.mnt / name
        p.mkdir(exist_ok=True)
        return str(p)

    def free(self) -> int:
        st = os.statvfs(self.mnt)
        return st.f_bavail * st.f_frsize

    def teardown(self) -> None:
        sh(["umount", str(self.mnt)], check=False)
        self.loop.detach()


def make_catalog(size: int) -> Catalog:
    loop = make_loop(size, "catalog")
    sh(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", loop.device])
    mnt = WORKDIR / f"cat-{uuid.uuid4().hex[:6]}"
    mnt.mkdir(parents=True)
    sh(["mount", loop.device, str(mnt)])
    return Catalog(loop, mnt)


def prepare_kernel() -> None:
    sh("modprobe loop max_loop=64; modprobe ext4; modprobe dm-snapshot", check=False)


def dm_status_used(name: str) -> tuple[int, int, int]:
    """(used sectors, total sectors, metadata sectors) of a dm snapshot, from dmsetup status."""
    out = sh(["dmsetup", "status", name]).split()
    # "<start> <len> snapshot <used>/<total> <metadata>"
    if len(out) >= 5 and "/" in out[3]:
        used, total = out[3].split("/")
        return int(used), int(total), int(out[4])
    return 0, 0, 0


class DmSnapshot:
    """snapshot-origin + snapshot over ``origin`` with a persistent store on ``cow``."""

    def __init__(self, origin: Loop, cow: Loop, chunk_sectors: int) -> None:
        self.origin, self.cow, self.chunk = origin, cow, chunk_sectors
        tag = uuid.uuid4().hex[:4]
        self.orig_name, self.snap_name = f"cblbb-orig-{tag}", f"cblbb-snap-{tag}"
        sectors = origin.size // 512
        # A fresh exception store: zero its header so dm starts an empty one.
        sh(["dd", "if=/dev/zero", f"of={cow.device}", "bs=1M", "count=1", "oflag=direct",
            "status=none"])
        sh(["dmsetup", "create", self.snap_name, "--table",
            f"0 {sectors} snapshot {origin.device} {cow.device} P {chunk_sectors}"])
        try:
            sh(["dmsetup", "create", self.orig_name, "--table",
                f"0 {sectors} snapshot-origin {origin.device}"])
        except CblbError:
            sh(["dmsetup", "remove", self.snap_name], check=False)
            raise

    @property
    def origin_path(self) -> str:
        return f"/dev/mapper/{self.orig_name}"

    @property
    def snap_path(self) -> str:
        return f"/dev/mapper/{self.snap_name}"

    def cow_bytes(self) -> tuple[int, int]:
        """(exception data bytes, metadata bytes) in the COW store."""
        used, _total, meta = dm_status_used(self.snap_name)
        return (used - meta) * 512, meta * 512

    def remove(self) -> None:
        for name in (self.orig_name, self.snap_name):
            for _ in range(20):
                r = subprocess.run(["dmsetup", "remove", name], capture_output=True, text=True)
                if r.returncode == 0 or "No such device" in r.stderr:
                    break
                time.sleep(0.2)


def slab_bytes(cache: str = "radix_tree_node") -> int:
    """Bytes held by one slab cache (num_objs * objsize), from /proc/slabinfo; 0 if unreadable."""
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] == cache:
                    return int(parts[2]) * int(parts[3])
    except OSError:
        pass
    return 0


def drop_caches() -> None:
    sh("sync; echo 3 > /proc/sys/vm/drop_caches", check=False)
