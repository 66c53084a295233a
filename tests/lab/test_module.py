"""cblb_module against the real kernel: the seed's interface, refusals, data integrity.

Runs inside the lab guest (scripts/lab), on every kernel `make test` boots.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import time
import uuid
from pathlib import Path

import pytest
from blocks import FioLoad, differing_blocks, fill_files, read_direct, tree_checksums
from conftest import (
    ScratchFs,
    build_scratch,
    cleanup_snapshots,
    make_loop,
    make_partitioned_loop,
    sh,
    teardown_scratch,
)

from cblb.control import Controller
from cblb.model import SnapshotState

pytestmark = pytest.mark.lab
CMD = "/sys/kernel/cblb/cmd"


def write_cmd(line: str) -> int:
    """Write one command; return 0 or the errno the module failed the write() with."""
    fd = os.open(CMD, os.O_WRONLY)
    try:
        os.write(fd, line.encode() if isinstance(line, str) else line)
        return 0
    except OSError as e:
        return e.errno or -1
    finally:
        os.close(fd)


def attr(name: str, field: str) -> str:
    return Path(f"/sys/kernel/cblb/{name}/{field}").read_text().strip()


# ---------------------------------------------------------------- the seed's walkthrough
@pytest.mark.compact
def test_seed_walkthrough(scratch_fs: ScratchFs, mount_dir: Path) -> None:
    """The seed document's commands, verbatim but for device and folder names."""
    fs = scratch_fs
    fill_files(fs.mnt / "docs", 4, 2)
    before = tree_checksums(fs.mnt / "docs")
    assert Path("/sys/module/cblb_module/parameters/total").read_text().strip() == "4"
    sh(f'sync && echo -n "create shadow-sda2 {fs.device} begin end" > {CMD}')
    assert attr("shadow-sda2", "state") == "created"
    sh(f'echo -n "start shadow-sda2 {fs.catalog_dir} 409600 20" > {CMD}')
    assert attr("shadow-sda2", "state") == "active"
    assert Path("/dev/shadow-sda2").is_block_device() if hasattr(Path, "is_block_device") else True
    for f in (fs.mnt / "docs").iterdir():           # the application keeps writing
        f.write_bytes(os.urandom(4096) * 16)
    sh("sync")
    sh(f"mount -o ro,noload /dev/shadow-sda2 {mount_dir}")
    assert tree_checksums(mount_dir / "docs") == before
    assert "cmd" in os.listdir("/sys/kernel/cblb") and "debug" in os.listdir("/sys/kernel/cblb")
    assert "shadow-sda2 active" in Path("/sys/kernel/cblb/debug").read_text()
    assert write_cmd("remove shadow-sda2") == errno.EBUSY     # still mounted
    sh(f"umount {mount_dir}")
    sh(f'echo -n "remove shadow-sda2" > {CMD}')
    assert not Path("/sys/kernel/cblb/shadow-sda2").exists()
    assert not Path("/dev/shadow-sda2").exists()


def test_plain_echo_with_newline(scratch_fs: ScratchFs) -> None:
    sh(f'echo "create nl {scratch_fs.device} begin end" > {CMD}')
    sh(f'echo "start nl {scratch_fs.catalog_dir} 2048 4" > {CMD}')
    assert attr("nl", "state") == "active"
    assert attr("nl", "file_size") == "2048"
    sh(f'echo "remove nl" > {CMD}')


# ---------------------------------------------------------------- refusals
@pytest.fixture
def two_loops(cblb_module: Controller):
    a, b = make_loop(64, "a"), make_loop(64, "b")
    yield a, b
    cleanup_snapshots(cblb_module)
    a.detach()
    b.detach()


