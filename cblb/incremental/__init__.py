"""Incremental backups from the module's changed-block tracking, and restoring a chain.

The module keeps, per origin, a map of the blocks written between two starts
(kmod/doc/CBT.md): the snapshot of start *k* carries ``cbt_generation``, ``cbt_sequence``
= *k* and ``cbt_map``, the blocks changed between start *k-1* and start *k*. So a backup of
the snapshot of start *k+1* needs only those blocks, on top of a backup of start *k* of the
same generation. Backups form a chain: one full backup, then incrementals, each resting on
the one before.

One module per concern, each using only those listed before it:

- extents.py: pure extent arithmetic (the map's runs, the reads they need, unions and
  differences of extent lists);
- image.py: the incremental image's file format;
- chain.py: the chain record (``IMAGE.chain`` beside a full image, inside an incremental's
  header) and following a chain back to its full backup;
- backup.py: the incremental backup (``cblb backup SNAPSHOT IMAGE --since PREVIOUS``);
- restore.py: restoring a chain (``cblb restore IMAGE TARGET``).

A chain breaks when the module's generation of the origin changes (module reloaded, origin
resized or its medium changed, ``untrack`` then tracking again) or a start is not backed up
(a sequence is missing): ``--since`` then refuses, asking for a full backup.
"""

from __future__ import annotations

from .backup import MAX_THREADS, PIECE, IncrementalBackup, IncrementalResult, check_since
from .chain import (
    CHAIN_FORMAT,
    CHAIN_SUFFIX,
    FULL_HINT,
    Link,
    chain_record,
    check_base,
    find_base,
    forget_full_record,
    manifest_header,
    read_link,
    record_full,
    resolve_chain,
)
from .extents import READ_GAP, changed_runs, group_extents
from .image import MAGIC, VERSION, is_incremental
from .restore import COPY_PIECE, MAX_LISTED_RANGES, Restore, RestoreResult, newest_pieces

__all__ = [
    "CHAIN_FORMAT", "CHAIN_SUFFIX", "COPY_PIECE", "FULL_HINT", "MAGIC", "MAX_LISTED_RANGES",
    "MAX_THREADS", "PIECE", "READ_GAP", "VERSION", "IncrementalBackup", "IncrementalResult",
    "Link", "Restore", "RestoreResult", "chain_record", "changed_runs", "check_base",
    "check_since", "find_base", "forget_full_record", "group_extents", "is_incremental",
    "manifest_header", "newest_pieces", "read_link", "record_full", "resolve_chain",
]
