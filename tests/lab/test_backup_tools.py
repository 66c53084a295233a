"""`cblb run`, `cblb cat` and `cblb changes` with the real backup tools (Debian's restic,
borgbackup and tar) against the real module, on an ext4 origin under fio the whole time.

The reference for every restore is taken at the snapshot's instant, inside the run, by a
reader independent of the tool under test: `sha256sum` of every file of the mounted
snapshot (and, for the static files written before fio started, the checksums computed
when they were written), `dd` of the snapshot device for the device streams. A restore
must equal it file for file (same names, same contents) or block for block; the origin has
moved on meanwhile (fio), so a tool that read the live origin would differ.

Failures: a failing COMMAND, a killed one, SIGTERM to cblb and cblb itself SIGKILLed mid-run
leave no snapshot, mount, marker or folder after `cblb release --stale`; a second run of
the same origin is refused naming the first. The kernel log is checked after every test
(conftest.py). The commands are those of README's "With restic, borg, kopia, Proxmox".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from blocks import file_sha256 as sha256
from conftest import LoopDev, cleanup_snapshots, make_loop, mkfs, sh

pytestmark = [pytest.mark.lab, pytest.mark.tools]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path("/tmp/cblb-tools-bin")
STORE = "--file-size 16M --max-files 5"     # room for the whole 64 MiB origin
ENV_TOOLS = ("RESTIC_PASSWORD=lab RESTIC_CACHE_DIR=/tmp/cblb-restic-cache "
             "BORG_PASSPHRASE=lab BORG_BASE_DIR=/tmp/cblb-borg-base "
             "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes")




def tree_sums(root: Path) -> dict[str, str]:
    """Every regular file under root: relative path -> sha256."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = sha256(p)
    return out


def read_sums(path: Path) -> dict[str, str]:
    """sha256sum's output for `find . -type f` run in the snapshot's mount."""
    out = {}
    for line in path.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        out[name.removeprefix("./")] = digest
    return out


