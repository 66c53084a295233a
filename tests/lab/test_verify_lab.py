"""Block-hash verification against the real module (run inside the lab guest).

- A snapshot taken under fio write load still verifies equal to an image copied from it at
  its start, while the load runs and afterwards.
- ``cblb diff`` (snapshot versus live origin) agrees with the module's accounting: no chunk
  differs that the module did not copy.

Fixtures (tests/lab/conftest.py): ``cblb_module`` yields a loaded Controller, and
``scratch_fs`` an origin loop device ``.device`` with ext4 mounted at ``.mnt``, plus
``.catalog_dir`` on another ext4 filesystem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cblb.backup import backup
from cblb.control import Controller
from cblb.manifest import Manifest
from cblb.verify import diff_snapshot, make_manifest, verify_paths

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
NAME = "cblb-vlab"
FILE_SIZE = 65536      # 512-byte blocks: 32 MiB temp files
MAX_FILES = 8


def fill(mnt: Path, mib: int = 96) -> None:
    """Data for fio to overwrite, on disk before the snapshot is taken."""
    with open(mnt / "base.bin", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
    subprocess.run(["sync"], check=True)


def start_fio(mnt: Path, seconds: int) -> subprocess.Popen:
    """Random 4 KiB overwrites of base.bin plus new files, with periodic fsync."""
    return subprocess.Popen(
        ["fio", "--name=over", f"--filename={mnt / 'base.bin'}", "--rw=randwrite", "--bs=4k",
         "--size=96M", "--ioengine=psync", "--fsync=64", "--time_based",
         f"--runtime={seconds}", "--name=new", f"--directory={mnt}", "--rw=write",
         "--bs=64k", "--size=48M", "--fsync=16", "--time_based", f"--runtime={seconds}",
         "--output-format=terse"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_fio(p: subprocess.Popen) -> None:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, f"fio failed: {err or out}"


def take_snapshot(ctl: Controller, scratch_fs) -> str:
    ctl.create(NAME, scratch_fs.device)
    s = ctl.start(NAME, str(scratch_fs.catalog_dir), FILE_SIZE, MAX_FILES)
    assert s.state.value == "active"
    return s.device


def test_snapshot_under_fio_verifies_equal_to_its_start_image(cblb_module, scratch_fs,
                                                              tmp_path):
    ctl = cblb_module
    mnt = Path(scratch_fs.mnt)
    fill(mnt)
    dev = take_snapshot(ctl, scratch_fs)

    # The image taken at the start: copied before any write reaches the origin.
    start_img = str(tmp_path / "start.img")
    r = backup(dev, start_img, identity={"snapshot": NAME})
    assert r.bytes_copied == r.size > 0
    manifest = start_img + ".manifest"

    fio = start_fio(mnt, seconds=15)
    try:
        time.sleep(3)
        # while the origin is being written: the snapshot still equals its start image
        during = verify_paths(dev, manifest, direct=True)
        assert during.equal, f"snapshot changed under load: {during.ranges[:20]}"
        # and a backup taken under load is the same image
        under = str(tmp_path / "under.img")
        backup(dev, under)
        assert verify_paths(under, manifest).equal
    finally:
        wait_fio(fio)
    subprocess.run(["sync"], check=True)

    after = verify_paths(dev, manifest, direct=True)
    assert after.equal, f"snapshot changed: {after.ranges[:20]}"
    # the origin did change, so the comparison is not vacuous
    moved = verify_paths(scratch_fs.device, manifest, direct=True)
    assert not moved.equal and moved.differing > 0

    # the command line agrees: exit 0 equal, 1 differs
    cli = [sys.executable, "-m", "cblb.cli", "verify"]
    assert subprocess.run(cli + [NAME, "--against", manifest], cwd=ROOT).returncode == 0
    assert subprocess.run(cli + [scratch_fs.device, "--against", manifest, "--direct"],
                          cwd=ROOT, capture_output=True).returncode == 1
    assert ctl.snapshot(NAME).state.value == "active"


def test_diff_agrees_with_the_module_accounting(cblb_module, scratch_fs, tmp_path):
    ctl = cblb_module
    mnt = Path(scratch_fs.mnt)
    fill(mnt, 64)
    take_snapshot(ctl, scratch_fs)

    first = diff_snapshot(ctl, NAME)
    assert first.consistent, first.to_json()

    wait_fio(start_fio(mnt, seconds=8))
    subprocess.run(["sync"], check=True)
    d = diff_snapshot(ctl, NAME)
    j = d.to_json()
    assert d.consistent, f"chunks differ without a copy: {json.dumps(j)[:2000]}"
    assert d.differing_chunks > 0
    assert d.differing_chunks - d.store_chunks <= d.cow_chunks
    # every differing chunk outside the temp files was copied; the module may have copied
    # more (a write of identical data, or one the comparison raced) but never fewer
    assert d.cow_chunks >= d.cow_chunks_before

    r = subprocess.run([sys.executable, "-m", "cblb.cli", "diff", NAME, "--json"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cj = json.loads(r.stdout)
    assert cj["consistent"] and cj["differing_chunks"] >= d.differing_chunks - d.store_chunks

    # a manifest of the snapshot, made now, still matches the snapshot after more writes
    man = str(tmp_path / "snap.manifest")
    make_manifest(f"/dev/{NAME}", man, direct=True)
    wait_fio(start_fio(mnt, seconds=4))
    assert verify_paths(f"/dev/{NAME}", man, direct=True).equal
    with Manifest.open(man) as m:
        assert m.header.block_size == 4096
