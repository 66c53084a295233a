"""Layouts a real server has (kmod/doc/LAYOUTS.md): the snapshot is the partition at
`start` wherever the catalog is, or `start`/`create` refuses with a reason.

Runs inside the lab guest against the real module, on every kernel `make test` boots.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from blocks import BLOCK, differing_blocks, fill_files, tree_checksums
from conftest import (
    LoopDev,
    ScratchFs,
    build_scratch,
    cleanup_snapshots,
    klog_lines,
    make_loop,
    make_partitioned_loop,
    mkfs,
    sh,
    teardown_scratch,
)

from cblb.control import Controller
from cblb.model import SnapshotState

pytestmark = pytest.mark.lab
CMD = "/sys/kernel/cblb/cmd"


def write_cmd(line: str, timeout: float = 60) -> int:
    """Write one command in a child process (a hang fails the test instead of the run);
    return 0 or the errno the module failed the write() with."""
    code = ("import os,sys\nfd=os.open(sys.argv[1],os.O_WRONLY)\n"
            "try:\n os.write(fd,sys.argv[2].encode())\nexcept OSError as e:\n"
            " sys.exit(e.errno)\n")
    r = subprocess.run(["python3", "-c", code, CMD, line], timeout=timeout, check=False)
    return r.returncode


def attr(name: str, field: str) -> str:
    return Path(f"/sys/kernel/cblb/{name}/{field}").read_text().strip()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def new_klog(before: int) -> str:
    return "\n".join(klog_lines()[before:])


def oracle_of(ctl: Controller, fs: ScratchFs, name: str, catalog: Path, oracle: Path,
              file_blocks: int, max_files: int) -> None:
    """Freeze, copy the raw origin (the point in time), start, thaw."""
    ctl.create(name, fs.device)
    sh(f"fsfreeze -f {fs.mnt}")
    try:
        sh(f"dd if={fs.device} of={oracle} bs=1M iflag=direct status=none")
        ctl.start(name, str(catalog), file_blocks, max_files)
    finally:
        sh(f"fsfreeze -u {fs.mnt}")


def churn(mnt: Path, mib: int, tag: str = "churn") -> None:
    """Write mib MiB of new files and rewrite them once (first writes and rewrites)."""
    d = mnt / tag
    d.mkdir(exist_ok=True)
    sh(f"fio --name=c --directory={d} --rw=write --bs=1m --size={mib}m --nrfiles=4 "
       "--direct=1 --ioengine=psync --output=/dev/null")
    sh("sync")


# ---------------------------------------------------------------- catalogs anywhere
@pytest.mark.parametrize("where", ["tmpfs", "overlay-tmp"])
def test_seed_walkthrough_catalog_in_memory(scratch_fs: ScratchFs, mount_dir: Path,
                                            where: str) -> None:
    """The seed's example keeps its catalog in /tmp, which is tmpfs (Debian 13, Fedora,
    Arch) or an overlay (the lab guest). Writes go through the filesystem there."""
    ctl = Controller()
    fs = scratch_fs
    if where == "tmpfs":
        catalog = Path(f"/tmp/cblb-tmpfs-{uuid.uuid4().hex[:6]}")
        catalog.mkdir()
        sh(f"mount -t tmpfs -o size=256m cblbtmp {catalog}")
    else:
        catalog = Path(f"/tmp/shadow-sda2-{uuid.uuid4().hex[:6]}")
        catalog.mkdir()
    fstype = sh(f"stat -f -c %T {catalog}").strip()
    oracle = Path(f"/tmp/oracle-mem-{uuid.uuid4().hex[:6]}.img")
    try:
        fill_files(fs.mnt / "docs", 6, 4)
        before = tree_checksums(fs.mnt / "docs")
        # 2 MiB files, 128 MiB in all: the writes below copy 50-64 MiB (24 MiB of
        # rewrites landing on new blocks, 24 MiB of new files, the journal, metadata).
        oracle_of(ctl, fs, "memcat", catalog, oracle, 4096, 64)
        assert attr("memcat", "state") == "active"
        for f in (fs.mnt / "docs").iterdir():                         # the app goes on
            f.write_bytes(os.urandom(4 << 20))
        churn(fs.mnt, 24)
        snap = ctl.snapshot("memcat")
        assert snap.state is SnapshotState.ACTIVE, snap.error
        assert snap.files_used >= 8, f"the store should have grown: {snap.files_used} files"
        assert snap.cow_chunks >= 6 * 1024
        diff = differing_blocks(snap.device, str(oracle))
        assert diff == [], f"{fstype} catalog: {len(diff)} blocks differ, first {diff[:8]}"
        ctl.mount("memcat", str(mount_dir))
        assert tree_checksums(mount_dir / "docs") == before
        sh(f"umount {mount_dir}")
        print(f"catalog on {fstype}: {snap.files_used} files, {snap.cow_chunks} chunks copied")
        ctl.remove("memcat")
        assert list(catalog.iterdir()) == []
    finally:
        cleanup_snapshots(ctl)
        oracle.unlink(missing_ok=True)
        if where == "tmpfs":
            sh(f"umount {catalog}", check=False)
        sh(f"rm -rf {catalog}", check=False)


def fs_block_size(image: Path) -> int:
    m = re.search(r"^Block size:\s+(\d+)$", sh(f"dumpe2fs -h {image} 2>/dev/null"), re.MULTILINE)
    assert m, "not an ext filesystem"
    return int(m.group(1))


def free_blocks_at(image: Path) -> set[int]:
    """Filesystem blocks that ext4's bitmaps in image call free."""
    out = sh(f"dumpe2fs {image} 2>/dev/null")
    free: set[int] = set()
    groups = out[out.index("\nGroup 0:"):]             # past the superblock's counters
    for line in groups.splitlines():
        line = line.strip()
        if line.startswith("Free blocks: "):
            for part in line[len("Free blocks: "):].split(","):
                part = part.strip()
                if not part:
                    continue
                a, _, b = part.partition("-")
                free.update(range(int(a), int(b or a) + 1))
    return free


