"""Sizes as people write them: ``4096``, ``4k``, ``64M``, ``1GiB``, ``2048s``.

Units are binary (k = 1024), upper or lower case, with or without ``iB``/``B``, as LVM reads
``--size``; ``s`` counts 512-byte sectors. A fraction (``1.5G``) is accepted as LVM accepts
it, when it comes to a whole number of bytes. A bare number means ``bare_unit`` bytes: 1 for
block sizes, 512 where the seed counts temp-file sizes in 512-byte blocks.
"""

from __future__ import annotations

import errno as E
import re
from fractions import Fraction

from .errors import CblbError

SECTOR = 512
_SIZE_RE = re.compile(r"^\s*(\d{1,30}(?:\.\d{1,30})?)\s*([kmgtps]?)(i?b)?\s*$", re.IGNORECASE)
_MULT = {"": 0, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50,
         "s": SECTOR}


def parse_bytes(text: str, bare_unit: int = 1) -> int:
    """'4096' -> 4096 * bare_unit; '4k', '4KiB', '1M', '1.5G', '8s' -> bytes."""
    m = _SIZE_RE.match(text)
    if not m or (m.group(2).lower() == "s" and m.group(3)):
        raise CblbError(f"cannot read {text!r} as a size; write e.g. 4096, 64M or 1G "
                        "(binary units: K, M, G, T; s for 512-byte sectors)", E.EINVAL)
    unit = m.group(2).lower()
    mult = _MULT[unit] or (1 if m.group(3) else bare_unit)
    nbytes = Fraction(m.group(1)) * mult
    if nbytes.denominator != 1:
        raise CblbError(f"{text!r} is not a whole number of bytes", E.EINVAL)
    return int(nbytes)


def parse_blocks(text: str) -> int:
    """A temp-file size in 512-byte blocks: a bare number is blocks (the seed's unit), a
    number with a unit is converted and must be a whole number of blocks."""
    nbytes = parse_bytes(text, bare_unit=SECTOR)
    if nbytes % SECTOR:
        raise CblbError(f"size {text!r} is not a whole number of 512-byte blocks", E.EINVAL)
    return nbytes // SECTOR
