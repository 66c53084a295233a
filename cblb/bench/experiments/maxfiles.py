"""Experiment ``maxfiles``: random writes under a snapshot of small (1 MiB) temp files and
a given ``max_files``: what the store held, and whether it filled (the snapshot failed).
"""

from __future__ import annotations

from ...errors import CblbError
from ..rig import SNAP, Rig
from ..workloads import WORKLOADS, run_fio


def maxfiles_one(rig: Rig, max_files: int) -> None:
    region = rig.mode.sweep_region
    fsz = rig.mode.max_files_small
    rig.start_cblb(SNAP, rig.origin.device, fsz, max_files)
    err = ""
    try:
        r = run_fio(WORKLOADS["rand4k"], rig.origin.device, region,
                    runtime=rig.mode.runtime)
        m = r.metrics()
        m["fio_ok"] = 1.0
    except CblbError as e:
        m, err = {"fio_ok": 0.0}, str(e)
    s = rig.ctl.snapshot(SNAP)
    rig.cleanup_snapshots()
    rig.devset().after_target("cblb")
    m.update({"files_used": s.files_used, "cow_bytes": s.cow_bytes,
              "store_bytes": s.store_bytes,
              "failed": float(s.state.failed)})
    rig.record("maxfiles", "cblb", m, workload="rand4k", phase="first", rep=0,
               file_size=fsz, max_files=max_files,
               info={"state": s.state.value, "error": s.error, "fio_error": err,
                     "region": region})
