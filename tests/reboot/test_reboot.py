"""Changed-block tracking across a restart, over four guest boots of the same disk images
(kept on the host): the chain goes on after a clean shutdown, and every case where a write
could have escaped begins a new generation, so that ``backup --since`` refuses.

Runs on the host, booting the lab guest once per phase (tests/reboot/guest.py):
  boot1   track, full backups, writes, unmount, ``cblb tracking save``; a clean poweroff
  (host) delete, truncate and corrupt three records; grow one image; a second image for F
  absent  the module not loaded: two origins written (ext4 and xfs)
  boot2   ``cblb tracking resume``, writes, snapshots; the chain of A (ext4) and X (xfs)
          restored equals its snapshot block for block; --since refused for the others;
          then the guest is killed (sysrq b: no unmount, no save)
  boot3   the origin resumed in boot 2 gets a new generation after that crash
Skipped unless CBLB_REBOOT_LAB=1 (scripts/test-all sets it, with CBLB_KVER).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
KVER = os.environ.get("CBLB_KVER", "")
pytestmark = pytest.mark.skipif(os.environ.get("CBLB_REBOOT_LAB") != "1" or not KVER,
                                reason="boots the lab guest: CBLB_REBOOT_LAB=1 CBLB_KVER=...")


def boot(work: Path, phase: str) -> dict[str, Any]:
    r = subprocess.run(["bash", str(ROOT / "scripts/lab"), "--kver", KVER, "--timeout", "900",
                        "--", "python3", "tests/reboot/guest.py", phase, str(work)],
                       cwd=ROOT, text=True, capture_output=True)
    log = work / f"{phase}.console.log"
    log.write_text(r.stdout + r.stderr)
    done = work / f"{phase}.json"
    assert done.exists(), f"{phase}: the guest left no results (exit {r.returncode}); " \
        f"see {log}:\n{(r.stdout + r.stderr)[-3000:]}"
    out: dict[str, Any] = json.loads(done.read_text())
    assert out["kernel_log_bad"] == [], f"{phase}: kernel log: {out['kernel_log_bad']}"
    return out


def by_device(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["device"]: o for o in report["origins"]}


SLOT = {"A": 0, "X": 1, "B": 2, "C": 3, "D": 4, "E": 5, "F": 6, "H": 7, "Y": 8, "G": 9}


def dev(name: str) -> str:
    return f"/dev/loop{SLOT[name]}"


@pytest.fixture(scope="module")
def boots() -> dict[str, dict[str, Any]]:
    work = ROOT / "lab-out" / KVER / "reboot"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out = {"boot1": boot(work, "boot1")}
    keep = work / "keep"
    # the escapes made between the boots
    (keep / "loop2.cbt").unlink()
    data = (keep / "loop3.cbt").read_bytes()
    (keep / "loop3.cbt").write_bytes(data[:len(data) // 2])
    data = bytearray((keep / "loop4.cbt").read_bytes())
    data[len(data) // 2] ^= 0x40
    (keep / "loop4.cbt").write_bytes(bytes(data))
    with open(work / "E.img", "r+b") as f:
        f.truncate(f.seek(0, 2) + (1 << 20))
    out["absent"] = boot(work, "absent")
    out["boot2"] = boot(work, "boot2")
    out["boot3"] = boot(work, "boot3")
    out["work"] = {"path": str(work)}
    for img in work.glob("*.img"):  # ~1 GiB of images; each boot's JSON and console stay
        img.unlink()
    return out


def test_boot1_saved_every_origin(boots: dict[str, dict[str, Any]]) -> None:
    b1 = boots["boot1"]
    assert b1["save_rc"] == 0, b1["save"]
    saved = by_device(b1["save"])
    assert sorted(saved) == sorted(dev(n) for n in SLOT)
    assert all(o["done"] for o in saved.values()), saved
    for n in SLOT:  # the saved generation and sequence are the tracking's at shutdown
        t = b1["tracking"][f"loop{SLOT[n]}"]
        assert (saved[dev(n)]["generation"], saved[dev(n)]["sequence"]) == \
            (t["generation"], t["sequence"])


def test_module_absent_in_the_middle_boot(boots: dict[str, dict[str, Any]]) -> None:
    assert boots["absent"]["module_loaded"] is False


@pytest.mark.parametrize("name", ["A", "X"])
def test_resumed_after_a_clean_restart(boots: dict[str, dict[str, Any]], name: str) -> None:
    b1, b2 = boots["boot1"], boots["boot2"]
    res = by_device(b2["resume"])[dev(name)]
    saved = by_device(b1["save"])[dev(name)]
    assert res["done"], res
    assert (res["generation"], res["sequence"]) == (saved["generation"], saved["sequence"])
    assert b2["tracking"][f"loop{SLOT[name]}"]["generation"] == saved["generation"]


def test_chain_goes_on_after_a_clean_restart(boots: dict[str, dict[str, Any]]) -> None:
    """ext4 A: full backup in boot 1, writes, restart, writes, snapshot, --since: the
    restored chain equals the snapshot block for block."""
    chain = boots["boot2"]["chain_A"]
    assert chain["rc"] == 0, chain
    assert chain["restored_sha256"] == chain["snapshot_sha256"]
    # an incremental, not a full copy in disguise
    assert chain["inc_bytes"] < chain["full_bytes"] / 2, chain


ESCAPES = {
    "B": "",                               # record deleted: not tracked at boot
    "C": "checksum",                       # truncated
    "D": "checksum",                       # corrupted
    "E": "size",                           # the image grew by 1 MiB
    "F": "another device",                 # another image under loop6
    "H": "written after the save",         # ext4 mounted while the module was absent
    "Y": "written after the save",         # xfs likewise
}


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escape_gives_a_new_generation(boots: dict[str, dict[str, Any]], name: str) -> None:
    b1, b2 = boots["boot1"], boots["boot2"]
    if name == "B":   # no record: nothing to resume, not tracked until its next create
        assert dev(name) not in by_device(b2["resume"])
        assert f"loop{SLOT[name]}" not in b2["tracking"]
        return
    saved = by_device(b1["save"])[dev(name)]
    t = b2["tracking"][f"loop{SLOT[name]}"]
    assert t["generation"] != saved["generation"]
    assert t["sequence"] == 0
    res = by_device(b2["resume"])[dev(name)]
    assert not res["done"]
    assert ESCAPES[name] in res["why"], res["why"]
    assert b2["resume_rc"] == 1


@pytest.mark.parametrize("name", ["C", "F", "H"])
def test_since_refused_after_an_escape(boots: dict[str, dict[str, Any]], name: str) -> None:
    since = boots["boot2"][f"since_{name}"]
    assert since["rc"] == 1
    assert "generation" in since["err"] and "full" in since["err"], since
    assert len(since["err"].splitlines()) == 1, since
    assert "Traceback" not in since["err"]


def test_crash_after_resume_gives_a_new_generation(boots: dict[str, dict[str, Any]]) -> None:
    b2, b3 = boots["boot2"], boots["boot3"]
    assert by_device(b2["resume"])[dev("G")]["done"]
    res = by_device(b3["resume"])[dev("G")]
    assert not res["done"]
    assert "without a save" in res["why"], res
    assert b3["since_G"]["rc"] == 1 and "generation" in b3["since_G"]["err"]
