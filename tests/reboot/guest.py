"""One boot of the restart test (tests/reboot/test_reboot.py), run inside the lab guest.

usage: python3 tests/reboot/guest.py PHASE WORKDIR
PHASE: boot1 (track, full backups, writes, unmount, save), absent (the module not loaded:
write two origins), boot2 (resume, writes, snapshots, --since, restore, then a crash),
boot3 (resume after the crash). WORKDIR is a host folder (it outlives the guest): the
images, the backups, the keep folder, and PHASE.json, what this boot saw.

The origins, each on a loop device of its own slot (the same name at every boot):
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests/lab")]
from blocks import file_sha256 as sha256  # noqa: E402

from cblb import cli  # noqa: E402

# name: (loop slot, filesystem, image MiB, what the test does with it)
ORIGINS: dict[str, tuple[int, str, int, str]] = {
    "A": (0, "ext4", 24, "the chain goes on"),
    "X": (1, "xfs", 320, "the chain goes on (xfs)"),
    "B": (2, "ext4", 24, "record deleted"),
    "C": (3, "ext4", 24, "record truncated"),
    "D": (4, "ext4", 24, "record corrupted"),
    "E": (5, "ext4", 24, "image resized"),
    "F": (6, "ext4", 24, "another image under the same loop name"),
    "H": (7, "ext4", 24, "written while the module was not loaded"),
    "Y": (8, "xfs", 320, "written while the module was not loaded (xfs)"),
    "G": (9, "ext4", 24, "a crash after the resume"),
}
BACKED_UP = "ACFHG"             # a full backup in boot 1, so --since can be tried in boot 2
CATALOG_SLOT = 15
BAD = ("WARNING", "BUG", "Oops", "lockdep", "hung task")


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, shell=True, text=True, capture_output=True)
    if check and r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {cmd}\n{r.stdout}{r.stderr}")
    return r


def cblb(args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The cblb command line, run in this process (a Python start-up under emulation
    costs seconds): the same parser, the same code, its output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(shlex.split(args))
        except SystemExit as e:  # argparse: usage
            rc = int(e.code or 0)
    r = subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())
    if check and rc != 0:
        raise SystemExit(f"failed ({rc}): cblb {args}\n{r.stdout}{r.stderr}")
    return r


def loop(name: str) -> str:
    return f"/dev/loop{ORIGINS[name][0]}"


def image(work: Path, name: str) -> Path:
    return work / f"{name}.img"


def attach(work: Path, names: str, images: dict[str, Path] | None = None) -> None:
    sh("modprobe loop max_loop=16 2>/dev/null; modprobe xfs")
    for n in names:
        img = (images or {}).get(n, image(work, n))
        sh(f"losetup {loop(n)} {img}")


def detach(names: str) -> None:
    sh("sync")
    for n in names:
        sh(f"losetup -d {loop(n)}", check=False)


def mount(name: str) -> str:
    mp = f"/tmp/mnt-{name}"
    os.makedirs(mp, exist_ok=True)
    sh(f"mount {loop(name)} {mp}")
    return mp


def umount(name: str) -> None:
    sh(f"umount /tmp/mnt-{name}")


def write_files(name: str, tag: str, mib: int = 4) -> None:
    mp = mount(name)
    sh(f"dd if=/dev/urandom of={mp}/{tag} bs=1M count={mib} conv=fsync status=none")
    umount(name)


def fio(name: str, seed: int) -> None:
    """Random 4 KiB writes over a file and some new files, then unmounted."""
    mp = mount(name)
    sh(f"fio --name=w --directory={mp} --filename=fio.dat --size=8M --rw=randwrite "
       f"--bs=4k --io_size=3M --randseed={seed} --end_fsync=1 --output=/dev/null")
    sh(f"dd if=/dev/urandom of={mp}/new-{seed} bs=64k count=20 conv=fsync status=none")
    umount(name)


def catalog() -> str:
    sh("truncate -s 256M /tmp/catalog.img")
    sh(f"losetup /dev/loop{CATALOG_SLOT} /tmp/catalog.img")
    sh(f"mkfs.ext4 -q -F /dev/loop{CATALOG_SLOT}")
    os.makedirs("/tmp/cat", exist_ok=True)
    sh(f"mount /dev/loop{CATALOG_SLOT} /tmp/cat")
    return "/tmp/cat"


def snapshot(name: str, cat: str) -> str:
    snap = f"snap{name}"
    cblb(f"create {snap} {loop(name)}")
    cblb(f"start {snap} {cat} 16M 8")
    return snap


def mark(out: dict[str, Any], step: str) -> None:
    """Seconds since the boot's work began, at the end of ``step``."""
    out.setdefault("steps", {})[step] = round(time.monotonic() - T0, 1)


T0 = time.monotonic()


def kernel_log_bad() -> list[str]:
    return [x for x in sh("dmesg").stdout.splitlines() if any(b in x for b in BAD)]


def load() -> None:
    cblb("load --total 4")


def tracking_json() -> dict[str, Any]:
    return {t["disk"]: t for t in json.loads(cblb("list --json").stdout)["tracking"]}


