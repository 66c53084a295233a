"""Snapshot sets on the host (kmod/doc/SETS.md): the fake module's `startset` (all members
start at one instant or none does), and `cblb snapshot A B ...` / `cblb release` driving it
through the real control library."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from cblb.cli import main
from cblb.control import Controller
from cblb.errors import CblbError
from cblb.fake import FakeSystem
from cblb.model import SetMember, SnapshotState

MIB = 1 << 20


@pytest.fixture
def fake(tmp_path: Path) -> FakeSystem:
    return FakeSystem(tmp_path / "fake", origin_bytes=256 * MIB,
                      aliases={"/dev/disk/by-label/data": "/dev/vdb1"})


def read(fake: FakeSystem, *parts: str) -> str:
    return fake.sysfs.joinpath(*parts).read_text().strip()


def cmd_errno(fake: FakeSystem, line: str) -> int:
    with pytest.raises(OSError) as ei:
        fake.write_command(line)
    return ei.value.errno or 0


# ---- the fake module's startset ----------------------------------------------------------------
def test_insmod_makes_an_empty_set_refused(fake: FakeSystem) -> None:
    fake.run(["insmod", "x.ko", "total=4"])
    assert (fake.sysfs / "set_refused").read_text() == "\n"


def test_startset_is_all_or_nothing(fake: FakeSystem, tmp_path: Path) -> None:
    fake.run(["insmod", "x.ko", "total=4"])
    fake.write_command("create a /dev/vdb1 begin end")
    fake.write_command("create b /dev/vdb2 begin end")
    assert read(fake, "a", "set") == ""
    cat = tmp_path / "cat"
    cat.mkdir()

    # the second member's catalog is missing: nothing starts, the member is named
    assert cmd_errno(fake, f"startset db a {cat} 2048 4 b {cat}/missing 2048 4") == errno.ENOENT
    assert read(fake, "set_refused") == "db b"
    for n in ("a", "b"):
        assert read(fake, n, "state") == "created"
        assert read(fake, n, "set") == "" and read(fake, n, "start_time_ns") == "0"

    fake.write_command(f"startset db a {cat} 2048 4 b {cat} 4096 8")
    assert read(fake, "set_refused") == ""
    assert [read(fake, n, "state") for n in ("a", "b")] == ["active", "active"]
    assert [read(fake, n, "set") for n in ("a", "b")] == ["db", "db"]
    t = read(fake, "a", "start_time_ns")
    assert int(t) > 0 and read(fake, "b", "start_time_ns") == t
    assert read(fake, "b", "max_files") == "8"

    # a started member refuses the next set: EALREADY, the others stay created
    fake.write_command("create c /dev/loop0 begin end")
    assert cmd_errno(fake, f"startset two c {cat} 2048 4 a {cat} 2048 4") == errno.EALREADY
    assert read(fake, "set_refused") == "two a"
    assert read(fake, "c", "state") == "created"

    # the seed's start is a set of one without a name: set_refused stays as it was
    fake.write_command(f"start c {cat} 2048 4")
    assert read(fake, "c", "set") == "" and read(fake, "set_refused") == "two a"


@pytest.mark.parametrize("words,err,refused", [
    ("db a {cat} 2048 4 ghost {cat} 2048 4", errno.ENOENT, "db ghost"),
    ("db a {cat} 2048 4 a {cat} 2048 4", errno.EINVAL, "db a"),        # named twice
    ("db a {cat} 2048 4 b {cat} 4 4", errno.EINVAL, "db b"),           # file size < 8
    ("db a {cat} 2048 4 b {cat} 2048 5000", errno.EINVAL, "db b"),     # max files > 4096
    ("db a {cat}/afile 2048 4", errno.ENOTDIR, "db a"),
    ("bad/name a {cat} 2048 4", errno.EINVAL, "earlier refusal"),      # before any member
    ("db a {cat} 2048 x", errno.EINVAL, "earlier refusal"),
    ("db a {cat} 2048", errno.EINVAL, "earlier refusal"),              # not groups of four
    ("db", errno.EINVAL, "earlier refusal"),
    ("db" + " a {cat} 2048 4" * 17, errno.E2BIG, "earlier refusal"),   # 17 members
])
def test_startset_refusals_match_the_module(fake: FakeSystem, tmp_path: Path, words: str,
                                            err: int, refused: str) -> None:
    fake.run(["insmod", "x.ko", "total=4"])
    fake.write_command("create a /dev/vdb1 begin end")
    fake.write_command("create b /dev/vdb2 begin end")
    (tmp_path / "afile").write_text("x")
    (fake.sysfs / "set_refused").write_text("earlier refusal\n")
    assert cmd_errno(fake, "startset " + words.replace("{cat}", str(tmp_path))) == err
    assert read(fake, "set_refused") == refused
    assert [read(fake, n, "state") for n in ("a", "b")] == ["created", "created"]


def test_controller_names_the_member_the_module_refused(fake: FakeSystem, ctl: Controller,
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal only the kernel sees (here: b's catalog on a device built on an origin)
    comes back as the member's reason, and no member is started."""
    ctl.load(4)
    ctl.create("a", "/dev/vdb1")
    ctl.create("b", "/dev/vdb2")
    real_prepare = fake.module._prepare_member

    def prepare(catalog: str) -> None:
        if catalog.endswith("/b"):
            raise OSError(errno.ELOOP, catalog)
        real_prepare(catalog)

    monkeypatch.setattr(fake.module, "_prepare_member", prepare)
    for n in ("a", "b"):
        (tmp_path / n).mkdir()
    members = [SetMember(n, str(tmp_path / n), 2048, 4) for n in ("a", "b")]
    with pytest.raises(CblbError) as ei:
        ctl.start_set("db", members)
    assert ei.value.errno == errno.ELOOP
    assert str(ei.value).startswith("set db not started: member b: catalog")
    assert "device built on the origin" in str(ei.value)
    assert [s.state for s in ctl.snapshots()] == [SnapshotState.CREATED] * 2
    monkeypatch.undo()
    snaps = ctl.start_set("db", members)
    assert [(s.state, s.set_name) for s in snaps] == [(SnapshotState.ACTIVE, "db")] * 2
    assert snaps[0].start_time_ns == snaps[1].start_time_ns > 0