def unwritten_blocks_of(image: Path, directory: str) -> set[int]:
    """Filesystem blocks of the files in directory (inside image) that ext4 holds as
    unwritten extents: the filesystem reads them as zeros, whatever the disk holds."""
    blocks: set[int] = set()
    names = sh(f"debugfs -R 'ls -p {directory}' {image} 2>/dev/null")
    cmds = Path(f"/tmp/debugfs-{uuid.uuid4().hex[:6]}.cmds")
    lines = []
    for line in names.splitlines():
        parts = line.strip().strip("/").split("/")      # ino/mode/uid/gid/name/size
        if len(parts) >= 6 and parts[4] not in ("", ".", ".."):
            lines.append(f"ex {directory}/{parts[4]}")
    assert lines, f"no temp files in {directory} at start"
    cmds.write_text("\n".join(lines) + "\n")
    try:
        ex = sh(f"debugfs -f {cmds} {image} 2>/dev/null")
    finally:
        cmds.unlink()
    for row in ex.splitlines():
        m = re.search(r"(\d+)\s*-\s*(\d+)\s+(\d+)\s+-\s+(\d+)\s+(\d+)\s*(Uninit)?", row)
        if m:
            assert m.group(6) == "Uninit", f"temp file extent is written: {row}"
            blocks.update(range(int(m.group(3)), int(m.group(4)) + 1))
    return blocks