@pytest.mark.compact
def test_refused_commands(two_loops, scratch_fs: ScratchFs, tmp_path: Path) -> None:
    a, b = two_loops
    a_file = scratch_fs.catalog_dir / "plainfile"
    a_file.write_text("x")
    cases = [
        ("\n", errno.EINVAL),
        ("bogus", errno.EINVAL),
        ("create", errno.EINVAL),
        (f"create x {a.device}", errno.EINVAL),
        (f"create x {a.device} 0 100", errno.EINVAL),
        (f"create x {a.device} begin end extra", errno.EINVAL),
        ("create x /dev/does-not-exist begin end", errno.ENOENT),
        ("create x /etc/hostname begin end", errno.ENOTBLK),
        (f"create bad/name {a.device} begin end", errno.EINVAL),
        (f"create .hidden {a.device} begin end", errno.EINVAL),
        (f"create {'n' * 32} {a.device} begin end", errno.EINVAL),
        (f"create loop0 {a.device} begin end", errno.EEXIST),       # an existing disk's name
        (f"create zero {a.device} begin end", errno.EEXIST),        # /dev/zero exists
        ("start nosuch /tmp 100 1", errno.ENOENT),
        ("remove nosuch", errno.ENOENT),
        ("remove", errno.EINVAL),
        ("x" * 5000, errno.E2BIG),            # a write is cut at 4096 bytes: too long
        ("startset", errno.EINVAL),
        ("startset s1", errno.EINVAL),
        ("startset s1 nosuch /tmp 2048", errno.EINVAL),
        ("startset bad/set nosuch /tmp 2048 4", errno.EINVAL),
        ("startset s1" + " nosuch /tmp 2048 4" * 17, errno.E2BIG),
        ("track", errno.EINVAL),
        ("untrack /dev/null extra", errno.EINVAL),
        ("untrack /nonexistent", errno.ENOENT),
        (b"\x00\xff\xfe create \x01", errno.EINVAL),
    ]
    for line, want in cases:
        assert write_cmd(line) == want, f"{line!r}"
    assert write_cmd(f"create snap-a {a.device} begin end") == 0
    assert write_cmd(f"create snap-a {b.device} begin end") == errno.EEXIST
    assert write_cmd(f"create other {a.device} begin end") == errno.EBUSY
    start_cases = [
        ("start snap-a /nonexistent-dir 2048 4", errno.ENOENT),
        (f"start snap-a {a_file} 2048 4", errno.ENOTDIR),
        ("start snap-a relative/dir 2048 4", errno.EINVAL),
        (f"start snap-a {scratch_fs.catalog_dir} 0 4", errno.EINVAL),
        (f"start snap-a {scratch_fs.catalog_dir} 7 4", errno.EINVAL),
        (f"start snap-a {scratch_fs.catalog_dir} 2048 0", errno.EINVAL),
        (f"start snap-a {scratch_fs.catalog_dir} 2048 99999", errno.EINVAL),
        (f"start snap-a {scratch_fs.catalog_dir} lots 4", errno.EINVAL),
        (f"start snap-a {scratch_fs.catalog_dir} -5 4", errno.EINVAL),
        (f"start snap-a {scratch_fs.catalog_dir} 99999999999 1", errno.EINVAL),
        (f"start snap-a {scratch_fs.catalog_dir} 2147483647 1", errno.ENOSPC),  # 1 TiB file
    ]
    for line, want in start_cases:
        assert write_cmd(line) == want, line
        assert attr("snap-a", "state") == "created", line
    assert write_cmd(f"start snap-a {scratch_fs.catalog_dir} 2048 4") == 0
    assert write_cmd(f"start snap-a {scratch_fs.catalog_dir} 2048 4") == errno.EALREADY
    assert attr("snap-a", "state") == "active"
    assert write_cmd("remove snap-a") == 0
    assert write_cmd("remove snap-a") == errno.ENOENT
    assert list(scratch_fs.catalog_dir.iterdir()) == [a_file]   # temp files are gone


def test_total_limit(cblb_module: Controller) -> None:
    loops = [make_loop(16, f"t{i}") for i in range(5)]
    try:
        for i in range(4):
            assert write_cmd(f"create lim{i} {loops[i].device} begin end") == 0
        assert write_cmd(f"create lim4 {loops[4].device} begin end") == errno.ENOSPC
        assert write_cmd("remove lim2") == 0
        assert write_cmd(f"create lim4 {loops[4].device} begin end") == 0
    finally:
        cleanup_snapshots(cblb_module)
        for lp in loops:
            lp.detach()


