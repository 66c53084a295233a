"""Incremental backup: ``cblb backup SNAPSHOT IMAGE --since PREVIOUS``.

Only the blocks the snapshot's changed-block map marks are read (whole manifest blocks,
grouped: extents.py), written to a new incremental image (image.py) and re-hashed into
the previous backup's manifest, which becomes the new one's; the image's header holds its
chain record (chain.py).
"""

from __future__ import annotations

import errno as E
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from .. import fsio
from ..backup import MANIFEST_SUFFIX
from ..control import Controller
from ..errors import CblbError
from ..hashing import Engine, Progress, Source, hash_blocks, read_error, short_read_error
from ..manifest import Manifest, ManifestWriter
from ..model import Snapshot
from .chain import CHAIN_SUFFIX, FULL_HINT, Link, chain_files, chain_record, checksum_hex, read_link
from .extents import changed_runs, group_extents
from .image import DATA_ALIGN, EXTENT, HEAD, pack_header

PIECE = 4 << 20                          # bytes read and hashed per task
MAX_THREADS = 8                          # pieces in flight: 2 x threads x PIECE of memory


@dataclass
class IncrementalResult:
    source: str
    image: str
    manifest: str
    base: str
    size: int
    block_size: int                 # the manifest's
    algorithm: str
    generation: str
    sequence: int
    cbt_block_size: int
    changed_blocks: int             # bits set in the snapshot's map
    extents: int
    bytes_copied: int               # data stored in the image
    bytes_read: int                 # read from the snapshot (whole manifest blocks)
    blocks_rehashed: int            # manifest blocks re-hashed
    image_bytes: int                # the incremental image's file size
    seconds: float

    @property
    def throughput(self) -> float:
        return self.bytes_read / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "incremental", "source": self.source, "image": self.image,
            "manifest": self.manifest, "base": self.base, "bytes": self.size,
            "bytes_copied": self.bytes_copied, "bytes_read": self.bytes_read,
            "image_bytes": self.image_bytes, "changed_blocks": self.changed_blocks,
            "changed_bytes": min(self.changed_blocks * self.cbt_block_size, self.size),
            "cbt_block_size": self.cbt_block_size, "extents": self.extents,
            "manifest_blocks_rehashed": self.blocks_rehashed, "block_size": self.block_size,
            "algorithm": self.algorithm, "generation": self.generation,
            "sequence": self.sequence, "seconds": round(self.seconds, 6),
            "mb_per_s": round(self.throughput / 1e6, 1),
        }


def check_since(snap: Snapshot, size: int, prev: Link) -> None:
    """Refuse (one line, asking for a full backup) unless ``prev`` is the backup of the
    start just before ``snap``'s, of the same origin, size and generation."""
    if not snap.has_cbt:
        raise CblbError(f"{snap.name} has no changed-block map (the module does not track "
                        f"changes, or the snapshot is not started); {FULL_HINT}", E.ENOENT)
    if prev.generation != snap.cbt_generation:
        raise CblbError(f"{prev.path} is from changed-block generation {prev.generation[:8]} "
                        f"but {snap.name} is from {snap.cbt_generation[:8]} (the module was "
                        "reloaded without a saved tracking, or the origin resized, changed "
                        "or untracked since): "
                        f"{FULL_HINT}", E.ESTALE)
    if prev.sequence != snap.cbt_sequence - 1:
        if prev.sequence >= snap.cbt_sequence:
            why = "it is not older than the snapshot"
        else:
            gap = range(prev.sequence + 1, snap.cbt_sequence)
            missing = (", ".join(str(k) for k in gap) if len(gap) <= 3
                       else f"{gap[0]} to {gap[-1]}")
            why = (f"the changes of start {missing} are in no backup (sequence numbers "
                   "missing)")
        raise CblbError(f"{prev.path} is sequence {prev.sequence} and {snap.name} is sequence "
                        f"{snap.cbt_sequence}: {why}; {FULL_HINT}", E.ESTALE)
    if prev.record.get("origin_dev") != snap.origin_dev or prev.size != size:
        raise CblbError(f"{prev.path} is a backup of {prev.record.get('origin')} "
                        f"({prev.record.get('origin_dev')}, {prev.size} bytes), not of "
                        f"{snap.origin} ({snap.origin_dev}, {size} bytes); {FULL_HINT}",
                        E.EXDEV)
    if prev.cbt_block_size != snap.cbt_block_size:
        raise CblbError(f"{prev.path} was tracked in blocks of {prev.cbt_block_size} bytes, "
                        f"{snap.name} in {snap.cbt_block_size}; {FULL_HINT}", E.ESTALE)


