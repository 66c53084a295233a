"""Snapshot sets (kmod/doc/SETS.md): several origins, one point in time.

Runs inside the lab guest against the real module, on every kernel `make test` boots.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from blocks import FioLoad, differing_blocks, fill_files, read_direct, tree_checksums
from conftest import (
    LoopDev,
    ScratchFs,
    build_scratch,
    cleanup_snapshots,
    make_loop,
    mkfs,
    sh,
    teardown_scratch,
)

from cblb.control import Controller
from cblb.errors import CblbError
from cblb.model import SetMember, SnapshotState

pytestmark = pytest.mark.lab
SYSFS = Path("/sys/kernel/cblb")

# The writer of the counter test: n = 1, 2, ... written to A, then the same n to B, each
# an O_DIRECT write of block 0 that completes before the next begins. At any instant A
# holds the same n as B or one more; a snapshot of both at one instant must too.
WRITER = r"""
import mmap, os, struct, sys
fds = [os.open(p, os.O_WRONLY | os.O_DIRECT) for p in sys.argv[1:3]]
stop = sys.argv[3]
buf = mmap.mmap(-1, 4096)
n = 0
while n % 64 or not os.path.exists(stop):
    n += 1
    buf[:8] = struct.pack("<Q", n)
    for fd in fds:
        os.pwrite(fd, buf, 0)