# ---- cblb snapshot with several origins -------------------------------------------------------
def run_json(ctl: Controller, capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main([*argv, "--json"], ctl) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def refused(ctl: Controller, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv), ctl) == 1
    err = capsys.readouterr().err
    assert err.startswith("cblb: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_snapshot_several_origins_is_one_set(fake: FakeSystem, ctl: Controller, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cat, mnt = tmp_path / "cat", tmp_path / "mnt"
    j = run_json(ctl, capsys, "snapshot", "/dev/vdb1", "/dev/vdb2", "--catalog", str(cat),
                 "--mount", str(mnt), "--set", "db", "--max-files", "3")
    assert j["set"] == "db" and set(j) == {"set", "start_time_ns", "snapshots"}
    assert [s["name"] for s in j["snapshots"]] == ["shadow-vdb1", "shadow-vdb2"]
    for s in j["snapshots"]:
        assert s["set_name"] == "db" and s["state"] == "active"
        assert s["start_time_ns"] == j["start_time_ns"] > 0
        assert s["catalog"] == str(cat / s["name"]) and (cat / s["name"]).is_dir()
        assert s["mountpoint"] == str(mnt / s["name"]) and s["max_files"] == 3
    # one startset for both, no single start; the module was loaded for it
    assert [c.split()[0] for c in fake.commands] == ["create", "create", "startset"]
    assert fake.commands[-1].startswith(f"startset db shadow-vdb1 {cat}/shadow-vdb1 ")
    assert [m.target for m in fake.mount_table] == [str(mnt / "shadow-vdb1"),
                                                    str(mnt / "shadow-vdb2")]

    # cblb list shows the set
    assert main(["list"], ctl) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["NAME", "SET"]
    rows = lines[2:lines.index("")]                      # the tracked origins follow
    assert [ln.split()[:2] for ln in rows] == [["shadow-vdb1", "db"], ["shadow-vdb2", "db"]]

    # releasing the set's mount folder releases every member, even one unmounted by hand
    assert main(["umount", "shadow-vdb2"], ctl) == 0
    capsys.readouterr()
    j = run_json(ctl, capsys, "release", str(mnt))
    assert j == {"names": ["shadow-vdb1", "shadow-vdb2"], "removed": True}
    assert ctl.snapshots() == [] and fake.mount_table == []


def test_snapshot_set_defaults_and_human_output(fake: FakeSystem, ctl: Controller,
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["snapshot", "/dev/vdb1", "/dev/vdb2", "--catalog", str(tmp_path)], ctl) == 0
    out = capsys.readouterr().out
    assert out.startswith("set set-shadow-vdb1: 2 snapshots at one point in time, ")
    assert "shadow-vdb2: snapshot of /dev/vdb2" in out
    assert out.rstrip().endswith("undo with: cblb release set-shadow-vdb1")
    assert {s.set_name for s in ctl.snapshots()} == {"set-shadow-vdb1"}
    # the set name is taken now: another set may not reuse it
    err = refused(ctl, capsys, "snapshot", "/dev/loop0", "--catalog", str(tmp_path / "l"),
                  "--set", "set-shadow-vdb1")
    assert "a set named set-shadow-vdb1 exists already (shadow-vdb1, shadow-vdb2)" in err
    assert main(["release", "set-shadow-vdb1"], ctl) == 0
    assert capsys.readouterr().out == "shadow-vdb1: removed\nshadow-vdb2: removed\n"
    assert ctl.snapshots() == []


def test_snapshot_set_undoes_everything_on_failure(fake: FakeSystem, ctl: Controller,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cat, mnt = tmp_path / "cat", tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "shadow-vdb2").write_text("in the way")    # the second mount cannot happen
    err = refused(ctl, capsys, "snapshot", "/dev/vdb1", "/dev/vdb2", "--catalog", str(cat),
                  "--mount", str(mnt))
    assert f"{mnt}/shadow-vdb2 exists and is not a folder" in err
    assert ctl.snapshots() == [] and fake.mount_table == []
    assert not (mnt / "shadow-vdb1").exists()           # the folder it made is gone
    assert sorted(os.listdir(cat)) == []                # and so are the catalogs
    assert [c.split()[0] for c in fake.commands] == ["create", "create", "startset",
                                                     "remove", "remove"]

    # a catalog that cannot be made: nothing was created in the module
    (cat / "shadow-vdb2").write_text("in the way")
    err = refused(ctl, capsys, "snapshot", "/dev/vdb1", "/dev/vdb2", "--catalog", str(cat))
    assert f"cannot create the catalog {cat}/shadow-vdb2: File exists" in err
    assert os.listdir(cat) == ["shadow-vdb2"] and ctl.snapshots() == []
    (cat / "shadow-vdb2").unlink()
    monkey_mnt = tmp_path / "new-mnt"
    real_mount = ctl.mount

    def failing_mount(name: str, target: str, allow_exec: bool = False) -> str:
        if name == "shadow-vdb2":
            raise CblbError("mount /dev/shadow-vdb2 failed: wrong fs type", errno.EIO)
        return real_mount(name, target, allow_exec)

    # a mount that fails: the mount folder it made is removed too
    ctl.mount = failing_mount  # type: ignore[method-assign]
    err = refused(ctl, capsys, "snapshot", "/dev/vdb1", "/dev/vdb2", "--catalog", str(cat),
                  "--mount", str(monkey_mnt))
    assert "wrong fs type" in err
    assert not monkey_mnt.exists() and ctl.snapshots() == [] and fake.mount_table == []


def test_snapshot_set_refused_by_the_module_leaves_nothing(fake: FakeSystem, ctl: Controller,
                                                           tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    def prepare(catalog: str) -> None:
        if catalog.endswith("shadow-vdb2"):
            raise OSError(errno.EXDEV, catalog)

    monkeypatch.setattr(fake.module, "_prepare_member", prepare)
    err = refused(ctl, capsys, "snapshot", "/dev/vdb1", "/dev/vdb2", "--catalog",
                  str(tmp_path / "cat"), "--set", "db")
    assert err.startswith("cblb: set db not started: member shadow-vdb2: catalog ")
    assert ctl.snapshots() == []


@pytest.mark.parametrize("argv,message", [
    (["/dev/vdb1", "/dev/vdb2", "--name", "x"], "--name names one snapshot; with several origins"),
    (["/dev/vdb1", "/dev/disk/by-label/data"], "are the same device; give each origin once"),
    (["/dev/vdb1", "/dev/nope"], "/dev/nope: no such device"),
    (["/dev/vdb1", "/dev/vdb2", "--set", "bad name"], "invalid set name 'bad name'"),
])
def test_snapshot_set_refusals_before_anything_is_done(fake: FakeSystem, ctl: Controller,
                                                       capsys: pytest.CaptureFixture[str],
                                                       argv: list[str], message: str) -> None:
    assert message in refused(ctl, capsys, "snapshot", *argv)
    assert fake.commands == [] and fake.programs == []     # not even loaded


def test_snapshot_set_of_more_than_16_is_refused(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    origins = {f"/dev/sd{chr(97 + i)}": (8, 16 * i) for i in range(17)}
    fake = FakeSystem(tmp_path / "f", origins=origins, total=32)
    err = refused(Controller(system=fake), capsys, "snapshot", *origins)
    assert "a set has 1..16 origins, not 17" in err and fake.commands == []


def test_snapshot_one_origin_is_unchanged(fake: FakeSystem, ctl: Controller, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cat = tmp_path / "cat"
    j = run_json(ctl, capsys, "snapshot", "/dev/vdb1", "--catalog", str(cat), "--mount",
                 str(tmp_path / "m"))
    assert j["name"] == "shadow-vdb1" and j["catalog"] == str(cat) and j["set_name"] == ""
    assert j["mountpoint"] == str(tmp_path / "m")
    assert fake.commands[-1].startswith(f"start shadow-vdb1 {cat} ")
    assert run_json(ctl, capsys, "release", str(tmp_path / "m")) == {
        "name": "shadow-vdb1", "names": ["shadow-vdb1"], "removed": True}
    # --set with one origin: a set of one
    j = run_json(ctl, capsys, "snapshot", "/dev/vdb1", "--catalog", str(cat), "--set", "solo")
    assert j["set_name"] == "solo" and fake.commands[-1].startswith("startset solo shadow-vdb1 ")


def test_release_several_targets_looks_all_up_first(fake: FakeSystem, ctl: Controller,
                                                    tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    for origin in ("/dev/vdb1", "/dev/vdb2"):
        assert main(["snapshot", origin, "--catalog", str(tmp_path)], ctl) == 0
    err = refused(ctl, capsys, "release", "shadow-vdb1", "nothing-here")
    assert "nothing-here" in err and "nothing was released" in err
    assert len(ctl.snapshots()) == 2
    assert main(["release", "shadow-vdb1", "shadow-vdb2", "shadow-vdb1"], ctl) == 0
    assert capsys.readouterr().out.count("removed") == 2 and ctl.snapshots() == []
