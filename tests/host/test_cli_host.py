"""Host-side tests of the control library's checks and the command line's contract:
no kernel needed (the lab tests drive the real module)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cblb.control import Controller, SnapshotState, check_block_device, validate_name
from cblb.errors import CblbError
from cblb.oneshot import SEED_FILE, MIB, default_name, plan_store


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


def test_cli_list_json_when_not_loaded() -> None:
    import json
    r = run_cli("list", "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout)["loaded"] in (False, True)
