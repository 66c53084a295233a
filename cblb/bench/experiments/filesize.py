"""Experiment ``filesize``: random writes under a snapshot whose temp files have a given
size, with its start latency, how many files it used and how the store grew during the run.
"""

from __future__ import annotations

import threading
import time

from ..rig import SNAP, Rig
from ..workloads import WORKLOADS, run_fio


def filesize_one(rig: Rig, file_size: int, rep: int) -> None:
    region = rig.mode.sweep_region
    mf = rig.files_needed(region, file_size)
    if (file_size * 512) > rig.catalog.free():
        rig.note(f"file size {file_size} skipped: catalog too small")
        return
    snap, wall_us = rig.start_cblb(SNAP, rig.origin.device, file_size, mf)
    growth: list[list[float]] = []
    stop = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            try:
                s = rig.ctl.snapshot(SNAP)
                growth.append([round(time.monotonic() - t0, 3), s.files_used, s.cow_bytes])
            except Exception:  # noqa: BLE001
                pass
            stop.wait(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        r = run_fio(WORKLOADS["rand4k"], rig.origin.device, region,
                    runtime=rig.mode.runtime)
    finally:
        stop.set()
        th.join()
        s = rig.ctl.snapshot(SNAP)
        rig.cleanup_snapshots()
        rig.devset().after_target("cblb")
    m = r.metrics()
    m.update({"start_latency_us": s.start_latency_us, "start_wall_us": wall_us,
              "files_used": s.files_used, "cow_bytes": s.cow_bytes,
              "cow_per_byte": s.cow_bytes / r.write_bytes if r.write_bytes else 0.0,
              "failed": float(s.state.failed)})
    rig.record("filesize", "cblb", m, workload="rand4k", phase="first", rep=rep,
               file_size=file_size, max_files=mf, info={"growth": growth,
                                                        "fio_args": r.argv})
