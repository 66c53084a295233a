"""`cblb run`, `cblb cat`, `cblb changes` and `cblb release --stale` on the host, through
the real control library over the fake module (cblb/fake/): the command's environment and
exit code, the release on failure and on signals, the refusal of a second run, the cleanup
after a killed run, and the bytes `cat` and `changes` write. The lab runs the same with
the real module and real restic, borg and tar (tests/lab/test_backup_tools.py)."""

from __future__ import annotations

import errno as E
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from cblb import oneshot, stream
from cblb.cli import main, split_command
from cblb.control import Controller
from cblb.errors import CblbError
from cblb.fake import FakeSystem
from cblb.run import Runs, process_start

MIB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeSystem]:
    f = FakeSystem(tmp_path / "fake", origin_bytes=64 * MIB)
    yield f


@pytest.fixture
def ctl(fake: FakeSystem) -> Controller:
    return Controller(system=fake)


def env_dump(path: Path, code: int = 0) -> list[str]:
    """A command that writes its CBLB_* variables to ``path`` as JSON, then exits ``code``."""
    prog = ("import json, os, sys; json.dump({k: v for k, v in os.environ.items() "
            f"if k.startswith('CBLB_')}}, open({str(path)!r}, 'w')); sys.exit({code})")
    return [sys.executable, "-c", prog]


def run_args(tmp_path: Path, *origins: str, mount: bool = True) -> list[str]:
    args = ["run", *origins, "--catalog", str(tmp_path / "cat")]
    return args + (["--mount", str(tmp_path / "mnt")] if mount else [])


def nothing_left(ctl: Controller, fake: FakeSystem, tmp_path: Path) -> None:
    assert ctl.snapshots() == []
    assert fake.mount_table == []
    assert not (tmp_path / "mnt").exists()
    assert not (tmp_path / "cat").exists()
    runs = fake.run_dir / "runs"
    assert [p.name for p in runs.iterdir()] == [".lock"] if runs.exists() else True


def test_split_command_takes_everything_after_the_first_separator() -> None:
    assert split_command(["run", "/dev/a", "--mount", "/m", "--", "tar", "--", "-x"]) == (
        ["run", "/dev/a", "--mount", "/m"], ["tar", "--", "-x"])
    assert split_command(["backup", "a", "--", "b"]) == (["backup", "a", "--", "b"], None)
    assert split_command(["run", "/dev/a"]) == (["run", "/dev/a"], None)


