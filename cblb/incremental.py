"""Incremental backups from the module's changed-block tracking, and restoring a chain.

The module keeps, per origin, a map of the blocks written between two starts
(kmod/doc/CBT.md): the snapshot of start *k* carries ``cbt_generation``, ``cbt_sequence``
= *k* and ``cbt_map``, the blocks changed between start *k-1* and start *k*. So a backup of
the snapshot of start *k+1* needs only those blocks, on top of a backup of start *k* of the
same generation. Backups form a chain: one full backup, then incrementals, each resting on
the one before.

**The chain record.** Every backup taken from a snapshot records where it stands, as one
JSON object (``format`` 1)::

    {"format": 1, "kind": "full" | "incremental",
     "size": <bytes of the device>, "origin": "/dev/sda2", "origin_dev": "8:2",
     "snapshot": "shadow-sda2", "start_time_ns": <the snapshot's point in time>,
     "cbt": {"generation": "<uuid>", "sequence": <k>, "block_size": <bytes per map bit>},
     "created_ns": <when the backup was made>,
     "base": {...}}                      # incrementals only: the backup it rests on

A full backup (``cblb backup SNAPSHOT IMAGE``) keeps it beside the image in ``IMAGE.chain``
(written last, after ``IMAGE.manifest``; ``--restart`` removes the old one before it
overwrites the image, so an interrupted copy has none; a backup of a path, not a snapshot,
has none). An incremental keeps it inside its own header. ``base`` names the previous backup
as it was given (``image``, absolute), relative to the incremental's folder (``relative``,
tried first, so a chain moved as a whole still resolves), and what it must be: its
``kind``, ``generation``, ``sequence`` and ``manifest_checksum`` (the checksum field of its
manifest's header, so a different backup written later at that path is not taken for it).

**The incremental image** (``cblb backup SNAPSHOT IMAGE --since PREVIOUS``), all integers
little-endian, unsigned::

    offset  size  field
         0     8  magic, the ASCII bytes "CBLBINCR"
         8     2  format version: 1
        10     2  reserved: 0
        12     4  record size R in bytes (the chain record, UTF-8 JSON)
        16     8  extent count N
        24     8  data offset D: a multiple of 4096, at least 64 + R + 16 N
        32     8  data size: the sum of the extents' lengths
        40     8  checksum: XXH3-64 (seed 0) of these 64 bytes with this field zero, the
                  record and the extent table
        48    16  reserved: 0
        64     R  the chain record
    64 + R  16 N  extents: (device offset, length) in bytes; sorted, disjoint, not empty,
                  within the device
         D     .  data: extent 0's bytes, then extent 1's, ...; the file ends here

The extents are the runs of changed map blocks (cut at the device's end), so the image holds
exactly what the map says changed, whatever the manifest's block size. It is written to a
temporary file, fsynced, then renamed to IMAGE after ``IMAGE.manifest`` is in place; an
interrupted incremental leaves nothing (run it again). ``IMAGE.manifest`` is the manifest of
the whole device at that snapshot (cblb/manifest.py, the previous backup's block size and
algorithm): the previous manifest's digests, with every manifest block that overlaps a
changed map block re-hashed from the snapshot (only those are read, and the unchanged
blocks between two changes at most ``READ_GAP`` apart, so that scattered changes cost few
reads). ``cblb verify`` and
``cblb restore`` need no other file.

**Restore** (``cblb restore IMAGE TARGET``) follows the ``base`` links from IMAGE back to
the full backup, checking each (same generation, sequence one less, same origin and size,
the manifest it was taken on), writes the full image to TARGET, then from each incremental the
bytes no newer link holds (``newest_pieces``: every byte written once more at most, so a
long chain costs what a short one does), fsyncs, and reads TARGET back (its cached pages
dropped first) against IMAGE's manifest: any differing block fails the restore with its ranges.

A chain breaks when the module's generation of the origin changes (module reloaded, origin
resized or its medium changed, ``untrack`` then tracking again) or a start is not backed up
(a sequence is missing): ``--since`` then refuses, asking for a full backup.
"""

from __future__ import annotations

import errno as E
import json
import os
import re
import stat
import struct
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from .backup import MANIFEST_SUFFIX, _write_json_atomic
from .control import Controller, Snapshot
from .errors import CblbError
from .hashing import Engine, Progress, Source, hash_blocks, read_error, short_read_error
from .manifest import HEADER_SIZE, Manifest, ManifestHeader, ManifestWriter, _fsync_dir, parse_header
from .verify import Comparison, compare, format_ranges

