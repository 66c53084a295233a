"""The XXH3 hashing engine: the Cython extension and the pure-Python reference run the same
tests (mixin), against known answers from xxhsum and against the xxhash package."""

from __future__ import annotations

import errno
import os
import random

import pytest
import xxhash

from cblb import hashing as H
from cblb.errors import CblbError

# Known answers printed by `xxhsum -H3` (xxh3_64) and `xxhsum -H2` (xxh3_128), libxxhash 0.8.1.
KAT_INPUTS = {
    "empty": b"",
    "abc": b"abc",
    "ramp4352": bytes(range(256)) * 17,
    "mul7_1MiB": bytes((i * 7 + 3) & 255 for i in range(1 << 20)),
}
KAT = {
    ("empty", "xxh3_64"): "2d06800538d394c2",
    ("empty", "xxh3_128"): "99aa06d3014798d86001c324468d497f",
    ("abc", "xxh3_64"): "78af5f94892f3950",
    ("abc", "xxh3_128"): "06b05ab6733a618578af5f94892f3950",
    ("ramp4352", "xxh3_64"): "56f05ca6814af06f",
    ("ramp4352", "xxh3_128"): "aaca5c3a6288f76c56f05ca6814af06f",
    ("mul7_1MiB", "xxh3_64"): "74823cf2cd45b0fe",
    ("mul7_1MiB", "xxh3_128"): "6b909c52253d6e1b74823cf2cd45b0fe",
}
ODD_SIZES = [0, 1, 3, 16, 17, 128, 129, 240, 241, 1023, 4095, 4096, 4097, 100_003]
ALGS = list(H.ALGORITHMS)


def rnd(n: int, seed: int = 1) -> bytes:
    return random.Random(seed * 1_000_003 + n).randbytes(n)


class HashImplTests:
    """Run once per implementation: ``new(algorithm, data)`` and ``blocks(data, bs, alg)``."""

    @staticmethod
    def new(algorithm, data=None):  # pragma: no cover - overridden
        raise NotImplementedError

    @staticmethod
    def blocks(data, block_size, algorithm):  # pragma: no cover - overridden
        raise NotImplementedError

    @pytest.mark.parametrize("key", sorted(KAT))
    def test_known_answers(self, key):
        name, alg = key
        assert self.new(alg, KAT_INPUTS[name]).hexdigest() == KAT[key]

    @pytest.mark.parametrize("alg", ALGS)
    @pytest.mark.parametrize("n", ODD_SIZES)
    def test_equals_xxhash_package(self, alg, n):
        data = rnd(n)
        ref = (xxhash.xxh3_64 if alg == "xxh3_64" else xxhash.xxh3_128)(data)
        h = self.new(alg, data)
        assert h.digest() == ref.digest()
        assert h.intdigest() == ref.intdigest()
        assert h.hexdigest() == ref.hexdigest()

    @pytest.mark.parametrize("alg", ALGS)
    def test_streaming_in_uneven_pieces(self, alg):
        data = rnd(300_001)
        h = self.new(alg)
        cuts = [0, 1, 2, 65, 1000, 4096, 70_000, 300_001]
        for a, z in zip(cuts, cuts[1:]):
            h.update(data[a:z])
        assert h.digest() == self.new(alg, data).digest()

    @pytest.mark.parametrize("alg", ALGS)
    def test_hashlib_interface(self, alg):
        h = self.new(alg, b"ab")
        assert h.name == alg
        assert h.digest_size == H.ALGORITHMS[alg] == len(h.digest())
        assert h.block_size == 64
        c = h.copy()
        c.update(b"c")
        assert c.digest() == self.new(alg, b"abc").digest()
        assert h.digest() == self.new(alg, b"ab").digest()  # the copy is independent
        h.update(memoryview(bytearray(b"c")))
        assert h.hexdigest() == c.hexdigest()
        h.reset()
        assert h.digest() == self.new(alg).digest()
        with pytest.raises(TypeError):
            h.update("text")

    @pytest.mark.parametrize("alg", ALGS)
    @pytest.mark.parametrize("bs", [1, 7, 512, 4096])
    @pytest.mark.parametrize("n", [0, 1, 511, 4096, 4097, 12_289])
    def test_blocks_odd_sizes(self, alg, bs, n):
        data = rnd(n, bs)
        out = self.blocks(data, bs, alg)
        ds = H.ALGORITHMS[alg]
        nb = -(-n // bs)
        assert len(out) == nb * ds
        f = xxhash.xxh3_64_digest if ds == 8 else xxhash.xxh3_128_digest
        for i in range(nb):
            assert out[i * ds:(i + 1) * ds] == f(data[i * bs:(i + 1) * bs])

    def test_blocks_empty(self):
        assert self.blocks(b"", 4096, "xxh3_64") == b""


class TestExtension(HashImplTests):
    new = staticmethod(H.new)
    blocks = staticmethod(H.hash_blocks)

    def test_extension_is_built(self):
        from cblb import _blockhash
        assert _blockhash.LIBXXHASH_VERSION >= (0, 8, 0)
        assert _blockhash.IMPLEMENTATION in ("dispatch", "portable")

    def test_bad_arguments(self):
        from cblb import _blockhash
        with pytest.raises(ValueError):
            _blockhash.hash_blocks(b"x", 0, 8)
        with pytest.raises(ValueError):
            _blockhash.hash_blocks(b"x", 4096, 4)
        with pytest.raises(ValueError):  # out too small for the digests
            _blockhash.read_hash(0, 0, 8192, 8192, 4096, 8, bytearray(8192), bytearray(8))
        with pytest.raises(CblbError, match="unknown hash algorithm"):
            H.new("md5")


class TestReference(HashImplTests):
    new = staticmethod(lambda alg, data=None: H.ReferenceXXH3(alg, data))
    blocks = staticmethod(H.reference_hash_blocks)


# ---- the engine over files ----------------------------------------------------------------

@pytest.fixture
def data_file(tmp_path):
    def make(n: int, seed: int = 5):
        p = tmp_path / f"data-{n}-{seed}.bin"
        d = rnd(n, seed)
        p.write_bytes(d)
        return str(p), d
    return make


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("n", [0, 1, 4095, 4097, 3 * 65536 + 17, 1 << 20])
def test_engine_matches_reference(data_file, alg, direct, n):
    path, d = data_file(n)
    # A 64 KiB span and 4 threads: many spans, completed out of order, yielded in order.
    with H.Engine(4096, alg, threads=4, span=65536) as eng:
        assert eng.hash_path(path, direct) == H.reference_hash_blocks(d, 4096, alg)


@pytest.mark.parametrize("bs", [512, 1000, 4096, 65536, 1 << 20])
def test_engine_block_sizes(data_file, bs):
    path, d = data_file(1_234_567)
    with H.Engine(bs, threads=2, span=1 << 18) as eng:
        assert eng.span % bs == 0 and eng.span % H.DIRECT_ALIGN == 0
        assert eng.hash_path(path) == H.reference_hash_blocks(d, bs)
        assert eng.hash_path(path, direct=True) == H.reference_hash_blocks(d, bs)


def test_engine_range_of_blocks(data_file):
    path, d = data_file(100_000)
    with H.Engine(4096, threads=2, span=8192) as eng, H.Source.open(path) as src:
        got = b"".join(x for _b, x in eng.digests(src, 3, 11))
    assert got == H.reference_hash_blocks(d, 4096)[3 * 8:11 * 8]


def test_engine_progress_counts_every_byte(data_file):
    path, _d = data_file(1_000_001)
    seen = []
    with H.Engine(threads=2, span=65536) as eng, H.Source.open(path) as src:
        for _ in eng.digests(src, progress=seen.append):
            pass
    assert sum(seen) == 1_000_001


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(CblbError, match="no such file or device"):
        H.Source.open(str(tmp_path / "nope"))


def test_folder_is_refused(tmp_path):
    with pytest.raises(CblbError, match="is a folder"):
        H.Source.open(str(tmp_path))


def test_character_device_is_refused():
    with pytest.raises(CblbError, match="neither a block device nor a regular file"):
        H.Source.open("/dev/null")


def test_unreadable_device_is_a_clear_error(data_file, monkeypatch):
    """A pread that fails (EIO from a bad sector or a failed snapshot) names the source and
    the byte offset."""
    path, _d = data_file(300_000)
    real = H._ext.read_hash

    def failing(fd, offset, *a):
        if offset >= 131072:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd, offset, *a)

    monkeypatch.setattr(H._ext, "read_hash", failing)
    with H.Engine(threads=2, span=65536) as eng:
        with pytest.raises(CblbError) as ei:
            eng.hash_path(path)
    msg = str(ei.value)
    assert path in msg and "at byte 131072" in msg and "Input/output error" in msg
    assert "\n" not in msg


