"""Experiment ``snapread``: sequential reads of the origin and of the snapshot after a
fraction of the region was changed, per target; once (cblb, the first fraction and device
set) also ``verify``, the hashing throughput over the snapshot (:mod:`cblb.bench.verifyhash`).
"""

from __future__ import annotations

from ..rig import Rig
from ..workloads import CHANGE, SEQREAD, run_fio


def snapread_one(rig: Rig, target: str, frac: float, rep: int) -> None:
    m = rig.mode
    region = m.snapread_region
    path, snap, handle = rig.target_open(target)
    try:
        change = run_fio(CHANGE, path, region,
                         io_size=int(region * frac) // 4096 * 4096)
        orig = run_fio(SEQREAD, path, region, runtime=m.runtime, time_based=True)
        sr = run_fio(SEQREAD, snap, region, runtime=m.runtime, time_based=True)
        st = rig.cow_state(handle)
        vr = None
        if (target == "cblb" and rep == 0 and frac == m.fracs[0]
                and rig.devset().kind == m.devices[0]):
            vr = verify_one(rig, snap, region)
    finally:
        rig.target_close(handle)
    info = {"changed_bytes": change.write_bytes, "region": region}
    rig.record("snapread", target, orig.metrics(), workload="seqread",
               phase="origin", rep=rep, frac=frac, info={**info, "fio_args": orig.argv})
    rig.record("snapread", target, {**sr.metrics(), **{
        k: v for k, v in st.items() if k in ("cow_bytes", "cow_chunks")}},
        workload="seqread", phase="snapshot", rep=rep, frac=frac,
        info={**info, "fio_args": sr.argv})
    if vr:
        rig.record("verify", "cblb", {"hash_bw": vr[1], "read_bw": sr.read_bw,
                                      "bytes": region}, workload="hash",
                   phase="snapshot", rep=0, info={"engine": vr[0]})


def verify_one(rig: Rig, dev: str, size: int) -> tuple[str, float] | None:
    from ..verifyhash import hash_throughput
    try:
        return hash_throughput(dev, size)
    except Exception as e:  # noqa: BLE001 - a missing engine is a note, not a failure
        rig.note(f"verification throughput skipped: {e}")
        return None
