"""Block-hash manifests: one digest per block of a device or image, in a small binary file.

A manifest records what a source held: its size, the block size, the hash algorithm and
one XXH3 digest per block (cblb/hashing.py computes them). ``cblb manifest`` writes one,
``cblb backup`` writes one beside every image, ``cblb verify`` compares a source with one.

File format, version 1 (all integers little-endian, unsigned)::

    offset  size  field
    ------  ----  -----------------------------------------------------------------
         0     8  magic, the ASCII bytes "CBLBMANI"
         8     2  format version: 1
        10     2  header size in bytes: 128 (the body starts here)
        12     1  algorithm: 1 = xxh3_64, 2 = xxh3_128
        13     1  digest size in bytes: 8 (xxh3_64) or 16 (xxh3_128)
        14     2  flags: 0 (reserved; readers refuse other values)
        16     4  block size in bytes (1 .. 2^30; 4096 by default)
        20     4  reserved: 0
        24     8  source size in bytes
        32     8  block count: ceil(source size / block size)
        40     8  creation time, nanoseconds since the Unix epoch
        48     8  checksum: XXH3-64 (seed 0) of the 128 header bytes with this field set
                  to zero, followed by the whole body; stored as an integer
        56     8  reserved: 0
        64    64  source label (the path it was made from), UTF-8, padded with NUL bytes;
                  a longer label keeps its last 64 bytes (whole characters)
       128     n  body: block count digests of digest-size bytes each, block 0 first;
                  each digest in xxhash's canonical big-endian form (what xxhsum prints;
                  the last block, when shorter than the block size, is hashed with its
                  real length)

The file is exactly 128 + block count * digest size bytes long; anything else is refused,
as is a checksum mismatch. Manifests are written to a temporary file in the same folder,
fsynced, then renamed over the target, so a reader sees the old file or the whole new one.
"""

from __future__ import annotations

import errno as E
import mmap
import os
import struct
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from . import fsio
from .errors import CblbError
from .hashing import ALGORITHMS, MAX_BLOCK_SIZE, ReferenceXXH3, _ext

MAGIC = b"CBLBMANI"
VERSION = 1
HEADER_SIZE = 128
LABEL_SIZE = 64
_HEAD = struct.Struct("<8sHHBBHIIQQQQQ")  # bytes 0..63; the label follows
_CHECKSUM_AT = 48
ALGORITHM_IDS = {"xxh3_64": 1, "xxh3_128": 2}
_ALGORITHM_NAMES = {v: k for k, v in ALGORITHM_IDS.items()}


def checksummer():
    """XXH3-64 (seed 0), the checksum of a manifest's and an incremental image's header."""
    return _ext.xxh3_64() if _ext is not None else ReferenceXXH3("xxh3_64")


