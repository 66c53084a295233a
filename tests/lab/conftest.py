"""Fixtures for tests that run inside the lab guest against the real cblb_module.

Run them with scripts/lab (make test does it for both kernels). Outside the guest, or
without root, they are skipped with the reason; in CI (CI=true) a skip is turned into a
failure, because a kernel test that did not run proves nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from cblb.control import Controller

IN_LAB = bool(os.environ.get("CBLB_LAB_OUT")) and os.geteuid() == 0
BAD_KLOG = re.compile(r"WARNING:|\bBUG[: ]|Oops|lockdep|INFO: task .* blocked for more than|"
                      r"hung_task: blocked|possible circular locking|general protection")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_LAB:
        return
    skip = pytest.mark.skip(reason="lab test: run inside the lab guest (scripts/lab)")
    for item in items:
        if "lab" in item.keywords or "tests/lab" in str(item.fspath):
            item.add_marker(skip)


def sh(cmd: str, check: bool = True, timeout: float = 600) -> str:
    """Run a shell command in the guest; return stdout; raise with stderr on failure."""
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"command failed ({r.returncode}): {cmd}\n{r.stdout}\n{r.stderr}")
    return r.stdout


def klog_lines() -> list[str]:
    return sh("dmesg", check=False).splitlines()


@pytest.fixture(autouse=True)
def kernel_log_clean() -> Iterator[None]:
    """Fail the test if the kernel logged a warning, BUG, oops, lockdep splat or hung task."""
    if not IN_LAB:
        yield
        return
    before = len(klog_lines())
    yield
    new = klog_lines()[before:]
    bad = [l for l in new if BAD_KLOG.search(l) and "Command line" not in l]
    if bad:
        sh("echo w > /proc/sysrq-trigger", check=False)     # blocked tasks' stacks
        new = klog_lines()[before:]
    assert not bad, "kernel log after the test:\n" + "\n".join(new[-60:])


def kernel_release() -> str:
    return os.uname().release


@pytest.fixture(scope="session")
def lab_out() -> Path:
    p = Path(os.environ.get("CBLB_LAB_OUT", "/tmp/cblb-lab-out"))
    p.mkdir(parents=True, exist_ok=True)
    return p


@pytest.fixture(scope="session", autouse=True)
def lab_modules() -> None:
    if IN_LAB:
        sh("modprobe loop max_loop=32; modprobe ext4; modprobe xfs; modprobe dm-snapshot; "
           "sysctl -qw kernel.hung_task_timeout_secs=30", check=False)


@pytest.fixture
def cblb_module() -> Iterator[Controller]:
    """The real module, loaded with total=4; every snapshot removed and the module
    unloaded afterwards."""
    ctl = Controller()
    if ctl.loaded():
        cleanup_snapshots(ctl)
        sh("rmmod cblb_module")
    ctl.load(4)
    yield ctl
    cleanup_snapshots(ctl)
    sh("rmmod cblb_module")


def cleanup_snapshots(ctl: Controller) -> None:
    for s in ctl.snapshots():
        if s.mountpoint:
            sh(f"umount {s.mountpoint}", check=False)
        for _ in range(20):
            try:
                ctl.remove(s.name)
                break
            except Exception:
                sh("udevadm settle 2>/dev/null; sleep 0.2", check=False)


@dataclass
class LoopDev:
    image: Path
    device: str
    home: Path | None = None    # a tmpfs of its own that holds the image, if any

    def detach(self) -> None:
        sh(f"losetup -d {self.device}", check=False)
        self.image.unlink(missing_ok=True)
        if self.home is not None:
            sh(f"umount {self.home}", check=False)
            self.home.rmdir()


def make_loop(size_mb: int, tag: str) -> LoopDev:
    img = Path(f"/tmp/cblb-{tag}-{uuid.uuid4().hex[:8]}.img")
    sh(f"truncate -s {size_mb}M {img}")
    dev = sh(f"losetup -f --show {img}").strip()
    return LoopDev(img, dev)


def make_partitioned_loop(size_mb: int, tag: str) -> tuple[LoopDev, str, str]:
    """A loop device of size_mb with two 40 MiB DOS partitions: (disk, part1, part2).

    The image lives on a tmpfs of its own, not on the guest's overlayfs /tmp: on 5.10 a loop
    device over overlayfs claims discard with a granularity of 0, and a discard of it trips
    a WARNING in the block layer before the bio exists (blk-lib.c), whatever the module does.
    """
    tag = f"{tag}-{uuid.uuid4().hex[:8]}"
    home = Path(f"/tmp/cblb-{tag}")
    home.mkdir()
    sh(f"mount -t tmpfs -o size={size_mb + 8}M tmpfs {home}")
    img = home / "disk.img"
    sh(f"truncate -s {size_mb}M {img}")
    sh(f"printf 'label: dos\\n,40M\\n,40M\\n' | sfdisk -q {img}")
    lp = LoopDev(img, sh(f"losetup -f --show -P {img}").strip(), home)
    sh("udevadm settle 2>/dev/null || sleep 1")
    return lp, f"{lp.device}p1", f"{lp.device}p2"


@dataclass
class ScratchFs:
    """An origin with a mounted filesystem, and a separate ext4 for catalogs."""

    origin: LoopDev
    fstype: str
    mnt: Path
    catalog_loop: LoopDev
    catalog_mnt: Path
    catalog_dir: Path

    @property
    def device(self) -> str:
        return self.origin.device


def mkfs(dev: str, fstype: str) -> None:
    """No discard at mkfs: 5.10's loop driver warns on one (a kernel bug of its own, which
    the kernel-log check would blame on the test)."""
    if fstype == "xfs":
        sh(f"mkfs.xfs -q -f -K {dev}")
    else:
        sh(f"mkfs.{fstype} -q -F -E nodiscard {dev}")


def build_scratch(fstype: str, size_mb: int = 384, catalog_mb: int = 512) -> ScratchFs:
    origin = make_loop(size_mb, "origin")
    cat = make_loop(catalog_mb, "catalog")
    mkfs(origin.device, fstype)
    mkfs(cat.device, "ext4")
    tag = uuid.uuid4().hex[:6]
    mnt = Path(f"/tmp/cblb-mnt-{tag}")
    cmnt = Path(f"/tmp/cblb-cat-{tag}")
    mnt.mkdir()
    cmnt.mkdir()
    sh(f"mount {origin.device} {mnt}")
    sh(f"mount {cat.device} {cmnt}")
    cdir = cmnt / "shadow"
    cdir.mkdir()
    return ScratchFs(origin, fstype, mnt, cat, cmnt, cdir)


def teardown_scratch(fs: ScratchFs) -> None:
    for m in (fs.mnt, fs.catalog_mnt):
        sh(f"umount {m}", check=False)
    fs.origin.detach()
    fs.catalog_loop.detach()


@pytest.fixture
def scratch_fs(cblb_module: Controller) -> Iterator[ScratchFs]:
    fs = build_scratch("ext4")
    yield fs
    cleanup_snapshots(cblb_module)
    teardown_scratch(fs)


@pytest.fixture
def scratch_xfs(cblb_module: Controller) -> Iterator[ScratchFs]:
    fs = build_scratch("xfs")
    yield fs
    cleanup_snapshots(cblb_module)
    teardown_scratch(fs)


@pytest.fixture
def mount_dir() -> Iterator[Path]:
    p = Path(f"/tmp/cblb-snapmnt-{uuid.uuid4().hex[:6]}")
    p.mkdir()
    yield p
    sh(f"umount {p}", check=False)
