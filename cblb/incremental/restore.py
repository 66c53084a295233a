"""Restore: ``cblb restore IMAGE TARGET``.

It follows the ``base`` links from IMAGE back to
the full backup, checking each (same generation, sequence one less, same origin and size,
the manifest it was taken on), writes the full image to TARGET, then from each incremental the
bytes no newer link holds (``newest_pieces``: every byte written once more at most, so a
long chain costs what a short one does), fsyncs, and reads TARGET back (its cached pages
dropped first) against IMAGE's manifest: any differing block fails the restore with its ranges.

"""

from __future__ import annotations

import errno as E
import os
import stat
import time
from dataclasses import dataclass
from typing import Any

from .. import fsio
from ..errors import CblbError
from ..hashing import Engine, Progress, Source
from ..manifest import Manifest, ManifestHeader
from ..verify import Comparison, compare, format_ranges
from .chain import Link, resolve_chain
from .extents import merge, subtract

COPY_PIECE = 4 << 20
MAX_LISTED_RANGES = 20


@dataclass
class RestoreResult:
    image: str
    target: str
    size: int
    chain: list[Link]
    bytes_written: int
    block_size: int
    algorithm: str
    seconds: float
    comparison: Comparison | None = None

    @property
    def throughput(self) -> float:
        return self.bytes_written / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image, "target": self.target, "bytes": self.size,
            "links": len(self.chain), "chain": [link.to_json() for link in self.chain],
            "bytes_written": self.bytes_written, "verified": True,
            "block_size": self.block_size, "algorithm": self.algorithm,
            "seconds": round(self.seconds, 6), "mb_per_s": round(self.throughput / 1e6, 1),
        }


class Restore:
    """``cblb restore IMAGE TARGET``: the constructor resolves and checks the chain
    (``total_bytes`` is the work to come), :meth:`run` writes and verifies."""

    def __init__(self, image: str, target: str) -> None:
        self.image = os.path.abspath(image)
        self.target = os.path.abspath(target)
        self.chain = resolve_chain(self.image)
        self.last = self.chain[-1]
        self.size = self.last.size
        for link in self.chain:
            for p in (link.path, link.manifest):
                if os.path.exists(self.target) and os.path.exists(p) and \
                        os.path.samefile(self.target, p):
                    raise CblbError(f"{target} is {p}, a file of the chain; give another "
                                    "target", E.EINVAL)
        full = self.chain[0]
        if full.kind != "full":
            raise CblbError(f"the chain of {image} does not begin with a full backup", E.EINVAL)
        self.pieces = newest_pieces(self.chain[1:])
        self.data_bytes = full.size + sum(n for _l, ps in self.pieces for _o, n, _p in ps)
        self.total_bytes = self.data_bytes + self.size

    def run(self, progress: Progress | None = None, threads: int | None = None
            ) -> RestoreResult:
        t0 = time.perf_counter()
        with Manifest.open(self.last.manifest) as man:
            h = man.header
            if h.size != self.size:
                raise CblbError(f"{man.path} describes {h.size} bytes but the chain's record "
                                f"says {self.size}", E.EINVAL)
            is_dev = _is_block(self.target)
            flags = os.O_WRONLY | os.O_CLOEXEC | (0 if is_dev else os.O_CREAT)
            try:
                fd = os.open(self.target, flags, 0o644)
            except OSError as e:
                raise CblbError(f"cannot open {self.target} for writing: {e.strerror}",
                                e.errno or 0) from None
            try:
                if is_dev:
                    cap = os.lseek(fd, 0, os.SEEK_END)
                    if cap < self.size:
                        raise CblbError(f"{self.target} holds {cap} bytes, less than the "
                                        f"{self.size} of the backup", E.ENOSPC)
                else:
                    os.ftruncate(fd, 0)
                    os.ftruncate(fd, self.size)
                written = self._write_full(fd, h, progress, threads)
                for link, pieces in self.pieces:
                    written += _apply(link, pieces, fd, self.target, progress)
                os.fsync(fd)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # read back the disk
                except OSError:
                    pass
            finally:
                os.close(fd)
            cmp = self._verify(man, progress, threads)
        if not cmp.equal:
            listed = format_ranges(cmp.ranges, MAX_LISTED_RANGES)
            raise CblbError(f"{self.target} does not match {self.last.manifest} after the "
                            f"restore: {cmp.differing} blocks of {h.block_size} bytes differ "
                            f"(blocks {', '.join(listed)}); a link of the chain is damaged "
                            "('cblb verify IMAGE --against IMAGE.manifest' checks a full one)",
                            E.EIO)
        return RestoreResult(self.image, self.target, self.size, self.chain, written,
                             h.block_size, h.algorithm, time.perf_counter() - t0, cmp)

    def _write_full(self, fd: int, h: ManifestHeader, progress: Progress | None,
                    threads: int | None) -> int:
        full = self.chain[0]
        with Source.open(full.path) as src, Engine(h.block_size, h.algorithm, threads) as eng:
            if src.size != full.size:
                raise CblbError(f"{full.path} holds {src.size} bytes, its record says "
                                f"{full.size}: the image was changed", E.EINVAL)
            n = 0
            spans = eng.copy(src, fd, self.target)
            try:
                for _b, ln, _d in spans:
                    n += ln
                    if progress:
                        progress(ln)
            finally:
                spans.close()
        return n

    def _verify(self, man: Manifest, progress: Progress | None,
                threads: int | None) -> Comparison:
        h = man.header
        with Source.open(self.target, direct=_is_block(self.target)) as src, \
                Engine(h.block_size, h.algorithm, threads) as eng:
            src.size = min(src.size, self.size)   # a larger device: the backup's part
            return compare(eng, src, man, progress)