@pytest.mark.parametrize("total", ["0", "256", "-1"])
def test_bad_total_refused(total: str) -> None:
    ctl = Controller()
    if ctl.loaded():
        cleanup_snapshots(ctl)
        sh("rmmod cblb_module")
    ko = ctl.find_module()
    out = sh(f"insmod {ko} total={total} 2>&1", check=False)
    assert not ctl.loaded(), out
    assert f"total={total} is out of range" in sh("dmesg | tail -5")


def test_total_255(cblb_module: Controller) -> None:
    cleanup_snapshots(cblb_module)
    sh("rmmod cblb_module")
    cblb_module.load(255)
    assert cblb_module.total() == 255
    lp = make_loop(16, "t255")
    try:
        assert write_cmd(f"create big {lp.device} begin end") == 0
        assert "total=255 used=1" in Path("/sys/kernel/cblb/debug").read_text()
    finally:
        cleanup_snapshots(cblb_module)
        lp.detach()


# ---------------------------------------------------------------- data integrity
def freeze_oracle_snapshot(ctl: Controller, fs: ScratchFs, name: str, catalog: Path,
                           oracle: Path, file_blocks: int = 8192, max_files: int = 64) -> None:
    """Freeze the filesystem ourselves, copy the raw origin (the oracle of the point in
    time), take the snapshot while frozen, thaw. Writers block on the freeze."""
    ctl.create(name, fs.device)
    sh(f"fsfreeze -f {fs.mnt}")
    try:
        sh(f"dd if={fs.device} of={oracle} bs=1M iflag=direct status=none")
        ctl.start(name, str(catalog), file_blocks, max_files)
    finally:
        sh(f"fsfreeze -u {fs.mnt}")


def check_fs(image: Path, fstype: str) -> None:
    if fstype == "xfs":
        # A frozen XFS keeps its log needing replay (mount does it, norecovery skips it):
        # replay it on the copy, as a restore would, then check read-only.
        d = Path(f"/tmp/xfs-replay-{uuid.uuid4().hex[:6]}")
        d.mkdir()
        sh(f"mount -o loop,nouuid {image} {d} && umount {d}")
        d.rmdir()
        sh(f"xfs_repair -n -f {image}")
    else:
        sh(f"e2fsck -fn {image}")


@pytest.mark.compact
@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_integrity_under_load(cblb_module: Controller, fstype: str, mount_dir: Path) -> None:
    """The snapshot equals the origin at `start`, block for block and file for file,
    while fio overwrites files in place (buffered and O_DIRECT) and writes new ones."""
    fs = build_scratch(fstype, size_mb=320)     # mkfs.xfs wants 300 MB or more
    oracle = Path(f"/tmp/oracle-{uuid.uuid4().hex[:6]}.img")
    oracle_mnt = Path(f"/tmp/oracle-mnt-{uuid.uuid4().hex[:6]}")
    load = None
    try:
        fill_files(fs.mnt / "static", 8, 8)
        load = FioLoad(fs.mnt, fs.mnt / "static", Path("/tmp/fio-load.log")).start()
        time.sleep(3)
        freeze_oracle_snapshot(cblb_module, fs, "integ", fs.catalog_dir, oracle)
        snap = cblb_module.snapshot("integ")
        assert snap.state is SnapshotState.ACTIVE
        time.sleep(15)                                   # writes go on
        assert load.running(), "fio stopped early"
        assert cblb_module.snapshot("integ").cow_chunks > 0
        # block for block, while fio still writes
        diff = differing_blocks(snap.device, str(oracle))
        assert diff == [], f"{len(diff)} blocks differ, first {diff[:10]}"
        # file for file: the snapshot's files read while fio still writes
        cblb_module.mount("integ", str(mount_dir))
        got = tree_checksums(mount_dir)
        sh(f"umount {mount_dir}")
        load.stop()
        oracle_mnt.mkdir()
        opts = "ro,norecovery,nouuid" if fstype == "xfs" else "ro,noload"
        sh(f"mount -o loop,{opts} {oracle} {oracle_mnt}")
        want = tree_checksums(oracle_mnt)
        sh(f"umount {oracle_mnt}")
        assert got == want
        assert len([k for k in want if k.startswith("static/")]) == 8
        # the filesystem at start is clean: the oracle is the snapshot, block for block
        # (asserted above), so it is checked in the snapshot's stead
        check_fs(oracle, fstype)
        assert cblb_module.snapshot("integ").state is SnapshotState.ACTIVE
    finally:
        if load:
            load.stop()
        sh(f"umount {oracle_mnt}", check=False)
        oracle.unlink(missing_ok=True)
        cleanup_snapshots(cblb_module)
        teardown_scratch(fs)


