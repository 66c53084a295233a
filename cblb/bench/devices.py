"""Scratch devices for the benchmark, inside the lab guest.

Two device sets, each an origin, a catalog filesystem (cblb's temp files) and a COW
device (dm-snapshot's exception store), every figure measured on both:

- ``ram``: loop devices over files in /tmp (guest RAM). The figures measure the CPU and
  copy cost of each snapshot method, which QEMU's emulation inflates. The origin image is
  fully allocated up front (fallocate) so that no run pays for tmpfs page allocation
  that another run does not.
- ``ssd``: memory-backed null_blk devices that complete each request after
  ``SSD_LATENCY_NS`` (timer mode) and move at most ``SSD_MBPS`` MiB/s each, like a SATA
  SSD. The origin is filled once at setup (null_blk allocates its pages on first write).
  The catalog and the COW store sit on their own null_blk devices, so a first write's
  traffic on the origin is the old data read plus the new data written: 0.5x of no
  snapshot is the physical limit (:data:`FIRST_WRITE_LIMIT`).

The guest has about 1.5 GiB of writable RAM: catalog and COW images are sparse, and after
each target the COW device is discarded and the catalog trimmed, which gives the pages
back (loop punches holes in its tmpfs file, null_blk frees them).

dm-snapshot is set up the way LVM does it: the ``snapshot`` target (persistent exception
store on its own COW device, chunk size 8 sectors = 4 KiB, LVM's default, or 128 sectors =
64 KiB) is loaded and resumed *before* the ``snapshot-origin`` target over the origin is
resumed. The origin computes the size at which it splits bios (the smallest chunk of its
snapshots) when it resumes: resumed before its snapshot exists, it would pass 1 MiB bios
whole and copy only the first chunk of each. ``dmsetup status`` after each pass is kept
in the results as proof of how many chunks were copied.
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
MiB_ = 1 << 20
SSD_LATENCY_NS = 100_000       # completion latency of the ssd set (a SATA SSD: ~100 us)
SSD_MBPS = 500                 # bandwidth cap of each ssd device, MiB/s
FIRST_WRITE_LIMIT = 0.5        # first writes on a bandwidth-bound origin: read old + write new
NULLB_GB = 1                   # size of each null_blk device (sparse: pages on first write)
DISCARD_MAX_BYTES = 4 << 20    # largest discard request on the ssd set (< one throttle tick)
DEVICE_LABEL = {"ram": "RAM (loop over tmpfs)",
                "ssd": f"SSD-like (null_blk, {SSD_LATENCY_NS // 1000} us, {SSD_MBPS} MiB/s)"}


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


def make_loop(size: int, tag: str, sparse: bool = False) -> Loop:
    """A loop device over a new image in WORKDIR: fully allocated, or sparse (pages come
    on first write and go back on discard)."""
    WORKDIR.mkdir(parents=True, exist_ok=True)
    img = WORKDIR / f"{tag}-{uuid.uuid4().hex[:6]}.img"
    sh(["truncate" if sparse else "fallocate", "-s" if sparse else "-l", str(size), str(img)])
    dev = sh(["losetup", "-f", "--show", str(img)]).strip()
    return Loop(img, dev, size)


@dataclass
class Disk:
    """A whole block device the bench did not create as a file (null_blk)."""

    device: str
    size: int

    def detach(self) -> None:
        pass


def discard(device: str, length: int = 0) -> None:
    """Give the first ``length`` bytes (0: all) of a scratch device's pages back (and read
    zeros there afterwards). null_blk discards sector by sector: only what was written."""
    cmd = ["blkdiscard"]
    if length:
        cmd += ["-l", str(-(-length // MiB_) * MiB_)]
    sh(cmd + [device], check=False, timeout=300)


@dataclass
class Catalog:
    """A separate ext4 filesystem (loop-backed) holding the catalog folders."""

    loop: Loop | Disk
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


    def trim(self) -> None:
        """Discard the free blocks (the temp files of removed snapshots): their pages go
        back to the guest."""
        sh(["fstrim", str(self.mnt)], check=False, timeout=120)


def make_catalog(size: int = 0, dev: Loop | Disk | None = None) -> Catalog:
    """ext4 on ``dev`` (or on a new sparse loop device of ``size`` bytes). Few inodes and
    no lazy init: mkfs writes little, and no background thread writes during the runs."""
    loop = dev or make_loop(size, "catalog", sparse=True)
    sh(["mkfs.ext4", "-q", "-F", "-N", "4096", "-E",
        "lazy_itable_init=0,lazy_journal_init=0,nodiscard", loop.device], timeout=300)
    mnt = WORKDIR / f"cat-{uuid.uuid4().hex[:6]}"
    mnt.mkdir(parents=True)
    sh(["mount", loop.device, str(mnt)])
    return Catalog(loop, mnt)


@dataclass
class DeviceSet:
    """origin + catalog + COW device of one kind (``ram`` or ``ssd``)."""

    kind: str
    origin: Loop | Disk
    cow: Loop | Disk
    catalog: Catalog
    params: dict[str, object]

    @property
    def label(self) -> str:
        return DEVICE_LABEL.get(self.kind, self.kind)

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "label": self.label, "origin": self.origin.device,
                "origin_bytes": self.origin.size, "cow": self.cow.device,
                "catalog": self.catalog.loop.device, **self.params}

    def after_target(self, kind: str = "", cow_used: int = 0) -> None:
        """Between targets: dm-snapshot's COW device (its first ``cow_used`` bytes, 0: all),
        or the catalog's free space (cblb's temp files, deleted by remove), back to zero
        pages; both when ``kind`` is empty."""
        if kind in ("", "dm"):
            discard(self.cow.device, cow_used)
        if kind in ("", "cblb"):
            self.catalog.trim()

    def teardown(self) -> None:
        self.catalog.teardown()
        self.cow.detach()
        self.origin.detach()
        if self.kind == "ssd":
            unload_null_blk()


def make_ram_set(origin_size: int, cow_size: int, catalog_size: int) -> DeviceSet:
    origin = make_loop(origin_size, "origin")
    cow = make_loop(cow_size, "dmcow", sparse=True)
    return DeviceSet("ram", origin, cow, make_catalog(catalog_size),
                     {"storage": "loop devices over files in the guest's /tmp (RAM)"})


def unload_null_blk() -> None:
    for _ in range(10):
        sh(["rmmod", "null_blk"], check=False)
        if not Path("/sys/module/null_blk").exists():
            return
        time.sleep(0.3)


def make_ssd_set(fill: int) -> DeviceSet:
    """Three null_blk devices like SATA SSDs (memory-backed, discard, timer completion after
    SSD_LATENCY_NS, SSD_MBPS each): nullb0 the origin, nullb1 the catalog, nullb2 the COW
    store. The first ``fill`` bytes of the origin are written once, so that no measured
    write pays for null_blk's page allocation."""
    if Path("/sys/module/null_blk").exists():
        unload_null_blk()
    params = {"nr_devices": 3, "gb": NULLB_GB, "bs": 512, "memory_backed": 1, "discard": 1,
              "queue_mode": 2, "irqmode": 2, "completion_nsec": SSD_LATENCY_NS,
              "mbps": SSD_MBPS}
    sh(["modprobe", "null_blk"] + [f"{k}={v}" for k, v in params.items()])
    devs = [f"/dev/nullb{i}" for i in range(3)]
    for _ in range(50):
        if all(Path(d).exists() for d in devs):
            break
        time.sleep(0.1)
    else:
        raise CblbError("bench: null_blk loaded but /dev/nullb0..2 did not appear")
    # null_blk's throttle grants each device mbps / 50 bytes per 20 ms tick and requeues a
    # request that does not fit until it does, so a request larger than one tick's share
    # (a whole-device discard from mkfs, blkdiscard or fstrim) never completes: cap them.
    cap = str(DISCARD_MAX_BYTES)
    for d in devs:
        Path(f"/sys/block/{Path(d).name}/queue/discard_max_bytes").write_text(cap)
    size = NULLB_GB << 30
    sh(["dd", "if=/dev/zero", f"of={devs[0]}", "bs=1M", f"count={fill >> 20}", "oflag=direct",
        "status=none"], timeout=600)
    storage = (f"memory-backed null_blk devices, {SSD_LATENCY_NS // 1000} us completion "
               f"(timer), {SSD_MBPS} MiB/s each: origin, catalog and COW store on separate "
               "devices, like SATA SSDs")
    return DeviceSet("ssd", Disk(devs[0], size), Disk(devs[2], size),
                     make_catalog(dev=Disk(devs[1], size)),
                     {"storage": storage, "null_blk": params,
                      "first_write_limit": FIRST_WRITE_LIMIT})