def newest_pieces(incrementals: list[Link]) -> list[tuple[Link, list[tuple[int, int, int]]]]:
    """What each incremental of a chain must write so that every byte is written once, from
    the newest link that holds it: per link (oldest first), ``(device offset, length, offset
    in the image file)`` pieces. A restore then writes the full image plus at most one device
    size more, however long the chain."""
    covered: list[tuple[int, int]] = []
    plan: list[tuple[Link, list[tuple[int, int, int]]]] = []
    for link in reversed(incrementals):
        # where each extent's data starts in the file
        starts, pos = [], link.data_offset
        for off, n in link.extents:
            starts.append((off, n, pos))
            pos += n
        mine = subtract(link.extents, covered)
        pieces, k = [], 0
        for off, n in mine:            # map each kept piece back into its extent's data
            while starts[k][0] + starts[k][1] <= off:
                k += 1
            eoff, _en, epos = starts[k]
            pieces.append((off, n, epos + off - eoff))
        plan.append((link, pieces))
        covered = merge(covered, link.extents)
    plan.reverse()
    return plan


def _apply(link: Link, pieces: list[tuple[int, int, int]], fd: int, target: str,
           progress: Progress | None) -> int:
    """Write an incremental's ``pieces`` (newest_pieces) onto ``fd``; returns the bytes
    written."""
    n = 0
    with open(link.path, "rb") as f:
        src = f.fileno()
        for off, length, pos in pieces:
            done = 0
            while done < length:
                want = min(COPY_PIECE, length - done)
                chunk = fsio.pread_full(src, want, pos)
                if len(chunk) != want:
                    raise CblbError(f"{link.path} ended at byte {pos + len(chunk)}: truncated",
                                    E.EIO)
                _pwrite_full(fd, chunk, off + done, target)
                pos += want
                done += want
                if progress:
                    progress(want)
            n += length
    return n


def _pwrite_full(fd: int, data: bytes, off: int, target: str) -> None:
    try:
        fsio.pwrite_full(fd, data, off)
    except fsio.IOErrorAt as e:
        hint = " (the target is full)" if e.errno in (E.ENOSPC, E.EDQUOT) else ""
        raise CblbError(f"cannot write {target} at byte {e.offset}: {e.strerror}{hint}",
                        e.errno or E.EIO) from None


def _is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False