def test_several_snapshots_at_once(cblb_module: Controller, mount_dir: Path) -> None:
    systems = [build_scratch("ext4", size_mb=96, catalog_mb=96) for _ in range(3)]
    try:
        sums = []
        for i, fs in enumerate(systems):
            fill_files(fs.mnt / "d", 3, 4)
            sums.append(tree_checksums(fs.mnt / "d"))
            cblb_module.create(f"multi{i}", fs.device)
            cblb_module.start(f"multi{i}", str(fs.catalog_dir), 2048, 64)
        for fs in systems:
            for f in (fs.mnt / "d").iterdir():
                f.write_bytes(os.urandom(1 << 20))
        sh("sync")
        for i, fs in enumerate(systems):
            snap = cblb_module.snapshot(f"multi{i}")
            assert snap.state is SnapshotState.ACTIVE and snap.cow_chunks >= 256
            cblb_module.mount(f"multi{i}", str(mount_dir))
            assert tree_checksums(mount_dir / "d") == sums[i]
            sh(f"umount {mount_dir}")
    finally:
        cleanup_snapshots(cblb_module)
        for fs in systems:
            teardown_scratch(fs)


def test_partition_of_a_disk(cblb_module: Controller) -> None:
    """A partition (not a whole device): writes to its neighbour are not copied, writes to
    it are, and the snapshot equals the partition at start."""
    lp, p1, p2 = make_partitioned_loop(128, "parts")
    try:
        sh(f"dd if=/dev/urandom of={p2} bs=1M count=40 status=none")
        oracle = Path("/tmp/part-oracle.img")
        sh(f"dd if={p2} of={oracle} bs=1M status=none")
        cat = build_scratch("ext4", size_mb=32, catalog_mb=96)
        cblb_module.create("part2", p2)
        cblb_module.start("part2", str(cat.catalog_dir), 4096, 16)
        sh(f"dd if=/dev/urandom of={p1} bs=1M count=40 oflag=direct status=none")
        assert cblb_module.snapshot("part2").cow_chunks == 0
        sh(f"dd if=/dev/urandom of={p2} bs=64k count=300 seek=7 oflag=direct status=none")
        sh(f"dd if=/dev/urandom of={lp.device} bs=4k count=100 seek=11000 oflag=direct "
           "status=none")           # through the whole disk, inside p2
        snap = cblb_module.snapshot("part2")
        assert snap.cow_chunks >= 300 * 16
        assert differing_blocks(snap.device, str(oracle)) == []
        oracle.unlink()
        cleanup_snapshots(cblb_module)
        teardown_scratch(cat)
    finally:
        cleanup_snapshots(cblb_module)
        lp.detach()


def test_zeroout_and_discard_keep_snapshot(cblb_module: Controller) -> None:
    lp = make_loop(64, "zero")
    cat = build_scratch("ext4", size_mb=32, catalog_mb=128)
    try:
        sh(f"dd if=/dev/urandom of={lp.device} bs=1M count=64 status=none")
        oracle = Path("/tmp/zero-oracle.img")
        sh(f"dd if={lp.device} of={oracle} bs=1M status=none")
        cblb_module.create("zeroed", lp.device)
        cblb_module.start("zeroed", str(cat.catalog_dir), 8192, 16)
        sh(f"blkdiscard -z -o 0 -l 8M {lp.device}")          # write zeroes
        sh(f"blkdiscard -o 16M -l 8M {lp.device}", check=False)  # discard (if supported)
        snap = cblb_module.snapshot("zeroed")
        assert snap.state is SnapshotState.ACTIVE
        assert differing_blocks(snap.device, str(oracle)) == []
        assert sh(f"cmp -n 8M /dev/zero {lp.device} && echo same", check=False).strip() == "same"
        oracle.unlink()
    finally:
        cleanup_snapshots(cblb_module)
        teardown_scratch(cat)
        lp.detach()


