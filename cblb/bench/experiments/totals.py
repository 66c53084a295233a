"""Experiment ``totals``: random writes under one snapshot, or several at once, with the
module loaded with ``total=N`` slots.
"""

from __future__ import annotations

from ..rig import SNAP, Rig
from ..workloads import WORKLOADS, run_fio


def totals_one(rig: Rig, total: int, variant: str, rep: int) -> None:
    rig.reload(total)
    k = 1 if variant == "one" else min(total, rig.mode.several)
    region = rig.mode.sweep_region
    fsz = 32768
    try:
        for i in range(k - 1):
            rig.start_cblb(f"cbenchx{i}", rig.extras[i].device, fsz, 4)
        snap, _ = rig.start_cblb(SNAP, rig.origin.device, fsz,
                                 rig.files_needed(region, fsz))
        r = run_fio(WORKLOADS["rand4k"], rig.origin.device, region,
                    runtime=rig.mode.runtime)
    finally:
        rig.cleanup_snapshots()
        rig.devset().after_target("cblb")
    rig.record("totals", "cblb", {**r.metrics()}, workload="rand4k", phase="first",
               rep=rep, total=total, variant=variant, info={"snapshots": k,
                                                            "fio_args": r.argv})
