"""Block hashing of devices and files at the speed of the disk.

The engine (:class:`Engine`) splits a source into spans of a few MiB and hands them to a
pool of Python threads; each thread calls the Cython extension (ext/_blockhash.pyx), which
preads the span through a per-thread buffer and hashes it block by block with XXH3 while
the GIL is released, so every core hashes. Results come back in order, span by span, so a
whole device is never held in memory: a manifest is written as it goes and two sources are
compared span against span.

Digests are xxhash's canonical big-endian bytes: xxh3_64 gives 8 bytes per block, xxh3_128
16. The last block of a source may be shorter than the block size and is hashed with its
real length.

:mod:`cblb.hashing` also carries the pure-Python reference path (:func:`reference_hash_blocks`,
:class:`ReferenceXXH3`), built on the ``xxhash`` package, which the tests run against the
same known-answer vectors as the extension.
"""

from __future__ import annotations

import errno as E
import math
import mmap
import os
import stat
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Generator, Iterable, Iterator, TypeVar

import xxhash

from .errors import CblbError
from .units import parse_bytes

try:
    from . import _blockhash as _ext
except ImportError:  # pragma: no cover - only when the extension was not built
    _ext = None  # type: ignore[assignment]

ALGORITHMS = {"xxh3_64": 8, "xxh3_128": 16}
DEFAULT_ALGORITHM = "xxh3_64"
DEFAULT_BLOCK_SIZE = 4096
DEFAULT_SPAN = 8 << 20      # bytes one thread reads and hashes per task
PIECE = 256 << 10           # buffered reads go through a 256 KiB buffer that stays in L2
DIRECT_ALIGN = 4096         # O_DIRECT offsets, lengths and buffers are aligned to this
MIN_BLOCK_SIZE = 512        # of a manifest: below a sector its digests outweigh the data
MAX_BLOCK_SIZE = 1 << 30

Progress = Callable[[int], None]
T = TypeVar("T")


def extension() -> "object":
    """The compiled extension, or a CblbError saying how to build it."""
    if _ext is None:
        raise CblbError("the cblb._blockhash extension is not built; run "
                        "'pip install --no-build-isolation -e .' in the checkout", E.ENOENT)
    return _ext


def digest_size(algorithm: str) -> int:
    try:
        return ALGORITHMS[algorithm]
    except KeyError:
        raise CblbError(f"unknown hash algorithm {algorithm!r}: choose "
                        f"{' or '.join(ALGORITHMS)}", E.EINVAL) from None


def check_block_size(block_size: int) -> int:
    if not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise CblbError(f"block size {block_size} is out of range: 1 .. {MAX_BLOCK_SIZE} bytes "
                        "(4096 is the default)", E.EINVAL)
    return block_size


def check_manifest_block_size(block_size: int) -> int:
    """A manifest's (and backup's) block size: at least one 512-byte sector, at most 1 GiB."""
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise CblbError(f"block size {block_size} is out of range: {MIN_BLOCK_SIZE} .. "
                        f"{MAX_BLOCK_SIZE} bytes (4096 is the default)", E.EINVAL)
    return block_size


def parse_size(text: str) -> int:
    """'4096', '4k', '4KiB', '1M' -> bytes (binary multiples)."""
    return parse_bytes(text)


def new(algorithm: str = DEFAULT_ALGORITHM, data: bytes | None = None):
    """A hashlib-style hash object: xxh3_64 or xxh3_128 from the extension."""
    ext = extension()
    cls = {"xxh3_64": ext.xxh3_64, "xxh3_128": ext.xxh3_128}  # type: ignore[attr-defined]
    digest_size(algorithm)
    return cls[algorithm](data)


def hash_blocks(data: bytes | bytearray | memoryview, block_size: int = DEFAULT_BLOCK_SIZE,
                algorithm: str = DEFAULT_ALGORITHM) -> bytes:
    """Per-block digests of an in-memory buffer (extension)."""
    return extension().hash_blocks(data, check_block_size(block_size),  # type: ignore
                                   digest_size(algorithm))


# ---- the pure-Python reference ----------------------------------------------------------

class ReferenceXXH3:
    """hashlib-style wrapper of the xxhash package; the reference the extension must match."""

    def __init__(self, algorithm: str = DEFAULT_ALGORITHM, data: bytes | None = None,
                 *, seed: int = 0) -> None:
        self.name = algorithm
        self.digest_size = digest_size(algorithm)
        self.block_size = 64
        self.seed = seed
        self._h = (xxhash.xxh3_64 if self.digest_size == 8 else xxhash.xxh3_128)(seed=seed)
        if data is not None:
            self.update(data)

    def update(self, data: bytes) -> None:
        if isinstance(data, str):
            raise TypeError("Strings must be encoded before hashing")
        self._h.update(data)

    def reset(self) -> None:
        self._h.reset()

    def digest(self) -> bytes:
        return self._h.digest()

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def intdigest(self) -> int:
        return self._h.intdigest()

    def copy(self) -> "ReferenceXXH3":
        other = ReferenceXXH3(self.name, seed=self.seed)
        other._h = self._h.copy()
        return other