"""


def counter(dev: str) -> int:
    """The counter in block 0 of dev, read around the page cache."""
    return int(struct.unpack("<Q", read_direct(dev, 0, 4096)[:8])[0])


class CounterWriter:
    def __init__(self, a: str, b: str) -> None:
        self.stop_file = Path(f"/tmp/cblb-writer-stop-{uuid.uuid4().hex[:6]}")
        self.proc = subprocess.Popen(["python3", "-c", WRITER, a, b, str(self.stop_file)])
        self.a = a
        deadline = time.time() + 60
        while counter(a) < 100:
            assert self.proc.poll() is None, "the counter writer died"
            assert time.time() < deadline, "the counter writer does not write"
            time.sleep(0.1)

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.stop_file.touch()
        try:
            self.proc.wait(timeout=60)
        finally:
            self.stop_file.unlink(missing_ok=True)


@pytest.fixture
def two_raw_origins(cblb_module: Controller) -> Iterator[tuple[LoopDev, LoopDev, Path]]:
    """Two raw loop devices and an ext4 catalog filesystem with one folder per member."""
    a, b, cat = make_loop(64, "set-a"), make_loop(64, "set-b"), make_loop(256, "set-cat")
    mkfs(cat.device, "ext4")
    cmnt = Path(f"/tmp/cblb-setcat-{uuid.uuid4().hex[:6]}")
    cmnt.mkdir()
    sh(f"mount {cat.device} {cmnt}")
    for d in ("a", "b"):
        (cmnt / d).mkdir()
    yield a, b, cmnt
    cleanup_snapshots(cblb_module)
    sh(f"umount {cmnt}", check=False)
    for lp in (a, b, cat):
        lp.detach()


def pair(cmnt: Path) -> list[SetMember]:
    return [SetMember("seta", str(cmnt / "a"), 2048, 16),
            SetMember("setb", str(cmnt / "b"), 2048, 16)]


@pytest.mark.compact
def test_set_is_one_point_in_time_for_a_writer_of_two_origins(
        two_raw_origins: tuple[LoopDev, LoopDev, Path], cblb_module: Controller,
        lab_out: Path) -> None:
    """A writer that writes n to A, then n to B, without pause: a set snapshot holds the
    same n on both or A one ahead, never B ahead. Two separate starts show the gap."""
    ctl = cblb_module
    a, b, cmnt = two_raw_origins
    writer = CounterWriter(a.device, b.device)
    results = []
    try:
        for rnd in range(5):
            ctl.create("seta", a.device)
            ctl.create("setb", b.device)
            snaps = ctl.start_set(f"pair{rnd}", pair(cmnt))
            assert [s.state for s in snaps] == [SnapshotState.ACTIVE] * 2
            assert {s.set_name for s in snaps} == {f"pair{rnd}"}
            assert snaps[0].start_time_ns == snaps[1].start_time_ns > 0
            for d in ("seta", "setb"):
                assert (SYSFS / d / "set").read_text().strip() == f"pair{rnd}"
            va, vb = counter("/dev/seta"), counter("/dev/setb")
            results.append((va, vb))
            assert va in (vb, vb + 1), f"round {rnd}: A's snapshot holds {va}, B's {vb}"
            time.sleep(0.3)                  # the writer goes on past the point in time
            assert writer.running()
            assert counter(a.device) > va + 10, "origin writes stalled under the set"
            assert (counter("/dev/seta"), counter("/dev/setb")) == (va, vb)
            for d in ("seta", "setb"):
                ctl.remove(d)

        # The contrast: two starts one after the other are each consistent, not together.
        ctl.create("seta", a.device)
        ctl.create("setb", b.device)
        ctl.start("seta", str(cmnt / "a"), 2048, 16)
        ctl.start("setb", str(cmnt / "b"), 2048, 16)
        sa, sb = counter("/dev/seta"), counter("/dev/setb")
        assert ctl.snapshot("seta").set_name == ""
        print(f"set snapshots (A, B): {results}; two separate starts: A {sa}, B {sb} "
              f"(B {sb - sa} writes ahead of A)")
        (lab_out / "sets_counter.json").write_text(json.dumps(
            {"kernel": os.uname().release, "set_rounds": results, "separate": [sa, sb]}))
    finally:
        writer.stop()


def test_a_refused_member_leaves_no_member_started(
        two_raw_origins: tuple[LoopDev, LoopDev, Path], cblb_module: Controller) -> None:
    ctl = cblb_module
    a, b, cmnt = two_raw_origins
    ctl.create("seta", a.device)
    ctl.create("setb", b.device)

    # The raw interface: the second member's catalog does not exist.
    line = (f"startset raw seta {cmnt / 'a'} 2048 16 setb {cmnt / 'missing'} 2048 16")
    fd = os.open(SYSFS / "cmd", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as ei:
            os.write(fd, line.encode())
    finally:
        os.close(fd)
    assert ei.value.errno == errno.ENOENT
    assert (SYSFS / "set_refused").read_text().split() == ["raw", "setb"]
    for d in ("seta", "setb"):
        assert (SYSFS / d / "state").read_text().strip() == "created"
        assert (SYSFS / d / "set").read_text().strip() == ""
        assert not Path(f"/dev/{d}").exists()
    assert list((cmnt / "a").iterdir()) == [], "the refused set left temp files behind"

    # A member the module itself refuses: B's catalog on A's origin (an ext4 on A).
    ctl.remove("seta")
    mkfs(a.device, "ext4")
    amnt = Path(f"/tmp/cblb-seta-{uuid.uuid4().hex[:6]}")
    amnt.mkdir()
    sh(f"mount {a.device} {amnt}")
    try:
        (amnt / "cat-of-b").mkdir()
        ctl.create("seta", a.device)
        bad = [SetMember("seta", str(cmnt / "a"), 2048, 16),
               SetMember("setb", str(amnt / "cat-of-b"), 2048, 16)]
        with pytest.raises(CblbError) as ce:
            ctl.start_set("db", bad)
        assert "setb" in str(ce.value) and ce.value.errno == errno.ELOOP, str(ce.value)
        assert [s.state for s in ctl.snapshots()] == [SnapshotState.CREATED] * 2
        assert (SYSFS / "set_refused").read_text().split() == ["db", "setb"]

        # The same members with good catalogs start; removing one leaves the other.
        snaps = ctl.start_set("db", pair(cmnt))
        assert [s.state for s in snaps] == [SnapshotState.ACTIVE] * 2
        assert (SYSFS / "set_refused").read_text().strip() == ""
        ctl.remove("seta")
        with open(b.device, "r+b", buffering=0) as f:
            f.write(os.urandom(1 << 20))
            os.fsync(f.fileno())
        left = ctl.snapshot("setb")
        assert left.state is SnapshotState.ACTIVE and left.cow_chunks >= 256
        assert differing_blocks("/dev/setb", b.device, 1 << 20) != []
        sh("dd if=/dev/setb of=/dev/null bs=1M status=none")
    finally:
        cleanup_snapshots(ctl)
        sh(f"umount {amnt}", check=False)
        sh(f"rm -rf {amnt}", check=False)


@pytest.fixture
def two_filesystems(cblb_module: Controller) -> Iterator[list[ScratchFs]]:
    fss = [build_scratch("ext4", 128, 256), build_scratch("ext4", 128, 256)]
    yield fss
    cleanup_snapshots(cblb_module)
    for fs in fss:
        teardown_scratch(fs)


def test_set_of_two_busy_filesystems_mounts_clean_and_matches(
        two_filesystems: list[ScratchFs], cblb_module: Controller, mount_dir: Path,
        lab_out: Path) -> None:
    """Two mounted ext4 under fio. First round: frozen from outside, copied raw (the
    oracle), started as a set: each snapshot equals its oracle. Second round: the module
    freezes both itself: both snapshots need no journal replay, fsck clean, files intact."""
    ctl = cblb_module
    fss = two_filesystems
    before = []
    loads = []
    for i, fs in enumerate(fss):
        fill_files(fs.mnt / "static", 6, 4)
        fill_files(fs.mnt / "keep", 3, 2)
        before.append(tree_checksums(fs.mnt / "keep"))
        loads.append(FioLoad(fs.mnt, fs.mnt / "static", lab_out / f"set-fio{i}.log").start())
    oracles = [Path(f"/tmp/oracle-set{i}-{uuid.uuid4().hex[:6]}.img") for i in range(2)]
    names = ["db-data", "db-log"]
    try:
        time.sleep(3)
        for n, fs in zip(names, fss):
            ctl.create(n, fs.device)
        for fs in fss:
            sh(f"fsfreeze -f {fs.mnt}")
        try:
            for fs, o in zip(fss, oracles):
                sh(f"dd if={fs.device} of={o} bs=1M iflag=direct conv=sparse status=none")
            snaps = ctl.start_set("db", [SetMember(n, str(fs.catalog_dir), 8192, 32)
                                         for n, fs in zip(names, fss)])
        finally:
            for fs in fss:
                sh(f"fsfreeze -u {fs.mnt}")
        # 6.1 reports the filesystems frozen by someone else; 6.12 nests its own freeze.
        assert {s.freeze for s in snaps} <= {"frozen", "already-frozen"}
        time.sleep(4)                                     # the applications go on
        assert all(ld.running() for ld in loads)
        for n, o in zip(names, oracles):
            s = ctl.snapshot(n)
            assert s.state is SnapshotState.ACTIVE, s.error
            assert s.cow_chunks > 0
            diff = differing_blocks(s.device, str(o))
            assert diff == [], f"{n}: {len(diff)} blocks differ from the point in time"
            o.unlink()
        for n in names:
            ctl.remove(n)

        # Second round: the module's own freeze, under the same load.
        for n, fs in zip(names, fss):
            ctl.create(n, fs.device)
        snaps = ctl.start_set("db2", [SetMember(n, str(fs.catalog_dir), 8192, 32)
                                      for n, fs in zip(names, fss)])
        assert [s.freeze for s in snaps] == ["frozen"] * 2
        time.sleep(4)
        for i, n in enumerate(names):
            s = ctl.snapshot(n)
            assert s.state is SnapshotState.ACTIVE, s.error
            features = sh(f"dumpe2fs -h {s.device} 2>/dev/null")
            assert "needs_recovery" not in features, f"{n}: the journal needs replaying"
            r = subprocess.run(["e2fsck", "-fn", s.device], capture_output=True, text=True)
            assert r.returncode == 0, f"{n}: e2fsck -fn: {r.stdout}{r.stderr}"
            mnt = mount_dir / n
            mnt.mkdir()
            ctl.mount(n, str(mnt))
            assert tree_checksums(mnt / "keep") == before[i]
            sh(f"umount {mnt}")
        print(f"set of two under fio: frozen {snaps[0].frozen_us} us, "
              f"start {snaps[0].start_latency_us} us")
    finally:
        for ld in loads:
            ld.stop()
        for o in oracles:
            o.unlink(missing_ok=True)


def test_freeze_to_thaw_of_two_and_four_member_sets(cblb_module: Controller,
                                                    lab_out: Path) -> None:
    """What a set costs the applications: the time its filesystems stay frozen."""
    ctl = cblb_module
    fss = [build_scratch("ext4", 64, 64) for _ in range(4)]
    timings: dict[int, int] = {}
    try:
        for fs in fss:
            fill_files(fs.mnt / "f", 2, 1)
        for size in (2, 4):
            members = []
            for i, fs in enumerate(fss[:size]):
                ctl.create(f"m{i}", fs.device)
                members.append(SetMember(f"m{i}", str(fs.catalog_dir), 2048, 8))
            snaps = ctl.start_set(f"set{size}", members)
            assert len({s.start_time_ns for s in snaps}) == 1
            assert {s.freeze for s in snaps} == {"frozen"}
            timings[size] = snaps[0].frozen_us
            assert 0 < timings[size] <= snaps[0].start_latency_us
            for fs in fss[:size]:                      # writable again after the thaw
                (fs.mnt / "after").write_bytes(b"x" * 4096)
            for i in range(size):
                ctl.remove(f"m{i}")
        print(f"freeze to thaw: 2 members {timings[2]} us, 4 members {timings[4]} us")
        (lab_out / "sets_frozen_us.json").write_text(json.dumps(
            {"kernel": os.uname().release, "frozen_us": timings}))
    finally:
        cleanup_snapshots(ctl)
        for fs in fss:
            teardown_scratch(fs)
