"""Host-side tests of the control library's checks and the command line's contract:
no kernel needed (the lab tests drive the real module)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cblb.cli import build_parser, main
from cblb.control import Controller
from cblb.errors import CblbError
from cblb.fake import FakeSystem
from cblb.model import Snapshot, SnapshotState, validate_name
from cblb.oneshot import MIB, SEED_FILE, default_name, plan_store
from cblb.system import check_block_device
from cblb.units import parse_blocks


@pytest.mark.parametrize("name", ["shadow-sda2", "a", "x.y_z-1", "A" * 31])
def test_good_names(name: str) -> None:
    validate_name(name)


@pytest.mark.parametrize("name", ["", "-lead", ".hidden", "a/b", "a b", "A" * 32, "é", "a\n"])
def test_bad_names_say_what_is_allowed(name: str) -> None:
    with pytest.raises(CblbError, match="use 1-31 letters"):
        validate_name(name)


def test_origin_must_be_block_device(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CblbError, match="not a block device"):
        check_block_device(str(f))
    with pytest.raises(CblbError, match="no such device"):
        check_block_device(str(tmp_path / "missing"))


def test_state_parse_unknown() -> None:
    assert SnapshotState.parse("active\n") is SnapshotState.ACTIVE
    assert SnapshotState.parse("weird") is SnapshotState.UNKNOWN


def test_plan_store_defaults() -> None:
    p = plan_store(100 * 1024 * MIB, 1000 * 1024 * MIB)      # 100 GiB origin, big catalog
    assert p.file_blocks * 512 == SEED_FILE                  # capped at the seed's size
    assert p.budget_bytes <= 100 * 1024 * MIB // 4
    small = plan_store(256 * MIB, 10 * 1024 * MIB)
    assert small.file_blocks * 512 == 8 * MIB and small.max_files == 8
    tight = plan_store(100 * 1024 * MIB, 400 * MIB)           # catalog limits the budget
    assert tight.budget_bytes <= 200 * MIB


def test_plan_store_refuses_file_bigger_than_catalog() -> None:
    with pytest.raises(CblbError, match="less than one temp file"):
        plan_store(1024 * MIB, 4 * MIB, file_blocks=409600)


def test_default_name() -> None:
    assert default_name("/dev/sda2") == "shadow-sda2"


def test_not_loaded_message(tmp_path: Path) -> None:
    ctl = Controller(root=tmp_path / "nothing")
    with pytest.raises(CblbError, match="not loaded; run 'cblb load'"):
        ctl.require_loaded()
    assert ctl.status().loaded is False
    assert ctl.names() == []


def test_load_total_range() -> None:
    with pytest.raises(CblbError, match="out of range: choose 1..255"):
        Controller().load(0)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cblb.cli", *args], capture_output=True,
                          text=True)


def test_cli_usage_exit_2() -> None:
    r = run_cli("start", "onlyname")
    assert r.returncode == 2 and "usage:" in r.stderr


def test_cli_refusal_is_one_line_exit_1() -> None:
    r = run_cli("create", "bad name", "/dev/null")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("cblb: invalid snapshot name")


def test_cli_list_json_when_not_loaded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ctl = Controller(system=FakeSystem(tmp_path / "f", loaded=False))
    assert main(["list", "--json"], ctl) == 0
    assert json.loads(capsys.readouterr().out) == {"loaded": False, "total": 0, "version": "",
                                                   "snapshots": [], "tracking": []}


# ---- sizes with units ----------------------------------------------------------------------
@pytest.mark.parametrize("text,blocks", [("2048", 2048), ("64M", 131072), ("64MiB", 131072),
                                         ("1G", 2097152), ("1g", 2097152), ("4k", 8),
                                         ("2048s", 2048), ("512B", 1), ("1T", 2**31)])
def test_parse_blocks(text: str, blocks: int) -> None:
    assert parse_blocks(text) == blocks


@pytest.mark.parametrize("bad", ["", "M", "64Q", "-1", "1.5s", "100B", "8sB", "0.3k", "1.", "9" * 4000])
def test_parse_blocks_refuses(bad: str) -> None:
    with pytest.raises(CblbError):
        parse_blocks(bad)


@pytest.mark.parametrize("text,nbytes", [("1.5G", 3 * 2**29), ("0.5M", 2**19), ("2.5k", 2560),
                                           ("1.5T", 3 * 2**39)])
def test_fractional_sizes_as_lvm_reads_them(text: str, nbytes: int) -> None:
    assert parse_blocks(text) * 512 == nbytes
    assert build_parser().parse_args(["start", "s", "/var/tmp", text, "4"]).file_size == \
        nbytes // 512


@pytest.mark.parametrize("total", ["999", "0", "abc"])
def test_load_total_out_of_range_is_usage(total: str) -> None:
    r = run_cli("load", "--total", total)
    assert r.returncode == 2 and "usage:" in r.stderr
    assert "1..255" in r.stderr


def test_failing_json_command_prints_error_object(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ctl = Controller(system=FakeSystem(tmp_path / "f", loaded=True, total=4))
    assert main(["create", "bad name", "/dev/vdb1", "--json"], ctl) == 1
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["error"].startswith("invalid snapshot name") and out["exit"] == 1
    assert cap.err.startswith("cblb: invalid snapshot name") and cap.err.count("\n") == 1
    assert main(["create", "bad name", "/dev/vdb1"], ctl) == 1
    assert capsys.readouterr().out == ""          # without --json stdout stays empty


@pytest.mark.parametrize("bs", ["3", "511", "0"])
def test_manifest_block_size_below_a_sector_is_refused(tmp_path: Path, bs: str) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x" * 4096)
    r = run_cli("manifest", str(src), "--block-size", bs, "-o", str(tmp_path / "m"))
    assert r.returncode == 2 and "out of range: 512" in r.stderr
    assert not (tmp_path / "m").exists()


def test_sizes_with_units_on_the_command_line() -> None:
    p = build_parser()
    assert p.parse_args(["start", "s", "/var/tmp", "64M", "4"]).file_size == 131072
    assert p.parse_args(["start", "s", "/var/tmp", "409600", "4"]).file_size == 409600
    assert p.parse_args(["snapshot", "/dev/sda2", "--file-size", "1G"]).file_size == 2097152
    assert p.parse_args(["trace", "--compare", "--file-size", "8M"]).file_size == 16384
    assert p.parse_args(["trace", "--compare", "--size", "1G"]).size == 1024
    r = run_cli("start", "s", "/var/tmp", "64Q", "4")
    assert r.returncode == 2 and "cannot read '64Q' as a size" in r.stderr


# ---- help ------------------------------------------------------------------------------------
def subparsers() -> dict[str, argparse.ArgumentParser]:
    p = build_parser()
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


MARKUP = re.compile(r"``|:(class|meth|mod|func):|`[^`]+`")


def test_help_is_plain_text() -> None:
    assert not MARKUP.search(build_parser().format_help())
    for name, sp in subparsers().items():
        assert not MARKUP.search(sp.format_help()), name


def test_every_positional_argument_has_help() -> None:
    for name, sp in subparsers().items():
        for a in sp._actions:
            if not a.option_strings:
                assert a.help, f"cblb {name}: {a.dest} has no help"


STATE_CHANGING = ["load", "unload", "create", "start", "mount", "umount", "remove", "snapshot",
                  "release", "backup", "manifest", "restore", "track", "untrack"]


def test_every_state_changing_command_has_json() -> None:
    subs = subparsers()
    for name in STATE_CHANGING:
        assert any("--json" in a.option_strings for a in subs[name]._actions), name


# ---- the lifecycle through main(), over the fake module ---------------------------------------
@pytest.fixture
def fake(tmp_path: Path) -> FakeSystem:
    return FakeSystem(tmp_path / "fake")


def test_lifecycle_json_and_mount_options(fake: FakeSystem, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    ctl = Controller(system=fake)

    def run(*argv: str) -> dict:
        assert main([*argv, "--json"], ctl) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    assert run("load", "--total", "2") == {"loaded": True, "changed": True, "total": 2}
    assert run("create", "s", "/dev/vdb1")["state"] == "created"
    cat = tmp_path / "cat"
    cat.mkdir()
    j = run("start", "s", str(cat), "8M", "4")
    assert j["state"] == "active" and j["file_size"] == 16384
    mnt = tmp_path / "mnt"
    assert run("mount", "s", str(mnt))["mountpoint"] == str(mnt)
    assert fake.mount_table[0].options.startswith("ro,nosuid,nodev,noexec")
    assert run("umount", str(mnt)) == {"name": "s", "unmounted": str(mnt)}
    run("mount", "s", str(mnt), "--exec")
    assert "noexec" not in fake.mount_table[0].options.split(",")
    assert run("umount", "s") == {"name": "s", "unmounted": str(mnt)}
    assert run("remove", "s") == {"name": "s", "removed": True}
    assert run("unload") == {"loaded": False, "changed": True}


def test_umount_refuses_a_mount_that_is_not_a_snapshot(fake: FakeSystem,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    fake.run(["insmod", "x.ko", "total=4"])
    assert main(["umount", "/"], Controller(system=fake)) == 1
    assert "/ is not a cblb snapshot's mount" in capsys.readouterr().err
    assert not any(p[0] == "umount" for p in fake.programs)


def test_unload_with_nothing_loaded_says_so(fake: FakeSystem,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["unload"], Controller(system=fake)) == 0
    assert capsys.readouterr().out == "cblb_module is not loaded: nothing to unload\n"
    assert fake.programs == []


def test_verify_and_diff_trouble_exit_2(tmp_path: Path) -> None:
    r = run_cli("verify", str(tmp_path / "missing.img"), "--against", str(tmp_path / "b.img"))
    assert r.returncode == 2 and r.stderr.startswith("cblb: ")
    r = run_cli("diff", "no-such-snapshot")
    assert r.returncode == 2 and r.stderr.startswith("cblb: ")


def test_guards_are_written_once() -> None:
    s = Snapshot(name="s", state=SnapshotState.CREATED, origin="/dev/x")
    assert s.can_start and not s.can_mount and not s.can_back_up and s.can_remove
    with pytest.raises(CblbError, match="only an active snapshot can be mounted"):
        s.require("mount")
    s.state = SnapshotState.ACTIVE
    assert s.can_mount and not s.can_start
    s.mountpoint = "/mnt/s"
    assert not s.can_mount and s.can_umount and not s.can_remove
    with pytest.raises(CblbError, match="unmount it first"):
        s.require("remove")
    s.state, s.error = SnapshotState.FAILED, "temp-file store full"
    with pytest.raises(CblbError, match=r"failed \(temp-file store full\); only an active"):
        s.require("back up")