class IncrementalBackup:
    """``cblb backup SNAPSHOT IMAGE --since PREVIOUS`` in two steps: the constructor checks
    everything and plans the reads (``read_bytes`` is known before any data is read), and
    :meth:`run` copies."""

    def __init__(self, ctl: Controller, name: str, image: str, since: str, *,
                 restart: bool = False, label: str | None = None) -> None:
        self.ctl = ctl
        self.snap = snap = ctl.snapshot(name)
        snap.require("back up")
        self.image = os.path.abspath(image)
        self.prev = prev = read_link(since)
        self.source = ctl.system.device_file(snap.device)
        with Source.open(self.source) as src:
            self.size = src.size
        check_since(snap, self.size, prev)
        for p in chain_files(prev) + [self.source]:
            if os.path.exists(self.image) and os.path.exists(p) and os.path.samefile(self.image, p):
                raise CblbError(f"{image} is {p}, which the new backup rests on or is read "
                                "from; give a new image path", E.EINVAL)
        if os.path.lexists(self.image):
            if not restart:
                raise CblbError(f"{self.image} already exists; use --restart to overwrite it",
                                E.EEXIST)
            if not os.path.isfile(self.image):
                raise CblbError(f"{self.image} is not a regular file; an incremental backup "
                                "is a file", E.EINVAL)
        cbs, bitmap = ctl.changed_blocks(name, expect=snap)
        nbits = -(-self.size // cbs)
        if cbs != snap.cbt_block_size or len(bitmap) * 8 < nbits:
            raise CblbError(f"{name}'s changed-block map covers {len(bitmap) * 8 * cbs} bytes "
                            f"but the snapshot has {self.size}; {FULL_HINT}", E.EINVAL)
        self.cbt_block_size = cbs
        runs = changed_runs(bitmap, nbits)
        self.changed_blocks = sum(b - a for a, b in runs)
        self.extents = [(a * cbs, min(b * cbs, self.size) - a * cbs) for a, b in runs]
        if not os.path.exists(prev.manifest):
            raise CblbError(f"{prev.manifest} is missing: the backup {prev.path} is not "
                            f"complete; {FULL_HINT}", E.ENOENT)
        self.prev_manifest = Manifest.open(prev.manifest)
        h = self.prev_manifest.header
        if h.size != self.size:
            self.prev_manifest.close()
            raise CblbError(f"{prev.manifest} describes {h.size} bytes, the snapshot has "
                            f"{self.size}; {FULL_HINT}", E.EINVAL)
        self.block_size, self.algorithm = h.block_size, h.algorithm
        self.groups = group_extents(self.extents, self.block_size, self.size)
        self.read_bytes = sum(min(g.end * self.block_size, self.size) - g.first * self.block_size
                              for g in self.groups)
        self.label = label or f"{snap.device} (snapshot of {snap.origin})"

    def close(self) -> None:
        self.prev_manifest.close()

    def _record(self) -> dict[str, Any]:
        prev = self.prev
        base = {"image": prev.path,
                "relative": os.path.relpath(prev.path, os.path.dirname(self.image)),
                "kind": prev.kind, "generation": prev.generation, "sequence": prev.sequence,
                "manifest_checksum": checksum_hex(self.prev_manifest.header)}
        return chain_record(self.snap, self.size, "incremental", base)

    def _pieces(self) -> list[tuple[int, int]]:
        """(offset, length) of each read: whole manifest blocks, PIECE bytes at most."""
        mb = self.block_size
        step = max(1, PIECE // mb) * mb
        out = []
        for g in self.groups:
            lo, hi = g.first * mb, min(g.end * mb, self.size)
            for off in range(lo, hi, step):
                out.append((off, min(step, hi - off)))
        return out

    def run(self, progress: Progress | None = None, threads: int | None = None
            ) -> IncrementalResult:
        t0 = time.perf_counter()
        try:
            return self._run(progress, threads, t0)
        finally:
            self.close()

    def _run(self, progress: Progress | None, threads: int | None,
             t0: float) -> IncrementalResult:
        record = json.dumps(self._record(), sort_keys=True).encode()
        table = b"".join(EXTENT.pack(o, n) for o, n in self.extents)
        data_off = -(-(HEAD.size + len(record) + len(table)) // DATA_ALIGN) * DATA_ALIGN
        data_bytes = sum(n for _o, n in self.extents)
        try:
            atomic = fsio.AtomicFile(self.image)      # renamed to IMAGE after IMAGE.manifest
        except OSError as e:
            raise CblbError(f"cannot write {self.image}: {e.strerror}", e.errno or 0) from None
        patches: list[tuple[int, bytes]] = []
        with atomic as out:
            out.write(pack_header(record, table, data_off, data_bytes))
            out.write(bytes(data_off - out.tell()))
            written = self._copy(out, patches, progress, threads)
            if written != data_bytes:
                raise CblbError(f"internal error: {written} bytes copied, {data_bytes} "
                                "planned", E.EIO)
            after = self.ctl.snapshot(self.snap.name)
            if not after.state.can_read or after.start_time_ns != self.snap.start_time_ns:
                raise CblbError(f"{self.snap.name} became {after.state.value} during the "
                                "backup" + (f" ({after.error})" if after.error else "")
                                + "; the incremental was not kept", E.EIO)
            for p in (self.image, self.image + CHAIN_SUFFIX):
                fsio.unlink_if_there(p)
            manifest = self.image + MANIFEST_SUFFIX
            rehashed = _patched_manifest(manifest, self.prev_manifest, patches, self.label)
        return IncrementalResult(
            self.source, self.image, manifest, self.prev.path, self.size, self.block_size,
            self.algorithm, self.snap.cbt_generation, self.snap.cbt_sequence,
            self.cbt_block_size, self.changed_blocks, len(self.extents), data_bytes,
            self.read_bytes, rehashed, data_off + data_bytes, time.perf_counter() - t0)

    def _copy(self, out: Any, patches: list[tuple[int, bytes]], progress: Progress | None,
              threads: int | None) -> int:
        """Read each piece on the pool, in order: its digests patch the manifest, its part
        of the extents goes to ``out``. Returns the data bytes written."""
        mb, ds_alg = self.block_size, self.algorithm
        pieces = self._pieces()
        extents = self.extents
        nthreads = min(threads or len(os.sched_getaffinity(0)), MAX_THREADS)
        written = 0
        j = 0                      # the first extent that may still meet a piece
        with Source.open(self.source) as src, Engine(mb, ds_alg, nthreads) as eng:
            if src.size != self.size:
                raise short_read_error(src.path, src.size, self.size)

            def read(off: int, n: int) -> tuple[bytes, bytes]:
                data = _pread_full(src, off, n)
                return data, hash_blocks(data, mb, ds_alg)

            for (off, n), (data, digests) in zip(pieces, eng.ordered(read, pieces)):
                patches.append((off // mb, digests))
                end = off + n
                mv = memoryview(data)
                while j < len(extents) and extents[j][0] + extents[j][1] <= off:
                    j += 1
                k = j
                while k < len(extents) and extents[k][0] < end:
                    a = max(extents[k][0], off)
                    z = min(extents[k][0] + extents[k][1], end)
                    out.write(mv[a - off:z - off])
                    written += z - a
                    k += 1
                if progress:
                    progress(n)
        return written


def _pread_full(src: Source, off: int, n: int) -> bytes:
    try:
        data = fsio.pread_full(src.fd, n, off)
    except fsio.IOErrorAt as e:
        raise read_error(src.path, e.offset, e) from None
    if len(data) < n:
        raise short_read_error(src.path, off + len(data), src.size)
    return data


def _patched_manifest(path: str, base: Manifest, patches: list[tuple[int, bytes]],
                      label: str) -> int:
    """Write ``base``'s digests with ``patches`` ((first block, digests), sorted, disjoint)
    applied to ``path``; returns the blocks patched."""
    h = base.header
    ds = h.digest_size
    span = 1 << 16
    i = 0
    patched = 0
    with ManifestWriter(path, h.algorithm, h.block_size, h.size, label) as w:
        for b in range(0, h.count, span):
            e = min(b + span, h.count)
            buf = bytearray(base.digests(b, e))
            while i < len(patches) and patches[i][0] < e:
                first, d = patches[i]
                last = first + len(d) // ds
                lo, hi = max(first, b), min(last, e)
                buf[(lo - b) * ds:(hi - b) * ds] = d[(lo - first) * ds:(hi - first) * ds]
                patched += hi - lo
                if last > e:
                    break          # the rest of this patch is in the next span
                i += 1
            w.write(buf)
        w.commit()
    return patched