def boot1(work: Path, out: dict[str, Any]) -> None:
    for n, (_, _, mib, _) in ORIGINS.items():
        sh(f"truncate -s {mib}M {image(work, n)}")
    sh(f"truncate -s 24M {work / 'F-other.img'}")
    attach(work, "".join(ORIGINS))
    sh(f"losetup /dev/loop{ORIGINS['F'][0] + 10} {work / 'F-other.img'}")
    sh(f"mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "
       f"/dev/loop{ORIGINS['F'][0] + 10}")
    sh(f"losetup -d /dev/loop{ORIGINS['F'][0] + 10}")
    for n, (_, fs, _, _) in ORIGINS.items():
        if fs == "xfs":
            sh(f"mkfs.xfs -q -f -K {loop(n)}")
        else:
            sh(f"mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 {loop(n)}")
    load()
    cat = catalog()
    for n in ORIGINS:
        cblb(f"track {loop(n)}")
        write_files(n, "before-full")
    mark(out, "made")
    for n in BACKED_UP:
        snap = snapshot(n, cat)
        cblb(f"backup {snap} {work / (n + '.full.img')}")
        cblb(f"remove {snap}")
    mark(out, "full backups")
    for n in ORIGINS:
        if n in "AX":
            fio(n, 1)
        else:
            write_files(n, "after-full", 1)
    mark(out, "writes")
    out["tracking"] = tracking_json()
    # a clean shutdown: every origin unmounted (it is), then the save
    r = cblb(f"tracking save --dir {work / 'keep'} --json", check=False)
    out["save"] = json.loads(r.stdout)
    out["save_rc"] = r.returncode
    mark(out, "save")


def absent(work: Path, out: dict[str, Any]) -> None:
    """No module: whatever is written now, no map holds."""
    attach(work, "HY")
    out["module_loaded"] = os.path.exists("/sys/kernel/cblb")
    write_files("H", "while-absent", 1)
    write_files("Y", "while-absent", 1)


def boot2(work: Path, out: dict[str, Any]) -> None:
    names = "".join(ORIGINS)
    attach(work, names, {"F": work / "F-other.img"})
    load()
    r = cblb(f"tracking resume --dir {work / 'keep'} --json", check=False)
    out["resume"] = json.loads(r.stdout)
    out["resume_rc"] = r.returncode
    out["tracking"] = tracking_json()
    cat = catalog()
    mark(out, "resume")
    fio("X", 2)                     # xfs: resumed (its stamp held), tracking goes on
    for n in "A":  # the chain goes on: writes, snapshot, --since, restore = the snapshot
        fio(n, 2)
        mount(n)
        sh(f"dd if=/dev/urandom of=/tmp/mnt-{n}/live bs=1M count=2 conv=fsync status=none")
        snap = snapshot(n, cat)     # taken while mounted and written to
        umount(n)
        inc = work / f"{n}.inc.img"
        r = cblb(f"backup {snap} {inc} --since {work / (n + '.full.img')} --json", check=False)
        res: dict[str, Any] = {"rc": r.returncode, "out": r.stdout, "err": r.stderr}
        if r.returncode == 0:
            restored = f"/tmp/{n}.restored"
            cblb(f"restore {inc} {restored}")
            res["restored_sha256"] = sha256(restored)
            res["snapshot_sha256"] = sha256(f"/dev/{snap}")
            res["inc_bytes"] = os.stat(inc).st_blocks * 512
            res["full_bytes"] = os.stat(work / f"{n}.full.img").st_blocks * 512
            res["inc_record"] = json.loads(r.stdout)
            os.unlink(restored)
        cblb(f"remove {snap}")
        out[f"chain_{n}"] = res
    mark(out, "chain")
    for n in "CFH":  # a new generation: --since refuses with one line
        snap = snapshot(n, cat)
        r = cblb(f"backup {snap} /tmp/{n}.inc.img --since {work / (n + '.full.img')}",
                 check=False)
        out[f"since_{n}"] = {"rc": r.returncode, "err": r.stderr.strip()}
        cblb(f"remove {snap}")
    write_files("G", "after-resume", 1)   # then the crash: no unmount of the rest, no save


def boot3(work: Path, out: dict[str, Any]) -> None:
    attach(work, "G")
    load()
    r = cblb(f"tracking resume --dir {work / 'keep'} G --json".replace(" G ", f" {loop('G')} "),
             check=False)
    out["resume"] = json.loads(r.stdout)
    out["resume_rc"] = r.returncode
    cat = catalog()
    snap = snapshot("G", cat)
    r = cblb(f"backup {snap} /tmp/G.inc.img --since {work / 'G.full.img'}", check=False)
    out["since_G"] = {"rc": r.returncode, "err": r.stderr.strip()}
    cblb(f"remove {snap}")


def main() -> None:
    phase, work = sys.argv[1], Path(sys.argv[2])
    out: dict[str, Any] = {"phase": phase, "boot_id": Path(
        "/proc/sys/kernel/random/boot_id").read_text().strip()}
    t0 = time.monotonic()
    {"boot1": boot1, "absent": absent, "boot2": boot2, "boot3": boot3}[phase](work, out)
    out["seconds"] = round(time.monotonic() - t0, 1)
    out["kernel_log_bad"] = kernel_log_bad()
    crash = phase == "boot2"
    if not crash:
        sh("umount /tmp/cat", check=False)
        detach("".join(ORIGINS))
    (work / f"{phase}.json").write_text(json.dumps(out, indent=1))
    sh("sync")
    print(f"phase {phase} done in {out['seconds']} s", flush=True)
    if crash:  # the guest stops without a shutdown: no unmount, no save
        Path("/proc/sysrq-trigger").write_text("b")
        time.sleep(60)


if __name__ == "__main__":
    main()
