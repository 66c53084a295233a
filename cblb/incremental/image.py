"""The incremental image's file format: its header, record and extent table.

The image (``cblb backup SNAPSHOT IMAGE --since PREVIOUS``), all integers
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
"""

from __future__ import annotations

import errno as E
import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from ..errors import CblbError
from ..manifest import checksummer

MAGIC = b"CBLBINCR"
VERSION = 1
HEAD = struct.Struct("<8sHHIQQQQ16s")   # the 64 header bytes
EXTENT = struct.Struct("<QQ")
CHECKSUM_AT = 40
DATA_ALIGN = 4096
MAX_RECORD = 1 << 20


def is_incremental(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


@dataclass
class ImageHeader:
    """What an incremental image's header holds, checksum checked; the record still raw."""

    record: Any
    extents: list[tuple[int, int]]
    data_offset: int
    data_bytes: int


def read_header(path: str) -> ImageHeader:
    """The header of the incremental image ``path``, its checksum checked (the record is
    for the caller to check, then :func:`check_extents`)."""
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
    h = checksummer()
    h.update(head[:CHECKSUM_AT] + bytes(8) + head[CHECKSUM_AT + 8:])
    h.update(body)
    if len(body) != table - 64 or h.intdigest() != checksum:
        raise CblbError(f"{path}: incremental image header checksum mismatch: the file is "
                        "corrupted", E.EBADMSG)
    try:
        rec = json.loads(body[:rsize].decode())
    except (UnicodeDecodeError, ValueError):
        raise CblbError(f"{path}: unreadable chain record in its header", E.EINVAL) from None
    extents = [EXTENT.unpack_from(body, rsize + i * EXTENT.size) for i in range(count)]
    return ImageHeader(rec, [(int(o), int(n)) for o, n in extents], data_off, data_bytes)


def check_extents(path: str, h: ImageHeader, size: int) -> None:
    """The extent table is sorted, disjoint, within the device's ``size`` bytes and adds up
    to the data size."""
    end = 0
    for off, n in h.extents:
        if n == 0 or off < end or off + n > size:
            raise CblbError(f"{path}: its extent table is not sorted, disjoint and within "
                            f"{size} bytes: the file is corrupted", E.EINVAL)
        end = off + n
    if sum(n for _o, n in h.extents) != h.data_bytes:
        raise CblbError(f"{path}: its extents do not add up to its data size", E.EINVAL)


def pack_header(record: bytes, table: bytes, data_off: int, data_bytes: int) -> bytes:
    """The header, record and extent table of an image, checksummed."""
    count = len(table) // EXTENT.size
    head = HEAD.pack(MAGIC, VERSION, 0, len(record), count, data_off, data_bytes, 0, bytes(16))
    h = checksummer()
    h.update(head)
    h.update(record)
    h.update(table)
    head = head[:CHECKSUM_AT] + struct.pack("<Q", h.intdigest()) + head[CHECKSUM_AT + 8:]
    return head + record + table
