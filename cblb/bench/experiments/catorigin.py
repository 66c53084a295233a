"""Experiment ``catorigin``: random writes to a file in a mounted ext4 origin with no
snapshot, with a snapshot whose catalog is on a separate ext4, and with its catalog on the
origin's own filesystem.
"""

from __future__ import annotations

from pathlib import Path

from .. import devices as dv
from ..rig import SNAP, Rig
from ..workloads import WORKLOADS, rewrite_span, run_fio


def catorigin_one(rig: Rig, target: str, rep: int, fs: dv.Loop, mnt: Path) -> None:
    """rand4k on a file in a mounted ext4 origin: no snapshot, catalog on a separate
    ext4, catalog on the origin filesystem itself."""
    region = rig.mode.sweep_region
    f = str(mnt / "data.bin")
    handle = None
    if target != "none":
        cat = str(mnt / "catalog") if target == "cblb-catalog-on-origin" else None
        if cat:
            Path(cat).mkdir(exist_ok=True)
        rig.start_cblb(SNAP, fs.device, 32768, rig.files_needed(region, 32768),
                       catalog=cat)
        handle = True
    try:
        first = run_fio(WORKLOADS["rand4k"], f, region, runtime=rig.mode.runtime)
        span, _filled = rewrite_span(WORKLOADS["rand4k"], f, region,
                                     first.write_bytes)
        rew = run_fio(WORKLOADS["rand4k"], f, span, runtime=rig.mode.runtime,
                      time_based=True)
    finally:
        if handle:
            rig.cleanup_snapshots()
            rig.devset().after_target("cblb")
    for phase, r in (("first", first), ("rewrite", rew)):
        rig.record("catorigin", target, r.metrics(), workload="rand4k", phase=phase,
                   rep=rep, info={"fio_args": r.argv})
