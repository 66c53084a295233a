"""Pure extent arithmetic: the changed-block map's runs, the reads they need, unions and
differences of extent lists. No I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


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
class Group:
    """Whole manifest blocks [first, end) to read and re-hash, and the extents in them."""

    first: int
    end: int
    extents: list[tuple[int, int]]


READ_GAP = 64 << 10     # unchanged bytes read between two changed extents, not two reads


def group_extents(extents: list[tuple[int, int]], mblock: int, size: int,
                  gap: int = READ_GAP) -> list[Group]:
    """The manifest blocks that overlap the extents, in disjoint groups: a manifest block
    larger than a map block is read once even when several extents touch it, and extents
    at most ``gap`` bytes apart share one read (scattered 4 KiB changes would otherwise
    cost one system call and one task each: reading the gap is cheaper; its blocks are
    re-hashed to the digests they already had)."""
    groups: list[Group] = []
    gap_blocks = gap // mblock
    for off, n in extents:
        first, end = off // mblock, -(-min(off + n, size) // mblock)
        if groups and first <= groups[-1].end + gap_blocks:
            groups[-1].end = max(groups[-1].end, end)
            groups[-1].extents.append((off, n))
        else:
            groups.append(Group(first, end, [(off, n)]))
    return groups


def subtract(extents: list[tuple[int, int]], covered: list[tuple[int, int]]
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


def merge(x: list[tuple[int, int]], y: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The union of two sorted, disjoint extent lists, sorted and disjoint."""
    out: list[tuple[int, int]] = []
    for off, n in sorted(x + y):
        if out and off <= out[-1][0] + out[-1][1]:
            o, m = out[-1]
            out[-1] = (o, max(o + m, off + n) - o)
        else:
            out.append((off, n))
    return out