def reference_hash_blocks(data: bytes, block_size: int = DEFAULT_BLOCK_SIZE,
                          algorithm: str = DEFAULT_ALGORITHM) -> bytes:
    """Per-block digests computed with the xxhash package, one block at a time."""
    f = xxhash.xxh3_64_digest if digest_size(algorithm) == 8 else xxhash.xxh3_128_digest
    mv = memoryview(data)
    return b"".join(f(mv[i:i + block_size]) for i in range(0, len(mv), block_size))


def reference_differing_blocks(a: bytes, b: bytes, ds: int) -> list[int]:
    na, nb = len(a) // ds, len(b) // ds
    out = [i for i in range(min(na, nb)) if a[i * ds:(i + 1) * ds] != b[i * ds:(i + 1) * ds]]
    return out + list(range(min(na, nb), max(na, nb)))


def differing_blocks(a: bytes | bytearray, b: bytes | bytearray, ds: int) -> list[int]:
    if _ext is None:
        return reference_differing_blocks(a, b, ds)
    return _ext.differing_blocks(a, b, ds)


def to_ranges(blocks: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted block numbers -> inclusive (first, last) ranges."""
    out: list[list[int]] = []
    for b in blocks:
        if out and b == out[-1][1] + 1:
            out[-1][1] = b
        else:
            out.append([b, b])
    return [(a, z) for a, z in out]


# ---- sources ---------------------------------------------------------------------------

@dataclass
class Source:
    """An open block device or regular file, read with pread (O_DIRECT when ``direct``)."""

    path: str
    fd: int
    size: int
    kind: str          # "block device" or "file"
    direct: bool

    @classmethod
    def open(cls, path: str, direct: bool = False) -> "Source":
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise CblbError(f"{path}: no such file or device", E.ENOENT) from None
        except PermissionError:
            raise CblbError(f"{path}: permission denied; run as root or fix its mode",
                            E.EACCES) from None
        if stat.S_ISDIR(st.st_mode):
            raise CblbError(f"{path} is a folder; give a block device, an image file or a "
                            "manifest", E.EISDIR)
        if not (stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise CblbError(f"{path} is neither a block device nor a regular file", E.EINVAL)
        kind = "block device" if stat.S_ISBLK(st.st_mode) else "file"
        fd = -1
        if direct:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
            except OSError as e:
                if e.errno != E.EINVAL:  # EINVAL: the filesystem has no O_DIRECT (tmpfs)
                    raise cls._open_error(path, e) from None
                direct = False
        if fd < 0:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise cls._open_error(path, e) from None
        try:
            size = os.lseek(fd, 0, os.SEEK_END) if kind == "block device" else os.fstat(fd).st_size
        except OSError as e:
            os.close(fd)
            raise CblbError(f"{path}: cannot find its size: {e.strerror}", e.errno or 0) from None
        if not direct:
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except OSError:
                pass
        return cls(path, fd, size, kind, direct)

    @staticmethod
    def _open_error(path: str, e: OSError) -> CblbError:
        if e.errno in (E.EACCES, E.EPERM):
            return CblbError(f"{path}: permission denied; run as root or fix its mode", e.errno)
        if e.errno == E.ENOMEDIUM:
            return CblbError(f"{path}: no medium in the device", e.errno)
        return CblbError(f"cannot open {path}: {e.strerror}", e.errno or 0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_error(path: str, offset: int, e: OSError) -> CblbError:
    hint = {E.EIO: " (a bad sector, a failed snapshot or a vanished device)",
            E.EINVAL: " (the device refuses this alignment; retry without --direct)"}
    return CblbError(f"cannot read {path} at byte {offset}: {e.strerror}"
                     f"{hint.get(e.errno or 0, '')}", e.errno or E.EIO)


def short_read_error(path: str, at: int, size: int) -> CblbError:
    return CblbError(f"short read: {path} ended at byte {at} but its size was {size} when "
                     "opened; did the device shrink or the file get truncated?", E.EIO)


# ---- the engine ------------------------------------------------------------------------

def _round_up(n: int, a: int) -> int:
    return -(-n // a) * a


class Engine:
    """Hashes sources block by block on a pool of threads, span by span, in order.

    ``threads`` defaults to the number of CPUs this process may run on. Use it as a
    context manager (or call close()) to stop the pool.
    """

    def __init__(self, block_size: int = DEFAULT_BLOCK_SIZE,
                 algorithm: str = DEFAULT_ALGORITHM, threads: int | None = None,
                 span: int = DEFAULT_SPAN) -> None:
        extension()
        self.block_size = check_block_size(block_size)
        self.algorithm = algorithm
        self.digest_size = digest_size(algorithm)
        self.threads = max(1, threads or len(os.sched_getaffinity(0)))
        # A span holds whole blocks and is aligned for O_DIRECT.
        unit = self.block_size * DIRECT_ALIGN // math.gcd(self.block_size, DIRECT_ALIGN)
        self.span = max(1, span // unit) * unit
        self.span_blocks = self.span // self.block_size
        # Buffered reads go through a small buffer (whole blocks) that stays in cache.
        self.piece = min(self.span, max(1, PIECE // self.block_size) * self.block_size)
        self.window = 2 * self.threads
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()

    # -- plumbing
    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="cblb-hash")
        return self._pool

    def _buffer(self, direct: bool) -> mmap.mmap:
        """This thread's read buffer: anonymous mmap, so page-aligned for O_DIRECT."""
        attr = "direct" if direct else "buffered"
        buf = getattr(self._local, attr, None)
        if buf is None:
            buf = mmap.mmap(-1, self.span if direct else self.piece)
            setattr(self._local, attr, buf)
        return buf

    def blocks_of(self, size: int) -> int:
        return -(-size // self.block_size)

    def spans(self, size: int, first_block: int = 0,
              end_block: int | None = None) -> Iterator[tuple[int, int, int]]:
        """(first block, byte offset, byte length) of each span of a source of ``size``."""
        nblocks = self.blocks_of(size)
        end = nblocks if end_block is None else min(end_block, nblocks)
        b = first_block
        while b < end:
            nb = min(self.span_blocks, end - b)
            off = b * self.block_size
            yield b, off, min(nb * self.block_size, size - off)
            b += nb

    def ordered(self, fn: Callable[..., T], tasks: Iterable[tuple]) -> Iterator[T]:
        """Run fn(*task) on the pool, a bounded window at a time; yield results in order.
        On an error or an early stop, pending tasks are cancelled and running ones waited
        for, so no thread still uses a file descriptor the caller is about to close."""
        window: deque[Future] = deque()
        try:
            for t in tasks:
                window.append(self.pool.submit(fn, *t))
                if len(window) >= self.window:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for f in window:
                f.cancel()
            wait(window)

    # -- hashing
    def hash_span(self, src: Source, offset: int, length: int) -> bytearray:
        out = bytearray(self.blocks_of(length) * self.digest_size)
        read_len = _round_up(length, DIRECT_ALIGN) if src.direct else length
        try:
            got = _ext.read_hash(src.fd, offset, length, read_len, self.block_size,
                                 self.digest_size, self._buffer(src.direct), out)
        except OSError as e:
            raise read_error(src.path, offset, e) from None
        if got < length:
            raise short_read_error(src.path, offset + got, src.size)
        return out

    def digests(self, src: Source, first_block: int = 0, end_block: int | None = None,
                progress: Progress | None = None) -> Iterator[tuple[int, bytearray]]:
        """(first block, digests) for each span of ``src``, in order."""
        spans = list(self.spans(src.size, first_block, end_block))
        results = self.ordered(self.hash_span, ((src, off, ln) for _b, off, ln in spans))
        for (b, _off, ln), d in zip(spans, results):
            if progress:
                progress(ln)
            yield b, d

    def copy_span(self, src: Source, dst_fd: int, dst_path: str, offset: int,
                  length: int) -> bytearray:
        """Read a span of ``src``, hash it and pwrite it to ``dst_fd`` at the same offset."""
        out = bytearray(self.blocks_of(length) * self.digest_size)
        read_len = _round_up(length, DIRECT_ALIGN) if src.direct else length
        try:
            got = _ext.copy_hash(src.fd, dst_fd, offset, length, read_len, self.block_size,
                                 self.digest_size, self._buffer(src.direct), out)
        except OSError as e:
            if e.filename == "write":
                hint = " (the target is full)" if e.errno in (E.ENOSPC, E.EDQUOT) else ""
                raise CblbError(f"cannot write {dst_path} at byte {offset}: {e.strerror}{hint}",
                                e.errno or E.EIO) from None
            raise read_error(src.path, offset, e) from None
        if got < length:
            raise short_read_error(src.path, offset + got, src.size)
        return out

    def copy(self, src: Source, dst_fd: int, dst_path: str, first_block: int = 0
             ) -> Generator[tuple[int, int, bytearray], None, None]:
        """Copy ``src`` to ``dst_fd`` from ``first_block`` on, span by span on the pool;
        yield (first block, bytes, digests) in order."""
        spans = list(self.spans(src.size, first_block))
        results = self.ordered(self.copy_span,
                               ((src, dst_fd, dst_path, off, ln) for _b, off, ln in spans))
        for (b, _off, ln), d in zip(spans, results):
            yield b, ln, d

    def hash_source(self, src: Source) -> bytes:
        """All digests of a source in one bytes object (small sources, tests)."""
        return b"".join(d for _b, d in self.digests(src))

    def hash_path(self, path: str, direct: bool = False) -> bytes:
        with Source.open(path, direct) as src:
            return self.hash_source(src)