def test_run_gives_the_command_its_snapshot_and_returns_its_code(
        fake: FakeSystem, ctl: Controller, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "env.json"
    assert main(run_args(tmp_path, "/dev/vdb1") + ["--", *env_dump(out, 3)], ctl) == 3
    env = json.loads(out.read_text())
    assert env["CBLB_ORIGINS"] == "/dev/vdb1"
    assert env["CBLB_SNAPSHOTS"] == "shadow-vdb1"
    assert env["CBLB_DEVICES"] == "/dev/shadow-vdb1"
    assert env["CBLB_MOUNTS"] == str(tmp_path / "mnt")
    assert env["CBLB_SET"] == ""
    assert int(env["CBLB_START_TIME_NS"]) > 0
    assert env["CBLB_SEQUENCE"] == "1" and len(env["CBLB_GENERATION"]) == 36
    assert env["CBLB_CHANGED_FILE"].startswith(str(fake.run_dir / "runs"))
    err = capsys.readouterr().err
    assert "released shadow-vdb1" in err and "Traceback" not in err
    nothing_left(ctl, fake, tmp_path)
    # the mount was read-only, nosuid, nodev, noexec
    mount = next(p for p in fake.programs if p[0] == "mount")
    assert mount[2].startswith("ro,nosuid,nodev,noexec")


def test_changed_file_is_the_changes_record(fake: FakeSystem, ctl: Controller,
                                            tmp_path: Path) -> None:
    copy = tmp_path / "changes.json"
    cmd = ["sh", "-c", f'cp "$CBLB_CHANGED_FILE" {copy}']
    assert main(run_args(tmp_path, "/dev/vdb1") + ["--", *cmd], ctl) == 0
    rec = json.loads(copy.read_text())
    assert rec["kind"] == "changes" and rec["snapshot"] == "shadow-vdb1"
    assert rec["cbt"]["sequence"] == 1 and rec["size"] == 64 * MIB
    fake.write_origin("/dev/vdb1", 5 * MIB, b"x" * 8192)
    assert main(run_args(tmp_path, "/dev/vdb1") + ["--", *cmd], ctl) == 0
    rec2 = json.loads(copy.read_text())
    assert rec2["cbt"]["sequence"] == 2
    assert rec2["extents"] and all(e["offset"] <= 5 * MIB < e["offset"] + e["length"]
                                   for e in rec2["extents"])
    assert rec2["changed_bytes"] == sum(e["length"] for e in rec2["extents"])


def test_run_of_a_set_lists_every_member(fake: FakeSystem, ctl: Controller,
                                        tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    args = run_args(tmp_path, "/dev/vdb1", "/dev/vdb2") + ["--set", "db", "--",
                                                           *env_dump(out)]
    assert main(args, ctl) == 0
    env = json.loads(out.read_text())
    assert env["CBLB_SNAPSHOTS"] == "shadow-vdb1 shadow-vdb2"
    assert env["CBLB_MOUNTS"] == f"{tmp_path}/mnt/shadow-vdb1 {tmp_path}/mnt/shadow-vdb2"
    assert env["CBLB_SET"] == "db"
    assert len(env["CBLB_CHANGED_FILE"].split()) == 2
    nothing_left(ctl, fake, tmp_path)


def test_failing_and_missing_commands_release(fake: FakeSystem, ctl: Controller,
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(run_args(tmp_path, "/dev/vdb1") + ["--", "false"], ctl) == 1
    nothing_left(ctl, fake, tmp_path)
    assert main(run_args(tmp_path, "/dev/vdb1") + ["--", "no-such-program-x"], ctl) == 127
    assert "no-such-program-x: command not found" in capsys.readouterr().err
    nothing_left(ctl, fake, tmp_path)


def test_a_killed_command_gives_128_plus_its_signal(fake: FakeSystem, ctl: Controller,
                                                    tmp_path: Path) -> None:
    assert main(run_args(tmp_path, "/dev/vdb1") + ["--", "sh", "-c", "kill -9 $$"], ctl) == 137
    nothing_left(ctl, fake, tmp_path)


def test_sigterm_to_cblb_is_passed_on_and_released(fake: FakeSystem, ctl: Controller,
                                                   tmp_path: Path) -> None:
    # the command's parent is this process, running cblb: it sends cblb SIGTERM
    cmd = ["sh", "-c", "kill -TERM $PPID; sleep 20"]
    t = time.monotonic()
    assert main(run_args(tmp_path, "/dev/vdb1") + ["--", *cmd], ctl) == 128 + signal.SIGTERM
    assert time.monotonic() - t < 10
    nothing_left(ctl, fake, tmp_path)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL     # handlers given back


def test_no_command_and_bad_mount_are_refused(fake: FakeSystem, ctl: Controller,
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(run_args(tmp_path, "/dev/vdb1"), ctl) == 1
    assert "no command given: put it after '--'" in capsys.readouterr().err
    full = tmp_path / "mnt"
    full.mkdir()
    (full / "keep").write_text("x")
    assert main(run_args(tmp_path, "/dev/vdb1") + ["--", "true"], ctl) == 1
    err = capsys.readouterr().err
    assert "is not empty: mounting there would hide its files" in err
    assert ctl.snapshots() == [] if ctl.loaded() else True
    assert (full / "keep").exists()


def test_second_run_of_an_origin_is_refused_naming_the_running_one(
        fake: FakeSystem, ctl: Controller, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    runs = Runs(ctl)
    with runs.locked():      # a live run: its marker flocked, as cblb run holds it
        live = runs.create({"pid": 4242, "started_ns": time.time_ns(),
                            "command": ["restic", "backup", "/mnt/s"],
                            "members": [{"name": "shadow-vdb1", "origin": "/dev/vdb1",
                                         "origin_dev": "254:17", "start_time_ns": 0}],
                            "made": [], "pgid": 0, "child": 0, "child_start": ""})
    out = tmp_path / "env.json"
    assert main(run_args(tmp_path, "/dev/vdb1") + ["--", *env_dump(out)], ctl) == 1
    err = capsys.readouterr().err
    assert "/dev/vdb1 is in another cblb run (pid 4242" in err
    assert "shadow-vdb1" in err and "restic backup /mnt/s" in err and "kill 4242" in err
    assert not out.exists() and ctl.snapshots() == []
    # another origin runs meanwhile; the live run is not taken for a stale one
    assert main(run_args(tmp_path, "/dev/vdb2") + ["--", "true"], ctl) == 0
    assert main(["release", "--stale"], ctl) == 0
    assert live.path.exists()
    os.close(live.fd)


def test_release_stale_cleans_what_a_killed_run_left(fake: FakeSystem, ctl: Controller,
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    mnt, cat = tmp_path / "mnt", tmp_path / "cat"
    s = oneshot.snapshot(ctl, "/dev/vdb1", str(mnt), catalog=str(cat))
    leftover = subprocess.Popen(["sleep", "60"], process_group=0)   # the command, orphaned
    runs = Runs(ctl)
    with runs.locked():
        m = runs.create({"pid": 999999, "started_ns": time.time_ns(), "command": ["tar"],
                         "members": [{"name": s.name, "origin": "/dev/vdb1",
                                      "origin_dev": s.origin_dev,
                                      "start_time_ns": s.start_time_ns}],
                         "made": [str(mnt), str(cat)], "pgid": leftover.pid,
                         "child": leftover.pid, "child_start": process_start(leftover.pid)})
    m.files.mkdir()
    (m.files / "x.changes.json").write_text("{}")
    os.close(m.fd)           # SIGKILL: the kernel drops the flock
    assert main(["release", "--stale", "--json"], ctl) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["left"] == [] and len(j["stale_runs"]) == 1
    r = j["stale_runs"][0]
    assert r["removed"] == [s.name] and r["unmounted"] == [str(mnt)] and r["ended_command"]
    assert leftover.wait(timeout=10) == -signal.SIGTERM
    nothing_left(ctl, fake, tmp_path)
    assert not m.files.exists()
    assert main(["release", "--stale"], ctl) == 0
    assert "no stale cblb run" in capsys.readouterr().out


def test_next_run_cleans_a_stale_one_first(fake: FakeSystem, ctl: Controller, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    s = oneshot.snapshot(ctl, "/dev/vdb1", None, catalog=str(tmp_path / "cat"))
    runs = Runs(ctl)
    with runs.locked():
        m = runs.create({"pid": 999998, "started_ns": 0, "command": ["tar"],
                         "members": [{"name": s.name, "origin": "/dev/vdb1",
                                      "origin_dev": s.origin_dev, "start_time_ns": 0}],
                         "made": [str(tmp_path / "cat")], "pgid": 0, "child": 0,
                         "child_start": ""})
    os.close(m.fd)
    assert main(run_args(tmp_path, "/dev/vdb1") + ["--", "true"], ctl) == 0
    assert "cleaned up after run 999998, which was killed" in capsys.readouterr().err
    nothing_left(ctl, fake, tmp_path)


def test_stale_cleanup_spares_a_snapshot_taken_again_since(fake: FakeSystem, ctl: Controller,
                                                           tmp_path: Path) -> None:
    s = oneshot.snapshot(ctl, "/dev/vdb1", None, catalog=str(tmp_path / "cat"))
    runs = Runs(ctl)
    with runs.locked():
        m = runs.create({"pid": 999997, "command": ["tar"], "made": [],
                         "members": [{"name": s.name, "origin": "/dev/vdb1",
                                      "origin_dev": s.origin_dev,
                                      "start_time_ns": s.start_time_ns - 1}]})
    os.close(m.fd)
    assert [c.removed for c in runs.release_stale()] == [[]]
    assert [x.name for x in ctl.snapshots()] == [s.name]


# ---- cat and changes ---------------------------------------------------------------------
def _stdout_to(monkeypatch: pytest.MonkeyPatch, path: Path, mode: str = "w") -> None:
    monkeypatch.setattr(sys, "stdout", open(path, mode))


def test_cat_writes_the_snapshot_as_it_was(fake: FakeSystem, ctl: Controller, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    fake.write_origin("/dev/vdb1", 3 * MIB + 17, b"before")
    s = oneshot.snapshot(ctl, "/dev/vdb1", None, catalog=str(tmp_path / "cat"))
    fake.write_origin("/dev/vdb1", 3 * MIB + 17, b"after!")
    img = tmp_path / "img"
    _stdout_to(monkeypatch, img)
    assert main(["cat", s.name], ctl) == 0
    sys.stdout.close()
    data = img.read_bytes()
    assert len(data) == 64 * MIB and data[3 * MIB + 17:3 * MIB + 23] == b"before"
    assert data == Path(fake.device_file(s.device)).read_bytes()


def test_cat_through_a_pipe(fake: FakeSystem, ctl: Controller, tmp_path: Path) -> None:
    s = oneshot.snapshot(ctl, "/dev/vdb1", None, catalog=str(tmp_path / "cat"))
    fake.write_origin("/dev/vdb1", 0, b"now")
    r, w = os.pipe()
    reader = subprocess.Popen(["sha256sum"], stdin=r, stdout=subprocess.PIPE, text=True)
    os.close(r)
    assert stream.cat(fake.device_file(s.device), w) == 64 * MIB
    os.close(w)
    got = reader.communicate()[0].split()[0]
    want = subprocess.run(["sha256sum", fake.device_file(s.device)], capture_output=True,
                          text=True).stdout.split()[0]
    assert got == want


def test_cat_refuses_an_appending_output_and_an_inactive_snapshot(
        fake: FakeSystem, ctl: Controller, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    ctl.load()
    ctl.create("c", "/dev/vdb1")
    assert main(["cat", "c"], ctl) == 1
    assert "only an active snapshot can be copied" in capsys.readouterr().err
    with pytest.raises(CblbError, match="opened for appending"):
        with open(tmp_path / "x", "ab") as f:
            stream.out_kind(f.fileno())


def test_changes_json_since_and_stream(fake: FakeSystem, ctl: Controller, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    cat = str(tmp_path / "cat")
    s = oneshot.snapshot(ctl, "/dev/vdb1", None, catalog=cat)
    img = tmp_path / "full.img"
    with open(img, "wb") as f:
        stream.cat(fake.device_file(s.device), f.fileno())
    assert main(["changes", s.name, "--json"], ctl) == 0
    first = tmp_path / "1.json"
    first.write_text(capsys.readouterr().out)
    oneshot.release(ctl, [s.name])
    fake.write_origin("/dev/vdb1", 10 * MIB + 5, b"y" * 10000)
    fake.write_origin("/dev/vdb1", 40 * MIB, b"z" * 4096)
    s = oneshot.snapshot(ctl, "/dev/vdb1", None, catalog=cat)
    assert main(["changes", s.name, "--json", "--since", str(first)], ctl) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["cbt"]["sequence"] == 2
    assert [(e["offset"] <= 10 * MIB + 5) for e in rec["extents"]][0]
    # in place: the image of start 1 becomes the image of start 2
    monkeypatch.setattr(sys, "stdout", os.fdopen(os.open(img, os.O_RDWR), "w"))
    assert main(["changes", s.name, "--since", str(first)], ctl) == 0
    sys.stdout.close()
    assert img.read_bytes() == Path(fake.device_file(s.device)).read_bytes()
    # a new file: sparse, the device's size, only the changes in it
    delta = tmp_path / "delta.img"
    _stdout_to(monkeypatch, delta)
    assert main(["changes", s.name], ctl) == 0
    sys.stdout.close()
    assert delta.stat().st_size == 64 * MIB and delta.stat().st_blocks * 512 < 4 * MIB
    d = delta.read_bytes()
    assert d[10 * MIB + 5:10 * MIB + 10005] == b"y" * 10000 and d[:MIB] == bytes(MIB)
    # a pipe: the whole length, zeros between the changes
    r, w = os.pipe()
    reader = subprocess.Popen(["cat"], stdin=r, stdout=open(tmp_path / "piped", "wb"))
    os.close(r)
    ext = [(e["offset"], e["length"]) for e in rec["extents"]]
    stream.write_extents(fake.device_file(s.device), ext, w)
    os.close(w)
    reader.wait()
    assert (tmp_path / "piped").read_bytes() == d
    # --since a record that is not the previous start's: refused, one line
    assert main(["changes", s.name, "--since", str(tmp_path / "nothing")], ctl) == 1
    assert "no such file" in capsys.readouterr().err
    oneshot.release(ctl, [s.name])
    s = oneshot.snapshot(ctl, "/dev/vdb1", None, catalog=cat)
    monkeypatch.undo()                      # stdout is the captured one again
    assert main(["changes", s.name, "--json", "--since", str(first)], ctl) == 1
    out, err = capsys.readouterr()
    assert "sequence 1" in err and "sequence 3" in err and "Traceback" not in err
    assert "sequence 3" in json.loads(out)["error"]     # --json: the refusal on stdout too


# ---- the systemd units ---------------------------------------------------------------------
def test_systemd_units_verify(tmp_path: Path) -> None:
    """The shipped units pass systemd-analyze (with cblb's path replaced by an executable
    that exists here, as ./install systemd replaces it by cblb's)."""
    units = ROOT / "cblb" / "systemd"
    service = (units / "cblb-backup@.service").read_text()
    assert "-- /bin/sh -c ${COMMAND}" in service and "KillMode=mixed" in service
    env = (units / "backup-example.env").read_text()
    assert "\nCOMMAND=restic backup $CBLB_MOUNTS\n" in env
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    for name in ("cblb-backup@.service", "cblb-backup@.timer"):
        text = (units / name).read_text().replace("/usr/local/bin/cblb", "/bin/true")
        (tmp_path / name.replace("@.", "@x.")).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no",
                        str(tmp_path / "cblb-backup@x.service"),
                        str(tmp_path / "cblb-backup@x.timer")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_a_map_read_after_the_snapshot_was_taken_again_is_refused(
        fake: FakeSystem, ctl: Controller, tmp_path: Path) -> None:
    """The map must belong to the start the caller checked: a remove and a new start in
    between give another start's map, refused with EAGAIN."""
    cat = str(tmp_path / "cat")
    s = oneshot.snapshot(ctl, "/dev/vdb1", None, catalog=cat)
    seen = ctl.snapshot(s.name)
    assert ctl.changed_blocks(s.name, expect=seen)[1]
    oneshot.release(ctl, [s.name])
    oneshot.snapshot(ctl, "/dev/vdb1", None, catalog=cat)
    with pytest.raises(CblbError) as e:
        ctl.changed_blocks(s.name, expect=seen)
    assert e.value.errno == E.EAGAIN