def differing_fs_blocks(a: Path, b: Path, chunks: list[int], bs: int) -> list[int]:
    """Filesystem blocks (of size bs) that differ between a and b inside the given 4 KiB
    chunks."""
    out: list[int] = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for c in chunks:
            fa.seek(c * BLOCK)
            fb.seek(c * BLOCK)
            x, y = fa.read(BLOCK), fb.read(BLOCK)
            for off in range(0, BLOCK, bs):
                if x[off:off + bs] != y[off:off + bs]:
                    out.append((c * BLOCK + off) // bs)
    return out


def free_mib(mnt: Path) -> int:
    """Free space of the filesystem at mnt in MiB, root's reserve included."""
    st = os.statvfs(mnt)
    return st.f_bfree * st.f_frsize >> 20


def test_catalog_on_origin_keeps_deleted_file(cblb_module: Controller, mount_dir: Path) -> None:
    """The seed's own layout: temp files on the very filesystem being snapshotted. A file
    deleted after `start` reads back intact after the filesystem was filled to the last
    block (so its freed blocks were written over), the snapshot is clean for e2fsck and
    mounts without an orphan message."""
    ctl = cblb_module
    fs = build_scratch("ext4", size_mb=224, catalog_mb=16)
    fill_files(fs.mnt / "static", 4, 4)
    victim = fs.mnt / "victim.bin"
    victim.write_bytes(os.urandom(24 << 20))
    sh("sync")
    want_victim = sha(victim)
    victim_blocks = [int(b) for b in
                     sh(f"debugfs -R 'blocks /victim.bin' {fs.device} 2>/dev/null").split()]
    before = tree_checksums(fs.mnt / "static")
    catalog = fs.mnt / "shadow-catalog"
    catalog.mkdir()
    # The store is made at start; it must hold a copy of every block filled later.
    files = (free_mib(fs.mnt) + 48) // 2
    ctl.create("onorigin", fs.device)
    ctl.start("onorigin", str(catalog), 2048, files)             # files x 1 MiB, made now
    snap = ctl.snapshot("onorigin")
    assert snap.files_used == files
    assert os.listdir(catalog) == [], "names must be gone after the thaw"
    early = Path(f"/tmp/onorigin-early-{uuid.uuid4().hex[:6]}.img")
    copy = early.with_suffix(".late")
    try:
        sh(f"dd if={snap.device} of={early} bs=1M status=none")
        victim.unlink()
        sh("sync")
        sh(f"fstrim {fs.mnt}", check=False)                        # discards are dropped
        sh(f"dd if=/dev/urandom of={fs.mnt}/fill bs=1M status=none; sync", check=False)
        assert free_mib(fs.mnt) < 8, "the filesystem should be full (ext4 keeps 4 MiB back)"
        bs = fs_block_size(early)
        with open(fs.device, "rb") as dev:
            reused = 0
            with open(early, "rb") as old:
                for b in victim_blocks:
                    dev.seek(b * bs)
                    old.seek(b * bs)
                    reused += dev.read(bs) != old.read(bs)
        assert reused > len(victim_blocks) * 0.9, \
            f"only {reused} of the deleted file's {len(victim_blocks)} blocks were reused"
        snap = ctl.snapshot("onorigin")
        assert snap.state is SnapshotState.ACTIVE, snap.error
        ctl.mount("onorigin", str(mount_dir))
        assert sha(mount_dir / "victim.bin") == want_victim
        assert tree_checksums(mount_dir / "static") == before
        sh(f"umount {mount_dir}")
        # Block for block: the snapshot changed only where its filesystem at `start` had
        # free blocks or the temp files' unwritten extents (which it reads as zeros).
        sh(f"dd if={snap.device} of={copy} bs=1M status=none")
        allowed = free_blocks_at(copy) | unwritten_blocks_of(copy, "/shadow-catalog")
        diff = differing_fs_blocks(copy, early, differing_blocks(str(copy), str(early)), bs)
        bad = [b for b in diff if b not in allowed]
        assert bad == [], f"{len(bad)} blocks in use at start changed, first {bad[:8]}"
        assert "First orphan inode" not in sh(f"dumpe2fs -h {copy} 2>/dev/null")
        sh(f"e2fsck -fn {copy}")
        mark = len(klog_lines())
        ctl.mount("onorigin", str(mount_dir))
        log = new_klog(mark)
        assert "orphan" not in log.lower() and "error" not in log.lower(), log
        sh(f"umount {mount_dir}")
        print(f"catalog on origin: {files} temp files, {snap.cow_chunks} chunks copied, "
              f"{reused} of the deleted file's {len(victim_blocks)} blocks written over, "
              f"{len(diff)} blocks of {bs} bytes changed in the snapshot, all free or "
              "unwritten at start")
        used_active = int(sh(f"df --output=used -B1M {fs.mnt} | tail -1"))
        ctl.remove("onorigin")
        used_after = int(sh(f"df --output=used -B1M {fs.mnt} | tail -1"))
        assert used_active - used_after >= files - 4, "remove gives the store's space back"
    finally:
        early.unlink(missing_ok=True)
        copy.unlink(missing_ok=True)
        cleanup_snapshots(ctl)
        teardown_scratch(fs)


def test_catalog_on_origin_too_small_is_refused(scratch_fs: ScratchFs) -> None:
    """The whole store is made before the freeze when it sits on the origin: a store that
    does not fit is refused at `start`, before anything is frozen, and leaves no file."""
    ctl = Controller()
    catalog = scratch_fs.mnt / "cat"
    catalog.mkdir()
    ctl.create("toobig", scratch_fs.device)
    mark = len(klog_lines())
    assert write_cmd(f"start toobig {catalog} 409600 20") == errno.ENOSPC   # 4 GB
    assert attr("toobig", "state") == "created"
    assert "all 20 temp files" in new_klog(mark)
    assert os.listdir(catalog) == []


def test_catalog_is_pinned(cblb_module: Controller, mount_dir: Path) -> None:
    """Temp files made after `start` go to the folder `start` was given, even after it is
    renamed and another filesystem is mounted on its old path."""
    fs = build_scratch("ext4", size_mb=128, catalog_mb=160)
    oracle = Path(f"/tmp/oracle-pin-{uuid.uuid4().hex[:6]}.img")
    decoy = fs.catalog_mnt / "shadow"
    try:
        fill_files(fs.mnt / "d", 4, 4)
        oracle_of(cblb_module, fs, "pinned", fs.catalog_dir, oracle, 2048, 64)
        used0 = int(sh(f"df --output=used -B1M {fs.catalog_mnt} | tail -1"))
        moved = fs.catalog_mnt / "moved"
        fs.catalog_dir.rename(moved)
        decoy.mkdir()
        sh(f"mount -t tmpfs -o size=8m decoy {decoy}")
        churn(fs.mnt, 32)
        snap = cblb_module.snapshot("pinned")
        assert snap.state is SnapshotState.ACTIVE, snap.error
        assert snap.files_used >= 10
        assert os.listdir(decoy) == [] and os.listdir(moved) == []
        used1 = int(sh(f"df --output=used -B1M {fs.catalog_mnt} | tail -1"))
        assert used1 - used0 >= 9, "later temp files belong on the pinned filesystem"
        assert int(sh(f"df --output=used -B1M {decoy} | tail -1")) == 0
        assert differing_blocks(snap.device, str(oracle)) == []
    finally:
        sh(f"umount {decoy}", check=False)
        oracle.unlink(missing_ok=True)
        cleanup_snapshots(cblb_module)
        teardown_scratch(fs)


# ---------------------------------------------------------------- stacked devices
def test_catalog_on_loop_over_origin_is_refused(scratch_fs: ScratchFs) -> None:
    """A catalog on a loop device whose backing file lies on the origin's filesystem would
    make every copy need another copy: `start` refuses at once, origin writes go on."""
    fs = scratch_fs
    backing = fs.mnt / "catalog.img"
    sh(f"truncate -s 64M {backing}")
    lp = LoopDev(backing, sh(f"losetup -f --show {backing}").strip())
    cmnt = Path(f"/tmp/cblb-stack-{uuid.uuid4().hex[:6]}")
    try:
        mkfs(lp.device, "ext4")
        cmnt.mkdir()
        sh(f"mount {lp.device} {cmnt}")
        ctl = Controller()
        ctl.create("stacked", fs.device)
        mark = len(klog_lines())
        t0 = time.monotonic()
        assert write_cmd(f"start stacked {cmnt} 2048 8", timeout=60) == errno.ELOOP
        assert time.monotonic() - t0 < 30
        assert attr("stacked", "state") == "created"
        log = new_klog(mark)
        assert "stacked on the origin" in log and lp.device.split("/")[-1] in log, log
        t0 = time.monotonic()
        sh(f"dd if=/dev/urandom of={fs.mnt}/after bs=1M count=8 oflag=direct status=none",
           timeout=60)
        assert time.monotonic() - t0 < 30
    finally:
        cleanup_snapshots(Controller())
        sh(f"umount {cmnt}", check=False)
        lp.detach()
        sh(f"rmdir {cmnt}", check=False)


def test_catalog_on_dm_over_origin_is_refused(cblb_module: Controller) -> None:
    """A catalog on a device-mapper device built on the origin (as LVM or dm-crypt on the
    origin partition would be) is refused with ELOOP."""
    origin = make_loop(96, "dmorigin")
    dm = f"cblbdm{uuid.uuid4().hex[:6]}"
    cmnt = Path(f"/tmp/cblb-dmcat-{uuid.uuid4().hex[:6]}")
    try:
        sectors = 96 * 2048
        sh(f"dmsetup create {dm} --table '0 {sectors // 2} linear {origin.device} "
           f"{sectors // 2}'")
        mkfs(f"/dev/mapper/{dm}", "ext4")
        cmnt.mkdir()
        sh(f"mount /dev/mapper/{dm} {cmnt}")
        cblb_module.create("dmstack", origin.device)
        assert write_cmd(f"start dmstack {cmnt} 2048 8") == errno.ELOOP
        assert attr("dmstack", "state") == "created"
    finally:
        cleanup_snapshots(cblb_module)
        sh(f"umount {cmnt}", check=False)
        sh(f"dmsetup remove {dm}", check=False)
        origin.detach()
        sh(f"rmdir {cmnt}", check=False)


def test_disk_and_partition_are_refused_together(cblb_module: Controller) -> None:
    """A whole disk and one of its partitions cannot both have a snapshot: one write would
    need copying for both. The second create fails with EBUSY and says why."""
    lp, p1, p2 = make_partitioned_loop(96, "dp")
    try:
        assert write_cmd(f"create part1 {p1} begin end") == 0
        mark = len(klog_lines())
        assert write_cmd(f"create whole {lp.device} begin end") == errno.EBUSY
        assert f"overlaps the origin {p1}" in new_klog(mark)
        assert write_cmd(f"create part2 {p2} begin end") == 0       # neighbours are fine
        assert write_cmd("remove part1") == 0 and write_cmd("remove part2") == 0
        assert write_cmd(f"create whole {lp.device} begin end") == 0
        assert write_cmd(f"create part1 {p1} begin end") == errno.EBUSY
    finally:
        cleanup_snapshots(cblb_module)
        lp.detach()


# ---------------------------------------------------------------- no way around the hook
def test_ftrace_switch_cannot_stop_copy_on_write(cblb_module: Controller) -> None:
    origin = make_loop(64, "ftr")
    cat = build_scratch("ext4", size_mb=32, catalog_mb=96)
    oracle = Path(f"/tmp/ftr-{uuid.uuid4().hex[:6]}.img")
    try:
        sh(f"dd if=/dev/urandom of={origin.device} bs=1M count=64 status=none")
        sh(f"dd if={origin.device} of={oracle} bs=1M status=none")
        cblb_module.create("hooked", origin.device)
        cblb_module.start("hooked", str(cat.catalog_dir), 8192, 16)
        r = subprocess.run(["sysctl", "-w", "kernel.ftrace_enabled=0"], capture_output=True,
                           text=True, check=False)
        assert r.returncode != 0, "ftrace must not be switched off under the hook"
        assert Path("/proc/sys/kernel/ftrace_enabled").read_text().strip() == "1"
        sh(f"dd if=/dev/urandom of={origin.device} bs=1M count=16 oflag=direct status=none")
        snap = cblb_module.snapshot("hooked")
        assert snap.state is SnapshotState.ACTIVE
        assert snap.cow_chunks >= 16 * 256
        assert differing_blocks(snap.device, str(oracle)) == []
    finally:
        sh("sysctl -qw kernel.ftrace_enabled=1", check=False)
        oracle.unlink(missing_ok=True)
        cleanup_snapshots(cblb_module)
        teardown_scratch(cat)
        origin.detach()


def test_cmd_needs_cap_sys_admin(cblb_module: Controller) -> None:
    """Root without CAP_SYS_ADMIN (a container's root, a sandboxed service) gets EPERM."""
    origin = make_loop(16, "cap")
    code = ("import os,sys\nfd=os.open(sys.argv[1],os.O_WRONLY)\n"
            "try:\n os.write(fd,sys.argv[2].encode())\nexcept OSError as e:\n"
            " sys.exit(e.errno)\n")
    try:
        r = subprocess.run(
            ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", "python3", "-c",
             code, CMD, f"create capless {origin.device} begin end"], check=False)
        assert r.returncode == errno.EPERM
        assert "capless" not in cblb_module.names()
        assert write_cmd(f"create capless {origin.device} begin end") == 0
    finally:
        cleanup_snapshots(cblb_module)
        origin.detach()


