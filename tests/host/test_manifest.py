"""Manifest files: the documented byte layout, round trips, atomic writes, and refusal of
corrupted files with a clear one-line error."""

from __future__ import annotations

import os
import random
import struct

import pytest
import xxhash

from cblb import hashing as H
from cblb import manifest as M
from cblb.errors import CblbError
from cblb.verify import make_manifest


def rnd(n: int, seed: int = 3) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def made(tmp_path):
    """(manifest path, source bytes) for a 50_001-byte source, xxh3_64, 4 KiB blocks."""
    src = tmp_path / "src.img"
    data = rnd(50_001)
    src.write_bytes(data)
    out = tmp_path / "src.manifest"
    make_manifest(str(src), str(out), 4096, "xxh3_64", threads=2)
    return out, data


@pytest.mark.parametrize("alg", list(H.ALGORITHMS))
@pytest.mark.parametrize("n,bs", [(0, 4096), (1, 4096), (8192, 4096), (50_001, 4096),
                                  (50_001, 512), (123_457, 65536)])
def test_round_trip(tmp_path, alg, n, bs):
    src = tmp_path / "s"
    data = rnd(n, n)
    src.write_bytes(data)
    out = tmp_path / "s.manifest"
    r = make_manifest(str(src), str(out), bs, alg, threads=2)
    assert r.blocks == -(-n // bs) and r.size == n
    with M.Manifest.open(str(out)) as m:
        h = m.header
        assert (h.algorithm, h.block_size, h.size, h.count) == (alg, bs, n, -(-n // bs))
        assert h.digest_size == H.ALGORITHMS[alg]
        assert h.label == str(src)
        assert m.digests() == H.reference_hash_blocks(data, bs, alg)
        # spans cover the body in order
        assert b"".join(d for _b, d in m.spans(3)) == m.digests()
        assert f"{h.checksum:016x}" == r.checksum
    assert os.path.getsize(out) == M.HEADER_SIZE + -(-n // bs) * H.ALGORITHMS[alg]
    assert M.is_manifest(str(out)) and not M.is_manifest(str(src))


def test_layout_is_as_documented(made):
    """Byte offsets from the module docstring, read back with plain struct calls."""
    path, data = made
    raw = path.read_bytes()
    assert raw[0:8] == b"CBLBMANI"
    assert struct.unpack_from("<H", raw, 8)[0] == 1
    assert struct.unpack_from("<H", raw, 10)[0] == 128
    assert raw[12] == 1 and raw[13] == 8
    assert struct.unpack_from("<H", raw, 14)[0] == 0
    assert struct.unpack_from("<I", raw, 16)[0] == 4096
    assert struct.unpack_from("<Q", raw, 24)[0] == len(data)
    assert struct.unpack_from("<Q", raw, 32)[0] == 13
    assert struct.unpack_from("<Q", raw, 40)[0] > 1_600_000_000 * 10**9
    checksum = struct.unpack_from("<Q", raw, 48)[0]
    zeroed = raw[:48] + b"\0" * 8 + raw[56:]
    assert xxhash.xxh3_64_intdigest(zeroed) == checksum
    assert raw[64:128].rstrip(b"\0").decode().endswith("src.img")
    # body: canonical big-endian XXH3-64 digests; the last block is the 849-byte tail
    assert raw[128:136] == xxhash.xxh3_64_digest(data[:4096])
    assert raw[-8:] == xxhash.xxh3_64_digest(data[12 * 4096:])
    assert len(raw) == 128 + 13 * 8


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "m"
    M.write_manifest(str(out), "xxh3_64", 4096, 8192, b"\1" * 16)
    before = out.read_bytes()
    with pytest.raises(RuntimeError):
        with M.ManifestWriter(str(out), "xxh3_64", 4096, 8192) as w:
            w.write(b"\2" * 8)
            raise RuntimeError("interrupted")
    assert out.read_bytes() == before  # the old manifest is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_writer_checks_the_digest_count(tmp_path):
    with M.ManifestWriter(str(tmp_path / "m"), "xxh3_128", 4096, 8192) as w:
        with pytest.raises(ValueError):
            w.write(b"\0" * 15)
        w.write(b"\0" * 16)
        with pytest.raises(ValueError, match="1 of 2"):
            w.commit()
        with pytest.raises(ValueError):
            w.write(b"\0" * 48)
    assert list(tmp_path.iterdir()) == []


def test_long_label_is_cut_on_a_character_boundary(tmp_path):
    out = tmp_path / "m"
    label = "é" * 40  # 80 bytes of UTF-8
    with M.ManifestWriter(str(out), "xxh3_64", 4096, 0, label) as w:
        w.commit()
    with M.Manifest.open(str(out)) as m:
        assert m.header.label == "é" * 32


def corrupt(path, offset: int, value: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(value)] = value
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("offset,value,match", [
    (0, b"XXXX", "not a cblb manifest"),
    (8, struct.pack("<H", 9), "format version 9 is not supported"),
    (12, b"\x07", "corrupted manifest header .*algorithm id 7"),
    (13, b"\x10", "corrupted manifest header .*digest size 16"),
    (16, struct.pack("<I", 8192), "corrupted manifest header .*block count"),
    (16, struct.pack("<I", 0), "corrupted manifest header .*block size 0"),
    (24, struct.pack("<Q", 50_000), "checksum mismatch"),       # consistent but altered
    (48, b"\0" * 8, "checksum mismatch"),
    (70, b"x", "checksum mismatch"),                            # the label
    (128 + 5, b"\xff", "checksum mismatch"),                    # a digest in the body
])
def test_corruption_is_refused(made, offset, value, match):
    path, _ = made
    raw = path.read_bytes()
    if raw[offset:offset + len(value)] == value:
        value = bytes(b ^ 0xFF for b in value)
    corrupt(path, offset, value)
    with pytest.raises(CblbError, match=match) as ei:
        M.Manifest.open(str(path))
    assert "\n" not in str(ei.value) and str(path) in str(ei.value)


def test_truncated_and_extended_manifests_are_refused(made):
    path, _ = made
    raw = path.read_bytes()
    path.write_bytes(raw[:-3])
    with pytest.raises(CblbError, match="manifest truncated"):
        M.Manifest.open(str(path))
    path.write_bytes(raw[:100])
    with pytest.raises(CblbError, match="truncated in its header"):
        M.Manifest.open(str(path))
    path.write_bytes(raw + b"\0")
    with pytest.raises(CblbError, match="has trailing bytes"):
        M.Manifest.open(str(path))
    path.write_bytes(b"")
    with pytest.raises(CblbError, match="not a cblb manifest"):
        M.Manifest.open(str(path))


def test_missing_manifest(tmp_path):
    with pytest.raises(CblbError, match="no such manifest"):
        M.Manifest.open(str(tmp_path / "none"))