@pytest.mark.compact
def test_reads_of_scattered_changes_are_the_start_image(cblb_module: Controller) -> None:
    """Copied chunks scattered between uncopied ones (read as one origin request with the
    copies laid over it, kmod/overlay.c), a stretch of copied chunks too long for that, more
    copied chunks than uncopied in a run, the last chunk: every read, of any size and
    sector alignment, returns the origin as it was at start."""
    mib = 32
    chunks_total = mib * 256
    lp = make_loop(mib, "scatter")
    cat = build_scratch("ext4", size_mb=32, catalog_mb=96)
    oracle = Path("/tmp/scatter-oracle.img")
    try:
        sh(f"dd if=/dev/urandom of={lp.device} bs=1M count={mib} status=none")
        sh(f"dd if={lp.device} of={oracle} bs=1M status=none")
        cblb_module.create("scatter", lp.device)
        cblb_module.start("scatter", str(cat.catalog_dir), 8192, 8)
        rng = random.Random(11)
        changed = set(rng.sample(range(0, 2048), 205))            # 10% of the first 8 MiB
        changed |= set(rng.sample(range(2048, 2560), 322))        # 63% of the next 2 MiB
        changed |= set(range(2560, 3072, 3)) | set(range(2700, 2740))  # a stretch of 40
        changed |= {chunks_total - 1}
        order = sorted(changed)
        rng.shuffle(order)                 # copied in random order: slots out of order
        new = mmap.mmap(-1, 4096)
        new.write(os.urandom(4096))
        fd = os.open(lp.device, os.O_WRONLY | os.O_DIRECT)
        try:
            for c in order:
                os.pwritev(fd, [new], c * 4096)
        finally:
            os.close(fd)
        snap = cblb_module.snapshot("scatter")
        assert snap.state is SnapshotState.ACTIVE
        assert snap.cow_chunks == len(changed)
        assert differing_blocks(snap.device, str(oracle)) == []      # buffered, read-ahead
        image = oracle.read_bytes()
        size = mib << 20
        reads = [(off, 1 << 20) for off in range(0, 12 << 20, 1 << 20)]
        reads += [(3 * 512, (1 << 20) + 1024), (7 * 4096 + 512, 300 << 10),
                  (size - (1 << 20) - 512, (1 << 20) + 512)]
        for _ in range(30):
            n = rng.randrange(1, 4096) * 512
            reads.append((rng.randrange(0, 12 << 20, 512), n))
        bad = [(off, n) for off, n in reads
               if read_direct(snap.device, off, n) != image[off:off + n]]
        assert bad == []
        assert snap.state is SnapshotState.ACTIVE
    finally:
        oracle.unlink(missing_ok=True)
        cleanup_snapshots(cblb_module)
        teardown_scratch(cat)
        lp.detach()