def cblb(cmd: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """A shell line with `cblb` (this checkout) and the tools' settings in the environment."""
    r = subprocess.run(f"export PATH={BIN}:$PATH {ENV_TOOLS}; {cmd}", shell=True,
                       capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise AssertionError(f"failed ({r.returncode}): {cmd}\n{r.stdout[-3000:]}\n"
                             f"{r.stderr[-3000:]}")
    return r


class Busy:
    """A 64 MiB ext4 origin with a tree of static files (checksums known) and fio
    rewriting busy/fio.dat at random the whole time; a 160 MiB ext4 for catalogs."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.origin: LoopDev = make_loop(64, "tools-origin")
        self.catalog_loop: LoopDev = make_loop(160, "tools-catalog")
        mkfs(self.origin.device, "ext4")
        mkfs(self.catalog_loop.device, "ext4")
        self.mnt = Path(f"/tmp/cblb-tools-mnt-{tag}")
        self.cat_mnt = Path(f"/tmp/cblb-tools-cat-{tag}")
        self.work = Path(f"/tmp/cblb-tools-work-{tag}")
        for p in (self.mnt, self.cat_mnt, self.work):
            p.mkdir()
        sh(f"mount {self.origin.device} {self.mnt}")
        sh(f"mount {self.catalog_loop.device} {self.cat_mnt}")
        self.static: dict[str, str] = {}
        for i in range(120):
            d = self.mnt / "static" / f"d{i % 7}"
            d.mkdir(parents=True, exist_ok=True)
            data = os.urandom(512 + (i * 7919) % 60000)
            (d / f"f{i}.bin").write_bytes(data)
            self.static[f"static/d{i % 7}/f{i}.bin"] = hashlib.sha256(data).hexdigest()
        big = os.urandom(4 << 20)
        (self.mnt / "static" / "big.bin").write_bytes(big)
        self.static["static/big.bin"] = hashlib.sha256(big).hexdigest()
        (self.mnt / "busy").mkdir()
        sh("sync")
        self.fio = subprocess.Popen(
            ["fio", "--name=busy", f"--filename={self.mnt}/busy/fio.dat", "--size=16m",
             "--rw=randwrite", "--bs=4k", "--time_based", "--runtime=3600", "--rate=512k",
             "--ioengine=psync", "--fsync=16", "--randrepeat=0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        dat = self.mnt / "busy" / "fio.dat"
        while not (dat.exists() and dat.stat().st_size == 16 << 20):
            assert time.monotonic() < deadline, "fio did not start"
            assert self.fio.poll() is None, "fio ended"
            time.sleep(0.5)
        time.sleep(2)

    @property
    def device(self) -> str:
        return self.origin.device

    def catalog(self) -> str:
        return f"--catalog {self.cat_mnt}/run {STORE}"

    def close(self) -> None:
        self.fio.terminate()
        self.fio.wait(timeout=60)
        for m in (self.mnt, self.cat_mnt):
            sh(f"umount {m}", check=False)
        self.origin.detach()
        self.catalog_loop.detach()
        sh(f"rm -rf {self.work}", check=False)


@pytest.fixture(scope="module")
def busy() -> Iterator[Busy]:
    BIN.mkdir(exist_ok=True)
    (BIN / "cblb").write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {ROOT}/.venv/bin/python "
                              "-m cblb.cli \"$@\"\n")
    (BIN / "cblb").chmod(0o755)
    b = Busy()
    yield b
    b.close()


@pytest.fixture
def run_env(cblb_module, busy: Busy) -> Iterator[tuple[Busy, Path, Path]]:
    """(the origin, a mount folder that does not exist yet, a scratch folder)."""
    tag = uuid.uuid4().hex[:6]
    snap_dir = Path(f"/tmp/cblb-s-{tag}")
    scratch = busy.work / tag
    scratch.mkdir()
    assert busy.fio.poll() is None, "fio stopped"
    yield busy, snap_dir, scratch
    assert busy.fio.poll() is None, "fio stopped during the test"
    cblb("cblb release --stale", check=False)       # a failed test's killed run
    cleanup_snapshots(cblb_module)
    sh(f"umount {snap_dir} 2>/dev/null; rm -rf {scratch}", check=False)
    nothing_left(snap_dir, busy)


def nothing_left(snap_dir: Path, busy: Busy) -> None:
    """No snapshot, mount, marker, run file or folder of a run."""
    j = json.loads(cblb("cblb list --json").stdout)
    assert j["snapshots"] == [], j["snapshots"]
    mounts = Path("/proc/self/mounts").read_text()
    assert str(snap_dir) not in mounts and "/dev/shadow-" not in mounts
    assert not snap_dir.exists()
    runs = Path("/run/cblb/runs")
    assert not runs.exists() or sorted(p.name for p in runs.iterdir()) == [".lock"]
    assert not (busy.cat_mnt / "run").exists()
    assert not list(Path("/dev").glob("shadow-*"))


def check_files(restored: Path, sums: Path, busy: Busy) -> None:
    """The restored tree equals the snapshot at its instant, file for file."""
    want = read_sums(sums)
    assert set(busy.static) <= set(want), "the snapshot lacks static files"
    for name, digest in busy.static.items():
        assert want[name] == digest, f"snapshot's {name} differs from what was written"
    got = tree_sums(restored)
    assert set(got) == set(want), (set(got) ^ set(want))
    bad = [n for n in want if got[n] != want[n]]
    assert not bad, f"restored files differ from the snapshot: {bad}"
    live = sha256(busy.mnt / "busy" / "fio.dat")
    assert live != want["busy/fio.dat"], "the origin did not move on: the test proves nothing"
    print(f"restore of {restored}: {len(got)} files equal to the snapshot "
          f"({len(busy.static)} also to their written checksums)")


def sums_then(sums: Path, tool: str) -> str:
    """COMMAND for cblb run: checksum every file of the mount, then run the tool."""
    return (f"sh -c 'cd \"$CBLB_MOUNTS\" && find . -type f -print0 | xargs -0 sha256sum "
            f"> {sums} && cd / && {tool}'")


def test_restic_backup_of_the_mount(run_env):
    busy, s, w = run_env
    repo = w / "restic"
    cblb(f"restic -r {repo} init")
    r = cblb(f"cblb run {busy.device} --mount {s} {busy.catalog()} -- "
             + sums_then(w / "sums", f"restic -r {repo} backup {s}"))
    assert "released shadow-" in r.stderr, r.stderr
    cblb(f"restic -r {repo} restore latest --target {w}/restored")
    check_files(w / "restored" / s.relative_to("/"), w / "sums", busy)


def test_borg_create_of_the_mount(run_env):
    busy, s, w = run_env
    repo = w / "borg"
    cblb(f"borg init -e none {repo}")
    cblb(f"cblb run {busy.device} --mount {s} {busy.catalog()} -- "
         + sums_then(w / "sums", f"borg create {repo}::snap {s}"))
    (w / "x").mkdir()
    cblb(f"cd {w}/x && borg extract {repo}::snap")
    check_files(w / "x" / s.relative_to("/"), w / "sums", busy)


def test_tar_of_the_mount(run_env):
    busy, s, w = run_env
    cblb(f"cblb run {busy.device} --mount {s} {busy.catalog()} -- "
         + sums_then(w / "sums", f"tar -C {s} -cf {w}/snap.tar ."))
    (w / "x").mkdir()
    sh(f"tar -C {w}/x -xf {w}/snap.tar")
    check_files(w / "x", w / "sums", busy)


def test_device_stream_restic_stdin_and_borg_read_special(run_env):
    """cblb cat | restic backup --stdin, and borg create --read-special of the device:
    each restored image equals dd's copy of the snapshot block for block."""
    busy, _s, w = run_env
    repo, brepo = w / "restic", w / "borg"
    cblb(f"restic -r {repo} init")
    cblb(f"borg init -e none {brepo}")
    t = time.monotonic()
    cmd = ("sh -c 'dd if=$CBLB_DEVICES of=" + str(w / "ref.img") + " bs=1M status=none && "
           "cblb cat $CBLB_SNAPSHOTS | restic -r " + str(repo) + " backup --stdin "
           "--stdin-filename origin.img && echo restic $(date +%s) >&2 && "
           "borg create --read-special " + str(brepo) + "::dev $CBLB_DEVICES'")
    r = cblb(f"date +%s >&2; cblb run {busy.device} {busy.catalog()} -- {cmd}; date +%s >&2")
    print("run:", " ".join(x for x in r.stderr.split() if x.isdigit() or x == "restic"))
    cblb(f"restic -r {repo} restore latest --target {w}/r")
    print(f"restic restore done at {time.monotonic() - t:.0f} s")
    (w / "b").mkdir()
    cblb(f"cd {w}/b && borg extract {brepo}::dev")
    print(f"borg extract done at {time.monotonic() - t:.0f} s")
    ref = w / "ref.img"
    assert ref.stat().st_size == 64 << 20
    for img in (w / "r" / "origin.img", next((w / "b" / "dev").glob("shadow-*"))):
        r = sh(f"cmp {ref} {img} && echo same", check=False)
        assert r.strip() == "same", f"{img} differs from the snapshot: {r}"
        print(f"{img}: {img.stat().st_size} bytes, equal to the snapshot block for block")
    live = sh(f"cmp {ref} {busy.device} >/dev/null 2>&1 && echo same || echo differs")
    assert live.strip() == "differs", "the origin did not move on"


def test_changes_update_an_image_in_place(run_env):
    """An image incremental from the module's map: the image of one run, brought to the
    next run's instant by 'cblb changes --since PREV 1<> IMAGE', equals that snapshot."""
    busy, _s, w = run_env
    img, prev, ref = w / "img", w / "prev.json", w / "ref.img"
    cblb(f"cblb run {busy.device} {busy.catalog()} -- "
         f"sh -c 'cblb cat $CBLB_SNAPSHOTS > {img} && cp $CBLB_CHANGED_FILE {prev}'")
    first = json.loads(prev.read_text())
    (w / "first.json").write_text(prev.read_text())
    time.sleep(3)                                   # fio writes meanwhile
    r = cblb(f"cblb run {busy.device} {busy.catalog()} -- "
             f"sh -c 'cblb changes $CBLB_SNAPSHOTS --since {prev} 1<> {img} && "
             f"cp $CBLB_CHANGED_FILE {prev} && cblb changes $CBLB_SNAPSHOTS --json && "
             f"dd if=$CBLB_DEVICES of={ref} bs=1M status=none'")
    rec = json.loads(r.stdout)
    assert rec["cbt"]["sequence"] == first["cbt"]["sequence"] + 1
    assert json.loads(prev.read_text())["cbt"] == rec["cbt"]     # kept for the next run
    assert 0 < rec["changed_bytes"] < 64 << 20
    assert sh(f"cmp {img} {ref} && echo same", check=False).strip() == "same"
    print(f"image updated in place with {rec['changed_bytes']} changed bytes in "
          f"{len(rec['extents'])} extents: equal to the second snapshot")
    # a record of another start is refused, naming the sequences
    r = cblb(f"cblb run {busy.device} {busy.catalog()} -- "
             f"sh -c 'cblb changes $CBLB_SNAPSHOTS --since {w}/first.json --json'",
             check=False)
    assert r.returncode == 1 and "sequence" in r.stderr and "Traceback" not in r.stderr


def test_failing_and_killed_commands_release(run_env):
    busy, s, w = run_env
    r = cblb(f"cblb run {busy.device} --mount {s} {busy.catalog()} -- sh -c 'exit 7'",
             check=False)
    assert r.returncode == 7, r.stderr
    nothing_left(s, busy)
    r = cblb(f"cblb run {busy.device} --mount {s} {busy.catalog()} -- sh -c 'kill -9 $$'",
             check=False)
    assert r.returncode == 128 + 9, r.stderr
    nothing_left(s, busy)
    # SIGTERM to cblb: passed on to the command, then released
    p = subprocess.Popen(f"export PATH={BIN}:$PATH; exec cblb run {busy.device} --mount {s} "
                         f"{busy.catalog()} -- sh -c 'touch {w}/up; sleep 300'", shell=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    wait_for(w / "up", p)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "released shadow-" in err
    nothing_left(s, busy)


def wait_for(path: Path, p: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert p.poll() is None, f"the run ended ({p.returncode}) before {path} appeared"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.3)


def test_cblb_killed_mid_run_is_cleaned_by_release_stale(run_env):
    busy, s, w = run_env
    # the command's sleep keeps its working folder in the mount: the cleanup must end it
    # (stdout and stderr to files: the orphaned sleep holds them open)
    with open(w / "err", "w") as err:
        p = subprocess.Popen(f"export PATH={BIN}:$PATH; exec cblb run {busy.device} --mount "
                             f"{s} {busy.catalog()} -- sh -c 'cd {s} && touch {w}/up && "
                             "sleep 300'", shell=True, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=err)
    wait_for(w / "up", p)
    assert str(s) in Path("/proc/self/mounts").read_text()
    p.kill()                                        # SIGKILL: no release of its own
    p.wait(timeout=60)
    j = json.loads(cblb("cblb list --json").stdout)
    assert len(j["snapshots"]) == 1, "the killed run left nothing to clean: test proves nothing"
    r = cblb("cblb release --stale --json")
    stale = json.loads(r.stdout)
    assert stale["left"] == [] and len(stale["stale_runs"]) == 1, stale
    assert stale["stale_runs"][0]["removed"] == [j["snapshots"][0]["name"]]
    nothing_left(s, busy)
    assert "no stale cblb run" in cblb("cblb release --stale").stdout


def test_second_run_of_the_origin_is_refused(run_env):
    busy, s, w = run_env
    p = subprocess.Popen(f"export PATH={BIN}:$PATH; exec cblb run {busy.device} --mount {s} "
                         f"{busy.catalog()} -- sh -c 'touch {w}/up; while [ ! -e {w}/go ]; "
                         "do sleep 0.2; done'", shell=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(w / "up", p)
    r = cblb(f"cblb run {busy.device} --mount {w}/other {busy.catalog()} -- true",
             check=False)
    assert r.returncode == 1
    assert f"{busy.device} is in another cblb run (pid {p.pid}" in r.stderr, r.stderr
    assert "snapshot shadow-" in r.stderr and r.stderr.count("\n") == 1
    (w / "go").touch()
    _out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    nothing_left(s, busy)


def systemd_exec_start(unit: Path, env: dict[str, str], instance: str) -> list[str]:
    """ExecStart of ``unit`` as systemd expands it (systemd.service "Command lines"):
    %i is the instance, a word "$VAR" becomes the variable's words, "${VAR}" one word."""
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    words = line.removeprefix("ExecStart=").replace("%i", instance).split()
    out: list[str] = []
    for w in words:
        if w.startswith("${") and w.endswith("}"):
            out.append(env.get(w[2:-1], ""))
        elif w.startswith("$"):
            out.extend(env.get(w[1:], "").split())
        else:
            out.append(w)
    return out


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def test_systemd_unit_runs_the_example_command(run_env):
    """cblb-backup@.service's ExecStart with backup-example.env (its COMMAND as shipped:
    restic backup $CBLB_MOUNTS), the origin, catalog and repository set for the lab."""
    busy, _s, w = run_env
    units = ROOT / "cblb" / "systemd"
    env = env_file(units / "backup-example.env")
    assert env["COMMAND"] == "restic backup $CBLB_MOUNTS"
    (w / "pw").write_text("lab\n")
    env.update(ORIGINS=busy.device, RUN_OPTIONS=busy.catalog(),
               RESTIC_REPOSITORY=str(w / "restic"), RESTIC_PASSWORD_FILE=str(w / "pw"))
    argv = systemd_exec_start(units / "cblb-backup@.service", env, "lab")
    assert argv[0] == "/usr/local/bin/cblb" and argv[-3:] == ["/bin/sh", "-c", env["COMMAND"]]
    argv[0] = str(BIN / "cblb")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC")} | env
    subprocess.run(["restic", "init"], env=full_env, check=True, capture_output=True)
    r = subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    mnt = Path("/run/cblb/backup-lab")
    assert not mnt.exists()
    subprocess.run(["restic", "restore", "latest", "--target", str(w / "r")], env=full_env,
                   check=True, capture_output=True)
    got = tree_sums(w / "r" / mnt.relative_to("/"))
    assert {n: got.get(n) for n in busy.static} == busy.static
    assert "busy/fio.dat" in got


def test_cat_throughput_against_dd(cblb_module, busy: Busy):
    """`cblb cat`'s reads (cblb/stream.py, in this process: under emulation the
    interpreter's start-up alone takes seconds) of an unchanged snapshot to /dev/null and
    through a pipe into dd, against dd of the origin (4 MiB O_DIRECT reads): best of three,
    on an idle 128 MiB loop device of random data. The command itself is timed too, and
    its bytes compared with the origin. The same figure is in make bench (full mode)."""
    from cblb import stream

    lp = make_loop(128, "tools-cat")
    try:
        sh(f"dd if=/dev/urandom of={lp.device} bs=4M count=32 oflag=direct status=none")
        cblb(f"cblb snapshot {lp.device} --catalog {busy.cat_mnt}/cat --file-size 8M "
             "--max-files 2")
        snap = "/dev/shadow-" + Path(lp.device).name

        def best(fn) -> float:
            return min(fn() for _ in range(3))

        def dd_secs(path: str) -> float:
            """dd's own time (its summary line), without its process start-up."""
            r = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=4M", "iflag=direct"],
                               capture_output=True, text=True, env={"LC_ALL": "C"},
                               check=True)
            return float(re.search(r"copied, ([0-9.e+-]+) s", r.stderr).group(1))

        def to_null() -> float:
            with open(os.devnull, "wb") as f:
                t = time.monotonic()
                stream.cat(snap, f.fileno())
                return time.monotonic() - t

        def to_pipe() -> float:
            dd = subprocess.Popen(["dd", "of=/dev/null", "bs=4M", "status=none"],
                                  stdin=subprocess.PIPE)
            time.sleep(1)                       # dd is up and reading
            t = time.monotonic()
            stream.cat(snap, dd.stdin.fileno())
            dd.stdin.close()
            assert dd.wait() == 0
            return time.monotonic() - t

        def wall(cmd: str) -> float:
            t = time.monotonic()
            cblb(cmd)
            return time.monotonic() - t

        dd, dd_snap = best(lambda: dd_secs(lp.device)), best(lambda: dd_secs(snap))
        cat, pipe = best(to_null), best(to_pipe)
        start = best(lambda: wall("cblb --version"))
        command = best(lambda: wall(f"cblb cat {Path(snap).name} > /dev/null"))
        same = cblb(f"cblb cat {Path(snap).name} | cmp - {lp.device} && echo same", check=False)
        assert same.stdout.strip() == "same", same.stderr
        mb = 128 / 1.048576
        print(f"dd of the origin {mb / dd:.0f} MB/s; dd of the snapshot {mb / dd_snap:.0f} MB/s "
              f"({dd / dd_snap:.2f}); cblb cat to /dev/null {mb / cat:.0f} MB/s ({dd / cat:.2f} "
              f"of dd of the origin), through a pipe into dd {mb / pipe:.0f} MB/s "
              f"({dd / pipe:.2f}); the command: {command:.2f} s, of which {start:.2f} s "
              "is the interpreter's start-up ('cblb --version')")
        assert dd / cat > 0.5, "cblb cat reads far slower than dd"
    finally:
        cleanup_snapshots(cblb_module)
        sh(f"rm -rf {busy.cat_mnt}/cat", check=False)
        lp.detach()