@dataclass
class ManifestHeader:
    algorithm: str
    block_size: int
    size: int
    created_ns: int = 0
    label: str = ""
    checksum: int = 0
    digest_size: int = field(init=False)
    count: int = field(init=False)

    def __post_init__(self) -> None:
        self.digest_size = ALGORITHMS[self.algorithm]
        self.count = -(-self.size // self.block_size) if self.block_size else 0

    @property
    def body_size(self) -> int:
        return self.count * self.digest_size

    def pack(self, checksum: int | None = None) -> bytes:
        # Keep the end of a long label (a path's informative part), whole characters only.
        label = self.label.encode("utf-8", "replace")[-LABEL_SIZE:]
        label = label.decode("utf-8", "ignore").encode()
        head = _HEAD.pack(MAGIC, VERSION, HEADER_SIZE, ALGORITHM_IDS[self.algorithm],
                          self.digest_size, 0, self.block_size, 0, self.size, self.count,
                          self.created_ns, self.checksum if checksum is None else checksum, 0)
        return head + label.ljust(LABEL_SIZE, b"\0")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["checksum"] = f"{self.checksum:016x}"
        return d


def parse_header(data: bytes, path: str) -> ManifestHeader:
    """Check and decode the 128 header bytes (the checksum is checked by Manifest.open)."""
    if len(data) < HEADER_SIZE:
        if data[:len(MAGIC)] == MAGIC[:len(data)] and data:
            raise CblbError(f"{path}: manifest truncated in its header ({len(data)} of "
                            f"{HEADER_SIZE} bytes); re-create it with 'cblb manifest'", E.EINVAL)
        raise CblbError(f"{path} is not a cblb manifest (too short)", E.EINVAL)
    (magic, version, hsize, alg, ds, flags, bs, _r1, size, count, created, checksum,
     _r2) = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise CblbError(f"{path} is not a cblb manifest (bad magic)", E.EINVAL)
    if version != VERSION:
        raise CblbError(f"{path}: manifest format version {version} is not supported "
                        f"(this cblb reads version {VERSION}); upgrade cblb", E.EINVAL)
    problems = []
    if hsize != HEADER_SIZE:
        problems.append(f"header size {hsize}")
    if alg not in _ALGORITHM_NAMES:
        problems.append(f"algorithm id {alg}")
    elif ALGORITHMS[_ALGORITHM_NAMES[alg]] != ds:
        problems.append(f"digest size {ds} for {_ALGORITHM_NAMES[alg]}")
    if flags:
        problems.append(f"flags {flags:#x}")
    if not 1 <= bs <= MAX_BLOCK_SIZE:
        problems.append(f"block size {bs}")
    elif count != -(-size // bs):
        problems.append(f"block count {count} for {size} bytes in blocks of {bs}")
    if problems:
        raise CblbError(f"{path}: corrupted manifest header ({', '.join(problems)}); "
                        "re-create it with 'cblb manifest'", E.EINVAL)
    label = data[64:HEADER_SIZE].rstrip(b"\0").decode("utf-8", "replace")
    return ManifestHeader(_ALGORITHM_NAMES[alg], bs, size, created, label, checksum)


def is_manifest(path: str) -> bool:
    """True when ``path`` is a regular file that starts with the manifest magic."""
    try:
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


class Manifest:
    """A manifest opened for reading, its header and checksum checked; the body is mapped,
    so a large manifest is paged in as it is compared, never read whole into memory."""

    def __init__(self, path: str, header: ManifestHeader, data: mmap.mmap | bytes) -> None:
        self.path = path
        self.header = header
        self._data = data

    @classmethod
    def open(cls, path: str) -> "Manifest":
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise CblbError(f"{path}: no such manifest", E.ENOENT) from None
        except IsADirectoryError:
            raise CblbError(f"{path} is a folder, not a manifest", E.EISDIR) from None
        except PermissionError:
            raise CblbError(f"{path}: permission denied", E.EACCES) from None
        with f:
            actual = os.fstat(f.fileno()).st_size
            hdr = parse_header(f.read(HEADER_SIZE), path)
            expect = HEADER_SIZE + hdr.body_size
            if actual != expect:
                what = "truncated" if actual < expect else "has trailing bytes"
                raise CblbError(f"{path}: manifest {what} ({actual} bytes, the header says "
                                f"{expect}); re-create it with 'cblb manifest'", E.EINVAL)
            data: mmap.mmap | bytes = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        h = checksummer()
        h.update(hdr.pack(checksum=0))
        mv = memoryview(data)
        h.update(mv[HEADER_SIZE:])
        mv.release()
        if h.intdigest() != hdr.checksum:
            if isinstance(data, mmap.mmap):
                data.close()
            raise CblbError(f"{path}: manifest checksum mismatch (stored {hdr.checksum:016x}, "
                            f"computed {h.intdigest():016x}): the file is corrupted; "
                            "re-create it with 'cblb manifest'", E.EBADMSG)
        return cls(path, hdr, data)

    # -- reading
    def digests(self, first: int = 0, end: int | None = None) -> bytes:
        """Digests of blocks [first, end) as bytes."""
        ds = self.header.digest_size
        end = self.header.count if end is None else min(end, self.header.count)
        first = min(first, end)
        return self._data[HEADER_SIZE + first * ds:HEADER_SIZE + end * ds]

    def spans(self, span_blocks: int, first: int = 0,
              end: int | None = None) -> Iterator[tuple[int, bytes]]:
        end = self.header.count if end is None else min(end, self.header.count)
        for b in range(first, end, span_blocks):
            yield b, self.digests(b, min(b + span_blocks, end))

    def close(self) -> None:
        if isinstance(self._data, mmap.mmap):
            self._data.close()

    def __enter__(self) -> "Manifest":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ManifestWriter:
    """Writes a manifest atomically: digests are appended to a temporary file in the
    target's folder, and commit() checks the count, fills in the checksum, fsyncs and
    renames. Leaving the ``with`` block without commit() (an error) removes the temp file."""

    def __init__(self, path: str, algorithm: str, block_size: int, size: int,
                 label: str = "", created_ns: int | None = None) -> None:
        self.path = os.path.abspath(path)
        self.header = ManifestHeader(algorithm, block_size, size,
                                     time.time_ns() if created_ns is None else created_ns,
                                     label)
        folder = os.path.dirname(self.path)
        try:
            fd, self.tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                                            suffix=".tmp")
        except FileNotFoundError:
            raise CblbError(f"cannot write {path}: the folder {folder} does not exist",
                            E.ENOENT) from None
        except PermissionError:
            raise CblbError(f"cannot write {path}: permission denied in {folder}",
                            E.EACCES) from None
        self._f = os.fdopen(fd, "wb")
        self._h = checksummer()
        head = self.header.pack(checksum=0)
        self._h.update(head)
        self._f.write(head)
        self.written = 0  # digests so far
        self.done = False

    def write(self, digests: bytes | bytearray | memoryview) -> None:
        ds = self.header.digest_size
        n = len(digests)
        if n % ds:
            raise ValueError(f"{n} bytes are not whole digests of {ds}")
        if self.written + n // ds > self.header.count:
            raise ValueError("more digests than the manifest's block count")
        self._h.update(digests)
        try:
            self._f.write(digests)
        except OSError as e:
            raise CblbError(f"cannot write {self.tmp}: {e.strerror}", e.errno or 0) from None
        self.written += n // ds

    def commit(self) -> str:
        if self.written != self.header.count:
            raise ValueError(f"manifest holds {self.written} of {self.header.count} digests")
        self.header.checksum = self._h.intdigest()
        try:
            self._f.seek(0)
            self._f.write(self.header.pack())
            self._f.flush()
            os.fsync(self._f.fileno())
            os.fchmod(self._f.fileno(), 0o644 & ~fsio.umask())
            self._f.close()
            os.replace(self.tmp, self.path)
            fsio.sync_dir(os.path.dirname(self.path))
        except OSError as e:
            self.abort()
            raise CblbError(f"cannot write {self.path}: {e.strerror}", e.errno or 0) from None
        self.done = True
        return self.path

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if not self.done:
            self.abort()


def write_manifest(path: str, algorithm: str, block_size: int, size: int, digests: bytes,
                   label: str = "") -> ManifestHeader:
    """Write a whole manifest from digests in memory."""
    with ManifestWriter(path, algorithm, block_size, size, label) as w:
        w.write(digests)
        w.commit()
        return w.header
