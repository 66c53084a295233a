"""Comparing sources block by block: verify, manifest, and the snapshot-versus-origin diff.

Both sides of a comparison are *digest streams*: a device or file hashed on the fly by the
engine (cblb/hashing.py), or a manifest (cblb/manifest.py) read from its mapped body. They
advance span by span in step, so two 1 TiB devices are compared with a few spans of
digests in memory, never both sources.

:func:`diff_snapshot` hashes a snapshot device and its live origin, and checks the result
against the module's own accounting: every block that differs must have been copied
(``cow_chunks``) or belong to the module's temp files on the origin (``store_extents``).
A block that differs without having been copied is a correctness bug in the module.
"""

from __future__ import annotations

import errno as E
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any, Generator, Union

from .control import Controller
from .errors import CblbError
from .hashing import DEFAULT_ALGORITHM, DEFAULT_BLOCK_SIZE, Engine, Progress, Source, differing_blocks
from .manifest import Manifest, ManifestWriter, is_manifest
from .model import SECTOR

Side = Union[Source, Manifest]
Range = tuple[int, int]  # inclusive first and last block


@dataclass
class Comparison:
    """The outcome of comparing two sides block by block."""

    a: str
    b: str
    block_size: int
    algorithm: str
    size_a: int
    size_b: int
    ranges: list[Range] = field(default_factory=list)
    differing: int = 0          # blocks
    bytes_hashed: int = 0       # read from devices and files (manifests excluded)
    seconds: float = 0.0

    @property
    def blocks(self) -> int:
        return -(-max(self.size_a, self.size_b) // self.block_size)

    @property
    def equal(self) -> bool:
        return self.differing == 0 and self.size_a == self.size_b

    @property
    def throughput(self) -> float:
        """Bytes hashed per second."""
        return self.bytes_hashed / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a, "b": self.b, "equal": self.equal, "block_size": self.block_size,
            "algorithm": self.algorithm, "size_a": self.size_a, "size_b": self.size_b,
            "blocks": self.blocks, "differing_blocks": self.differing,
            "ranges": [list(r) for r in self.ranges], "bytes_hashed": self.bytes_hashed,
            "seconds": round(self.seconds, 6),
            "mb_per_s": round(self.throughput / 1e6, 1),
        }


def add_blocks(ranges: list[Range], blocks: list[int]) -> None:
    """Append sorted block numbers to a list of sorted inclusive ranges, merging."""
    for b in blocks:
        if ranges and ranges[-1][1] + 1 == b:
            ranges[-1] = (ranges[-1][0], b)
        else:
            ranges.append((b, b))


def format_ranges(ranges: list[Range], limit: int = 0) -> list[str]:
    out = [f"{a}" if a == z else f"{a}-{z}" for a, z in (ranges[:limit] if limit else ranges)]
    if limit and len(ranges) > limit:
        out.append(f"... and {len(ranges) - limit} more ranges (--json lists all)")
    return out


def _label(side: Side) -> str:
    return side.path


def _size(side: Side) -> int:
    return side.header.size if isinstance(side, Manifest) else side.size


def _stream(engine: Engine, side: Side,
            progress: Progress | None) -> Generator[bytes | bytearray, None, None]:
    if isinstance(side, Manifest):
        for _b, d in side.spans(engine.span_blocks):
            yield d
    else:
        for _b, computed in engine.digests(side, progress=progress):
            yield computed


