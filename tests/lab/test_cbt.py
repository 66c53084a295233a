"""Changed-block tracking (kmod/doc/CBT.md) and incremental backups built on it.

Runs inside the lab guest against the real module, on every kernel `make test` boots.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from blocks import FioLoad, differing_blocks, fill_files
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

from cblb.cli import main as cli_main
from cblb.control import Controller
from cblb.model import SetMember, SnapshotState

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]
SYSFS = Path("/sys/kernel/cblb")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def attr(name: str, field: str) -> str:
    return (SYSFS / name / field).read_text().strip()


def changed_map(name: str) -> set[int]:
    """The blocks set in /sys/kernel/cblb/<name>/cbt_map."""
    data = (SYSFS / name / "cbt_map").read_bytes()
    return {i * 8 + b for i, byte in enumerate(data) if byte for b in range(8) if byte >> b & 1}


def tracking_dir(device: str) -> Path:
    return SYSFS / "tracking" / Path(os.path.realpath(device)).name


def write_blocks(device: str, blocks: list[int], bs: int = 4096) -> None:
    fd = os.open(device, os.O_WRONLY)
    try:
        for b in blocks:
            os.pwrite(fd, os.urandom(bs), b * bs)
        os.fsync(fd)
    finally:
        os.close(fd)


def cmd(line: str) -> int:
    """Write one command; 0 or the errno the module refused it with."""
    fd = os.open(SYSFS / "cmd", os.O_WRONLY)
    try:
        os.write(fd, line.encode())
        return 0
    except OSError as e:
        return e.errno or -1
    finally:
        os.close(fd)


@pytest.fixture
def raw_origin(cblb_module: Controller) -> Iterator[tuple[LoopDev, Path]]:
    """A raw 64 MiB origin (no filesystem: every write is the test's own) and a catalog."""
    origin, cat = make_loop(64, "cbt-origin"), make_loop(128, "cbt-cat")
    mkfs(cat.device, "ext4")
    cmnt = Path(f"/tmp/cblb-cbtcat-{uuid.uuid4().hex[:6]}")
    cmnt.mkdir()
    sh(f"mount {cat.device} {cmnt}")
    yield origin, cmnt
    cleanup_snapshots(cblb_module)
    sh(f"umount {cmnt}", check=False)
    origin.detach()
    cat.detach()


@pytest.mark.compact
def test_map_holds_exactly_the_blocks_written_between_two_starts(
        raw_origin: tuple[LoopDev, Path], cblb_module: Controller) -> None:
    ctl = cblb_module
    origin, cmnt = raw_origin
    ctl.create("cbt1", origin.device)                 # tracking begins here
    track = tracking_dir(origin.device)
    assert (track / "sequence").read_text().strip() == "0"
    gen = (track / "generation").read_text().strip()
    assert UUID_RE.match(gen), gen
    assert (track / "block_size").read_text().strip() == "4096"
    first = [0, 1, 7, 100, 16383]                     # the first and last 4 KiB blocks too
    write_blocks(origin.device, first)
    assert int((track / "changed_blocks").read_text()) == len(first)
    ctl.start("cbt1", str(cmnt), 2048, 8)
    assert attr("cbt1", "cbt_generation") == gen
    assert attr("cbt1", "cbt_sequence") == "1"
    assert changed_map("cbt1") == set(first)
    assert attr("cbt1", "cbt_changed_blocks") == str(len(first))
    assert int((track / "changed_blocks").read_text()) == 0

    # While the snapshot lives, and after it is gone, writes go on being tracked.
    second = [3, 4, 5, 200]
    write_blocks(origin.device, second[:2])
    ctl.remove("cbt1")
    write_blocks(origin.device, second[2:])
    # A sub-block write and a zeroing mark the blocks they touch.
    fd = os.open(origin.device, os.O_WRONLY)
    os.pwrite(fd, b"x" * 512, 300 * 4096 + 1024)
    os.close(fd)
    # (zeroing, not discard: 5.10's loop driver warns on a discard, a bug of its own)
    sh(f"blkdiscard -z -o {400 * 4096} -l {8 * 4096} {origin.device}")
    ctl.create("cbt2", origin.device)
    ctl.start("cbt2", str(cmnt), 2048, 8)
    assert attr("cbt2", "cbt_generation") == gen
    assert attr("cbt2", "cbt_sequence") == "2"
    assert changed_map("cbt2") == set(second) | {300} | set(range(400, 408))
    # Reading the snapshot or the origin changes nothing.
    sh(f"dd if=/dev/cbt2 of=/dev/null bs=1M status=none; dd if={origin.device} "
       "of=/dev/null bs=1M iflag=direct status=none")
    assert int((track / "changed_blocks").read_text()) == 0

    # Untracking is refused while a snapshot exists; afterwards continuity is lost.
    assert cmd(f"untrack {origin.device}") == errno.EBUSY
    ctl.remove("cbt2")
    assert cmd(f"untrack {origin.device}") == 0
    assert not track.exists()
    assert cmd(f"untrack {origin.device}") == errno.ENOENT
    assert cmd(f"track {origin.device}") == 0
    assert cmd(f"track {origin.device}") == errno.EEXIST
    gen2 = (track / "generation").read_text().strip()
    assert gen2 != gen and (track / "sequence").read_text().strip() == "0"


def test_continuity_breaks_give_a_new_generation(raw_origin: tuple[LoopDev, Path],
                                                 cblb_module: Controller) -> None:
    ctl = cblb_module
    origin, cmnt = raw_origin
    ctl.create("cbtg", origin.device)
    ctl.start("cbtg", str(cmnt), 2048, 8)
    gen = attr("cbtg", "cbt_generation")
    ctl.remove("cbtg")
    # The origin grows: the next start begins a new generation at sequence 1.
    sh(f"truncate -s 80M {origin.image} && losetup -c {origin.device}")
    ctl.create("cbtg", origin.device)
    ctl.start("cbtg", str(cmnt), 2048, 8)
    assert attr("cbtg", "cbt_generation") != gen
    assert attr("cbtg", "cbt_sequence") == "1"
    gen = attr("cbtg", "cbt_generation")
    ctl.remove("cbtg")
    # Reloading the module loses every map.
    sh("rmmod cblb_module")
    ctl.load(4)
    ctl.create("cbtg", origin.device)
    ctl.start("cbtg", str(cmnt), 2048, 8)
    assert attr("cbtg", "cbt_generation") != gen
    assert attr("cbtg", "cbt_sequence") == "1"


def test_own_store_writes_are_not_changes(cblb_module: Controller) -> None:
    """Catalog on the origin itself: the copies written into the temp files (on the
    origin) are not counted; only what the application wrote is."""
    ctl = cblb_module
    fs = build_scratch("ext4", 256, 64)
    try:
        cat = fs.mnt / "catalog"
        cat.mkdir()
        fill_files(fs.mnt / "old", 4, 4)                  # 16 MiB the writes will copy
        ctl.create("own", fs.device)
        ctl.start("own", str(cat), 8192, 8)               # 32 MiB store on the origin
        extents = ctl.snapshot("own").store_extents
        track = tracking_dir(fs.device)
        for f in sorted((fs.mnt / "old").iterdir()):     # rewrite in place: 16 MiB copied
            sh(f"dd if=/dev/urandom of={f} bs=1M count=4 conv=notrunc,fsync "
               "oflag=direct status=none")
        snap = ctl.snapshot("own")
        assert snap.state is SnapshotState.ACTIVE, snap.error
        assert snap.cow_bytes >= 16 << 20
        # Every block written since the start was copied once and marked once (ext4's
        # journal and lazy inode-table zeroing write too); had the copies written into
        # the temp files been counted, twice as much would be marked.
        changed = int((track / "changed_blocks").read_text()) * 4096
        assert changed >= 16 << 20
        assert abs(changed - snap.cow_bytes) <= 1 << 20, \
            f"{changed >> 10} KiB marked, {snap.cow_bytes >> 10} KiB copied"
        ctl.remove("own")
        ctl.create("own2", fs.device)
        ctl.start("own2", str(fs.catalog_dir), 2048, 8)
        # 4 KiB map blocks wholly inside the temp files (a 256 MiB ext4 has 1 KiB blocks:
        # a map block at an extent's edge may share a file system block's neighbours).
        store = {b for start, n in extents
                 for b in range(-(-start * 512 // 4096), (start + n) * 512 // 4096)}
        assert len(store) >= (32 << 20) // 4096 * 9 // 10
        marked = changed_map("own2") & store
        assert marked == set(), f"{len(marked)} temp-file blocks counted as changes"
    finally:
        cleanup_snapshots(ctl)
        teardown_scratch(fs)


def test_a_set_rotates_every_members_map(raw_origin: tuple[LoopDev, Path],
                                         cblb_module: Controller) -> None:
    ctl = cblb_module
    a, cmnt = raw_origin
    b = make_loop(32, "cbt-b")
    try:
        for d in ("a", "b"):
            (cmnt / d).mkdir()
        ctl.create("sa", a.device)
        ctl.create("sb", b.device)
        write_blocks(a.device, [1, 2])
        write_blocks(b.device, [9])
        ctl.start_set("pair", [SetMember("sa", str(cmnt / "a"), 2048, 8),
                               SetMember("sb", str(cmnt / "b"), 2048, 8)])
        assert (changed_map("sa"), changed_map("sb")) == ({1, 2}, {9})
        assert attr("sa", "cbt_sequence") == attr("sb", "cbt_sequence") == "1"
    finally:
        cleanup_snapshots(ctl)
        b.detach()


# ------------------------------------------------------------------ incremental backups
def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cblb.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


def cli_json(*args: str) -> Any:
    """``cblb ARGS --json`` in this process (cblb.cli.main, the code the command runs): a
    new interpreter costs several seconds under emulation, twenty times per test. The
    refusals below go through a real process, for their exit code and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main([*args, "--json"])
    assert rc == 0, f"cblb {' '.join(args)}: {out.getvalue()}{err.getvalue()}"
    return json.loads(out.getvalue())


@pytest.fixture
def busy_fs(cblb_module: Controller, lab_out: Path) -> Iterator[tuple[ScratchFs, FioLoad]]:
    fs = build_scratch("ext4", 64, 256)
    fill_files(fs.mnt / "static", 4, 4)
    # Capped (about 900 KiB/s in all): the changes of one cycle are a part of the device,
    # as between real backups, and fio leaves the emulated CPU to the backups.
    load = FioLoad(fs.mnt, fs.mnt / "static", lab_out / "cbt-fio.log", rate_kib=512).start()
    yield fs, load
    load.stop()
    cleanup_snapshots(cblb_module)
    teardown_scratch(fs)


@pytest.mark.cycles
def test_ten_cycles_of_incremental_backups_under_fio(busy_fs: tuple[ScratchFs, FioLoad],
                                                     cblb_module: Controller,
                                                     lab_out: Path) -> None:
    """Snapshot -> backup (full, then --since the previous) -> release, ten times, fio
    writing the whole time: every restored chain equals its snapshot block for block, and
    each incremental holds what changed (the module's count), not more than twice that."""
    ctl = cblb_module
    fs, load = busy_fs
    work = Path(f"/tmp/cblb-chain-{uuid.uuid4().hex[:6]}")
    work.mkdir()
    restored = work / "restored.img"
    cycles: list[dict[str, Any]] = []
    prev: Path | None = None
    try:
        for k in range(10):
            time.sleep(1)                                  # fio goes on between snapshots
            ctl.create("inc", fs.device)
            ctl.start("inc", str(fs.catalog_dir), 16384, 12)
            snap = ctl.snapshot("inc")
            seq, bs = int(attr("inc", "cbt_sequence")), int(attr("inc", "cbt_block_size"))
            changed = int(attr("inc", "cbt_changed_blocks")) * bs
            img = work / f"backup-{k}.img"
            t0 = time.monotonic()
            args = ["backup", "inc", str(img)] + (["--since", str(prev)] if prev else [])
            res = cli_json(*args)
            took = time.monotonic() - t0
            rst = cli_json("restore", str(img), str(restored))
            diff = differing_blocks(snap.device, str(restored))
            assert diff == [], f"cycle {k}: the restored chain differs in {len(diff)} blocks, " \
                               f"first {diff[:8]}"
            size = sum(p.stat().st_blocks * 512 for p in work.glob(f"backup-{k}.img*"))
            cycles.append({"cycle": k, "sequence": seq, "changed_bytes": changed,
                           "backup_bytes_on_disk": size, "seconds": round(took, 2),
                           "backup": res, "restore": rst})
            if prev is not None:
                assert changed > 0, f"cycle {k}: fio wrote, the map is empty"
                assert size <= 2 * changed + (1 << 20), \
                    f"cycle {k}: incremental {size} bytes for {changed} changed"
            if k == 9:
                r = cli("verify", str(restored), "--against", "inc")
                assert r.returncode == 0, r.stdout + r.stderr
            assert load.running(), "fio stopped"
            assert ctl.snapshot("inc").state is SnapshotState.ACTIVE
            ctl.remove("inc")
            restored.unlink()
            prev = img
        full, incs = cycles[0], cycles[1:]
        print(f"full backup: {full['backup_bytes_on_disk'] >> 20} MiB in {full['seconds']} s; "
              f"incrementals: {[c['backup_bytes_on_disk'] >> 10 for c in incs]} KiB in "
              f"{[c['seconds'] for c in incs]} s")
        (lab_out / "cbt_cycles.json").write_text(json.dumps(
            {"kernel": os.uname().release, "cycles": cycles}, indent=1))

        # A broken chain is refused: a gap in the sequence.
        ctl.create("inc", fs.device)
        ctl.start("inc", str(fs.catalog_dir), 16384, 16)
        ctl.remove("inc")
        ctl.create("inc", fs.device)
        ctl.start("inc", str(fs.catalog_dir), 16384, 16)
        r = cli("backup", "inc", str(work / "gap.img"), "--since", str(prev))
        assert r.returncode == 1 and "full backup" in (r.stdout + r.stderr), r.stdout + r.stderr
        assert "Traceback" not in r.stderr
    finally:
        cleanup_snapshots(ctl)
        sh(f"rm -rf {work}", check=False)
