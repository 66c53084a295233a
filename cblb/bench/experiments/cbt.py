"""Experiment ``cbt``: changed-block tracking's cost on origin writes (the origin tracked,
no snapshot, next to the comparison's untracked no-snapshot run of the same repetition) and
its kernel memory, read from the tracking of a sparse 1 TiB loop device.
"""

from __future__ import annotations

from ...errors import CblbError
from ...model import Tracking
from ...system import devnum
from .. import devices as dv
from ..rig import Rig
from ..workloads import Workload, run_fio

TiB = 1 << 40           # the sparse origin whose tracking memory the bench reads


def tracking_of(rig: Rig, device: str) -> Tracking:
    """The module's tracking of ``device``, as sysfs shows it now."""
    dev = devnum(rig.ctl.system.stat(device))
    t = next((t for t in rig.ctl.tracking() if t.dev == dev), None)
    if t is None:
        raise CblbError(f"bench: {device} ({dev}) is not tracked")
    return t


def cbt_one(rig: Rig, wl: Workload, rep: int) -> None:
    """Changed-block tracking's cost on origin writes: the origin tracked (``track``,
    no snapshot), one time-based run exactly like the comparison's no-snapshot run of
    the same repetition (same region and seconds), which the plan puts next to it
    with the origin untracked. Untracked afterwards."""
    m = rig.mode
    region = m.region[wl.name]
    origin = rig.origin.device
    rig.cleanup_snapshots()            # no snapshot, nothing tracked
    t0 = rig.ctl.track(origin)
    try:
        r = run_fio(wl, origin, region, runtime=m.runtime, time_based=True)
        t = tracking_of(rig, origin)
    finally:
        rig.ctl.untrack(origin)
    mt = r.metrics()
    mt.update({"memory_bytes": t.memory_bytes, "block_size": t.block_size,
               "size_bytes": t.size, "changed_blocks": t.changed_blocks})
    rig.record("cbt", "tracked", mt, workload=wl.name, phase="base", rep=rep,
               variant="tracked", info={"fio_args": r.argv, "region": region,
                                        "generation": t.generation,
                                        "generation_at_track": t0.generation})


def cbt_memory(rig: Rig) -> None:
    """Kernel memory of changed-block tracking per TiB: a sparse 1 TiB file in the
    scratch folder on a loop device, tracked, its ``memory_bytes`` read, untracked."""
    if not rig.ctl.loaded():
        rig.ctl.load(4)
    loop = dv.make_loop(TiB, "cbt1t", sparse=True)
    try:
        rig.ctl.track(loop.device)
        try:
            t = tracking_of(rig, loop.device)
        finally:
            rig.ctl.untrack(loop.device)
    finally:
        loop.detach()
    rig.record("cbt", "tracked", {
        "memory_bytes": t.memory_bytes, "block_size": t.block_size, "size_bytes": t.size,
        "cbt_memory_per_tib_bytes": t.memory_bytes * TiB / t.size if t.size else 0.0},
        phase="memory", rep=0, device="ram",
        info={"device": loop.device, "image": str(loop.image), "sparse": True,
              "generation": t.generation})