def compare(engine: Engine, a: Side, b: Side, progress: Progress | None = None) -> Comparison:
    """Compare two sides with ``engine``'s block size and algorithm (a manifest must
    match them: :func:`engine_for` builds a matching engine)."""
    for side in (a, b):
        if isinstance(side, Manifest):
            h = side.header
            if (h.block_size, h.algorithm) != (engine.block_size, engine.algorithm):
                raise CblbError(f"{side.path} holds {h.algorithm} digests of {h.block_size}-byte "
                                f"blocks, not {engine.algorithm} of {engine.block_size}",
                                E.EINVAL)
    res = Comparison(_label(a), _label(b), engine.block_size, engine.algorithm,
                     _size(a), _size(b))
    t0 = time.perf_counter()
    ds = engine.digest_size
    block = 0

    def counted(n: int) -> None:
        res.bytes_hashed += n
        if progress:
            progress(n)

    sa, sb = _stream(engine, a, counted), _stream(engine, b, counted)
    try:
        for da, db in zip_longest(sa, sb, fillvalue=b""):
            n = max(len(da), len(db)) // ds
            if da != db:
                diff = differing_blocks(da, db, ds)
                res.differing += len(diff)
                add_blocks(res.ranges, [block + i for i in diff])
            block += n
    finally:  # stop both pipelines (their threads use the sources' descriptors) now
        sa.close()
        sb.close()
    res.seconds = time.perf_counter() - t0
    return res


def open_side(path: str, direct: bool = False) -> Side:
    """A manifest when the file starts with the manifest magic, else a device or image."""
    if is_manifest(path):
        return Manifest.open(path)
    return Source.open(path, direct)


def engine_for(a: Side, b: Side, block_size: int | None, algorithm: str | None,
               threads: int | None = None) -> Engine:
    """An engine whose block size and algorithm fit both sides: a manifest's own, unless
    the caller asked for something else explicitly (then it is an error)."""
    mans = [s for s in (a, b) if isinstance(s, Manifest)]
    bs, alg = block_size, algorithm
    for m in mans:
        h = m.header
        if bs is not None and bs != h.block_size:
            raise CblbError(f"{m.path} was made with {h.block_size}-byte blocks, not {bs}; "
                            f"drop --block-size or give {h.block_size}", E.EINVAL)
        if alg is not None and alg != h.algorithm:
            raise CblbError(f"{m.path} holds {h.algorithm} digests, not {alg}; drop "
                            f"--algorithm or give {h.algorithm}", E.EINVAL)
        bs, alg = h.block_size, h.algorithm
    return Engine(bs or DEFAULT_BLOCK_SIZE, alg or DEFAULT_ALGORITHM, threads)


def total_bytes(*sides: Side) -> int:
    return sum(s.size for s in sides if isinstance(s, Source))


def verify_paths(a: str, b: str, block_size: int | None = None, algorithm: str | None = None,
                 direct: bool = False, threads: int | None = None,
                 progress: Progress | None = None) -> Comparison:
    """``cblb verify A --against B`` as a library call."""
    with ExitStack() as stack:
        sa = open_side(a, direct)
        stack.callback(sa.close)
        sb = open_side(b, direct)
        stack.callback(sb.close)
        engine = stack.enter_context(engine_for(sa, sb, block_size, algorithm, threads))
        return compare(engine, sa, sb, progress)


@dataclass
class ManifestResult:
    path: str
    source: str
    size: int
    block_size: int
    algorithm: str
    blocks: int
    seconds: float
    checksum: str

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["mb_per_s"] = round(self.size / self.seconds / 1e6, 1) if self.seconds > 0 else 0.0
        return d


def make_manifest(source: str, out: str, block_size: int = DEFAULT_BLOCK_SIZE,
                  algorithm: str = DEFAULT_ALGORITHM, direct: bool = False,
                  threads: int | None = None, progress: Progress | None = None,
                  label: str | None = None) -> ManifestResult:
    """Hash ``source`` and write its manifest to ``out`` atomically."""
    if os.path.exists(out) and os.path.samefile(out, source):
        raise CblbError(f"the manifest {out} would overwrite its own source", E.EINVAL)
    t0 = time.perf_counter()
    with Source.open(source, direct) as src, Engine(block_size, algorithm, threads) as eng, \
            ManifestWriter(out, algorithm, block_size, src.size, label or source) as w:
        for _b, d in eng.digests(src, progress=progress):
            w.write(d)
        w.commit()
        h = w.header
    return ManifestResult(os.path.abspath(out), source, h.size, block_size, algorithm, h.count,
                          time.perf_counter() - t0, f"{h.checksum:016x}")


