"""The chain record: where each backup stands in its chain, and following a chain.

Every backup taken from a snapshot records where it stands, as one
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
"""

from __future__ import annotations

import errno as E
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .. import fsio
from ..backup import MANIFEST_SUFFIX
from ..errors import CblbError
from ..manifest import HEADER_SIZE, ManifestHeader, parse_header
from ..model import Snapshot
from .image import check_extents, is_incremental, read_header

CHAIN_SUFFIX = ".chain"
CHAIN_FORMAT = 1
FULL_HINT = "take a full backup (cblb backup SNAPSHOT IMAGE)"


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


def check_record(rec: Any, path: str) -> dict[str, Any]:
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
    fsio.unlink_if_there(os.path.abspath(image) + CHAIN_SUFFIX)


def record_full(image: str, snap: Snapshot, size: int) -> str | None:
    """Write IMAGE.chain for a full backup of ``snap`` (None when the snapshot has no
    changed-block map: an older module; then no incremental can follow it)."""
    image = os.path.abspath(image)
    forget_full_record(image)
    if not snap.has_cbt:
        return None
    path = image + CHAIN_SUFFIX
    fsio.write_json_atomic(path, chain_record(snap, size, "full"))
    return path


def read_link(path: str) -> Link:
    """The chain record of the backup ``path``: an incremental image's header, or a full
    image's IMAGE.chain."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise CblbError(f"{path}: no such backup", E.ENOENT)
    if os.path.isdir(path):
        raise CblbError(f"{path} is a folder, not a backup image", E.EISDIR)
    if is_incremental(path):
        h = read_header(path)
        rec = check_record(h.record, path)
        check_extents(path, h, rec["size"])
        return Link(path, rec, h.extents, h.data_offset)
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
    rec = check_record(rec, rec_path)
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


def checksum_hex(h: ManifestHeader) -> str:
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
    got = checksum_hex(manifest_header(base))
    if want.get("manifest_checksum") != got:
        raise CblbError(f"{base.path} is not the backup {link.path} was taken on (its manifest "
                        f"is {got}, the chain recorded {want.get('manifest_checksum')}): "
                        "another backup was written there since", E.EINVAL)


def chain_files(link: Link) -> list[str]:
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
