"""``cblb changes SNAPSHOT``: the extents of the origin written between its previous start
and this snapshot's, from the module's change map (kmod/doc/CBT.md), for tools that keep
images in formats of their own.

The record (``--json``; also the file ``CBLB_CHANGED_FILE`` a ``cblb run`` gives its
command) is one JSON object::

    {"format": 1, "kind": "changes", "snapshot": "shadow-sda2", "origin": "/dev/sda2",
     "origin_dev": "8:2", "size": <bytes>, "start_time_ns": <the snapshot's instant>,
     "cbt": {"generation": "<uuid>", "sequence": <k>, "block_size": <bytes per map bit>},
     "changed_bytes": <sum of the lengths>,
     "extents": [{"offset": <bytes>, "length": <bytes>}, ...]}   # sorted, disjoint

The extents are the runs of changed map blocks, cut at the device's end, exactly what
``cblb backup --since`` copies. They describe what changed since the origin's *previous*
start, whatever took it: ``--since PREVIOUS`` (such a record kept from the previous run, or
a cblb backup image) refuses unless PREVIOUS is of that very start (same generation, origin
and size, sequence one less), so a chain of images built from these extents never misses a
change.
"""

from __future__ import annotations

import errno as E
import json
import os
from typing import Any

from .control import Controller
from .errors import CblbError
from .incremental import FULL_HINT, Link, changed_runs, check_since, read_link
from .model import Snapshot

FORMAT = 1


def changed_extents(ctl: Controller, name: str) -> tuple[Snapshot, int, list[tuple[int, int]]]:
    """(snapshot, device size, extents) of an active snapshot with a change map."""
    snap = ctl.snapshot(name)
    snap.require("back up")
    if not snap.has_cbt:
        raise CblbError(f"{name} has no changed-block map (the module does not track changes, "
                        "or the snapshot is not started); copy it whole with 'cblb cat'",
                        E.ENOENT)
    size = ctl.system.device_size(ctl.system.device_file(snap.device))
    cbs, bitmap = ctl.changed_blocks(name, expect=snap)
    nbits = -(-size // cbs)
    if len(bitmap) * 8 < nbits:
        raise CblbError(f"{name}'s changed-block map covers {len(bitmap) * 8 * cbs} bytes but "
                        f"the snapshot has {size}; {FULL_HINT}", E.EINVAL)
    runs = changed_runs(bitmap, nbits)
    return snap, size, [(a * cbs, min(b * cbs, size) - a * cbs) for a, b in runs]


def record(snap: Snapshot, size: int, extents: list[tuple[int, int]]) -> dict[str, Any]:
    return {
        "format": FORMAT, "kind": "changes", "snapshot": snap.name, "origin": snap.origin,
        "origin_dev": snap.origin_dev, "size": size, "start_time_ns": snap.start_time_ns,
        "cbt": {"generation": snap.cbt_generation, "sequence": snap.cbt_sequence,
                "block_size": snap.cbt_block_size},
        "changed_bytes": sum(n for _o, n in extents),
        "extents": [{"offset": o, "length": n} for o, n in extents],
    }


def read_previous(path: str) -> Link:
    """PREVIOUS of ``--since``: a record of ``cblb changes --json``, or a cblb backup."""
    try:
        with open(path, "rb") as f:
            head = f.read(1)
            text = head + f.read(1 << 24) if head == b"{" else b""
    except FileNotFoundError:
        raise CblbError(f"{path}: no such file (give the record 'cblb changes --json' wrote "
                        "for the previous start, or a cblb backup image)", E.ENOENT) from None
    except IsADirectoryError:
        raise CblbError(f"{path} is a folder, not a record or a backup image", E.EISDIR) from None
    if not text:
        return read_link(path)
    try:
        rec = json.loads(text)
        ok = (rec.get("format") == FORMAT and rec.get("kind") == "changes"
              and isinstance(rec["cbt"]["generation"], str)
              and isinstance(rec["cbt"]["sequence"], int)
              and isinstance(rec["cbt"]["block_size"], int) and isinstance(rec["size"], int))
    except (ValueError, AttributeError, KeyError, TypeError):
        ok = False
    if not ok:
        raise CblbError(f"{path}: not a record of 'cblb changes --json' (format {FORMAT})",
                        E.EINVAL)
    return Link(os.path.abspath(path), rec)


def since(snap: Snapshot, size: int, previous: str) -> None:
    """Refuse unless ``previous`` is of the start just before ``snap``'s."""
    check_since(snap, size, read_previous(previous))