CHAIN_SUFFIX = ".chain"
CHAIN_FORMAT = 1
MAGIC = b"CBLBINCR"
VERSION = 1
HEAD = struct.Struct("<8sHHIQQQQ16s")   # the 64 header bytes
EXTENT = struct.Struct("<QQ")
CHECKSUM_AT = 40
DATA_ALIGN = 4096
PIECE = 4 << 20                          # bytes read and hashed per task
MAX_THREADS = 8                          # pieces in flight: 2 x threads x PIECE of memory
COPY_PIECE = 4 << 20
MAX_RECORD = 1 << 20
MAX_LISTED_RANGES = 20
FULL_HINT = "take a full backup (cblb backup SNAPSHOT IMAGE)"


# ---- the chain record ---------------------------------------------------------------------

@dataclass
class Link:
    """One backup of a chain, as its record says."""

    path: str                       # the image, absolute
    record: dict[str, Any]
    extents: list[tuple[int, int]] = field(default_factory=list)   # incrementals
    data_offset: int = 0

    @property
    def kind(self) -> str:
        return str(self.record.get("kind", ""))

    @property
    def generation(self) -> str:
        return str(self.record["cbt"]["generation"])

    @property
    def sequence(self) -> int:
        return int(self.record["cbt"]["sequence"])

    @property
    def cbt_block_size(self) -> int:
        return int(self.record["cbt"]["block_size"])

    @property
    def size(self) -> int:
        return int(self.record["size"])

    @property
    def base(self) -> dict[str, Any]:
        return dict(self.record.get("base") or {})

    @property
    def manifest(self) -> str:
        return self.path + MANIFEST_SUFFIX

    @property
    def data_bytes(self) -> int:
        return sum(n for _o, n in self.extents)

    def to_json(self) -> dict[str, Any]:
        return {"image": self.path, "kind": self.kind, "generation": self.generation,
                "sequence": self.sequence, "size": self.size,
                "data_bytes": self.data_bytes if self.kind == "incremental" else self.size}


def chain_record(snap: Snapshot, size: int, kind: str,
                 base: dict[str, Any] | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "format": CHAIN_FORMAT, "kind": kind, "size": size, "origin": snap.origin,
        "origin_dev": snap.origin_dev, "snapshot": snap.name,
        "start_time_ns": snap.start_time_ns,
        "cbt": {"generation": snap.cbt_generation, "sequence": snap.cbt_sequence,
                "block_size": snap.cbt_block_size},
        "created_ns": time.time_ns(),
    }
    if base is not None:
        rec["base"] = base
    return rec


def _check_record(rec: Any, path: str) -> dict[str, Any]:
    ok = (isinstance(rec, dict) and rec.get("format") == CHAIN_FORMAT
          and rec.get("kind") in ("full", "incremental") and isinstance(rec.get("cbt"), dict)
          and isinstance(rec["cbt"].get("generation"), str)
          and isinstance(rec["cbt"].get("sequence"), int)
          and isinstance(rec["cbt"].get("block_size"), int)
          and isinstance(rec.get("size"), int) and rec["size"] >= 0
          and (rec["kind"] == "full" or isinstance(rec.get("base"), dict)))
    if not ok:
        raise CblbError(f"{path}: not a chain record this cblb reads (format {CHAIN_FORMAT}); "
                        f"{FULL_HINT}", E.EINVAL)
    return rec


def forget_full_record(image: str) -> None:
    """Drop IMAGE.chain: a copy begins, and until it ends the image rests on nothing."""
    try:
        os.unlink(os.path.abspath(image) + CHAIN_SUFFIX)
    except FileNotFoundError:
        pass


def record_full(image: str, snap: Snapshot, size: int) -> str | None:
    """Write IMAGE.chain for a full backup of ``snap`` (None when the snapshot has no
    changed-block map: an older module; then no incremental can follow it)."""
    image = os.path.abspath(image)
    forget_full_record(image)
    if not snap.has_cbt:
        return None
    path = image + CHAIN_SUFFIX
    _write_json_atomic(path, chain_record(snap, size, "full"))
    return path