def test_real_read_error_from_a_bad_descriptor(data_file):
    """The errno of a failing pread comes back from the extension as OSError."""
    from cblb import _blockhash
    with pytest.raises(OSError) as ei:
        _blockhash.read_hash(-1, 0, 4096, 4096, 4096, 8, bytearray(4096), bytearray(8))
    assert ei.value.errno == errno.EBADF


def test_short_read_is_a_clear_error(data_file):
    """The source shrinks after it was opened: the engine says so instead of hashing less."""
    path, _d = data_file(500_000)
    with H.Engine(threads=1, span=65536) as eng, H.Source.open(path) as src:
        os.truncate(path, 200_000)
        with pytest.raises(CblbError, match=r"short read: .* ended at byte 200000 but its "
                                            r"size was 500000"):
            for _ in eng.digests(src):
                pass


def test_to_ranges():
    assert H.to_ranges([]) == []
    assert H.to_ranges([0, 1, 2, 5, 7, 8]) == [(0, 2), (5, 5), (7, 8)]


@pytest.mark.parametrize("impl", [H.differing_blocks, H.reference_differing_blocks])
def test_differing_blocks(impl):
    a = b"".join(bytes([i]) * 8 for i in range(10))
    b = bytearray(a)
    b[0] ^= 1
    b[9 * 8 + 7] ^= 1
    assert impl(a, bytes(b), 8) == [0, 9]
    assert impl(a, a[:5 * 8], 8) == [5, 6, 7, 8, 9]
    assert impl(a[:16], a, 8) == list(range(2, 10))


def test_parse_size():
    assert H.parse_size("4096") == 4096
    assert H.parse_size("4k") == H.parse_size("4KiB") == 4096
    assert H.parse_size("1M") == 1 << 20
    with pytest.raises(CblbError):
        H.parse_size("lots")
