"""The tracking record (cblb/keep.py) and the filesystem stamp (cblb/fsstamp.py) on the
host; the save and resume themselves run against the real module across guest boots
(tests/reboot/test_reboot.py). Also the boot unit's ordering (cblb-tracking.service)."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cblb.fsstamp import Stamp, read_stamp
from cblb.keep import Record, RecordError

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "cblb/systemd/cblb-tracking.service"


def record() -> Record:
    return Record(state="saved", device="/dev/sdb1", identity={"size": 1 << 30},
                  stamp=Stamp("ext4", "u", "d", {"mount count": 3}),
                  generation="0b1c5b9e-94a0-4cbb-8a59-55b5c7d0a1f2", sequence=7,
                  block_size=4096, bitmap=bytes([0, 1, 2, 255]) * 1024, boot_id="b")


def test_record_round_trip() -> None:
    r = record()
    back = Record.decode(r.encode())
    assert back == r


@pytest.mark.parametrize("damage, why", [
    (lambda b: b[:len(b) // 2], "checksum"),
    (lambda b: b[:10], "truncated"),
    (lambda b: b"", "not a cblb tracking record"),
    (lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:], "checksum"),
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "checksum"),
    (lambda b: b.replace(b"CBLB-TRACKING 1", b"CBLB-TRACKING 2", 1), "another format version"),
    (lambda b: b"garbage" * 100, "not a cblb tracking record"),
])
def test_damaged_record_refused_with_its_reason(damage, why) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecordError, match=why):
        Record.decode(damage(record().encode()))


def test_record_whose_checksum_holds_but_body_does_not_parse() -> None:
    import hashlib
    body = b"CBLB-TRACKING 1\n{not json}\n"
    with pytest.raises(RecordError, match="do not parse"):
        Record.decode(body + hashlib.sha256(body).digest())


def _mkfs(tmp: Path, kind: str) -> Path:
    tool = shutil.which(f"mkfs.{kind}")
    if tool is None:
        pytest.skip(f"mkfs.{kind} not installed")
    img = tmp / f"{kind}.img"
    with open(img, "wb") as f:
        f.truncate(320 << 20 if kind == "xfs" else 16 << 20)
    args = [tool, "-q", "-f" if kind == "xfs" else "-F", str(img)]
    subprocess.run(args, check=True, capture_output=True)
    return img


@pytest.mark.parametrize("kind", ["ext4", "xfs"])
def test_stamp_reads_the_filesystem_and_sees_a_superblock_change(tmp_path: Path,
                                                                 kind: str) -> None:
    img = _mkfs(tmp_path, kind)
    s1 = read_stamp(str(img))
    assert s1 is not None and s1.fstype == kind
    uuid = subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", str(img)],
                          capture_output=True, text=True).stdout.strip()
    if uuid:
        assert s1.uuid == uuid
    assert read_stamp(str(img)) == s1             # nothing written: the same stamp
    # what a mount does to the superblock: one field changed
    off = 1024 + 0x34 if kind == "ext4" else 0x90
    with open(img, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 1]))
    s2 = read_stamp(str(img))
    assert s2 is not None and s2 != s1
    assert "written after the save" in s1.what_changed(s2)


def test_no_stamp_for_content_without_ext4_or_xfs(tmp_path: Path) -> None:
    img = tmp_path / "raw.img"
    img.write_bytes(os.urandom(8192))
    assert read_stamp(str(img)) is None


# ---- the boot unit's ordering --------------------------------------------------------

def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(UNIT)
    return cp


def words(cp: configparser.ConfigParser, section: str, key: str) -> set[str]:
    return set(cp.get(section, key, fallback="").split())


def test_unit_resumes_before_any_local_mount_and_saves_after_the_last() -> None:
    """Mount units gain After=local-fs-pre.target (systemd.mount(5)): being Before= it,
    this unit starts before every local mount, and (stop order being the reverse) stops
    after every local unmount. Without DefaultDependencies=no it would be ordered after
    sysinit.target, which comes after local-fs.target: a cycle systemd breaks at random."""
    cp = unit()
    assert cp.get("Unit", "DefaultDependencies") == "no"
    assert "local-fs-pre.target" in words(cp, "Unit", "Before")
    assert "local-fs-pre.target" in words(cp, "Unit", "Wants")
    assert "local-fs-pre.target" in words(cp, "Install", "WantedBy")
    assert "systemd-remount-fs.service" in words(cp, "Unit", "After")  # records rewritable
    assert "shutdown.target" in words(cp, "Unit", "Conflicts")
    assert cp.get("Service", "Type") == "oneshot"
    assert cp.get("Service", "RemainAfterExit") == "yes"   # or ExecStop runs at once
    assert "tracking resume" in cp.get("Service", "ExecStart")
    assert "tracking save" in cp.get("Service", "ExecStop")
    for bad in ("local-fs.target", "sysinit.target", "basic.target"):
        assert bad not in words(cp, "Unit", "After"), f"After={bad} would run it too late"


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    cblb = shutil.which("cblb") or str(ROOT / ".venv/bin/cblb")
    if analyze is None or not os.access(cblb, os.X_OK):
        pytest.skip("systemd-analyze or cblb not installed")
    u = tmp_path / UNIT.name
    u.write_text(UNIT.read_text().replace("/usr/local/bin/cblb", cblb))
    r = subprocess.run([analyze, "verify", str(u)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_install_systemd_installs_the_tracking_unit() -> None:
    text = (ROOT / "install").read_text()
    assert "cblb-tracking.service" in text


@pytest.mark.parametrize("size, block, want", [
    (24 << 20, 4096, 768),          # 6144 bits
    (1 << 30, 4096, 32768),         # doc/CBT.md: 32 KiB per map for 1 GiB
    (4096 * 65, 4096, 16),          # 65 bits: two 8-byte words
    (1, 4096, 8),
])
def test_map_bytes_as_the_module_lays_a_map_out(size: int, block: int, want: int) -> None:
    from cblb.model import Tracking
    assert Tracking(disk="x", size_sectors=-(-size // 512), block_size=block).map_bytes == want