def is_incremental(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _read_incremental(path: str) -> Link:
    from .manifest import _checksummer

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(HEAD.size)
        if len(head) < HEAD.size:
            raise CblbError(f"{path}: incremental image truncated in its header", E.EINVAL)
        magic, version, _r, rsize, count, data_off, data_bytes, checksum, _r2 = \
            HEAD.unpack(head)
        if version != VERSION:
            raise CblbError(f"{path}: incremental format version {version} is not supported "
                            f"(this cblb reads version {VERSION}); upgrade cblb", E.EINVAL)
        table = 64 + rsize + EXTENT.size * count
        if rsize > MAX_RECORD or data_off % DATA_ALIGN or data_off < table or \
                size != data_off + data_bytes:
            raise CblbError(f"{path}: corrupted or truncated incremental image ({size} bytes; "
                            f"the header says {data_off} + {data_bytes})", E.EINVAL)
        body = f.read(table - 64)
    h = _checksummer()
    h.update(head[:CHECKSUM_AT] + bytes(8) + head[CHECKSUM_AT + 8:])
    h.update(body)
    if len(body) != table - 64 or h.intdigest() != checksum:
        raise CblbError(f"{path}: incremental image header checksum mismatch: the file is "
                        "corrupted", E.EBADMSG)
    try:
        rec = json.loads(body[:rsize].decode())
    except (UnicodeDecodeError, ValueError):
        raise CblbError(f"{path}: unreadable chain record in its header", E.EINVAL) from None
    rec = _check_record(rec, path)
    extents = [EXTENT.unpack_from(body, rsize + i * EXTENT.size) for i in range(count)]
    end = 0
    for off, n in extents:
        if n == 0 or off < end or off + n > rec["size"]:
            raise CblbError(f"{path}: its extent table is not sorted, disjoint and within "
                            f"{rec['size']} bytes: the file is corrupted", E.EINVAL)
        end = off + n
    if sum(n for _o, n in extents) != data_bytes:
        raise CblbError(f"{path}: its extents do not add up to its data size", E.EINVAL)
    return Link(path, rec, [(int(o), int(n)) for o, n in extents], data_off)


def read_link(path: str) -> Link:
    """The chain record of the backup ``path``: an incremental image's header, or a full
    image's IMAGE.chain."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise CblbError(f"{path}: no such backup", E.ENOENT)
    if os.path.isdir(path):
        raise CblbError(f"{path} is a folder, not a backup image", E.EISDIR)
    if is_incremental(path):
        return _read_incremental(path)
    rec_path = path + CHAIN_SUFFIX
    try:
        with open(rec_path) as f:
            rec = json.load(f)
    except FileNotFoundError:
        raise CblbError(f"{path} records no changed-block generation ({rec_path} is missing: "
                        "it was not backed up from a started snapshot by this cblb, or its "
                        "copy did not finish); " + FULL_HINT, E.ENOENT) from None
    except (OSError, ValueError) as e:
        raise CblbError(f"{rec_path} is unreadable ({e}); {FULL_HINT}", E.EINVAL) from None
    rec = _check_record(rec, rec_path)
    if rec["kind"] != "full":
        raise CblbError(f"{rec_path} says {path} is {rec['kind']}, but it is not an "
                        "incremental image", E.EINVAL)
    return Link(path, rec)


def manifest_header(link: Link) -> ManifestHeader:
    """The header of a link's manifest (its checksum names the backup)."""
    try:
        with open(link.manifest, "rb") as f:
            return parse_header(f.read(HEADER_SIZE), link.manifest)
    except FileNotFoundError:
        raise CblbError(f"the chain needs {link.manifest}, which is missing (the manifest of "
                        f"{link.path})", E.ENOENT) from None


def _checksum_hex(h: ManifestHeader) -> str:
    return f"{h.checksum:016x}"


def check_base(link: Link, base: Link) -> None:
    """``base`` is the backup ``link`` rests on: one generation, one sequence less, the same
    origin and size, and the very backup it was taken on (its manifest's checksum)."""
    want = link.base
    if base.generation != link.generation:
        raise CblbError(f"{base.path} is from changed-block generation {base.generation[:8]}, "
                        f"but {link.path} is from generation {link.generation[:8]}: a link "
                        "from another generation cannot be combined with it", E.EINVAL)
    if base.sequence != link.sequence - 1:
        raise CblbError(f"wrong order: {link.path} (sequence {link.sequence}) rests on the "
                        f"backup of sequence {link.sequence - 1}, but {base.path} is sequence "
                        f"{base.sequence}", E.EINVAL)
    if (base.size, base.record.get("origin_dev")) != (link.size, link.record.get("origin_dev")):
        raise CblbError(f"{base.path} is a backup of another origin or size "
                        f"({base.record.get('origin')}, {base.size} bytes) than {link.path} "
                        f"({link.record.get('origin')}, {link.size} bytes)", E.EINVAL)
    got = _checksum_hex(manifest_header(base))
    if want.get("manifest_checksum") != got:
        raise CblbError(f"{base.path} is not the backup {link.path} was taken on (its manifest "
                        f"is {got}, the chain recorded {want.get('manifest_checksum')}): "
                        "another backup was written there since", E.EINVAL)


def _chain_files(link: Link) -> list[str]:
    """The files of the chain ending with ``link``, as far as it can be followed."""
    out = []
    cur: Link | None = link
    for _ in range(100000):
        if cur is None:
            break
        out += [cur.path, cur.manifest]
        if cur.kind != "incremental":
            break
        try:
            cur = find_base(cur)
        except CblbError:
            cur = None
    return out


def _base_candidates(link: Link) -> list[str]:
    want = link.base
    out = []
    if want.get("relative"):
        out.append(os.path.normpath(os.path.join(os.path.dirname(link.path),
                                                 str(want["relative"]))))
    if want.get("image"):
        out.append(os.path.abspath(str(want["image"])))
    return list(dict.fromkeys(out))


def find_base(link: Link) -> Link:
    """The backup ``link`` rests on, checked; a clear error when it is missing or wrong."""
    candidates = [p for p in _base_candidates(link) if os.path.exists(p)]
    if not candidates:
        raise CblbError(f"the chain needs {link.base.get('image')}, which is missing (the "
                        f"backup {link.path} rests on it)", E.ENOENT)
    first_error: CblbError | None = None
    for p in candidates:
        try:
            base = read_link(p)
            check_base(link, base)
            return base
        except CblbError as e:
            first_error = first_error or e
    assert first_error is not None
    raise first_error


def resolve_chain(image: str) -> list[Link]:
    """The chain ending with ``image``: the full backup first, then every incremental."""
    links = [read_link(image)]
    seen = {os.path.realpath(links[0].path)}
    while links[-1].kind == "incremental":
        base = find_base(links[-1])
        real = os.path.realpath(base.path)
        if real in seen:
            raise CblbError(f"the chain of {image} loops back to {base.path}", E.ELOOP)
        seen.add(real)
        links.append(base)
    return links[::-1]


# ---- changed-block map -> extents -----------------------------------------------------------

def changed_runs(bitmap: bytes, nbits: int) -> list[tuple[int, int]]:
    """Runs [first, end) of set bits (bit i: byte i // 8, bit i % 8, least significant
    first), among the first ``nbits``."""
    runs: list[list[int]] = []

    def add(a: int, b: int) -> None:
        b = min(b, nbits)
        if a >= b:
            return
        if runs and runs[-1][1] == a:
            runs[-1][1] = b
        else:
            runs.append([a, b])

    for m in re.finditer(rb"[^\x00]+", bitmap):
        base = m.start()
        for piece in re.finditer(rb"\xff+|[^\xff]", m.group()):
            i = base + piece.start()
            if piece.group()[0] == 0xFF:
                add(i * 8, (base + piece.end()) * 8)
                continue
            byte = piece.group()[0]
            for bit in range(8):
                if byte >> bit & 1:
                    add(i * 8 + bit, i * 8 + bit + 1)
    return [(a, b) for a, b in runs]


@dataclass
class _Group:
    """Whole manifest blocks [first, end) to read and re-hash, and the extents in them."""

    first: int
    end: int
    extents: list[tuple[int, int]]


READ_GAP = 64 << 10     # unchanged bytes read between two changed extents, not two reads


def group_extents(extents: list[tuple[int, int]], mblock: int, size: int,
                  gap: int = READ_GAP) -> list[_Group]:
    """The manifest blocks that overlap the extents, in disjoint groups: a manifest block
    larger than a map block is read once even when several extents touch it, and extents
    at most ``gap`` bytes apart share one read (scattered 4 KiB changes would otherwise
    cost one system call and one task each: reading the gap is cheaper; its blocks are
    re-hashed to the digests they already had)."""
    groups: list[_Group] = []
    gap_blocks = gap // mblock
    for off, n in extents:
        first, end = off // mblock, -(-min(off + n, size) // mblock)
        if groups and first <= groups[-1].end + gap_blocks:
            groups[-1].end = max(groups[-1].end, end)
            groups[-1].extents.append((off, n))
        else:
            groups.append(_Group(first, end, [(off, n)]))
    return groups


# ---- incremental backup -----------------------------------------------------------------------

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
                        "reloaded, or the origin resized, changed or untracked since): "
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
        for p in _chain_files(prev) + [self.source]:
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
        cbs, bitmap = ctl.changed_blocks(name)
        again = ctl.snapshot(name)
        if (again.cbt_generation, again.cbt_sequence, again.start_time_ns) != \
                (snap.cbt_generation, snap.cbt_sequence, snap.start_time_ns):
            raise CblbError(f"{name} was removed and taken again while the backup was being "
                            "prepared; run it again", E.EAGAIN)
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
                "manifest_checksum": _checksum_hex(self.prev_manifest.header)}
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
        folder = os.path.dirname(self.image)
        try:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(self.image)}.",
                                       suffix=".tmp")
        except OSError as e:
            raise CblbError(f"cannot write {self.image}: {e.strerror}", e.errno or 0) from None
        patches: list[tuple[int, bytes]] = []
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(_header(record, table, data_off, data_bytes))
                out.write(bytes(data_off - out.tell()))
                written = self._copy(out, patches, progress, threads)
                out.flush()
                os.fsync(out.fileno())
            if written != data_bytes:
                raise CblbError(f"internal error: {written} bytes copied, {data_bytes} "
                                "planned", E.EIO)
            after = self.ctl.snapshot(self.snap.name)
            if not after.state.can_read or after.start_time_ns != self.snap.start_time_ns:
                raise CblbError(f"{self.snap.name} became {after.state.value} during the "
                                "backup" + (f" ({after.error})" if after.error else "")
                                + "; the incremental was not kept", E.EIO)
            for p in (self.image, self.image + CHAIN_SUFFIX):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
            manifest = self.image + MANIFEST_SUFFIX
            rehashed = _patched_manifest(manifest, self.prev_manifest, patches, self.label)
            os.chmod(tmp, 0o644 & ~_umask())
            os.replace(tmp, self.image)
            _fsync_dir(folder)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
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


