"""`cblb mount` / `cblb umount` on the real module, in the lab guest: the options every
snapshot mount gets (ro, nosuid, nodev, and noexec unless --exec), read back from
/proc/self/mountinfo, and umount refusing a mount that is not a cblb snapshot's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

NAME = "cli-lab"


def cblb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cblb.cli", *args], capture_output=True,
                          text=True, timeout=300)


def mount_options(path: Path) -> set[str] | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(path):
                return set(fields[5].split(","))
    return None


def test_mount_options_and_umount(cblb_module, scratch_fs, mount_dir):
    r = cblb("create", NAME, scratch_fs.device, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "created"
    r = cblb("start", NAME, str(scratch_fs.catalog_dir), "4M", "8", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["file_size"] == 8192          # 4M in 512-byte blocks

    r = cblb("mount", NAME, str(mount_dir))
    assert r.returncode == 0, r.stderr
    opts = mount_options(mount_dir)
    assert opts is not None and {"ro", "nosuid", "nodev", "noexec"} <= opts, opts

    # a mount that is not a snapshot's is refused, and stays mounted
    r = cblb("umount", str(scratch_fs.mnt))
    assert r.returncode == 1 and "is not a cblb snapshot's mount" in r.stderr
    assert mount_options(scratch_fs.mnt) is not None

    r = cblb("umount", str(mount_dir), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"name": NAME, "unmounted": str(mount_dir)}
    assert mount_options(mount_dir) is None

    # --exec leaves noexec out; nosuid and nodev stay
    r = cblb("mount", NAME, str(mount_dir), "--exec")
    assert r.returncode == 0, r.stderr
    opts = mount_options(mount_dir)
    assert opts is not None and {"ro", "nosuid", "nodev"} <= opts and "noexec" not in opts
    r = cblb("umount", NAME)
    assert r.returncode == 0, r.stderr
    assert mount_options(mount_dir) is None

    r = cblb("remove", NAME)
    assert r.returncode == 0, r.stderr
