"""Experiment ``tracer``: the module's write hook on its own: time-based writes to a device
with no snapshot, the module unloaded against loaded with a snapshot of another device.
"""

from __future__ import annotations

from ..rig import Rig
from ..workloads import WORKLOADS, run_fio


def tracer_one(rig: Rig, variant: str, pair: int) -> None:
    """The module's write hook on its own: time-based writes to a device that has no
    snapshot, with the module unloaded vs loaded with an active snapshot on another
    device. Pairs run back to back, their order alternating; the cost is the ratio
    within each pair."""
    if variant == "unloaded":
        rig.unload()
    else:
        rig.reload(4)
        rig.start_cblb("cbenchx0", rig.extras[0].device, 32768, 4)
    try:
        r = run_fio(WORKLOADS["rand4k"], rig.origin.device, rig.mode.sweep_region,
                    runtime=rig.mode.runtime, time_based=True)
    finally:
        if rig.ctl.loaded():
            rig.cleanup_snapshots()
    rig.record("tracer", variant, r.metrics(), workload="rand4k", phase="base",
               rep=pair, variant=variant, info={"fio_args": r.argv})
