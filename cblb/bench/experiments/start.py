"""Experiment ``start`` (phase ``mounted``): the start latency of a snapshot of a mounted
ext4 origin (its freeze and thaw included), per temp-file size.
"""

from __future__ import annotations

from pathlib import Path

from .. import devices as dv
from ..rig import SNAP, Rig


def start_mounted_one(rig: Rig, file_size: int, rep: int, fs: dv.Loop, mnt: Path) -> None:
    """start latency with a mounted, busy-free ext4 origin (freeze and thaw included)."""
    if (file_size * 512) > rig.catalog.free():
        return
    snap, wall_us = rig.start_cblb(SNAP, fs.device, file_size, 2)
    s = rig.ctl.snapshot(SNAP)
    rig.cleanup_snapshots()
    rig.record("start", "cblb", {"start_latency_us": s.start_latency_us,
                                 "start_wall_us": wall_us}, phase="mounted", rep=rep,
               file_size=file_size, info={"freeze": s.freeze})