def _header(record: bytes, table: bytes, data_off: int, data_bytes: int) -> bytes:
    from .manifest import _checksummer

    count = len(table) // EXTENT.size
    head = HEAD.pack(MAGIC, VERSION, 0, len(record), count, data_off, data_bytes, 0, bytes(16))
    h = _checksummer()
    h.update(head)
    h.update(record)
    h.update(table)
    head = head[:CHECKSUM_AT] + struct.pack("<Q", h.intdigest()) + head[CHECKSUM_AT + 8:]
    return head + record + table


def _pread_full(src: Source, off: int, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        try:
            chunk = os.pread(src.fd, n - got, off + got)
        except OSError as e:
            raise read_error(src.path, off + got, e) from None
        if not chunk:
            raise short_read_error(src.path, off + got, src.size)
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


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


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# ---- restore ---------------------------------------------------------------------------------

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


def _subtract(extents: list[tuple[int, int]], covered: list[tuple[int, int]]
              ) -> list[tuple[int, int]]:
    """The parts of sorted, disjoint ``extents`` outside sorted, disjoint ``covered``."""
    out: list[tuple[int, int]] = []
    ends = [(o, o + n) for o, n in covered]
    i = 0
    for off, n in extents:
        a, b = off, off + n
        while i < len(ends) and ends[i][1] <= a:
            i += 1
        j = i
        while a < b and j < len(ends) and ends[j][0] < b:
            c0, c1 = ends[j]
            if c0 > a:
                out.append((a, c0 - a))
            a = max(a, c1)
            j += 1
        if a < b:
            out.append((a, b - a))
    return out


def _merge(x: list[tuple[int, int]], y: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The union of two sorted, disjoint extent lists, sorted and disjoint."""
    out: list[tuple[int, int]] = []
    for off, n in sorted(x + y):
        if out and off <= out[-1][0] + out[-1][1]:
            o, m = out[-1]
            out[-1] = (o, max(o + m, off + n) - o)
        else:
            out.append((off, n))
    return out


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
        mine = _subtract(link.extents, covered)
        pieces, k = [], 0
        for off, n in mine:            # map each kept piece back into its extent's data
            while starts[k][0] + starts[k][1] <= off:
                k += 1
            eoff, _en, epos = starts[k]
            pieces.append((off, n, epos + off - eoff))
        plan.append((link, pieces))
        covered = _merge(covered, link.extents)
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
                chunk = os.pread(src, want, pos)
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
    mv = memoryview(data)
    while mv:
        try:
            n = os.pwrite(fd, mv, off)
        except OSError as e:
            hint = " (the target is full)" if e.errno in (E.ENOSPC, E.EDQUOT) else ""
            raise CblbError(f"cannot write {target} at byte {off}: {e.strerror}{hint}",
                            e.errno or E.EIO) from None
        mv, off = mv[n:], off + n


def _is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False