# ---------------------------------------------------------------- remove racing readers
def read_sysfs_until(name: str, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            for f in Path(f"/sys/kernel/cblb/{name}").iterdir():
                f.read_bytes()
        except OSError:
            pass


def read_dev_until(name: str, off: int, want: bytes, stop: threading.Event,
                   wrong: list[str]) -> None:
    """Read 1 MiB of /dev/<name> at off over and over; note any read that is not `want`."""
    while not stop.is_set():
        try:
            fd = os.open(f"/dev/{name}", os.O_RDONLY)
        except OSError:
            time.sleep(0.01)
            continue
        try:
            data = os.pread(fd, 1 << 20, off)
            if data and data != want[off:off + len(data)]:
                wrong.append(f"live data at {off}")
        except OSError:
            pass
        finally:
            os.close(fd)


def test_reads_racing_remove(cblb_module: Controller) -> None:
    """Readers of every sysfs file and of /dev/<dev> race `remove` over and over while the
    origin changes: a read either fails or returns the data of the point in time."""
    origin = make_loop(32, "race")
    cat = build_scratch("ext4", size_mb=32, catalog_mb=96)
    wrong: list[str] = []
    try:
        sh(f"dd if=/dev/urandom of={origin.device} bs=1M count=32 status=none")
        want = Path(origin.device).read_bytes()
        for rnd in range(6):
            cblb_module.create("racy", origin.device)
            cblb_module.start("racy", str(cat.catalog_dir), 2048, 32)
            sh(f"dd if=/dev/urandom of={origin.device} bs=64k count=64 seek={rnd * 64} "
               "oflag=direct status=none")
            stop = threading.Event()
            off = rnd * 64 * 65536
            threads = [threading.Thread(target=read_sysfs_until, args=("racy", stop))
                       for _ in range(2)]
            threads += [threading.Thread(target=read_dev_until,
                                         args=("racy", off, want, stop, wrong))
                        for _ in range(2)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            for _ in range(200):
                if write_cmd("remove racy") == 0:
                    break
                time.sleep(0.05)
            stop.set()
            for t in threads:
                t.join()
            assert "racy" not in cblb_module.names()
            want = Path(origin.device).read_bytes()
        assert wrong == []
    finally:
        cleanup_snapshots(cblb_module)
        teardown_scratch(cat)
        origin.detach()


# ---------------------------------------------------------------- reads do not stall writes
def fio_p99_us(target: str, seconds: int, seed: int) -> float:
    """p99 completion latency (us) of 4 KiB O_DIRECT random writes for `seconds`."""
    out = sh(f"fio --name=w --filename={target} --rw=randwrite --bs=4k --direct=1 "
             f"--ioengine=psync --time_based --runtime={seconds} --randseed={seed} "
             "--output-format=json --percentile_list=99", timeout=seconds + 120)
    job = json.loads(out[out.index("{"):])["jobs"][0]["write"]
    pct = job["clat_ns"]["percentile"]
    return float(next(iter(pct.values()))) / 1000


def test_backup_does_not_stall_origin_writes(cblb_module: Controller) -> None:
    """fio writes to the origin while the snapshot is read at full speed: the writes'
    p99 stays within a few times of the same writes without the reader."""
    origin = make_loop(256, "stall")
    cat = build_scratch("ext4", size_mb=32, catalog_mb=400)
    reader: subprocess.Popen[bytes] | None = None
    try:
        sh(f"dd if=/dev/urandom of={origin.device} bs=1M count=256 status=none")
        cblb_module.create("busy", origin.device)
        cblb_module.start("busy", str(cat.catalog_dir), 65536, 8)
        alone = fio_p99_us(origin.device, 8, 1)
        reader = subprocess.Popen(
            ["sh", "-c", ("while :; do dd if=/dev/busy of=/dev/null bs=1M iflag=direct "
                          "status=none || exit 1; done")], start_new_session=True)
        time.sleep(1)
        with_reads = fio_p99_us(origin.device, 8, 2)
        assert reader.poll() is None, "the snapshot reader stopped"
        ratio = with_reads / alone
        print(f"origin write p99: {alone:.0f} us alone, {with_reads:.0f} us during "
              f"snapshot reads: {ratio:.2f}x")
        assert ratio < 6, f"snapshot reads held origin writes up: p99 {ratio:.1f}x"
        assert cblb_module.snapshot("busy").state is SnapshotState.ACTIVE
    finally:
        if reader and reader.poll() is None:
            os.killpg(reader.pid, 9)
            reader.wait()
        cleanup_snapshots(cblb_module)
        teardown_scratch(cat)
        origin.detach()
