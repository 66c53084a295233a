"""cblb backup on files: the copy, its manifest, resumption after an interruption, and the
refusals (existing image, changed source, image = source)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from cblb import backup as B
from cblb import hashing as H
from cblb.errors import CblbError
from cblb.manifest import Manifest
from cblb.verify import verify_paths

ROOT = Path(__file__).resolve().parents[2]
SIZE = 40 * (1 << 20) + 12_345  # five 8 MiB spans and a partial block


@pytest.fixture(scope="module")
def source_bytes() -> bytes:
    return random.Random(7).randbytes(SIZE)


@pytest.fixture
def src(tmp_path, source_bytes) -> str:
    p = tmp_path / "snap.img"
    p.write_bytes(source_bytes)
    return str(p)


class Interrupt(Exception):
    pass


def interrupt_after(nbytes: int):
    seen = [0]

    def progress(n: int) -> None:
        seen[0] += n
        if seen[0] >= nbytes:
            raise Interrupt()
    return progress


def check_image(image: str, data: bytes, bs: int = 4096, alg: str = "xxh3_64") -> None:
    assert Path(image).read_bytes() == data
    with Manifest.open(image + ".manifest") as m:
        assert (m.header.size, m.header.block_size, m.header.algorithm) == (len(data), bs, alg)
        assert m.digests() == H.reference_hash_blocks(data, bs, alg)
    assert not os.path.exists(image + B.PROGRESS_SUFFIX)
    assert not os.path.exists(image + B.DIGESTS_SUFFIX)


def test_backup_copies_and_writes_a_manifest(src, tmp_path, source_bytes):
    image = str(tmp_path / "out" / "snap.backup")
    os.mkdir(tmp_path / "out")
    r = B.backup(src, image, threads=2, verify=True)
    check_image(image, source_bytes)
    assert (r.size, r.bytes_copied, r.resumed_from, r.verified) == (SIZE, SIZE, 0, True)
    j = r.to_json()
    assert j["manifest"] == image + ".manifest" and j["bytes"] == SIZE and j["mb_per_s"] > 0
    assert verify_paths(image, src).equal
    assert sorted(os.listdir(tmp_path / "out")) == ["snap.backup", "snap.backup.manifest"]


def test_backup_other_block_size_and_algorithm(src, tmp_path, source_bytes):
    image = str(tmp_path / "i")
    B.backup(src, image, block_size=65536, algorithm="xxh3_128", threads=3)
    check_image(image, source_bytes, 65536, "xxh3_128")


def test_interrupted_backup_resumes(src, tmp_path, source_bytes):
    image = str(tmp_path / "img")
    with pytest.raises(Interrupt):
        B.backup(src, image, threads=1, progress=interrupt_after(16 << 20),
                 checkpoint_bytes=1 << 20)
    meta = json.loads(Path(image + B.PROGRESS_SUFFIX).read_text())
    assert meta["copied_bytes"] >= 16 << 20 and meta["copied_bytes"] < SIZE
    assert not os.path.exists(image + ".manifest")
    seen = []
    r = B.backup(src, image, threads=2, progress=seen.append)
    assert r.resumed_from == meta["copied_bytes"]
    assert r.bytes_copied == SIZE - r.resumed_from
    assert sum(seen) == SIZE  # the bar starts at the resumed position
    check_image(image, source_bytes)


def test_resume_recopies_from_a_damaged_block(src, tmp_path, source_bytes):
    """Blocks recorded as copied are re-hashed; the copy resumes at the first one that no
    longer matches."""
    image = str(tmp_path / "img")
    with pytest.raises(Interrupt):
        B.backup(src, image, threads=1, progress=interrupt_after(24 << 20))
    with open(image, "r+b") as f:
        f.seek(5 * 4096 + 100)
        f.write(b"rot")
    r = B.backup(src, image, threads=2)
    assert r.resumed_from == 5 * 4096
    check_image(image, source_bytes)


def test_restart_starts_over(src, tmp_path, source_bytes):
    image = str(tmp_path / "img")
    with pytest.raises(Interrupt):
        B.backup(src, image, threads=1, progress=interrupt_after(8 << 20))
    r = B.backup(src, image, threads=2, restart=True)
    assert r.resumed_from == 0 and r.bytes_copied == SIZE
    check_image(image, source_bytes)


def test_existing_image_needs_restart(src, tmp_path, source_bytes):
    image = tmp_path / "img"
    image.write_bytes(b"an older image")
    with pytest.raises(CblbError, match="already exists .* --restart"):
        B.backup(src, str(image))
    assert image.read_bytes() == b"an older image"
    B.backup(src, str(image), restart=True)
    check_image(str(image), source_bytes)


def test_changed_source_refuses_resume(src, tmp_path):
    image = str(tmp_path / "img")
    with pytest.raises(Interrupt):
        B.backup(src, image, threads=1, progress=interrupt_after(8 << 20))
    with open(src, "ab") as f:
        f.write(b"grown")
    with pytest.raises(CblbError, match="partial copy of another source .* --restart"):
        B.backup(src, image)
    with pytest.raises(CblbError, match="partial copy of another source"):
        B.backup(src, image, block_size=512)


def test_image_is_the_source(src):
    with pytest.raises(CblbError, match="is the source itself"):
        B.backup(src, src)


def test_unreadable_source_leaves_a_resumable_copy(src, tmp_path, monkeypatch, source_bytes):
    image = str(tmp_path / "img")
    real = H._ext.copy_hash

    def failing(sfd, dfd, offset, *a):
        if offset >= 16 << 20:
            raise OSError(5, os.strerror(5), "read")
        return real(sfd, dfd, offset, *a)

    monkeypatch.setattr(H._ext, "copy_hash", failing)
    with pytest.raises(CblbError, match=r"cannot read .*snap.img at byte 16777216: "
                                        r"Input/output error"):
        B.backup(src, image, threads=2, checkpoint_bytes=1 << 20)
    assert json.loads(Path(image + B.PROGRESS_SUFFIX).read_text())["copied_bytes"] == 16 << 20
    monkeypatch.undo()
    r = B.backup(src, image)
    assert r.resumed_from == 16 << 20
    check_image(image, source_bytes)


def test_missing_target_folder(src, tmp_path):
    with pytest.raises(CblbError, match="cannot open .* for writing"):
        B.backup(src, str(tmp_path / "no" / "img"))


def test_cli_backup_json(src, tmp_path, source_bytes):
    image = str(tmp_path / "img")
    r = subprocess.run([sys.executable, "-m", "cblb.cli", "backup", src, image, "--json",
                        "--verify"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["bytes"] == SIZE and j["manifest"] == image + ".manifest" and j["verified"]
    assert {"seconds", "mb_per_s"} <= j.keys()
    check_image(image, source_bytes)
    r = subprocess.run([sys.executable, "-m", "cblb.cli", "backup", src, image],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "--restart" in r.stderr