@pytest.mark.compact
def test_writes_over_partly_copied_ranges_copy_the_rest(cblb_module: Controller) -> None:
    """A write over chunks of which all but some are copied already must still copy
    those: the uncopied one first or last, at an even or odd chunk (the index holds
    chunks in pairs, and a rewrite's check walks the pairs: kmod/index.c), or in the middle,
    alone or a whole pair. Each chunk is copied once, and the snapshot stays the image at
    start."""
    lp = make_loop(16, "partly")
    cat = build_scratch("ext4", size_mb=32, catalog_mb=64)
    oracle = Path("/tmp/partly-oracle.img")
    # (the range a write covers, the chunks of it left uncopied before it), chunk numbers
    # relative to a base of their own
    cases = [((1, 6), {6}), ((2, 7), {7}), ((1, 6), {1}), ((2, 7), {2}), ((0, 9), {5}),
             ((0, 9), {4, 5}), ((3, 3), {3}), ((0, 255), {128}), ((0, 255), {255})]
    try:
        sh(f"dd if=/dev/urandom of={lp.device} bs=1M count=16 status=none")
        sh(f"dd if={lp.device} of={oracle} bs=1M status=none")
        cblb_module.create("partly", lp.device)
        cblb_module.start("partly", str(cat.catalog_dir), 8192, 8)
        page = mmap.mmap(-1, 256 * 4096)
        page.write(os.urandom(256 * 4096))
        written: set[int] = set()
        fd = os.open(lp.device, os.O_WRONLY | os.O_DIRECT)
        try:
            for i, ((a, b), left) in enumerate(cases):
                base = 256 * (i + 1)
                for c in range(a, b + 1):
                    if c not in left:                        # copied one by one first
                        os.pwritev(fd, [memoryview(page)[:4096]], (base + c) * 4096)
                n = (b - a + 1) * 4096
                assert os.pwritev(fd, [memoryview(page)[:n]], (base + a) * 4096) == n
                written |= {base + c for c in range(a, b + 1)}
        finally:
            os.close(fd)
        snap = cblb_module.snapshot("partly")
        assert snap.state is SnapshotState.ACTIVE
        assert snap.cow_chunks == len(written)
        image = oracle.read_bytes()
        bad = [c for c in sorted(written)
               if read_direct(snap.device, c * 4096, 4096) != image[c * 4096:(c + 1) * 4096]]
        assert bad == []
        assert differing_blocks(snap.device, str(oracle)) == []
    finally:
        oracle.unlink(missing_ok=True)
        cleanup_snapshots(cblb_module)
        teardown_scratch(cat)
        lp.detach()


# ---------------------------------------------------------------- failure paths
@pytest.mark.compact
def test_store_full_fails_only_the_snapshot(cblb_module: Controller) -> None:
    lp = make_loop(64, "full")
    cat = build_scratch("ext4", size_mb=32, catalog_mb=64)
    try:
        sh(f"dd if=/dev/urandom of={lp.device} bs=1M count=8 status=none")
        cblb_module.create("filled", lp.device)
        cblb_module.start("filled", str(cat.catalog_dir), 64, 2)    # 16 chunks in all
        data = os.urandom(4 << 20)
        Path("/tmp/full-data").write_bytes(data)
        sh(f"dd if=/tmp/full-data of={lp.device} bs=1M oflag=direct status=none")
        snap = cblb_module.snapshot("filled")
        assert snap.state is SnapshotState.FAILED
        assert "store full" in snap.error
        with open(lp.device, "rb") as f:                          # origin I/O is intact
            assert f.read(len(data)) == data
        r = sh(f"dd if={snap.device} of=/dev/null bs=4k count=1 2>&1", check=False)
        assert "Input/output error" in r
        assert "filled: snapshot failed: store full" in sh("dmesg")
        cblb_module.remove("filled")
        assert "filled" not in cblb_module.names()
    finally:
        cleanup_snapshots(cblb_module)
        teardown_scratch(cat)
        lp.detach()


def test_unload_with_snapshots(mount_dir: Path) -> None:
    ctl = Controller()
    if not ctl.loaded():
        ctl.load(4)
    fs = build_scratch("ext4", size_mb=64, catalog_mb=64)
    try:
        ctl.create("u1", fs.device)
        ctl.start("u1", str(fs.catalog_dir), 2048, 8)
        ctl.mount("u1", str(mount_dir))
        out = sh("rmmod cblb_module 2>&1", check=False)
        assert ctl.loaded(), "rmmod must be refused while a snapshot is mounted: " + out
        sh(f"umount {mount_dir}")
        sh("rmmod cblb_module")                  # active, unmounted: cleaned up
        assert not ctl.loaded()
        assert not Path("/dev/u1").exists()
        (fs.mnt / "after").write_bytes(os.urandom(1 << 20))   # origin still fine
        sh("sync")
        assert list(fs.catalog_dir.iterdir()) == []
    finally:
        if ctl.loaded():
            cleanup_snapshots(ctl)
            sh("rmmod cblb_module", check=False)
        teardown_scratch(fs)