def prepare_kernel() -> None:
    sh("modprobe loop max_loop=64; modprobe ext4; modprobe dm-snapshot", check=False)


def parse_dm_status(line: str) -> tuple[int, int, int]:
    """(used sectors, total sectors, metadata sectors) from a snapshot's ``dmsetup status``
    line ``<start> <len> snapshot <used>/<total> <metadata>``; zeros when it is not one
    (for example ``Invalid`` after an overflow)."""
    out = line.split()
    if len(out) >= 5 and "/" in out[3]:
        used, total = out[3].split("/")
        return int(used), int(total), int(out[4])
    return 0, 0, 0


def dm_status_used(name: str) -> tuple[int, int, int]:
    """(used sectors, total sectors, metadata sectors) of a dm snapshot, from dmsetup status."""
    return parse_dm_status(sh(["dmsetup", "status", name]))


class DmSnapshot:
    """snapshot-origin + snapshot over ``origin`` with a persistent store on ``cow``."""

    def __init__(self, origin: Loop | Disk, cow: Loop | Disk, chunk_sectors: int) -> None:
        self.origin, self.cow, self.chunk = origin, cow, chunk_sectors
        tag = uuid.uuid4().hex[:4]
        self.orig_name, self.snap_name = f"cblbb-orig-{tag}", f"cblbb-snap-{tag}"
        sectors = origin.size // 512
        # A fresh exception store: zero its header so dm starts an empty one.
        sh(["dd", "if=/dev/zero", f"of={cow.device}", "bs=1M", "count=1", "oflag=direct",
            "status=none"])
        # LVM's order: the snapshot exists (and is registered with the origin device)
        # before the snapshot-origin target resumes, which sizes its bio splitting by the
        # snapshots' smallest chunk. The other order copies one chunk per 1 MiB bio.
        self.tables = [
            (self.snap_name, f"0 {sectors} snapshot {origin.device} {cow.device} P "
                             f"{chunk_sectors}"),
            (self.orig_name, f"0 {sectors} snapshot-origin {origin.device}")]
        sh(["dmsetup", "create", self.snap_name, "--table", self.tables[0][1]])
        try:
            sh(["dmsetup", "create", self.orig_name, "--table", self.tables[1][1]])
        except CblbError:
            sh(["dmsetup", "remove", self.snap_name], check=False)
            raise

    def status(self) -> str:
        """The snapshot's ``dmsetup status`` line, as dm prints it."""
        return sh(["dmsetup", "status", self.snap_name], check=False).strip()

    @property
    def chunk_bytes(self) -> int:
        return self.chunk * 512

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
