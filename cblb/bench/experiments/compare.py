"""Experiment ``compare``: origin writes under each target (no snapshot, cblb, dm-snapshot
with 4 KiB and 64 KiB chunks), for every workload: the first pass over fresh chunks, then
the rewrite pass over chunks already copied, with what each pass copied and the memory it
took (slab). The no-snapshot run is time-based and untracked; in the first ``cbt_reps``
repetitions the plan puts a run of :mod:`.cbt` next to it (``cbt_paired``).
"""

from __future__ import annotations

import math
from typing import Any

from .. import devices as dv
from ..rig import Rig
from ..workloads import Workload, rewrite_span, run_fio


def expected_chunks(handle: Any, wl: Workload, written: int) -> float | None:
    """Chunks a first pass must copy, where the workload tells exactly: a sequential
    pass from offset 0 touches ceil(bytes / chunk) chunks; random writes as large as
    the chunk touch one fresh chunk each (fio's random map). cblb copies 4 KiB per
    4 KiB written."""
    if handle[0] == "cblb":
        return written / 4096
    chunk = handle[1].chunk_bytes
    if wl.rw == "write":
        return float(math.ceil(written / chunk))
    if wl.rw == "randwrite" and wl.bs == chunk:
        return written / chunk
    return None


def compare_one(rig: Rig, target: str, wl: Workload, rep: int, warmup: bool,
                cbt_pair: bool = False) -> None:
    """No snapshot: one time-based run (the origin untracked; ``cbt_pair``: a
    :func:`.cbt.cbt_one` run sits next to it in the plan, and the record says so). A
    snapshot (fresh): the first pass, then the rewrite pass over chunks already copied
    (:func:`~cblb.bench.workloads.rewrite_span`)."""
    m = rig.mode
    region = m.region[wl.name] // (8 if warmup else 1)
    runtime = 1.0 if warmup else m.runtime
    path, _snap, handle = rig.target_open(target)
    log = None
    if rep == 0 and not warmup:
        log = str(rig.logs / f"{rig.devset().kind}-{target}-{wl.name}-first")
    if handle is None:
        try:
            r = run_fio(wl, path, region, lat_log=log, runtime=runtime, time_based=True)
        finally:
            rig.target_close(handle)
        rig.record("compare", target, r.metrics(), workload=wl.name, phase="base",
                   rep=rep, warmup=warmup,
                   info={"fio_args": r.argv, "region": region,
                         "lat_log": (log + "_clat.1.log") if log else ""},
                   **({"cbt_paired": True} if cbt_pair else {}))
        return
    log2 = log.replace("-first", "-rewrite") if log else None
    try:
        slab0 = dv.slab_bytes()
        base = rig.cow_state(handle)
        first = run_fio(wl, path, region, lat_log=log, runtime=runtime)
        after1 = rig.cow_state(handle)
        slab1 = dv.slab_bytes()
        done = first.write_bytes + first.read_bytes
        rew = None
        if not warmup and (handle[0] == "cblb" or rig.mode.dm_rewrite):
            span, filled = rewrite_span(wl, path, region, done)
            before2 = rig.cow_state(handle)
            rew = run_fio(wl, path, span, lat_log=log2, runtime=runtime, time_based=True)
            after2 = rig.cow_state(handle)
            rew_info = {"span": span, "fill_bytes": filled}
    finally:
        rig.target_close(handle)
    passes = [("first", first, base, after1, log)]
    if rew is not None:
        passes.append(("rewrite", rew, before2, after2, log2))
    for phase, r, before, after, lg in passes:
        mt = r.metrics()
        cow = after.get("cow_bytes", 0) - before.get("cow_bytes", 0)
        chunks = after.get("cow_chunks", 0) - before.get("cow_chunks", 0)
        mt["cow_bytes"] = cow
        mt["cow_per_byte"] = cow / r.write_bytes if r.write_bytes else 0.0
        mt["chunks_copied"] = chunks
        if phase == "first":
            want = expected_chunks(handle, wl, r.write_bytes)
            if want is not None:
                mt["chunks_expected"] = want
                mt["copied_all"] = float(chunks >= want - 1e-9)
        for k in ("files_used", "index_bytes", "failed", "cow_meta_bytes"):
            if k in after:
                mt[k] = after[k]
        if phase == "first" and handle[0] == "cblb":
            total_chunks = after.get("cow_chunks", 0)
            mt["index_per_chunk"] = (after["index_bytes"] / total_chunks
                                     if total_chunks else 0.0)
            mt["slab_delta_bytes"] = slab1 - slab0
            mt["slab_per_chunk"] = (slab1 - slab0) / total_chunks if total_chunks else 0.0
            mt["start_latency_us"] = after["start_latency_us"]
        info: dict[str, Any] = {"fio_args": r.argv, "region": region,
                                "lat_log": (lg + "_clat.1.log") if lg else ""}
        if phase == "rewrite":
            info.update(rew_info)
        if handle[0] == "dm":
            info["dm_status"] = {"before": before.get("dm_status", ""),
                                 "after": after.get("dm_status", "")}
            info["dm_tables"] = [f"{n}: {t}" for n, t in handle[1].tables]
        rig.record("compare", target, mt, workload=wl.name, phase=phase, rep=rep,
                   warmup=warmup, info=info)