# ---- snapshot versus origin -----------------------------------------------------------

def extents_to_blocks(extents: list[tuple[int, int]], block_size: int) -> list[Range]:
    """Origin-relative (start sector, sectors) extents -> inclusive block ranges that
    touch them, sorted and merged."""
    out: list[Range] = []
    for start, n in sorted(extents):
        if n <= 0:
            continue
        first = start * SECTOR // block_size
        last = ((start + n) * SECTOR - 1) // block_size
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def count_outside(ranges: list[Range], excluded: list[Range]) -> int:
    """Blocks in ``ranges`` not covered by ``excluded`` (both sorted, merged)."""
    total = 0
    j = 0
    for a, z in ranges:
        n = z - a + 1
        while j < len(excluded) and excluded[j][1] < a:
            j += 1
        k = j
        while k < len(excluded) and excluded[k][0] <= z:
            n -= min(z, excluded[k][1]) - max(a, excluded[k][0]) + 1
            k += 1
        total += n
    return total


@dataclass
class SnapshotDiff:
    """Blocks where a snapshot and its live origin differ, against the module's counts."""

    name: str
    origin: str
    comparison: Comparison
    chunk_size: int
    cow_chunks_before: int
    cow_chunks: int             # read after hashing; copies only ever grow
    store_chunks: int           # differing chunks inside the module's own temp files
    unexplained: int = 0        # differing chunks beyond what the module reports copied

    @property
    def differing_chunks(self) -> int:
        return self.comparison.differing

    @property
    def consistent(self) -> bool:
        return self.unexplained == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": self.name, "origin": self.origin, "consistent": self.consistent,
            "chunk_size": self.chunk_size, "differing_chunks": self.differing_chunks,
            "store_chunks": self.store_chunks,
            "differing_outside_store": self.differing_chunks - self.store_chunks,
            "cow_chunks": self.cow_chunks, "cow_chunks_before": self.cow_chunks_before,
            "unexplained": self.unexplained, "comparison": self.comparison.to_json(),
        }


def account(name: str, origin: str, cmp: Comparison, chunk_size: int, cow_before: int,
            cow_after: int, store_extents: list[tuple[int, int]]) -> SnapshotDiff:
    """Check a snapshot-versus-origin comparison (in chunk-size blocks) against the
    module's accounting. Every differing chunk outside the temp files must have been
    copied, so their number cannot exceed ``cow_chunks``."""
    store = extents_to_blocks(store_extents, chunk_size)
    outside = count_outside(cmp.ranges, store)
    store_diff = cmp.differing - outside
    return SnapshotDiff(name, origin, cmp, chunk_size, cow_before, cow_after, store_diff,
                        max(0, outside - cow_after))


def diff_snapshot(ctl: Controller, name: str, direct: bool = True, threads: int | None = None,
                  progress: Progress | None = None) -> SnapshotDiff:
    """Hash /dev/<name> against its origin in the module's chunk size and cross-check."""
    snap = ctl.snapshot(name)
    snap.require("compare")
    chunk = snap.chunk_size or 4096
    with Source.open(snap.device, direct) as s, Source.open(snap.origin, direct) as o, \
            Engine(chunk, DEFAULT_ALGORITHM, threads) as eng:
        cmp = compare(eng, s, o, progress)
    after = ctl.snapshot(name)
    if not after.state.can_read:
        raise CblbError(f"{name} became {after.state.value} during the comparison"
                        + (f" ({after.error})" if after.error else ""), E.EIO)
    return account(name, snap.origin, cmp, chunk, snap.cow_chunks, after.cow_chunks,
                   after.store_extents)
